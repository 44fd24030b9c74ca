"""Ingest: a GeoTIFF becomes a survey in the store.

*Ingesting* copies a georeferenced raster into the store as the survey ``<area>-<date>`` (see
:mod:`pipeline.store` for what a survey group holds): its pixels, a valid mask, its CRS and
transform, its band names and the file's sha256.

The GeoTIFF is read by windows aligned with its internal blocks, in parallel Dask tasks that
each read a strip of chunks and write them straight into Zarr: no pixel travels between
workers and no task holds more than one strip (DESIGN decision 11). The group is written with
:meth:`pipeline.store.Store.new_group`, so an interrupted ingest never leaves a survey that
looks complete. Ingesting the same file again does nothing; a different file under an existing
survey id is refused unless ``overwrite`` — also when another process creates that survey while
this one copies (the final rename refuses atomically).

Band names come from ``bands``, else the file's band descriptions, else its colour
interpretation, else ``band1..bandN``: a 4-band file is never guessed to hold near-infrared.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.windows import Window

from pipeline import __version__
from pipeline.bands import band_moments, merge_moments, moments_summary
from pipeline.errors import InputError, StoreError
from pipeline.files import file_sha256, is_disk_full, parse_date, survey_id_for
from pipeline.progress import progress_bar, wait_with_progress
from pipeline.store import Store, Survey, settle_pending_writes
from pipeline.tiling import DEFAULT_TILE_SIZE

if TYPE_CHECKING:  # pragma: no cover
    import distributed
    import zarr

# zarr (~0.2 s) is imported where arrays are written: the command line imports this module to
# check its input, and a refusal must answer at once.

__all__ = ["DEFAULT_CHUNK_EDGE", "IngestResult", "ingest", "check_input", "check_replacing"]

DEFAULT_CHUNK_EDGE = 1024  # 8 x 8 default tiles per chunk; a multiple of 256- and 512-pixel blocks
TASK_BYTES = 32 * 2**20  # raw bytes one ingest task reads and writes (~0.1-0.3 s of work)
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")


@dataclass(frozen=True)
class IngestResult:
    survey: Survey
    status: Literal["ingested", "unchanged", "replaced"]


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


def check_replacing(
    store: Store,
    survey_id: str,
    path: str | os.PathLike,
    sha256: str,
    bands: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Literal["new", "unchanged", "replaced"]:
    """What ingesting ``path`` (content hash ``sha256``) as ``survey_id`` would do; refuses a
    different file under an existing id without ``overwrite`` (:class:`StoreError`).

    The command line calls it before Prefect or a cluster starts, so a refusal costs a hash.
    """
    if survey_id not in store.survey_ids():
        return "new"
    existing = store.survey(survey_id)
    if existing.source_sha256 == sha256 and (bands is None or tuple(bands) == existing.bands):
        return "unchanged"
    if not overwrite:
        raise StoreError(
            f"survey {survey_id} already exists in {store.root}, ingested from "
            f"{existing.source_name} (sha256 {existing.source_sha256[:12]}…), and {Path(path).name} "
            f"(sha256 {sha256[:12]}…) differs; pass --overwrite to replace it, or ingest under "
            f"another --area or --date"
        )
    return "replaced"


def _chunk_edge(source: _Source, requested: int) -> int:
    """The Zarr chunk edge: a multiple of the tile edge, never larger than the raster needs."""
    if requested % DEFAULT_TILE_SIZE:
        raise InputError(f"chunk edge {requested} is not a multiple of the tile edge {DEFAULT_TILE_SIZE}")
    needed = DEFAULT_TILE_SIZE * math.ceil(max(source.height, source.width) / DEFAULT_TILE_SIZE)
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
    """(y, x) bool: false where any band equals nodata or is not finite (NaN, ±inf).

    An infinite value is no measurement: every statistic of a tile holding one would be
    NaN or infinite.
    """
    valid = np.ones(pixels.shape[1:], dtype=bool)
    if nodata is not None:
        if np.isnan(nodata):
            valid &= ~np.isnan(pixels).any(axis=0)
        else:
            valid &= ~(pixels == pixels.dtype.type(nodata)).any(axis=0)
    if pixels.dtype.kind == "f":
        valid &= np.isfinite(pixels).all(axis=0)
    return valid


def _copy_strip(source_path: str, group_path: str, nodata: float | None, strip: tuple[int, int, int, int]) -> dict | str:
    """Read one window of the GeoTIFF and write it into the staging group.

    Returns the band statistics of the strip (:func:`pipeline.bands.band_moments`, on a grid of
    pixels aligned to the raster's, so strips add up to the survey's), or, when the file cannot be read there, a sentence
    saying where and why: a corrupt file is an expected outcome, not a task failure, so it is
    reported to the driver (which raises it as a user error) rather than logged as a crash by
    the worker. A full disk is reported the same way, as the OSError itself (the driver raises
    it, and the staging turns it into one DiskFull paragraph). Runs on a worker: opens the
    file and the Zarr arrays by path.
    """

    r0, r1, c0, c1 = strip
    try:
        with rasterio.open(source_path) as ds:
            pixels = ds.read(window=Window(c0, r0, c1 - c0, r1 - r0))  # (band, h, w)
    except RasterioError as exc:
        return f"rows {r0}-{r1}, columns {c0}-{c1}: {exc}"
    valid = _valid_mask(pixels, nodata)
    import zarr

    try:
        group = zarr.open_group(group_path, mode="r+")
        group["image"][:, r0:r1, c0:c1] = pixels
        group["valid"][r0:r1, c0:c1] = valid
    except OSError as exc:
        if is_disk_full(exc):
            settle_pending_writes()
            return OSError(exc.errno, exc.strerror, exc.filename)
        raise
    # Strips start on multiples of the chunk edge, a multiple of MOMENT_STEP: one global grid.
    return band_moments(pixels, valid)


def _create_arrays(group: "zarr.Group", source: _Source, edge: int) -> None:
    """The survey's arrays in ``group``: image and valid (to be filled), coordinates, grid mapping."""

    from zarr.codecs import ZstdCodec

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
    names = group.create_array("band", shape=(source.count,), dtype=str, dimension_names=["band"],
                               attributes={"long_name": "band name"})
    names[:] = np.array(source.band_names)  # a coordinate: ds.image.sel(band="nir") in xarray
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
        if check_replacing(store, survey_id, path, sha_future.result(), bands, overwrite) == "unchanged":
            return IngestResult(existing, "unchanged")

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

    itemsize = np.dtype(source.dtype).itemsize
    raw_bytes = source.height * source.width * (source.count * itemsize + 1)  # pixels + valid mask, uncompressed
    try:
        # Consolidated: one read opens the survey (xarray.open_zarr too). Without --overwrite the
        # final rename refuses a survey that another process created meanwhile (atomically).
        with store.new_group(
            f"surveys/{survey_id}", consolidate=True, replace=existing is not None or overwrite, expected_bytes=raw_bytes
        ) as group:
            _create_arrays(group, source, edge)
            strips = _strips(source.height, source.width, edge, source.count, itemsize)
            moments = _run_copy(source, str(group.store.root), strips, client, desc=f"ingest {survey_id}")
            group.attrs.update({**attrs, "band_statistics": moments, "source_sha256": sha_future.result()})
    except FileExistsError:
        other = store.survey(survey_id)
        if other.source_sha256 == sha_future.result() and other.bands == source.band_names:
            return IngestResult(other, "unchanged")
        raise StoreError(
            f"survey {survey_id} was created in {store.root} by another process while {path.name} was "
            f"being ingested, from {other.source_name} (sha256 {other.source_sha256[:12]}…), which "
            f"differs; nothing of {path.name} was kept; pass --overwrite to replace it, or ingest under "
            f"another --area or --date"
        ) from None
    status: Literal["ingested", "replaced"] = "replaced" if existing is not None else "ingested"
    return IngestResult(store.survey(survey_id), status)


def _affine6(gdal: Sequence[float]) -> tuple[float, ...]:
    """GDAL's (c, a, b, f, d, e) as the affine (a, b, c, d, e, f) GeoZarr's spatial:transform uses."""
    c, a, b, f, d, e = gdal
    return (a, b, c, d, e, f)


def _run_copy(source: _Source, staging: str, strips, client, desc: str) -> dict:
    """Copy every strip (on ``client``'s workers, or here); the survey's band statistics."""

    if client is None:
        results = []
        with progress_bar(len(strips), desc, unit="strip") as bar:
            for strip in strips:
                results.append(_copy_strip(source.path, staging, source.nodata, strip))
                bar.update(1)
                if isinstance(results[-1], (str, OSError)):
                    break
    else:
        futures = [
            client.submit(_copy_strip, source.path, staging, source.nodata, strip, pure=False)
            for strip in strips
        ]
        results = wait_with_progress(futures, desc, unit="strip", stop=lambda r: isinstance(r, (str, OSError)))
    for full in (r for r in results if isinstance(r, OSError)):
        raise full
    problems = [r for r in results if isinstance(r, str)]
    if problems:
        raise InputError(
            f"input {Path(source.path).name} could not be read to the end ({problems[0]}); the "
            f"file is truncated or corrupt: copy it again from its source. Nothing was written "
            f"to the store"
        )
    return moments_summary(merge_moments(results), source.band_names)
