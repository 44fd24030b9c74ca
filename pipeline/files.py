"""Files and identifiers: how damwatch writes safely, and how it names what it stores.

A write is *atomic* when a reader, or the next run after a crash, sees either the old content
or the new, never half of it. On one filesystem a rename is atomic, so every write here goes
to a temporary name beside its destination and is renamed into place once complete:

- :func:`write_json` for one JSON file (NumPy values, NaN and paths made JSON-able by
  :func:`jsonable`, the one cleaner);
- :func:`staged_directory` for a directory of outputs (a survey group, a run's maps): the
  block writes into a fresh directory, which :func:`move_into_place` renames over the
  destination at the end, or which is removed if the block fails.

Identifiers are plain strings a person can read and type: an *area* is a lower-case name
(:func:`check_area`), a survey *date* is a calendar date (:func:`parse_date`), and a survey id
is ``<area>-<YYYY-MM-DD>`` (:func:`survey_id_for`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import re
import shutil
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


def move_into_place(staging: Path, final: Path) -> Literal["created", "replaced"]:
    """Rename the finished directory ``staging`` to ``final``, replacing whatever was there.

    The old ``final`` is renamed aside first and deleted last, so a reader sees the old output
    or the new one, never a half-written one, and a crash in between leaves the new one whole.
    ``staging`` must be on the same filesystem as ``final`` (a rename, not a copy).
    """
    staging, final = Path(staging), Path(final)
    if not final.exists():
        os.replace(staging, final)
        return "created"
    trash = final.with_name(f".trash-{final.name}-{uuid.uuid4().hex[:8]}")
    os.replace(final, trash)
    os.replace(staging, final)
    shutil.rmtree(trash, ignore_errors=True)
    return "replaced"


@contextlib.contextmanager
def staged_directory(final: str | os.PathLike, staging_root: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a fresh empty directory that becomes ``final`` only if the block succeeds.

    The directory is created in ``staging_root`` (default: beside ``final``), which must be on
    ``final``'s filesystem. When the block returns, :func:`move_into_place` puts it in place
    (replacing an existing ``final``); when it raises, the directory is removed and ``final``
    is left exactly as it was. Its mode follows the process umask, like any new directory.
    """
    final = Path(final)
    parent = Path(staging_root) if staging_root is not None else final.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        final.parent.mkdir(parents=True, exist_ok=True)
        move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
