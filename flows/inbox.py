"""The inbox: a directory where new surveys (GeoTIFFs) are dropped for scheduled detection.

An *inbox file* is a GeoTIFF (``*.tif`` / ``*.tiff``) together with the area and date of the
survey it holds. The area and date come from, in this order:

1. a sidecar JSON beside it, named after the file with ``.json`` in place of (or after) the
   ``.tif`` suffix — ``creek_0601.tif`` + ``creek_0601.json`` or ``creek_0601.tif.json`` —
   holding ``{"area": "creek", "date": "2024-06-01"}``;
2. the file name ``<area>_<date>[_anything].tif`` (or ``-`` instead of ``_``), with the date as
   ``YYYY-MM-DD`` or ``YYYYMMDD``: ``creek_2024-06-01.tif``, ``creek-20240601-rgb.tif``.

A file with neither is reported and left alone. A file is known by its content (SHA-256), not by
its name: the same bytes dropped again under another name are not processed twice.

The *ledger* (``<store>/state/watch/``) records what happened to each content hash:

- ``claims/<sha256>.json`` — a run is processing it now. Created with ``O_CREAT | O_EXCL``, an
  atomic operation on a local or NFSv3+ file system, so of two overlapping runs exactly one wins
  the claim and the other skips the file. A claim whose process has died on this host is stale
  and is taken over (renamed aside atomically first, so only one run can take it over).
- ``done/<sha256>.json`` — processed; written before the claim is released, and checked again
  after a claim is won, so a run that arrives just after another finished never redoes it.
- ``failed/<sha256>.json`` — the file is bad input (the error is recorded); it is skipped until
  that record is deleted. Transient failures (I/O, a lost worker) only release the claim, so
  the next run tries again.
- ``hashes.json`` — the content hash of each inbox path with the size and modification time it
  was computed at, so an unchanged file is hashed once, not on every run.

Nothing here imports Prefect; the watch flow (``flows/watch.py``) drives it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InputError
from pipeline.files import file_sha256, parse_date, write_json

__all__ = [
    "InboxFile",
    "Ledger",
    "FILE_NAME_PATTERN",
    "scan_inbox",
    "survey_identity",
]

#: ``<area>_<date>[_anything].tif``; the area is the shortest prefix followed by a date.
FILE_NAME_PATTERN = re.compile(
    r"^(?P<area>[a-z0-9][a-z0-9_-]*?)[_-](?P<date>\d{4}-\d{2}-\d{2}|\d{8})(?:[_.-][^/]*)?\.tiff?$",
    re.IGNORECASE,
)
_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class InboxFile:
    """A GeoTIFF in the inbox with the area and date of its survey (None when unknown)."""

    path: Path
    area: str | None
    date: dt.date | None
    source: str  # where area and date came from: "sidecar <path>", "file name", or why unknown

    @property
    def understood(self) -> bool:
        return self.area is not None and self.date is not None


def _sidecar(path: Path) -> Path | None:
    for candidate in (path.with_suffix(".json"), path.with_name(path.name + ".json")):
        if candidate.is_file():
            return candidate
    return None


def survey_identity(path: Path) -> InboxFile:
    """Area and date of the survey in ``path``, from its sidecar JSON or its file name.

    Raises InputError when a sidecar exists but is malformed (a sidecar is an explicit statement:
    guessing from the file name instead would hide the mistake).
    """
    path = Path(path)
    sidecar = _sidecar(path)
    if sidecar is not None:
        try:
            meta = json.loads(sidecar.read_text())
            area, date = str(meta["area"]), meta["date"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(
                f"sidecar {sidecar} for {path.name} is not a JSON object with 'area' and 'date' "
                f"({exc!r}); write it as {{\"area\": \"creek\", \"date\": \"2024-06-01\"}}"
            ) from None
        return InboxFile(path, area, parse_date(str(date), f"the date in sidecar {sidecar}", '"date": "2024-06-01"'), f"sidecar {sidecar.name}")
    match = FILE_NAME_PATTERN.match(path.name)
    if match is None:
        return InboxFile(
            path,
            None,
            None,
            "no sidecar JSON and the file name does not match <area>_<YYYY-MM-DD>.tif",
        )
    return InboxFile(
        path, match["area"].lower(), parse_date(match["date"], f"the date in file name {path.name}", "<area>_2024-06-01.tif"), "file name"
    )


def scan_inbox(inbox: Path, settle_seconds: float = 0.0, now: float | None = None) -> list[InboxFile]:
    """The GeoTIFFs in ``inbox`` (not recursive), sorted by name.

    Files modified less than ``settle_seconds`` ago are left for a later run: they may still be
    being copied in. Hidden files (``.name``) are ignored.
    """
    inbox = Path(inbox)
    if not inbox.is_dir():
        raise InputError(
            f"inbox {inbox} is not a directory; create it (mkdir -p {inbox}) or pass the "
            f"directory where new GeoTIFFs arrive"
        )
    now = time.time() if now is None else now
    found = []
    for path in sorted(inbox.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in _SUFFIXES or not path.is_file():
            continue
        if now - path.stat().st_mtime < settle_seconds:
            continue
        try:
            found.append(survey_identity(path))
        except InputError as exc:
            found.append(InboxFile(path, None, None, str(exc)))
    return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Ledger:
    """What the watch flow has done with each inbox file, by content hash (see module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.claims = self.root / "claims"
        self.done = self.root / "done"
        self.failed = self.root / "failed"
        for d in (self.claims, self.done, self.failed):
            d.mkdir(parents=True, exist_ok=True)

    def content_hash(self, path: Path) -> str:
        """SHA-256 of ``path``, recomputed only when its size or modification time changed."""
        path = Path(path).resolve()
        stat = path.stat()
        key, stamp = str(path), [stat.st_size, stat.st_mtime_ns]
        cache_file = self.root / "hashes.json"
        try:
            cache = json.loads(cache_file.read_text())
        except (FileNotFoundError, ValueError):
            cache = {}
        entry = cache.get(key)
        if entry and entry.get("stamp") == stamp:
            return entry["sha256"]
        sha = file_sha256(path)
        cache[key] = {"stamp": stamp, "sha256": sha}
        # A concurrent run may overwrite this with its own copy: at worst a file is hashed again.
        write_json(cache_file, cache)
        return sha

    def status(self, sha256: str) -> dict | None:
        """The done or failed record for ``sha256`` (with a ``"state"`` key), or None."""
        for state, directory in (("done", self.done), ("failed", self.failed)):
            path = directory / f"{sha256}.json"
            if path.is_file():
                return {"state": state, **json.loads(path.read_text())}
        return None

    def claim(self, sha256: str, path: Path, run: str | None = None) -> bool:
        """Claim ``sha256`` for this process; False when another live process holds it."""
        claim = self.claims / f"{sha256}.json"
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "run": run,
            "path": str(path),
            "claimed": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        for _ in range(2):
            try:
                fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._take_over_if_stale(claim):
                    return False
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, indent=2)
            return True
        return False

    def holder(self, sha256: str) -> dict | None:
        """The record of the claim on ``sha256``, or None when unclaimed."""
        try:
            return json.loads((self.claims / f"{sha256}.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _take_over_if_stale(self, claim: Path) -> bool:
        try:
            holder = json.loads(claim.read_text())
        except FileNotFoundError:
            return True  # released meanwhile: try again
        except ValueError:
            # Being written right now (created, not yet filled): a live claim.
            return False
        if holder.get("host") != socket.gethostname() or _pid_alive(int(holder.get("pid", -1))):
            return False
        aside = claim.with_name(f".{claim.name}.stale-{uuid.uuid4().hex}")
        try:
            os.rename(claim, aside)  # atomic: of two runs taking over, one rename fails
        except FileNotFoundError:
            return True
        aside.unlink(missing_ok=True)
        return True

    def release(self, sha256: str) -> None:
        (self.claims / f"{sha256}.json").unlink(missing_ok=True)

    def mark_done(self, sha256: str, record: dict) -> None:
        write_json(self.done / f"{sha256}.json", record)
        self.release(sha256)

    def mark_failed(self, sha256: str, record: dict) -> None:
        write_json(self.failed / f"{sha256}.json", record)
        self.release(sha256)

    def iter_done(self) -> Iterator[tuple[str, dict]]:
        for path in sorted(self.done.glob("*.json")):
            yield path.stem, json.loads(path.read_text())
