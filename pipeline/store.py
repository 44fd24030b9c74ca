"""The survey store: aerial surveys held as georeferenced Zarr.

A *store* is a directory (default ``./damwatch-data``) holding one Zarr v3 hierarchy,
``store.zarr``, plus ``models/`` and ``runs/``. A *survey* is one georeferenced raster of one
area on one date, ingested from a GeoTIFF into the group ``store.zarr/surveys/<area>-<date>``:

    image        (band, y, x)  the pixels, source dtype, zstd, chunks (all bands, E, E)
    valid        (y, x) bool   false where any band is nodata (or NaN)
    y, x         (y,), (x,)    pixel-centre coordinates in the survey's CRS
    spatial_ref  ()            CF grid mapping: ``crs_wkt``, ``spatial_ref``, ``GeoTransform``

The group's attributes carry the area, date, band names, nodata, source file name and
sha256, ingest time and damwatch version, plus GeoZarr ``proj:``/``spatial:`` attributes, so
``xarray.open_zarr(group, decode_coords="all")`` with rioxarray recovers the CRS and the
affine transform (DESIGN decision 3).

Ingest reads the GeoTIFF by windows aligned with its internal blocks, in parallel Dask tasks
that each read a strip of chunks and write them straight into Zarr: no pixel travels between
workers and no task holds more than one strip (DESIGN decision 11). It writes into a staging
group outside the hierarchy and renames it into place at the end, so an interrupted ingest
never leaves a survey that looks complete.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import re
import shutil
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from pipeline import __version__
from pipeline.errors import InputError, StoreError

if TYPE_CHECKING:  # pragma: no cover
    import affine
    import dask.array
    import distributed
    import rasterio.crs
    import zarr

__all__ = [
    "STORE_ENV",
    "DEFAULT_CHUNK_EDGE",
    "TILE_EDGE",
    "Store",
    "Survey",
    "IngestResult",
    "default_store_path",
    "ingest",
    "survey_id_for",
    "parse_date",
    "check_area",
    "file_sha256",
    "move_into_place",
    "check_input",
]

STORE_ENV = "DAMWATCH_STORE"
TILE_EDGE = 128  # default tile edge in pixels; Zarr chunk edges are multiples of it
DEFAULT_CHUNK_EDGE = 1024  # 8 x 8 default tiles per chunk; a multiple of 256- and 512-pixel blocks
TASK_BYTES = 32 * 2**20  # raw bytes one ingest task reads and writes (~0.1-0.3 s of work)
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
_AREA_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def default_store_path() -> Path:
    """``$DAMWATCH_STORE`` if set, else ``./damwatch-data``."""
    return Path(os.environ.get(STORE_ENV) or "damwatch-data")


def check_area(area: str) -> str:
    if not isinstance(area, str) or not _AREA_RE.match(area):
        raise InputError(
            f"area name {area!r} is not usable: use lower-case letters, digits, '-' and '_' "
            f"(starting with a letter or digit, at most 63 characters), e.g. --area creek or "
            f"--area north_fork"
        )
    return area


def parse_date(date: str | dt.date) -> dt.date:
    """A survey date from ``YYYY-MM-DD`` (the only accepted form: no times, no other orders)."""
    if isinstance(date, dt.date):
        return date
    if not isinstance(date, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise InputError(f"date {date!r} is not of the form YYYY-MM-DD, e.g. --date 2024-06-01")
    try:
        return dt.date.fromisoformat(date)
    except ValueError:
        raise InputError(f"date {date!r} is not a real calendar date; give YYYY-MM-DD") from None


def survey_id_for(area: str, date: str | dt.date) -> str:
    """A survey id is ``<area>-<YYYY-MM-DD>``."""
    return f"{check_area(area)}-{parse_date(date).isoformat()}"


def move_into_place(staging: Path, final: Path) -> Literal["created", "replaced"]:
    """Rename the finished directory ``staging`` to ``final``, replacing whatever was there.

    Every stage writes its output complete under a temporary name on the same filesystem and
    only then calls this: a reader sees the old output or the new one, never a half-written
    one. The old output is renamed aside first and deleted last.
    """
    if not final.exists():
        os.replace(staging, final)
        return "created"
    trash = final.with_name(f".trash-{final.name}-{uuid.uuid4().hex[:8]}")
    os.replace(final, trash)
    os.replace(staging, final)
    shutil.rmtree(trash, ignore_errors=True)
    return "replaced"


def file_sha256(path: str | os.PathLike, block: int = 2**22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


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

    @property
    def group_path(self) -> str:
        return f"surveys/{self.id}"

    @cached_property
    def crs(self) -> "rasterio.crs.CRS":
        from rasterio.crs import CRS

        return CRS.from_wkt(self.crs_wkt)

    @cached_property
    def transform(self) -> "affine.Affine":
        from affine import Affine

        return Affine.from_gdal(*self.transform_gdal)

    @property
    def res(self) -> tuple[float, float]:
        t = self.transform
        return (math.hypot(t.a, t.d), math.hypot(t.b, t.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        from rasterio.transform import array_bounds

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


@dataclass(frozen=True)
class IngestResult:
    survey: Survey
    status: Literal["ingested", "unchanged", "replaced"]


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

    def open_group(self, path: str = "", mode: str = "r") -> "zarr.Group":
        """A group inside ``store.zarr``, e.g. ``store.open_group("features/creek-2024-06-01")``."""
        import zarr

        if mode != "r":
            self.ensure()
        elif not self.zarr_path.exists():
            raise StoreError(
                f"store {self.root} holds no data yet; ingest a survey first with "
                f"`damwatch ingest FILE --area AREA --date YYYY-MM-DD --store {self.root}`"
            )
        return zarr.open_group(self.zarr_path, path=path, mode=mode, zarr_format=3)

    def survey_dir(self, survey_id: str) -> Path:
        return self.zarr_path / "surveys" / survey_id

    def survey_ids(self) -> list[str]:
        """Ids of the complete surveys, sorted."""
        base = self.zarr_path / "surveys"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if (p / "zarr.json").is_file() and _is_complete(p))

    def survey(self, survey_id: str) -> Survey:
        path = self.survey_dir(survey_id)
        if not (path / "zarr.json").is_file() or not _is_complete(path):
            known = self.survey_ids()
            hint = f"known surveys: {', '.join(known)}" if known else "the store holds no surveys yet"
            raise StoreError(
                f"survey {survey_id!r} is not in store {self.root} ({hint}); ingest it with "
                f"`damwatch ingest FILE --area AREA --date YYYY-MM-DD`, or pass --store to "
                f"point at the right store"
            )
        import zarr

        attrs = zarr.open_group(self.zarr_path, path=f"surveys/{survey_id}", mode="r").attrs.asdict()
        return _survey_from_attrs(survey_id, attrs, self.zarr_path)

    def surveys(self, area: str | None = None) -> list[Survey]:
        """Complete surveys, optionally of one area, sorted by (area, date)."""
        found = [self.survey(i) for i in self.survey_ids()]
        if area is not None:
            found = [s for s in found if s.area == area]
        return sorted(found, key=lambda s: (s.area, s.date))


def _is_complete(group_dir: Path) -> bool:
    import json

    try:
        meta = json.loads((group_dir / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(meta.get("attributes", {}).get("complete"))


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
    )


# --------------------------------------------------------------------------------------------
# Ingest
# --------------------------------------------------------------------------------------------

_COLOR_NAMES = {"red": "red", "green": "green", "blue": "blue", "alpha": "alpha", "gray": "gray"}


@dataclass(frozen=True)
class _Source:
    """What ingest needs to know about a GeoTIFF, read once on the driver."""

    path: str
    height: int
    width: int
    count: int
    dtype: str
    nodata: float | None
    crs_wkt: str
    epsg: int | None
    projected: bool
    linear_units: str
    transform_gdal: tuple[float, ...]
    band_names: tuple[str, ...]
    block_shape: tuple[int, int]


def _band_names(ds, override: Sequence[str] | None) -> tuple[str, ...]:
    """Band names: ``override`` if given; else the file's band descriptions; else its colour
    interpretation when every band has a distinct meaningful one; else band1..bandN.

    No guessing beyond that: a 4-band file whose fourth band is "undefined" is *not* assumed to
    be near-infrared; name it with ``--bands red,green,blue,nir``.
    """
    if override:
        names = tuple(n.strip() for n in override)
        if len(names) != ds.count or any(not n for n in names) or len(set(names)) != len(names):
            raise InputError(
                f"--bands gives {len(names)} name(s) ({', '.join(names)}) but {ds.name} has "
                f"{ds.count} band(s); give one distinct name per band in file order, e.g. "
                f"--bands red,green,blue,nir"
            )
        return names
    descriptions = tuple((d or "").strip().lower() for d in ds.descriptions)
    if all(descriptions) and len(set(descriptions)) == ds.count:
        return descriptions
    colors = tuple(_COLOR_NAMES.get(ci.name, "") for ci in ds.colorinterp)
    if all(colors) and len(set(colors)) == ds.count and colors != ("gray",):
        return colors
    return tuple(f"band{i + 1}" for i in range(ds.count))


def _inspect(path: Path, bands: Sequence[str] | None) -> _Source:
    import rasterio
    from rasterio.errors import RasterioIOError

    if not path.exists():
        raise InputError(f"input {path} does not exist; check the path (a GeoTIFF is expected)")
    if path.is_dir():
        raise InputError(f"input {path} is a directory; give the path of one GeoTIFF file")
    try:
        with rasterio.open(path) as ds:
            crs, transform = ds.crs, ds.transform
            if crs is None:
                raise InputError(
                    f"input {path} has no coordinate reference system, so its pixels cannot be "
                    f"placed on a map; assign one first, e.g. `gdal_edit.py -a_srs EPSG:32614 "
                    f"{path.name}` with the CRS the provider states"
                )
            if transform.is_identity or transform.a == 0 or transform.e == 0:
                raise InputError(
                    f"input {path} has no georeferencing transform (pixel size and origin); "
                    f"georeference it first (e.g. with gdal_translate -a_ullr or from its GCPs "
                    f"with gdalwarp)"
                )
            if ds.dtypes[0] not in SUPPORTED_DTYPES or len(set(ds.dtypes)) != 1:
                raise InputError(
                    f"input {path} has band type(s) {', '.join(sorted(set(ds.dtypes)))}; damwatch "
                    f"ingests one of {', '.join(SUPPORTED_DTYPES)} for all bands; convert it with "
                    f"gdal_translate -ot UInt16 (or Float32)"
                )
            return _Source(
                path=str(path.resolve()),
                height=ds.height,
                width=ds.width,
                count=ds.count,
                dtype=ds.dtypes[0],
                nodata=None if ds.nodata is None else float(ds.nodata),
                crs_wkt=crs.to_wkt(version="WKT2_2019"),
                epsg=crs.to_epsg(),
                projected=bool(crs.is_projected),
                linear_units=crs.linear_units if crs.is_projected else "degree",
                transform_gdal=tuple(transform.to_gdal()),
                band_names=_band_names(ds, bands),
                block_shape=tuple(ds.block_shapes[0]),
            )
    except RasterioIOError as exc:
        raise InputError(
            f"input {path} is not a raster that GDAL can read ({exc}); give a GeoTIFF, or check "
            f"that the file was copied completely"
        ) from None


def check_input(path: str | os.PathLike, bands: Sequence[str] | None = None) -> None:
    """Raise :class:`InputError` if ``path`` cannot be ingested (reads the header only)."""
    _inspect(Path(path), bands)


def _chunk_edge(source: _Source, requested: int) -> int:
    """The Zarr chunk edge: a multiple of the tile edge, never larger than the raster needs."""
    if requested % TILE_EDGE:
        raise InputError(f"chunk edge {requested} is not a multiple of the tile edge {TILE_EDGE}")
    needed = TILE_EDGE * math.ceil(max(source.height, source.width) / TILE_EDGE)
    return min(requested, needed)


def _strips(height: int, width: int, edge: int, count: int, itemsize: int) -> list[tuple[int, int, int, int]]:
    """Split the raster into task windows (row0, row1, col0, col1): whole chunks, up to
    TASK_BYTES each, along chunk rows (matching the file's row-major block order)."""
    chunk_bytes = edge * edge * count * itemsize
    per_task = max(1, TASK_BYTES // chunk_bytes)
    n_cols = math.ceil(width / edge)
    strips = []
    for r0 in range(0, height, edge):
        r1 = min(r0 + edge, height)
        for c in range(0, n_cols, per_task):
            c0, c1 = c * edge, min((c + per_task) * edge, width)
            strips.append((r0, r1, c0, c1))
    return strips


def _valid_mask(pixels: np.ndarray, nodata: float | None) -> np.ndarray:
    """(y, x) bool: false where any band equals nodata or is NaN."""
    valid = np.ones(pixels.shape[1:], dtype=bool)
    if nodata is not None:
        if np.isnan(nodata):
            valid &= ~np.isnan(pixels).any(axis=0)
        else:
            valid &= ~(pixels == pixels.dtype.type(nodata)).any(axis=0)
    if pixels.dtype.kind == "f":
        valid &= ~np.isnan(pixels).any(axis=0)
    return valid


def _copy_strip(source_path: str, group_path: str, nodata: float | None, strip: tuple[int, int, int, int]) -> int | str:
    """Read one window of the GeoTIFF and write it into the staging group.

    Returns the number of valid pixels, or, when the file cannot be read there, a sentence
    saying where and why: a corrupt file is an expected outcome, not a task failure, so it is
    reported to the driver (which raises it as a user error) rather than logged as a crash by
    the worker. Runs on a worker: opens the file and the Zarr arrays by path.
    """
    import rasterio
    import zarr
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    r0, r1, c0, c1 = strip
    try:
        with rasterio.open(source_path) as ds:
            pixels = ds.read(window=Window(c0, r0, c1 - c0, r1 - r0))  # (band, h, w)
    except RasterioError as exc:
        return f"rows {r0}-{r1}, columns {c0}-{c1}: {exc}"
    valid = _valid_mask(pixels, nodata)
    group = zarr.open_group(group_path, mode="r+")
    group["image"][:, r0:r1, c0:c1] = pixels
    group["valid"][r0:r1, c0:c1] = valid
    return int(valid.sum())


def _create_arrays(group_path: Path, source: _Source, edge: int, attrs: dict) -> None:
    import zarr
    from zarr.codecs import ZstdCodec

    group = zarr.open_group(group_path, mode="w", zarr_format=3, attributes={**attrs, "complete": False})
    compressor = ZstdCodec(level=3)
    fill = source.nodata if source.nodata is not None else 0
    image_attrs = {
        "grid_mapping": "spatial_ref",
        "long_name": list(source.band_names),
        "band_names": list(source.band_names),
    }
    if source.nodata is not None:
        image_attrs["nodata"] = source.nodata
    group.create_array(
        "image",
        shape=(source.count, source.height, source.width),
        chunks=(source.count, edge, edge),
        dtype=source.dtype,
        fill_value=fill,
        compressors=compressor,
        dimension_names=["band", "y", "x"],
        attributes=image_attrs,
    )
    group.create_array(
        "valid",
        shape=(source.height, source.width),
        chunks=(edge, edge),
        dtype="bool",
        fill_value=False,
        compressors=compressor,
        dimension_names=["y", "x"],
        attributes={"grid_mapping": "spatial_ref", "long_name": "valid (no band is nodata)"},
    )
    from affine import Affine

    t = Affine.from_gdal(*source.transform_gdal)
    projected = source.projected
    for name, n, coords in (
        ("y", source.height, t.f + t.e * (np.arange(source.height) + 0.5)),
        ("x", source.width, t.c + t.a * (np.arange(source.width) + 0.5)),
    ):
        arr = group.create_array(
            name,
            shape=(n,),
            chunks=(n,),
            dtype="float64",
            compressors=compressor,
            dimension_names=[name],
            attributes={
                "standard_name": f"projection_{name}_coordinate" if projected else ("latitude" if name == "y" else "longitude"),
                "units": source.linear_units if projected else ("degrees_north" if name == "y" else "degrees_east"),
                "axis": name.upper(),
            },
        )
        arr[:] = coords
    ref = group.create_array(
        "spatial_ref",
        shape=(),
        dtype="int64",
        fill_value=0,
        dimension_names=[],
        attributes={
            "crs_wkt": source.crs_wkt,
            "spatial_ref": source.crs_wkt,
            "GeoTransform": " ".join(repr(v) for v in source.transform_gdal),
        },
    )
    ref[()] = 0


def ingest(
    path: str | os.PathLike,
    area: str,
    date: str | dt.date,
    store: Store,
    *,
    bands: Sequence[str] | None = None,
    overwrite: bool = False,
    client: "distributed.Client | None" = None,
    chunk_edge: int = DEFAULT_CHUNK_EDGE,
    sha256: str | None = None,
) -> IngestResult:
    """Ingest the GeoTIFF at ``path`` as survey ``<area>-<date>`` of ``store``.

    With a Dask ``client`` the copy runs as parallel tasks on its workers (they must see the
    same filesystem); without one it runs in this process, strip by strip. Ingesting the same
    file again is a no-op (status ``"unchanged"``); a different file under an existing survey
    id is refused unless ``overwrite`` (status ``"replaced"``). ``sha256``: the file's content
    hash, when the caller has already computed it (it is not checked again).
    """
    path = Path(path)
    survey_id = survey_id_for(area, date)
    date = parse_date(date)
    source = _inspect(path, bands)
    edge = _chunk_edge(source, chunk_edge)
    # The content hash takes ~1 s per GiB. It decides whether an existing survey is the same
    # file, so there it comes first; for a new survey it is computed while the workers copy.
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
    sha_future = hasher.submit(lambda: sha256 or file_sha256(path))
    hasher.shutdown(wait=False)
    existing = store.survey(survey_id) if survey_id in store.survey_ids() else None
    if existing is not None:
        sha = sha_future.result()
        if existing.source_sha256 == sha and (bands is None or tuple(bands) == existing.bands):
            return IngestResult(existing, "unchanged")
        if not overwrite:
            raise StoreError(
                f"survey {survey_id} already exists in {store.root}, ingested from "
                f"{existing.source_name} (sha256 {existing.source_sha256[:12]}…), and {path.name} "
                f"(sha256 {sha[:12]}…) differs; pass --overwrite to replace it, or ingest under "
                f"another --area or --date"
            )

    attrs = {
        "area": area,
        "date": date.isoformat(),
        "band_names": list(source.band_names),
        "dtype": source.dtype,
        "nodata": source.nodata,
        "source_name": path.name,
        "source_sha256": None,  # set once the hash is known, before completion
        "ingested_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "damwatch_version": __version__,
        "chunk_edge": edge,
        # CF / GDAL style
        "grid_mapping": "spatial_ref",
        "GeoTransform": list(source.transform_gdal),
        # GeoZarr conventions
        "proj:code": f"EPSG:{source.epsg}" if source.epsg else None,
        "proj:wkt2": source.crs_wkt,
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": list(_affine6(source.transform_gdal)),
        "spatial:shape": [source.height, source.width],
        "spatial:registration": "pixel",
    }

    store.ensure()
    staging = store.staging_dir / f"{survey_id}-{uuid.uuid4().hex[:8]}.zarr"
    try:
        _create_arrays(staging, source, edge, attrs)
        strips = _strips(source.height, source.width, edge, source.count, np.dtype(source.dtype).itemsize)
        _run_copy(source, staging, strips, client, desc=f"ingest {survey_id}")
        import zarr

        group = zarr.open_group(staging, mode="r+")
        group.attrs.update({"source_sha256": sha_future.result(), "complete": True})  # completion last
        with warnings.catch_warnings():  # "consolidated metadata is not in the v3 spec": known
            warnings.simplefilter("ignore", category=UserWarning)
            zarr.consolidate_metadata(staging)  # one read opens the survey (xarray.open_zarr too)
        created = move_into_place(staging, store.survey_dir(survey_id))
        status: Literal["ingested", "replaced"] = "ingested" if created == "created" else "replaced"
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return IngestResult(store.survey(survey_id), status)


def _affine6(gdal: Sequence[float]) -> tuple[float, ...]:
    """GDAL's (c, a, b, f, d, e) as the affine (a, b, c, d, e, f) GeoZarr's spatial:transform uses."""
    c, a, b, f, d, e = gdal
    return (a, b, c, d, e, f)


def _run_copy(source: _Source, staging: Path, strips, client, desc: str) -> None:
    from pipeline.progress import progress_bar, wait_with_progress

    if client is None:
        results = []
        with progress_bar(len(strips), desc, unit="strip") as bar:
            for strip in strips:
                results.append(_copy_strip(source.path, str(staging), source.nodata, strip))
                bar.update(1)
                if isinstance(results[-1], str):
                    break
    else:
        futures = [
            client.submit(_copy_strip, source.path, str(staging), source.nodata, strip, pure=False)
            for strip in strips
        ]
        results = wait_with_progress(futures, desc, unit="strip")
    problems = [r for r in results if isinstance(r, str)]
    if problems:
        raise InputError(
            f"input {Path(source.path).name} could not be read to the end ({problems[0]}); the "
            f"file is truncated or corrupt: copy it again from its source. Nothing was written "
            f"to the store"
        )
