"""Tile labels: which tiles of a survey contain the thing to find.

A *tile label* is one int8 per tile of a grid (:mod:`pipeline.tiling`): ``1`` positive (the
tile contains a labelled object), ``0`` negative (it was looked at and contains none), ``-1``
unknown (nobody knows: outside the labelled region, or too much nodata to tell). Training uses
only the known tiles.

Two sources of labels:

**Vector labels** (:func:`labels_from_vector`): a GeoJSON file of labelled objects, in WGS84 as
RFC 7946 requires, or in any CRS named by a legacy ``crs`` member or the ``crs`` argument;
geometries are reprojected to the survey's CRS. Which features count as labelled objects is
chosen by ``where`` (property filter, e.g. ``{"class": "dam"}``) and ``on_date`` (the feature's
``dates`` property, a list of ISO dates on which the object exists, must contain that date;
``"survey"`` means the survey's own date) — so one truth file of an area labels each of its
dates, as damwatch's synthetic truth is written. The rule for a tile, per selected object:

- a **point** is in a tile when the pixel it falls in belongs to the tile (with overlapping
  tiles, every tile holding that pixel);
- a **line** is in every tile containing a pixel it touches;
- a **polygon** is in a tile when it covers at least ``min_cover`` (default 0.2) of the tile's
  pixels, or when at least half of the polygon's own pixels lie in the tile (so a small object
  drawn as a polygon labels the tile holding it). Coverage counts pixel centres inside the
  polygon.

A tile holding any selected object is positive; otherwise negative. Then a tile becomes unknown
when less than ``min_valid`` (default 0.5) of its pixels are valid, or when the labelled
``region`` (optional polygons; default: the whole survey) does not cover it entirely (a tile
partly outside the region stays positive if an object was found in it, since that is certain).
Selected objects that fall outside the raster are counted and reported (``report["outside"]``),
never dropped silently.

**Expression labels** (:func:`labels_from_expression`): weak supervision from the survey's own
bands: a per-pixel condition such as ``"ndwi > 0"`` (open water) and a threshold
``min_fraction`` (default 0.2): a tile is positive when the condition holds on at least that
fraction of its valid pixels, negative otherwise, unknown when it is mostly nodata. The
expression language is :mod:`pipeline.expressions`.

Labels are stored at ``labels/<survey_id>/<name>/size<S>_stride<T>`` (``values`` int8
(tile_row, tile_col); attrs: source, rule, report, grid), replacing earlier labels of that
name (default ``"default"``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rasterio.features import rasterize
from rasterio.warp import transform_geom
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from pipeline.blocks import compute_with_progress, map_tile_blocks, resolve_client, store_blocks
from pipeline.coords import TILE_DIMS, add_tile_coordinates, grid_mapping_attrs
from pipeline.errors import InputError, command
from pipeline.expressions import evaluate_expression, parse_expression
from pipeline.files import jsonable, parse_date
from pipeline.geojson import parse_crs, read_features, select_features, single_parts
from pipeline.tiling import DEFAULT_TILE_SIZE, TRAINING_STRIDE, TileGrid, gather_tiles

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.store import Store

__all__ = [
    "POSITIVE",
    "NEGATIVE",
    "UNKNOWN",
    "TileLabels",
    "labels_from_vector",
    "labels_from_expression",
    "save_labels",
    "open_labels",
    "labels_path",
]

POSITIVE, NEGATIVE, UNKNOWN = 1, 0, -1
# an expression costs a few passes per pixel (~0.15 ms per 128-px tile): 512 tiles ≈ 100 ms a task
MIN_TILES_PER_TASK = 512


@dataclass
class TileLabels:
    """One label per tile of ``grid``: ``values`` (n_rows, n_cols) int8, 1 / 0 / −1 (unknown).

    ``source`` says where the labels came from (file and selection, or expression);
    ``report`` holds counts (objects read, selected, outside the raster; tiles per label).
    """

    survey_id: str
    grid: TileGrid
    values: np.ndarray
    source: str
    name: str = "default"
    report: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @property
    def n_positive(self) -> int:
        return int((self.values == POSITIVE).sum())

    @property
    def n_negative(self) -> int:
        return int((self.values == NEGATIVE).sum())

    @property
    def n_unknown(self) -> int:
        return int((self.values == UNKNOWN).sum())


# ----------------------------------------------------------------------------------------------
# Vector labels
# ----------------------------------------------------------------------------------------------
def _all_xy(geometry: dict) -> np.ndarray:
    coords = np.asarray(geometry["coordinates"], dtype=float)
    return coords.reshape(-1, coords.shape[-1])[:, :2]


def _tile_span(offsets: np.ndarray, size: int, lo: float, hi: float) -> tuple[int, int]:
    """Tile indices [i0, i1) along an axis whose pixels [offset, offset+size) meet pixels [lo, hi)."""
    i0 = int(np.searchsorted(offsets + size, lo, side="right"))
    i1 = int(np.searchsorted(offsets, hi, side="left"))
    return i0, i1


def _pixel_counts(shapes: list[dict], grid: TileGrid, rows: tuple[int, int], cols: tuple[int, int], all_touched: bool):
    """Pixels of ``shapes`` in each tile of rows/cols ranges: (n_r, n_c) int64, and the window's total."""
    ro, co = grid.row_offsets[rows[0] : rows[1]], grid.col_offsets[cols[0] : cols[1]]
    y0, x0 = int(ro[0]), int(co[0])
    window = Window(x0, y0, int(co[-1]) + grid.size - x0, int(ro[-1]) + grid.size - y0)
    mask = rasterize(
        [(s, 1) for s in shapes],
        out_shape=(int(window.height), int(window.width)),
        transform=window_transform(window, grid.transform),
        all_touched=all_touched,
        fill=0,
        dtype="uint8",
    )
    counts = gather_tiles(mask, ro - y0, co - x0, grid.size).sum(axis=(-2, -1), dtype=np.int64)
    return counts, int(mask.sum())


def _tiles_under(grid: TileGrid, xy: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Tile ranges ((r0, r1), (c0, c1)) meeting the pixels under the bounding box of map points ``xy``.

    None when the box misses the raster. For a single point: the tiles holding its pixel.
    """
    cols, rows = (np.asarray(v) for v in ~grid.transform * (xy[:, 0], xy[:, 1]))
    r0, r1 = max(0, math.floor(rows.min())), min(grid.height, math.floor(rows.max()) + 1)
    c0, c1 = max(0, math.floor(cols.min())), min(grid.width, math.floor(cols.max()) + 1)
    if r0 >= r1 or c0 >= c1:
        return None
    return _tile_span(grid.row_offsets, grid.size, r0, r1), _tile_span(grid.col_offsets, grid.size, c0, c1)


def _vector_hits(parts: list[dict], grid: TileGrid, min_cover: float) -> tuple[np.ndarray, bool]:
    """Tiles holding one object, given as its single-part geometries in the survey's CRS.

    Returns ``(hits (n_rows, n_cols) bool, whether the object meets the raster at all)``.
    """
    hits = np.zeros(grid.shape, dtype=bool)
    inside = False
    for part in parts:
        span = None if part["type"] == "Polygon" else _tiles_under(grid, _all_xy(part))
        if span is None:
            continue
        (r0, r1), (c0, c1) = span
        if part["type"] == "Point":
            hits[r0:r1, c0:c1] = True
            inside = True
        else:  # LineString: every tile with a touched pixel
            counts, total = _pixel_counts([part], grid, span[0], span[1], all_touched=True)
            hits[r0:r1, c0:c1] |= counts > 0
            inside |= total > 0
    polygons = [p for p in parts if p["type"] == "Polygon"]  # a multipolygon is one object
    span = _tiles_under(grid, np.concatenate([_all_xy(p) for p in polygons])) if polygons else None
    if span is not None:
        (r0, r1), (c0, c1) = span
        counts, total = _pixel_counts(polygons, grid, span[0], span[1], all_touched=False)
        if total == 0:  # thinner than a pixel centre: count the pixels it touches instead
            counts, total = _pixel_counts(polygons, grid, span[0], span[1], all_touched=True)
        if total > 0:
            inside = True
            # total = the polygon's area in pixels within the raster: the window spans its whole
            # clipped bounding box and counts each pixel once, even where tiles overlap
            tile_area = grid.size * grid.size
            hits[r0:r1, c0:c1] |= (counts >= min_cover * tile_area) | (2 * counts >= total)
    return hits, inside


def _region_cover(region_parts: list[dict], grid: TileGrid) -> np.ndarray:
    """Fraction (n_rows, n_cols) of each tile's pixel centres inside the region polygons."""
    cover = np.zeros(grid.shape, dtype=np.float64)
    tile_area = grid.size * grid.size
    per = grid.tiles_per_chunk(1024)
    for block in grid.blocks(per):
        rr = (block.rows.start, block.rows.stop)
        cc = (block.cols.start, block.cols.stop)
        counts, _ = _pixel_counts(region_parts, grid, rr, cc, all_touched=False)
        cover[block.rows, block.cols] = counts / tile_area
    return cover


def _survey_valid_fraction(survey: Any, grid: TileGrid) -> np.ndarray:
    """Valid fraction of every tile, reading the survey's valid mask block by block."""
    valid = survey.valid()
    fraction = np.zeros(grid.shape, dtype=np.float32)
    for block in grid.blocks(grid.tiles_per_chunk(survey.chunk_edge)):
        w = block.window
        mask = np.asarray(valid[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width])
        tiles = gather_tiles(mask, grid.row_offsets[block.rows] - w.row_off, grid.col_offsets[block.cols] - w.col_off, grid.size)
        fraction[block.rows, block.cols] = np.count_nonzero(tiles, axis=(-2, -1)) / float(grid.size**2)
    return fraction


def labels_from_vector(
    store: "Store",
    survey_id: str,
    path: str | Path,
    grid: TileGrid | None = None,
    *,
    where: dict[str, Any] | None = None,
    on_date: str | dt.date | None = None,
    min_cover: float = 0.2,
    region: str | Path | None = None,
    crs: Any = None,
    min_valid: float = 0.5,
    name: str = "default",
    save: bool = True,
) -> TileLabels:
    """Label the tiles of ``survey_id`` from the objects in GeoJSON file ``path`` (rule: module docstring).

    ``grid`` defaults to 128-px tiles at stride 128. ``where`` filters features by properties
    (value or list of accepted values per key); ``on_date`` (``"survey"``, an ISO date or a date)
    keeps features whose ``dates`` contain it. ``region``: GeoJSON polygons of the labelled area
    (default: the whole survey). ``crs`` overrides the file's CRS. Saved under ``name`` unless
    ``save`` is false.
    """
    survey = store.survey(survey_id)
    grid = grid or TileGrid.for_survey(survey)
    _check_grid(grid, survey)
    if not 0 < min_cover <= 1:
        raise InputError(f"polygon cover fraction {min_cover} must lie in (0, 1]")
    path = Path(path)
    fix_crs = crs_hint(survey)
    features, crs_name = read_features(path, what="label file", crs=crs, fix_crs=fix_crs)
    source_crs = parse_crs(crs, crs_name, path, what="label file")
    date = None
    if on_date is not None:
        date = survey.date if str(on_date) == "survey" else parse_date(on_date, "--on-date", "--on-date 2024-06-01 or --on-date survey")
    selected, no_geometry = select_features(features, where, date, path, what="label file")

    hits = np.zeros(grid.shape, dtype=bool)
    outside = 0
    for f in selected:
        geometry = transform_geom(source_crs, survey.crs, f["geometry"])
        object_hits, inside = _vector_hits(single_parts(geometry), grid, min_cover)
        hits |= object_hits
        outside += not inside

    values = np.where(hits, POSITIVE, NEGATIVE).astype(np.int8)
    unknown_region = 0
    if region is not None:
        region_path = Path(region)
        region_features, region_crs_name = read_features(region_path, what="region file", crs=crs, fix_crs=fix_crs)
        region_crs = parse_crs(crs, region_crs_name, region_path, what="region file")
        region_parts = [
            p
            for f in region_features
            if f.get("geometry")
            for p in single_parts(transform_geom(region_crs, survey.crs, f["geometry"]))
            if p["type"] == "Polygon"
        ]
        if not region_parts:
            raise InputError(f"region file {region_path} holds no polygon; give the labelled area as polygons")
        cover = _region_cover(region_parts, grid)
        outside_region = (cover == 0) | ((cover < 1) & ~hits)
        unknown_region = int(outside_region.sum())
        values[outside_region] = UNKNOWN
    fraction = _survey_valid_fraction(survey, grid)
    values[fraction < min_valid] = UNKNOWN

    selection = []
    if where:
        selection.append("where " + ", ".join(f"{k}={v}" for k, v in where.items()))
    if date is not None:
        selection.append(f"on {date.isoformat()}")
    source = f"vector:{path.name}" + (f" ({'; '.join(selection)})" if selection else "")
    report = {
        "file": str(path),
        "crs": source_crs.to_string(),
        "objects": len(features),
        "selected": len(selected),
        "selected_without_geometry": no_geometry,
        "outside": outside,
        "tiles_unknown_outside_region": unknown_region,
        "rule": (
            f"point in tile; line touching the tile; polygon covering >= {min_cover:g} of the tile "
            f"or with >= half its area in it; unknown where valid fraction < {min_valid:g}"
            + ("; unknown outside the region unless positive" if region is not None else "")
        ),
    }
    labels = TileLabels(survey_id, grid, values, source, name, report)
    _count(labels)
    return save_labels(store, labels, survey.source_sha256) if save else labels


def crs_hint(survey: Any) -> str:
    """How to name the CRS of a label file's coordinates, for a survey (its own EPSG code first)."""
    epsg = survey.crs.to_epsg()
    return f"pass --crs EPSG:{epsg} if they are in the survey's CRS" if epsg else "pass --crs EPSG:<code>"


def _check_grid(grid: TileGrid, survey: Any) -> None:
    if (grid.height, grid.width) != (survey.height, survey.width) or grid.transform != survey.transform:
        raise InputError(
            f"the tile grid ({grid.height} × {grid.width} px) is not the grid of survey {survey.id} "
            f"({survey.height} × {survey.width} px); build it with TileGrid.for_survey(survey)"
        )


def _count(labels: TileLabels) -> None:
    labels.report.update(
        tiles_positive=labels.n_positive, tiles_negative=labels.n_negative, tiles_unknown=labels.n_unknown
    )


# ----------------------------------------------------------------------------------------------
# Expression labels
# ----------------------------------------------------------------------------------------------
def _expression_block(block, valid, ro, co, size, expr, band_names) -> np.ndarray:
    """Per tile of one block: (fraction of valid pixels where ``expr`` holds, valid fraction)."""
    tree = parse_expression(expr, band_names)
    x = np.asarray(block, dtype=np.float32)
    bands = {n: x[i] for i, n in enumerate(band_names)}
    bands |= {f"b{i + 1}": x[i] for i in range(len(band_names))}
    condition = evaluate_expression(tree, bands)
    if valid is None:
        valid = np.ones(condition.shape, dtype=bool)
    hit_tiles = gather_tiles(condition & valid, ro, co, size)
    valid_tiles = gather_tiles(np.asarray(valid, dtype=bool), ro, co, size)
    n_hit = np.count_nonzero(hit_tiles, axis=(-2, -1))
    n_valid = np.count_nonzero(valid_tiles, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        hit_fraction = np.where(n_valid > 0, n_hit / np.maximum(n_valid, 1), 0.0)
    return np.stack([hit_fraction, n_valid / float(size * size)], axis=-1).astype(np.float32)


def labels_from_expression(
    store: "Store",
    survey_id: str,
    expr: str,
    grid: TileGrid | None = None,
    *,
    min_fraction: float = 0.2,
    min_valid: float = 0.5,
    name: str = "default",
    save: bool = True,
    client: Any = None,
) -> TileLabels:
    """Label tiles where the band condition ``expr`` holds on ≥ ``min_fraction`` of the valid pixels.

    E.g. ``labels_from_expression(store, "naip-2009-08-18", "ndwi > 0")``: open water on at
    least 20 % of the tile. Unknown where the valid fraction is below ``min_valid``. Computed
    per chunk with Dask (on ``client``, the default client, or local threads).
    """
    survey = store.survey(survey_id)
    grid = grid or TileGrid.for_survey(survey)
    _check_grid(grid, survey)
    if not 0 < min_fraction <= 1:
        raise InputError(f"--min-fraction {min_fraction} must lie in (0, 1]")
    parse_expression(expr, survey.bands, f"survey {survey_id}")  # refuse bad input before any work
    lazy = map_tile_blocks(
        _expression_block,
        survey.image(),  # Zarr arrays: each task reads its own window, halo included
        survey.valid(),
        grid,
        2,
        (expr, tuple(survey.bands)),
        grid.tiles_per_chunk(survey.chunk_edge, MIN_TILES_PER_TASK),
        "tile-labels",
    )
    client = resolve_client(client)
    decide = functools.partial(_decide, min_fraction=min_fraction, min_valid=min_valid)
    source = f"expr:{expr} on >= {min_fraction:g} of the tile"
    report = {
        "expression": expr,
        "min_fraction": min_fraction,
        "rule": (
            f"positive where `{expr}` holds on >= {min_fraction:g} of the tile's valid pixels; "
            f"unknown where valid fraction < {min_valid:g}"
        ),
    }
    if not save:
        result = compute_with_progress(lazy, client, f"labels {survey_id}", "tile-labels")
        if not isinstance(result, np.ndarray):
            result = client.compute(result).result()
        labels = TileLabels(survey_id, grid, decide(result)[0], source, name, report)
        _count(labels)
        return labels
    # Each task labels one block of tiles and writes its own Zarr chunk: nothing is gathered
    # but the stored labels themselves (one byte per tile), read back for the counts.
    labels = TileLabels(survey_id, grid, np.zeros((0, 0), np.int8), source, name, report)
    with _labels_group(store, labels, survey.source_sha256, chunks=lazy.chunksize[:2]) as target:
        store_blocks(lazy, decide, [target], client, f"labels {survey_id}")
        labels.values = np.asarray(target[...], dtype=np.int8)
        _count(labels)
    return labels


def _decide(block: np.ndarray, min_fraction: float, min_valid: float) -> list[np.ndarray]:
    """Labels of one block of (hit fraction, valid fraction) per tile, as [int8 (rows, cols)]."""
    hit_fraction, valid_fraction = block[..., 0], block[..., 1]
    values = np.where(hit_fraction >= min_fraction, POSITIVE, NEGATIVE).astype(np.int8)
    values[valid_fraction < min_valid] = UNKNOWN
    return [values]


# ----------------------------------------------------------------------------------------------
# The store
# ----------------------------------------------------------------------------------------------
#: The name of the labels array in a labels group (stores written before 2026-12 call it
#: "values", which xarray's Dataset.values hides; both are read).
LABELS_ARRAY = "labels"


def labels_path(survey_id: str, name: str = "default", stride: int = TRAINING_STRIDE, size: int = DEFAULT_TILE_SIZE) -> str:
    """Path inside ``store.zarr``: ``labels/<survey_id>/<name>/size<S>_stride<T>``."""
    return f"labels/{survey_id}/{name}/size{int(size)}_stride{int(stride)}"


def save_labels(store: "Store", labels: TileLabels, source_sha256: str | None = None) -> TileLabels:
    """Write ``labels`` to the store (replacing labels of the same name and grid); returns them with ``path``."""
    with _labels_group(store, labels, source_sha256, chunks=labels.grid.shape) as target:
        target[...] = np.asarray(labels.values, dtype=np.int8)
    return labels


@contextlib.contextmanager
def _labels_group(store: "Store", labels: TileLabels, source_sha256: str | None, chunks: tuple[int, int]):
    """Yield the empty int8 ``values`` array of a new label group for ``labels`` (written staged).

    The group's attributes (source, report, grid) are taken from ``labels`` when the block ends,
    so the block may still complete the report; ``labels.path`` is set.
    """
    import zarr  # here, not at the top: the command line imports this module to check its input

    if not labels.name or "/" in labels.name or labels.name.startswith("."):
        raise InputError(f"label set name {labels.name!r} must be a plain name such as 'default' or 'water'")
    grid = labels.grid
    path = labels_path(labels.survey_id, labels.name, grid.stride, grid.size)
    attributes: dict[str, Any] = {}
    with store.new_group(path, attributes, consolidate=True) as group:  # consolidated: one read opens it
        target = group.create_array(
            LABELS_ARRAY,
            shape=grid.shape,
            dtype=np.int8,
            chunks=tuple(int(c) for c in chunks),
            fill_value=UNKNOWN,
            compressors=zarr.codecs.ZstdCodec(level=3),
            dimension_names=list(TILE_DIMS),
            attributes={"flag_values": [1, 0, -1], "flag_meanings": "positive negative unknown",
                        "long_name": f"tile labels {labels.name!r}", **grid_mapping_attrs(grid)},
        )
        add_tile_coordinates(group, grid)
        yield target
        attributes.update(
            survey_id=labels.survey_id,
            source=labels.source,
            report=jsonable(labels.report),
            grid=grid.to_dict(),
            source_sha256=source_sha256,
        )
    labels.path = path


def _remake_hint(store: "Store", survey_id: str, name: str, stride: int, size: int, available: list[str]) -> str:
    """How to make the missing labels: the same band expression on the asked grid when labels of
    this name were made from one on another grid, else where to read how."""
    for found in available:
        if found.split("/")[0] != name:
            continue
        report = dict(store.open_group(f"labels/{survey_id}/{found}").attrs.get("report") or {})
        if report.get("expression"):
            words = ["labels", survey_id, "--expr", report["expression"], "--min-fraction",
                     f"{float(report.get('min_fraction', 0.2)):g}", "--name", name, "--size", size, "--stride", stride]
            valid = re.search(r"valid fraction < ([0-9.eE+-]+)", str(report.get("rule", "")))
            if valid:
                words[6:6] = ["--min-valid", valid.group(1)]
            return f"make them with {command(*words, store=store)}"
    return (
        f"make them with damwatch labels from a GeoJSON file (--from FILE) or a band expression "
        f"(--expr EXPR) with --name {name} --size {size} --stride {stride} "
        f"({command('labels', '--help')} shows both)"
    )


def open_labels(
    store: "Store",
    survey_id: str,
    name: str = "default",
    stride: int = TRAINING_STRIDE,
    size: int = DEFAULT_TILE_SIZE,
) -> TileLabels:
    """Open stored labels (StoreError naming the labels that exist if these do not)."""
    path = labels_path(survey_id, name, stride, size)
    available = store.complete_groups(f"labels/{survey_id}", "*/size*_stride*")
    group = store.open_complete(
        path,
        f"no labels {name!r} for survey {survey_id} with tile size {size} and stride {stride} in "
        f"the store at {store.root} (available for this survey: {', '.join(available) or 'none'}); "
        + _remake_hint(store, survey_id, name, stride, size, available),
    )
    attrs = dict(group.attrs)
    return TileLabels(
        survey_id=survey_id,
        grid=TileGrid.from_dict(attrs["grid"]),
        values=np.asarray(group[LABELS_ARRAY if LABELS_ARRAY in group else "values"][...], dtype=np.int8),
        source=attrs["source"],
        name=name,
        report=dict(attrs.get("report") or {}),
        path=path,
    )
