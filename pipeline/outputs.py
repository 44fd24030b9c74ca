"""Output folders: the files of one result, written whole or not at all, with their provenance.

An *output folder* is what a detection or a change leaves for a scientist: maps (COG),
GeoJSON, a quicklook, figures (``metrics.json``) and ``provenance.json``. It is written the
same way for every kind of result (:func:`output_folder`):

- a folder that already holds results is refused before any work unless the caller allows
  replacing it (:func:`refuse_existing_results`; commands call it up front, so a refused run
  costs nothing);
- the files are written into a hidden staging folder beside it, which replaces the old folder
  only once every file is complete (:func:`pipeline.files.staged_directory`), so a crash
  leaves the old results or the new ones, never a mixture;
- ``provenance.json`` is written last and lists every other file with its sha256.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.files import file_sha256, staged_directory, write_json

__all__ = ["PROVENANCE_FILE", "OutputFolder", "output_folder", "refuse_existing_results"]

PROVENANCE_FILE = "provenance.json"


def refuse_existing_results(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raise :class:`InputError` if ``out_dir`` is a file, or holds anything and not ``overwrite``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output {out_dir} is a file, not a directory; give another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        held = ", ".join(sorted(p.name for p in out_dir.iterdir())[:5])
        raise InputError(
            f"output directory {out_dir} already holds results ({held}); pass --overwrite to "
            f"replace them, or give another --out"
        )
    return out_dir


class OutputFolder:
    """The files of one result being written: ``files`` maps a name (``"probability"``) to a
    file name (``"probability.tif"``); :meth:`path` gives where to write it now."""

    def __init__(self, staging: Path, final: Path, files: Mapping[str, str]) -> None:
        self.staging = staging
        self.final = final
        self.files = dict(files)

    def path(self, name: str) -> Path:
        """Where to write the file called ``name`` (in the staging folder until the end)."""
        return self.staging / self.files[name]

    def write_json(self, name: str, data: Any) -> Path:
        return write_json(self.path(name), data)

    def written(self) -> dict[str, Path]:
        """The files written, by name, at their final paths (during the block: so far)."""
        where = self.staging if self.staging.exists() else self.final
        return {n: self.final / f for n, f in self.files.items() if (where / f).exists()}

    def manifest(self) -> dict[str, dict[str, str]]:
        """Every file written so far, by name, with its sha256 (for the provenance)."""
        return {
            n: {"file": f, "sha256": file_sha256(self.staging / f)}
            for n, f in sorted(self.files.items())
            if (self.staging / f).exists() and f != PROVENANCE_FILE
        }


@contextlib.contextmanager
def output_folder(
    out_dir: str | os.PathLike,
    files: Mapping[str, str],
    provenance: dict[str, Any],
    overwrite: bool = False,
) -> Iterator[OutputFolder]:
    """Write the files of one result into ``out_dir``, all or nothing (see the module docstring).

    The block writes the files named in ``files`` at ``folder.path(name)`` and may add to the
    ``provenance`` dict; at its end ``provenance["outputs"]`` lists the files with their
    hashes, ``provenance.json`` is written, and the folder is moved into place. On error,
    ``out_dir`` is left as it was.
    """
    final = refuse_existing_results(out_dir, overwrite)
    with staged_directory(final) as staging:
        folder = OutputFolder(staging, final, {**files, "provenance": PROVENANCE_FILE})
        yield folder
        provenance["outputs"] = folder.manifest()
        folder.write_json("provenance", provenance)
