"""Files and identifiers: how damwatch writes safely, and how it names what it stores.

A write is *atomic* when a reader, or the next run after a crash, sees either the old content
or the new, never half of it. On one filesystem a rename is atomic, so every write here goes
to a temporary name beside its destination and is renamed into place once complete:

- :func:`write_json` for one JSON file (NumPy values, NaN and paths made JSON-able by
  :func:`jsonable`, the one cleaner);
- :func:`staged_directory` for a directory of outputs (a survey group, a run's maps): the
  block writes into a fresh directory, which :func:`move_into_place` renames over the
  destination at the end, or which is removed if the block fails.

A temporary directory or file is named after its *owner* (:func:`owned_name`: host, pid and
the process's start time), so that what a killed process leaves behind is swept by the next run
(:func:`sweep_owned`) once its owner is known to be dead — never by age, and never another
host's. A full disk while writing is one :class:`pipeline.errors.DiskFull` paragraph
(:func:`disk_full`).

Identifiers are plain strings a person can read and type: an *area* is a lower-case name
(:func:`check_area`), a survey *date* is a calendar date (:func:`parse_date`), and a survey id
is ``<area>-<YYYY-MM-DD>`` (:func:`survey_id_for`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import math
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.errors import InputError

__all__ = [
    "jsonable",
    "write_json",
    "file_sha256",
    "move_into_place",
    "staged_directory",
    "is_disk_full",
    "disk_full",
    "owned_name",
    "owner_of",
    "owner_gone",
    "process_start_time",
    "process_alive",
    "sweep_owned",
    "check_area",
    "parse_date",
    "survey_id_for",
]

_AREA_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# YYYY-MM-DD, optionally followed by a time (ISO 8601), or YYYYMMDD.
_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[T ][0-9:.+\-Z]*)?|(\d{4})(\d{2})(\d{2})")


# --------------------------------------------------------------------------------------------
# JSON


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: the one place that decides how damwatch writes JSON.

    NumPy scalars and arrays become numbers and lists, NaN and ±inf become ``None`` (JSON has
    no NaN, and an undefined metric is "no value"), tuples become lists, dict keys strings,
    paths and dates their text; anything else its ``str``.
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return str(value)


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    """Write ``jsonable(data)`` to ``path`` atomically (a temporary file renamed into place)."""
    path = Path(path)
    text = json.dumps(jsonable(data), indent=indent, allow_nan=False) + "\n"
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def file_sha256(path: str | os.PathLike, block: int = 2**22) -> str:
    """SHA-256 hex digest of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Directories


def move_into_place(staging: Path, final: Path, replace: bool = True) -> Literal["created", "replaced"]:
    """Rename the finished directory ``staging`` to ``final``, replacing whatever was there.

    The old ``final`` is renamed aside first and deleted last, so a reader sees the old output
    or the new one, never a half-written one, and a crash in between leaves the new one whole.
    ``staging`` must be on the same filesystem as ``final`` (a rename, not a copy).

    With ``replace=False`` an existing ``final`` is never replaced: the rename itself refuses
    (renaming a directory onto a non-empty one fails atomically), so of two processes creating
    the same ``final`` at once exactly one succeeds and the other gets :class:`FileExistsError`.
    """
    staging, final = Path(staging), Path(final)
    if not replace:
        try:
            os.rename(staging, final)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(errno.EEXIST, "exists already", str(final)) from None
            raise
        return "created"
    if not final.exists():
        os.replace(staging, final)
        return "created"
    trash = staging.parent / owned_name(final.name, "trash")
    os.replace(final, trash)
    os.replace(staging, final)
    shutil.rmtree(trash, ignore_errors=True)
    return "replaced"


@contextlib.contextmanager
def staged_directory(
    final: str | os.PathLike,
    staging_root: str | os.PathLike | None = None,
    replace: bool = True,
    expected_bytes: int | None = None,
) -> Iterator[Path]:
    """Yield a fresh empty directory that becomes ``final`` only if the block succeeds.

    The directory is created in ``staging_root`` (default: beside ``final``), which must be on
    ``final``'s filesystem, under a name that records its owner (:func:`owned_name`), so that
    what a killed process leaves is swept by the next run (:func:`sweep_owned`). When the block
    returns, :func:`move_into_place` puts it in place (``replace``: see there); when it raises,
    the directory is removed and ``final`` is left exactly as it was. Its mode follows the
    process umask, like any new directory.

    A full disk (``ENOSPC``, ``EDQUOT``) becomes :class:`pipeline.errors.DiskFull`, one
    paragraph naming the disk, what was being written, ``expected_bytes`` (how much the block
    needs at most, when the caller knows) and what is free once the staging is removed.
    """
    final = Path(final)
    parent = Path(staging_root) if staging_root is not None else final.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / owned_name(final.name, "partial")
    tmp.mkdir()
    try:
        yield tmp
        final.parent.mkdir(parents=True, exist_ok=True)
        move_into_place(tmp, final, replace=replace)
    except BaseException as exc:
        written = _tree_bytes(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            raise disk_full(exc, final, written, expected_bytes) from None
        raise


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a full disk or an exceeded quota (also when raised on a Dask worker)."""
    from pipeline.errors import DiskFull

    return isinstance(exc, DiskFull) or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def disk_full(exc: BaseException, final: Path, written: int = 0, expected_bytes: int | None = None) -> Exception:
    """The :class:`pipeline.errors.DiskFull` for ``exc`` raised while writing ``final``."""
    from pipeline.errors import DiskFull

    if isinstance(exc, DiskFull):
        return exc
    where = final.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    need = f"up to {_megabytes(expected_bytes)}" if expected_bytes else f"more than the {_megabytes(written)} written"
    store = next((p for p in [final, *final.parents] if (p / "store.zarr").exists() or (p / "runs").is_dir()), None)
    hint = (
        f"delete old run folders in {store / 'runs'} or surveys you no longer need "
        f"(`damwatch surveys --store {store}` lists them)"
        if store is not None
        else "delete files you no longer need on that disk"
    )
    return DiskFull(
        f"the disk holding {where} is full: writing {getattr(exc, 'filename', None) or final} failed "
        f"({getattr(exc, 'strerror', None) or exc}); {final.name} needs {need} and {_megabytes(free)} is free "
        f"now (nothing was kept of the partial write); {hint}, or point --store at a larger disk; "
        f"then run the command again",
    )


# --------------------------------------------------------------------------------------------
# Owners: what a process leaves behind is named after it, and swept once it is dead


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None if unknown.

    With the pid it identifies a process for good: a pid reused by a later process has
    another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after "(comm)"


def process_alive(pid: int, start: int | None = None) -> bool:
    """Whether process ``pid`` (started at ``start``, when given) is alive on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    if start is not None:
        now = process_start_time(pid)
        return now is None or now == start
    return True


_OWNED = re.compile(r"^\.(?P<name>.+)\.(?P<kind>[a-z]+)~(?P<host>[A-Za-z0-9-]+)~(?P<pid>\d+)~(?P<start>\d+|x)~[0-9a-f]{8}$")


def owned_name(name: str, kind: str) -> str:
    """A hidden name for temporary ``name`` of kind ``kind``, recording this process as its owner:
    ``.<name>.<kind>~<host>~<pid>~<start time>~<random>``."""
    start = process_start_time(os.getpid())
    return f".{name}.{kind}~{_host()}~{os.getpid()}~{'x' if start is None else start}~{uuid.uuid4().hex[:8]}"


def owner_of(path: Path) -> tuple[str, int, int | None] | None:
    """(host, pid, start time) recorded in an :func:`owned_name`, or None for other names."""
    m = _OWNED.match(Path(path).name)
    if m is None:
        return None
    return m["host"], int(m["pid"]), None if m["start"] == "x" else int(m["start"])


def owner_gone(host: str, pid: int, start: int | None) -> bool:
    """True only when the owner is known to be dead: on this host, and its process is gone.

    A process on another host cannot be checked from here, so what it owns is never swept.
    """
    return host == _host() and not process_alive(pid, start)


def sweep_owned(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary entries of ``directory`` (:func:`owned_name`) whose owner is gone.

    Never by age: a long ingest's staging stays as long as its process lives, and an entry of
    another host is left alone. Returns the paths removed.
    """
    directory = Path(directory)
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        owner = owner_of(entry)
        if owner is not None and owner_gone(*owner):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


# --------------------------------------------------------------------------------------------
# Identifiers


def check_area(area: Any) -> str:
    """``area`` if it is a usable area name (lower-case letters, digits, ``-``, ``_``), else InputError.

    The whole string must match: a trailing newline or space is refused, since the name becomes
    a directory name and part of every survey id.
    """
    if not isinstance(area, str) or not _AREA_RE.fullmatch(area):
        raise InputError(
            f"area name {area!r} is not usable: use lower-case letters, digits, '-' and '_' "
            f"(starting with a letter or digit, at most 63 characters), e.g. --area creek or "
            f"--area north_fork"
        )
    return area


def parse_date(value: Any, what: str = "date", example: str = "--date 2024-06-01") -> dt.date:
    """A calendar date from a date, ``YYYY-MM-DD``, or ``YYYYMMDD`` (how NAIP and most
    providers stamp file names). A datetime, or an ISO datetime text, gives its date.

    ``what`` names the input in the error ("date", "sidecar x.json's date", ...); ``example``
    shows a correct one.
    """
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    m = _DATE_RE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise InputError(f"{what} {value!r} is not of the form YYYY-MM-DD, e.g. {example}")
    year, month, day = (int(g) for g in (m.groups()[:3] if m[1] else m.groups()[3:]))
    try:
        return dt.date(year, month, day)
    except ValueError:
        raise InputError(f"{what} {value!r} is not a real calendar date; give YYYY-MM-DD, e.g. {example}") from None


def survey_id_for(area: str, date: Any) -> str:
    """A survey id is ``<area>-<YYYY-MM-DD>``."""
    return f"{check_area(area)}-{parse_date(date).isoformat()}"
