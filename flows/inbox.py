"""The inbox: a directory where new surveys (GeoTIFFs) are dropped for scheduled detection.

An *inbox file* is a GeoTIFF (``*.tif`` / ``*.tiff``) together with the area and date of the
survey it holds. The area and date come from, in this order:

1. a sidecar JSON beside it, named after the file with ``.json`` in place of (or after) the
   ``.tif`` suffix — ``creek_0601.tif`` + ``creek_0601.json`` or ``creek_0601.tif.json`` —
   holding ``{"area": "creek", "date": "2024-06-01"}``, and optionally the band names in file
   order, as ``damwatch ingest --bands`` takes them: ``"bands": ["red", "green", "blue", "nir"]``
   or ``"bands": "red,green,blue,nir"`` (a NAIP file's bands are unnamed). Files without
   ``bands`` get the watch flow's ``bands`` parameter, a deployment's default for its inbox;
2. the file name ``<area>_<date>[_anything].tif`` (or ``-`` instead of ``_``), with the date as
   ``YYYY-MM-DD`` or ``YYYYMMDD``: ``creek_2024-06-01.tif``, ``creek-20240601-rgb.tif``.

A file with neither is reported and left alone. A file is known by its content (SHA-256), not by
its name: the same bytes dropped again under another name are not processed twice.

The *ledger* (``<store>/state/watch/``) records what happened to each content hash:

- ``claims/<sha256>.json`` — a run is processing it now. The record (host, pid and start time
  of the process, run, and an expiry time) is written whole into a private file first and then
  hard-linked to that name: ``link`` fails when the name exists, atomically on a local or NFS
  file system, so of two overlapping runs exactly one wins, and no claim is ever seen empty.
  A claim is *stale* when its process is dead on this host (pid gone, or reused by a process
  with another start time), or, for a claim of another host (which cannot be checked from
  here), once its expiry has passed: the holder renews it while it works
  (:meth:`Ledger.hold`), so only a crashed or frozen run lets it expire. An unreadable claim
  (a crash of an older version between create and write) is stale after a short grace.
  Taking over a stale claim is atomic: the taker links its own record to a name made from the
  stale claim's content (``.<sha256>.json.takeover-<digest>``) — only one taker can create it
  — checks that the claim still holds exactly that content, and renames its record over the
  claim. Two runs racing on one stale claim: one takes it, the other sees a live claim.
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

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InputError
from pipeline.files import (
    check_area,
    file_sha256,
    owned_name,
    parse_date,
    process_alive,
    process_start_time,
    sweep_owned,
    write_json,
)

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
    bands: tuple[str, ...] | None = None  # band names from the sidecar, in file order

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
            area, date = meta["area"], meta["date"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(
                f"sidecar {sidecar} for {path.name} is not a JSON object with 'area' and 'date' "
                f"({exc!r}); write it as {{\"area\": \"creek\", \"date\": \"2024-06-01\"}}"
            ) from None
        try:
            area = check_area(area)
        except InputError as exc:
            raise InputError(f"sidecar {sidecar}: {exc}") from None
        return InboxFile(
            path, area, parse_date(str(date), f"the date in sidecar {sidecar}", '"date": "2024-06-01"'),
            f"sidecar {sidecar.name}", _sidecar_bands(meta.get("bands"), sidecar),
        )
    match = FILE_NAME_PATTERN.fullmatch(path.name)
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


def _sidecar_bands(value, sidecar: Path) -> tuple[str, ...] | None:
    """Band names as a sidecar gives them: a list, or one comma-separated text (as --bands)."""
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise InputError(
            f"sidecar {sidecar}: \"bands\" is {json.dumps(value)}; give the band names in file order as a "
            f"list or as damwatch ingest --bands takes them, e.g. \"bands\": \"red,green,blue,nir\""
        )
    return tuple(n.strip() for n in names)


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


#: Seconds a claim stays valid for other hosts without renewal; the holder renews it every third.
CLAIM_LEASE_SECONDS = 15 * 60
#: Seconds after which an unreadable claim is stale (a complete claim is never unreadable).
UNREADABLE_CLAIM_GRACE = 60


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


class Ledger:
    """What the watch flow has done with each inbox file, by content hash (see module docstring)."""

    def __init__(self, root: Path, lease: float = CLAIM_LEASE_SECONDS):
        self.root = Path(root)
        self.lease = float(lease)
        self._held: dict[str, bytes] = {}  # the claim content this object wrote, by sha256
        self.claims = self.root / "claims"
        self.done = self.root / "done"
        self.failed = self.root / "failed"
        for d in (self.claims, self.done, self.failed):
            d.mkdir(parents=True, exist_ok=True)
        sweep_owned(self.claims)  # claim records a dead process was writing

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
        for _ in range(3):
            fresh = self._write_record(sha256, path, run)
            try:
                try:
                    os.link(fresh, claim)
                except FileExistsError:
                    try:
                        seen, mtime = claim.read_bytes(), claim.stat().st_mtime
                    except FileNotFoundError:
                        continue  # released meanwhile: try again
                    if not self._stale(seen, mtime):
                        return False
                    if not self._supersede(claim, seen, fresh):
                        continue  # another run took it over, or it was released: look again
                self._held[sha256] = claim.read_bytes()
                return True
            finally:
                fresh.unlink(missing_ok=True)
        return False

    def holder(self, sha256: str) -> dict | None:
        """The record of the claim on ``sha256``, or None when unclaimed."""
        try:
            return json.loads((self.claims / f"{sha256}.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def renew(self, sha256: str) -> bool:
        """Push back the expiry of this process's claim on ``sha256``; False if it is no longer ours."""
        claim, mine = self.claims / f"{sha256}.json", self._held.get(sha256)
        if mine is None:
            return False
        record = json.loads(mine)
        fresh = self._write_record(sha256, record.get("path"), record.get("run"), token=record.get("token"))
        try:
            if not self._supersede(claim, mine, fresh):
                self._held.pop(sha256, None)
                return False
            self._held[sha256] = claim.read_bytes()
            return True
        finally:
            fresh.unlink(missing_ok=True)

    @contextlib.contextmanager
    def hold(self, sha256: str) -> Iterator[None]:
        """Renew the claim on ``sha256`` every third of its lease while the block runs."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lease / 3):
                if not self.renew(sha256):
                    logging.getLogger(__name__).warning(
                        "the claim on %s… was taken over by another run (this run was frozen past its "
                        "lease of %g s); its result may be recorded twice", sha256[:12], self.lease
                    )
                    return

        thread = threading.Thread(target=renew, name=f"claim-{sha256[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _write_record(self, sha256: str, path, run, token: str | None = None) -> Path:
        """This process's claim record, complete, in a private file of the claims directory."""
        now = time.time()
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": process_start_time(os.getpid()),
            "run": run,
            "path": None if path is None else str(path),
            "claimed": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "expires": now + self.lease,
            "token": token or uuid.uuid4().hex,
        }
        fresh = self.claims / owned_name(sha256, "claim")
        with open(fresh, "x") as f:
            json.dump(record, f, indent=2)
        return fresh

    def _stale(self, raw: bytes, mtime: float) -> bool:
        """Whether a claim with content ``raw`` (modified at ``mtime``) may be taken over."""
        try:
            holder = json.loads(raw)
            pid = int(holder["pid"])
        except (ValueError, KeyError, TypeError):
            return time.time() - mtime > UNREADABLE_CLAIM_GRACE
        if holder.get("host") == socket.gethostname():
            return not process_alive(pid, holder.get("start"))
        expires = holder.get("expires")
        if not isinstance(expires, (int, float)):  # written by a version without expiry
            expires = mtime + self.lease
        return time.time() > expires

    def _supersede(self, target: Path, seen: bytes, fresh: Path, depth: int = 0) -> bool:
        """Replace ``target``, which held ``seen`` (stale), by the record ``fresh``; atomically.

        Only the process that creates ``.<target>.takeover-<digest of seen>`` may replace that
        content of ``target``; if one died right there, its takeover file is stale in turn and
        is superseded the same way (to a small depth). False when another live process is
        taking over, or when ``target`` no longer holds ``seen``.
        """
        marker = target.with_name(f".{target.name.lstrip('.')}.takeover-{_digest(seen)}")
        try:
            os.link(fresh, marker)
        except FileExistsError:
            try:
                other, mtime = marker.read_bytes(), marker.stat().st_mtime
            except FileNotFoundError:
                return False  # the other taker has just finished
            if depth >= 3 or not self._stale(other, mtime) or not self._supersede(marker, other, fresh, depth + 1):
                return False
        # The marker is ours: nobody else may now replace `seen`; check it is still there.
        try:
            current = target.read_bytes()
        except FileNotFoundError:
            current = None
        if current != seen:
            marker.unlink(missing_ok=True)
            return False
        os.rename(marker, target)
        return True

    def release(self, sha256: str) -> None:
        self._held.pop(sha256, None)
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
