"""The survey store: where damwatch keeps surveys and everything derived from them.

A *store* is a directory (default ``./damwatch-data``) holding one Zarr v3 hierarchy,
``store.zarr``, plus ``models/`` and ``runs/``::

    store.zarr/surveys/<survey_id>/        one ingested survey (see below)
    store.zarr/features/<survey_id>/...    derived data, one *group* per artefact
    store.zarr/labels/<survey_id>/...
    store.zarr/predictions/<model_id>/...
    models/<model_id>.npz + .json          trained models
    runs/<run_id>/                         maps, GeoJSON, report and provenance of one run
    .staging/                              groups being written (same filesystem)

A *survey* is one georeferenced raster of one area on one date (:mod:`pipeline.ingest` makes
it from a GeoTIFF), the group ``surveys/<area>-<date>``::

    image        (band, y, x)  the pixels, source dtype, zstd, chunks (all bands, E, E)
    band         (band,) str   band names, a coordinate (surveys ingested before 2026-12 lack it)
    valid        (y, x) bool   false where any band is nodata (or NaN, ±inf)
    y, x         (y,), (x,)    pixel-centre coordinates in the survey's CRS
    spatial_ref  ()            CF grid mapping: ``crs_wkt``, ``spatial_ref``, ``GeoTransform``

Its attributes carry the area, date, band names, nodata, source file name and sha256, ingest
time and damwatch version, plus GeoZarr ``proj:``/``spatial:`` attributes, so
``xarray.open_zarr(group, decode_coords="all")`` with rioxarray recovers the CRS and the affine
transform (DESIGN decision 3).

Every group is written the same way (:meth:`Store.new_group`): into ``.staging``, with the
attribute ``complete`` set last, then renamed into place. A reader opens only complete groups
(:meth:`Store.open_complete`), so an interrupted write never looks like data. A staging
directory's name records the process that owns it; :meth:`Store.sweep` (at the start of every
flow run) removes those whose process is dead on this host, never by age.

A store that cannot be written (a read-only mount, a directory of another user) is refused by
:meth:`Store.check_writable` before any work, with one paragraph saying so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import array_bounds

from pipeline.errors import InputError, StoreError, command
from pipeline.files import owned_name, staged_directory, sweep_owned

if TYPE_CHECKING:  # pragma: no cover
    import dask.array
    import zarr

__all__ = ["STORE_ENV", "Store", "Survey", "default_store_path", "settle_pending_writes"]

STORE_ENV = "DAMWATCH_STORE"
# zarr (~0.3 s) and dask.array (~0.9 s) are imported inside the methods that need them:
# `damwatch surveys` and every refusal of bad input must answer without paying for them.


def default_store_path() -> Path:
    """``$DAMWATCH_STORE`` if set, else ``./damwatch-data``."""
    return Path(os.environ.get(STORE_ENV) or "damwatch-data")


@dataclass(frozen=True)
class Survey:
    """One ingested survey: its metadata, and lazy access to its arrays.

    ``res`` is the pixel size (x, y) in CRS units, both positive; ``bounds`` is
    (left, bottom, right, top) in the survey's CRS.
    """

    id: str
    area: str
    date: dt.date
    height: int
    width: int
    bands: tuple[str, ...]
    dtype: np.dtype
    nodata: float | None
    crs_wkt: str
    transform_gdal: tuple[float, ...]  # (x0, xres, row_rot, y0, col_rot, yres) as GDAL writes it
    source_name: str
    source_sha256: str
    chunk_edge: int
    zarr_path: Path
    ingested_at: str
    band_statistics: dict | None = None  # mean, std, covariance of the bands (pipeline.bands), from ingest

    @property
    def group_path(self) -> str:
        return f"surveys/{self.id}"

    @cached_property
    def crs(self) -> CRS:
        return CRS.from_wkt(self.crs_wkt)

    @cached_property
    def transform(self) -> Affine:
        return Affine.from_gdal(*self.transform_gdal)

    @property
    def res(self) -> tuple[float, float]:
        t = self.transform
        return (math.hypot(t.a, t.d), math.hypot(t.b, t.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        west, south, east, north = array_bounds(self.height, self.width, self.transform)
        return (west, south, east, north)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    def band_index(self, name: str) -> int:
        try:
            return self.bands.index(name)
        except ValueError:
            raise InputError(
                f"survey {self.id} has no band named {name!r} (its bands are "
                f"{', '.join(self.bands)}); re-ingest it with --bands to name its bands, e.g. "
                f"--bands red,green,blue,nir"
            ) from None

    def _group(self) -> "zarr.Group":
        import zarr

        return zarr.open_group(self.zarr_path, path=self.group_path, mode="r")

    def image(self) -> "zarr.Array":
        """The pixels, (band, y, x), in the source's dtype."""
        return self._group()["image"]

    def valid(self) -> "zarr.Array":
        """(y, x) bool: false where any band is nodata."""
        return self._group()["valid"]

    def image_dask(self) -> "dask.array.Array":
        import dask.array as da

        return da.from_zarr(self.image())

    def valid_dask(self) -> "dask.array.Array":
        import dask.array as da

        return da.from_zarr(self.valid())

    def summary(self) -> dict:
        """The facts ``damwatch surveys`` prints, as plain JSON-able values."""
        epsg = self.crs.to_epsg()
        return {
            "id": self.id,
            "area": self.area,
            "date": self.date.isoformat(),
            "width": self.width,
            "height": self.height,
            "bands": list(self.bands),
            "dtype": str(self.dtype),
            "crs": f"EPSG:{epsg}" if epsg else self.crs.to_string(),
            "pixel_size": list(self.res),
            "units": self.crs.linear_units if self.crs.is_projected else "degrees",
            "source": self.source_name,
            "sha256": self.source_sha256,
        }


class Store:
    """A damwatch store rooted at a directory (created on first write)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_store_path()
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(
                f"store path {self.root} is a regular file, not a directory; give --store a "
                f"directory (it is created if missing), e.g. --store ./damwatch-data"
            )

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    @property
    def zarr_path(self) -> Path:
        return self.root / "store.zarr"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def staging_dir(self) -> Path:
        """Where stages write before renaming into place; same filesystem as the store."""
        return self.root / ".staging"

    def check_writable(self) -> None:
        """Raise :class:`StoreError` unless this process can create files in the store.

        Creates the store directory if missing, then a probe file in it (removed at once).
        """
        probe = self.root / owned_name("write-probe", "probe")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            why = "it is on a read-only filesystem" if exc.errno == errno.EROFS else "permission denied"
            raise StoreError(
                f"store {self.root} cannot be written ({why}: {exc.filename or self.root}); every "
                f"command writes a run record there, so give --store a directory you can write "
                f"(or set DAMWATCH_STORE), or make this one writable (e.g. chmod u+w {self.root})"
            ) from None

    def sweep(self) -> list[Path]:
        """Remove the staging left by processes that died on this host (see the module docstring)."""
        return sweep_owned(self.staging_dir)

    def ensure(self) -> None:
        """Create the store's directories and root groups if missing."""
        import zarr

        self.root.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(self.zarr_path, mode="a", zarr_format=3)
        for name in ("surveys", "features", "labels", "predictions"):
            if name not in root:
                root.create_group(name)
        for path in (self.models_dir, self.runs_dir, self.staging_dir):
            path.mkdir(exist_ok=True)

    # ----------------------------------------------------------------------------------------
    # Groups: the one way to read and to write an artefact

    def open_group(self, path: str = "", mode: str = "r") -> "zarr.Group":
        """A group inside ``store.zarr``, e.g. ``store.open_group("features/creek-2024-06-01")``."""
        import zarr

        if mode != "r":
            self.ensure()
        elif not self.zarr_path.exists():
            raise StoreError(
                f"store {self.root} holds no data yet; ingest a survey into it first "
                f"({command('ingest', '--help')} shows how), or pass --store to point at the "
                f"right store"
            )
        return zarr.open_group(self.zarr_path, path=path, mode=mode, zarr_format=3)

    def is_complete(self, path: str) -> bool:
        """Whether ``store.zarr/<path>`` is a group whose writing finished."""
        return _is_complete(self.zarr_path / path)

    def complete_groups(self, prefix: str, pattern: str) -> list[str]:
        """Paths (relative to ``prefix``) of the complete groups under ``prefix`` matching ``pattern``.

        For the "available: ..." part of an error saying what the store holds instead.
        """
        base = self.zarr_path / prefix
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(base)) for p in base.glob(pattern) if _is_complete(p))

    def open_complete(self, path: str, missing: str) -> "zarr.Group":
        """The complete group at ``path``, or :class:`StoreError` with the message ``missing``.

        ``missing`` says what is absent and the command that makes it.
        """
        if not self.is_complete(path):
            raise StoreError(missing)
        return self.open_group(path)

    @contextlib.contextmanager
    def new_group(
        self,
        path: str,
        attributes: dict | None = None,
        consolidate: bool = False,
        replace: bool = True,
        expected_bytes: int | None = None,
    ) -> Iterator["zarr.Group"]:
        """Write a new group that appears at ``path`` only once the block succeeds.

        Yields an empty group in ``.staging``; create the arrays in it and fill them (Dask
        workers may write into them: it is a directory of the same filesystem). When the block
        returns, ``attributes`` are set with ``complete: True`` last, the metadata is
        consolidated if asked (one read opens the group), and the group is renamed over
        whatever was at ``path`` — or, with ``replace=False``, put there only if nothing is
        (:class:`FileExistsError` otherwise, atomically: see
        :func:`pipeline.files.move_into_place`). When it raises, nothing at ``path`` changes and
        the staged group is removed; a full disk is :class:`pipeline.errors.DiskFull`
        (``expected_bytes``: at most how much the group takes, for its message).
        """
        import zarr

        self.ensure()
        final = self.zarr_path / path
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent:
            self.open_group(mode="a").require_group(parent)  # v3 needs every ancestor's zarr.json
        with staged_directory(final, self.staging_dir, replace=replace, expected_bytes=expected_bytes) as tmp:
            group = zarr.open_group(tmp, mode="w", zarr_format=3, attributes={"complete": False})
            yield group
            group.attrs.update({**(attributes or {}), "complete": True})  # completion last
            if consolidate:
                with warnings.catch_warnings():  # "consolidated metadata is not in the v3 spec": known
                    warnings.simplefilter("ignore", category=UserWarning)
                    zarr.consolidate_metadata(tmp)

    # ----------------------------------------------------------------------------------------
    # Surveys

    def survey_dir(self, survey_id: str) -> Path:
        return self.zarr_path / "surveys" / survey_id

    def survey_ids(self) -> list[str]:
        """Ids of the complete surveys, sorted."""
        base = self.zarr_path / "surveys"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if _is_complete(p))

    def survey(self, survey_id: str) -> Survey:
        path = self.survey_dir(survey_id)
        if not _is_complete(path):
            known = self.survey_ids()
            hint = f"known surveys: {', '.join(known)}" if known else "the store holds no surveys yet"
            raise StoreError(
                f"survey {survey_id!r} is not in store {self.root} ({hint}); ingest it first "
                f"({command('ingest', '--help')} shows how), or pass --store to point at the "
                f"right store"
            )
        return _survey_from_attrs(survey_id, _attributes(path), self.zarr_path)

    def surveys(self, area: str | None = None) -> list[Survey]:
        """Complete surveys, optionally of one area, sorted by (area, date)."""
        found = [self.survey(i) for i in self.survey_ids()]
        if area is not None:
            found = [s for s in found if s.area == area]
        return sorted(found, key=lambda s: (s.area, s.date))


def _attributes(group_dir: Path) -> dict:
    """A group's attributes read from its ``zarr.json`` (no zarr import), or {} if unreadable."""
    try:
        meta = json.loads((group_dir / "zarr.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta.get("attributes", {}) if isinstance(meta, dict) else {}


def _is_complete(group_dir: Path) -> bool:
    return bool(_attributes(group_dir).get("complete"))


def _survey_from_attrs(survey_id: str, attrs: dict, zarr_path: Path) -> Survey:
    return Survey(
        id=survey_id,
        area=attrs["area"],
        date=dt.date.fromisoformat(attrs["date"]),
        height=int(attrs["spatial:shape"][0]),
        width=int(attrs["spatial:shape"][1]),
        bands=tuple(attrs["band_names"]),
        dtype=np.dtype(attrs["dtype"]),
        nodata=attrs["nodata"],
        crs_wkt=attrs["proj:wkt2"],
        transform_gdal=tuple(attrs["GeoTransform"]),
        source_name=attrs["source_name"],
        source_sha256=attrs["source_sha256"],
        chunk_edge=int(attrs["chunk_edge"]),
        zarr_path=zarr_path,
        ingested_at=attrs["ingested_at"],
        band_statistics=attrs.get("band_statistics"),
    )


def settle_pending_writes(timeout: float = 10.0) -> None:
    """Wait for the chunk writes zarr still has in flight in this process.

    zarr writes a selection's chunks concurrently on its own event loop and raises at the first
    failure, leaving the other writes running. After a full disk they would land in the staging
    directory once the driver has removed it, recreating it as debris; so the task returns only
    once they have ended (they fail fast on a full disk).
    """
    import asyncio

    from zarr.core.sync import _get_loop  # zarr's I/O loop: no public way to wait for it

    async def pending() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    try:
        asyncio.run_coroutine_threadsafe(pending(), _get_loop()).result(timeout + 1)
    except Exception:  # noqa: BLE001 - best effort: the next run sweeps what is left
        pass
