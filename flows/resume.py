"""Resumption: skip a stage whose inputs have not changed since it last completed.

A *stage record* says "stage S completed for subject X with inputs I, producing outputs O". It is
written (atomically) only after the stage finished and its outputs are in place, under
``<store>/state/stages/<stage>/<subject>.json``. Before running a stage, the flow computes the
*fingerprint* of its inputs — content hashes of the files, the model id, the settings — and
skips the stage when the record holds the same fingerprint **and** the outputs it names are still
there (checked by the stage itself: the store's own completion markers, the map files).

Why not Prefect's result cache: a cache key hashed from task parameters cannot see that a survey
was deleted from the store or a map removed from ``runs/``; the store knows. And the records live
beside the data they describe, so they move with the store and survive a new Prefect database.
A crash mid-stage leaves no record, so a re-run redoes exactly the stages that did not finish.

Nothing here imports Prefect.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["fingerprint", "StageLedger"]


def fingerprint(inputs: Mapping[str, Any]) -> str:
    """A short, stable hash of ``inputs`` (a JSON-able mapping; key order does not matter)."""
    canonical = json.dumps(inputs, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


class StageLedger:
    """The stage records of one store (``<store>/state/stages``)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, stage: str, subject: str) -> Path:
        return self.root / _safe(stage) / f"{_safe(subject)}.json"

    def lookup(self, stage: str, subject: str, fp: str) -> dict | None:
        """The record of ``stage`` for ``subject`` if it was made with fingerprint ``fp``."""
        try:
            record = json.loads(self._path(stage, subject).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return record if record.get("fingerprint") == fp else None

    def record(
        self, stage: str, subject: str, fp: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any], run_id: str | None
    ) -> dict:
        """Write the record of a completed stage (atomically: a reader never sees half of it)."""
        path = self._path(stage, subject)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "stage": stage,
            "subject": subject,
            "fingerprint": fp,
            "inputs": dict(inputs),
            "outputs": dict(outputs),
            "run_id": run_id,
            "completed": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str))
        os.replace(tmp, path)
        return record

    def forget(self, stage: str, subject: str) -> None:
        self._path(stage, subject).unlink(missing_ok=True)
