"""Resumption: skip a stage whose inputs have not changed since it last completed.

A *stage record* says "stage S completed for subject X with inputs I, producing outputs O". It is
written (atomically) only after the stage finished and its outputs are in place, under
``<store>/state/stages/<stage>/<subject>.json``. Before running a stage, its task computes the
*fingerprint* of its inputs — content hashes of the files, the model id, the settings — and
skips the stage when the record holds the same fingerprint **and** the outputs it names are still
there (checked by the task itself: the store's own completion markers, the map files).

Why not Prefect's result cache: a cache key hashed from task parameters cannot see that a survey
was deleted from the store or a map removed from ``runs/``; the store knows. And the records live
beside the data they describe, so they move with the store and survive a new Prefect database.
A crash mid-stage leaves no record, so a re-run redoes exactly the stages that did not finish.

A task uses one :class:`Stage`: ``stage.previous(still_there)`` returns the outcome of an
earlier run to skip to (or None), ``stage.done(outputs)`` records a finished stage. Both return
the *outcome* dict every stage task returns: ``stage``, ``subject``, ``status`` (``"done"`` or
``"skipped"``), ``seconds``, ``fingerprint``, ``inputs`` and ``outputs``.

Nothing here imports Prefect.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline.files import write_json
from pipeline.store import Store

__all__ = ["fingerprint", "StageLedger", "Stage"]


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
        write_json(path, record)
        return record

    def forget(self, stage: str, subject: str) -> None:
        self._path(stage, subject).unlink(missing_ok=True)


class Stage:
    """One run of one stage for one subject: its fingerprint, and the outcome it returns."""

    def __init__(self, store: Store, name: str, subject: str, inputs: Mapping[str, Any], run_id: str | None,
                 logger: logging.Logger | logging.LoggerAdapter | None = None) -> None:
        self.name, self.subject, self.run_id = name, subject, run_id
        self.inputs = dict(inputs)
        self.fingerprint = fingerprint(self.inputs)
        self.ledger = StageLedger(store.root / "state" / "stages")
        self.logger = logger or logging.getLogger("damwatch")
        self._t0 = time.perf_counter()

    def _outcome(self, status: str, outputs: Mapping[str, Any], seconds: float, **extra: Any) -> dict:
        return {
            "stage": self.name, "subject": self.subject, "status": status, "seconds": seconds,
            "fingerprint": self.fingerprint, "outputs": dict(outputs), "inputs": self.inputs, **extra,
        }

    def previous(self, still_there: Callable[[Mapping[str, Any]], bool]) -> dict | None:
        """The "skipped" outcome of an earlier run with these inputs whose outputs ``still_there``
        says exist; None when the stage must run."""
        record = self.ledger.lookup(self.name, self.subject, self.fingerprint)
        if record is None or not still_there(record["outputs"]):
            return None
        self.logger.info("%s %s: inputs unchanged since run %s (fingerprint %s), skipped",
                         self.name, self.subject, record.get("run_id"), self.fingerprint)
        return self._outcome("skipped", record["outputs"], 0.0, from_run=record.get("run_id"))

    def adopt(self, outputs: Mapping[str, Any]) -> dict:
        """Record outputs that the store already holds for exactly these inputs although no
        record says so (made outside the flows, e.g. by an earlier version), and skip to them."""
        record = self.ledger.record(self.name, self.subject, self.fingerprint, self.inputs, outputs, self.run_id)
        self.logger.info("%s %s: already in the store with these inputs (fingerprint %s), skipped",
                         self.name, self.subject, self.fingerprint)
        return self._outcome("skipped", record["outputs"], 0.0, from_run=self.run_id)

    def done(self, outputs: Mapping[str, Any]) -> dict:
        """Record the finished stage (after its outputs are in place) and return its outcome."""
        seconds = round(time.perf_counter() - self._t0, 3)
        self.ledger.record(self.name, self.subject, self.fingerprint, self.inputs, outputs, self.run_id)
        self.logger.info("%s %s: done in %.1f s", self.name, self.subject, seconds)
        return self._outcome("done", outputs, seconds)
