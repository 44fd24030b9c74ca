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
expression language is tiny and safe (parsed with :mod:`ast`, never ``eval``'d):

- names: the survey's band names (``red``, ``nir``), ``b1``..``bN`` (bands by 1-based number,
  as GDAL counts them), and the indices ``ndvi`` = (nir − red)/(nir + red) and
  ``ndwi`` = (green − nir)/(green + nir) (0 where the denominator is 0);
- numbers, ``+ - * /``, unary ``-``, ``abs(x)``, parentheses;
- comparisons ``< <= > >= == !=`` (chains like ``0 < ndvi < 0.3`` work);
- ``and``, ``or``, ``not`` (or ``&``, ``|``, ``~``).

Band values are the raw pixel values (digital numbers, as stored), so ``nir < 60`` means what
it says on a uint8 survey. The expression must be a condition (a comparison or a logical
combination of comparisons).

Labels are stored at ``labels/<survey_id>/<name>/size<S>_stride<T>`` (``values`` int8
(tile_row, tile_col); attrs: source, rule, report, grid), replacing earlier labels of that
name (default ``"default"``).
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import math
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError, StoreError
from pipeline.store import move_into_place
from pipeline.features import compute_with_progress, map_tile_blocks, resolve_client
from pipeline.tiling import DEFAULT_TILE_SIZE, TRAINING_STRIDE, TileGrid, gather_tiles

__all__ = [
    "POSITIVE",
    "NEGATIVE",
    "UNKNOWN",
    "TileLabels",
    "labels_from_vector",
    "labels_from_expression",
    "parse_expression",
    "evaluate_expression",
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
def _read_geojson(path: str | Path) -> tuple[list[dict], str | None]:
    """Features of a GeoJSON file (FeatureCollection, Feature or bare geometry) and its legacy CRS name."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"label file {path} does not exist; give the path of a GeoJSON file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"label file {path} is not GeoJSON ({exc}); give a GeoJSON FeatureCollection (export "
            f"other formats with `ogr2ogr -f GeoJSON out.geojson in.shp`)"
        ) from None
    crs_name = None
    if isinstance(doc, dict) and isinstance(doc.get("crs"), dict):
        crs_name = (doc["crs"].get("properties") or {}).get("name")
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "FeatureCollection":
        features = doc.get("features") or []
    elif kind == "Feature":
        features = [doc]
    elif kind in {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon", "GeometryCollection"}:
        features = [{"type": "Feature", "properties": {}, "geometry": doc}]
    else:
        raise InputError(
            f"label file {path} has GeoJSON type {kind!r}; expected a FeatureCollection, a Feature "
            f"or a geometry"
        )
    return features, crs_name


def _iso_date(value: Any) -> str:
    return str(value)[:10]


def _select(
    features: list[dict], where: dict[str, Any] | None, on_date: dt.date | None, path: Path
) -> tuple[list[dict], int]:
    """Features matching ``where`` and existing on ``on_date``; also the number without geometry."""
    where = dict(where or {})
    props = [f.get("properties") or {} for f in features]
    for key in where:
        if not any(key in p for p in props):
            keys = sorted({k for p in props for k in p})
            raise InputError(
                f"label file {path} has no feature with property {key!r} to filter on; its "
                f"properties are {keys or 'none'}"
            )
    if on_date is not None and not any("dates" in p for p in props):
        raise InputError(
            f"label file {path} has no `dates` property on any feature, so it cannot be filtered "
            f"by date {on_date.isoformat()}; drop the date filter (--on-date) or add to each "
            f"feature a `dates` list of the ISO dates on which it exists"
        )
    selected, no_geometry = [], 0
    for f, p in zip(features, props):
        ok = True
        for key, wanted in where.items():
            allowed = wanted if isinstance(wanted, (list, tuple, set)) else [wanted]
            if p.get(key) not in allowed and str(p.get(key)) not in {str(a) for a in allowed}:
                ok = False
        if ok and on_date is not None:
            ok = on_date.isoformat() in {_iso_date(d) for d in (p.get("dates") or [])}
        if ok:
            if not f.get("geometry"):
                no_geometry += 1
            else:
                selected.append(f)
    return selected, no_geometry


def _parts(geometry: dict) -> list[dict]:
    """Single-part geometries of ``geometry`` (multi-geometries and collections split)."""
    kind = geometry["type"]
    if kind == "GeometryCollection":
        return [p for g in geometry["geometries"] for p in _parts(g)]
    if kind.startswith("Multi"):
        single = kind[len("Multi") :]
        return [{"type": single, "coordinates": c} for c in geometry["coordinates"]]
    return [geometry]


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
    from rasterio.features import rasterize
    from rasterio.windows import Window, transform as window_transform

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


def _parse_crs(crs: Any, crs_name: str | None, path: Path):
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    given = crs if crs is not None else crs_name
    if given is None:
        return CRS.from_epsg(4326)  # RFC 7946: GeoJSON coordinates are WGS84 longitude, latitude
    if isinstance(given, CRS):
        return given
    text = str(given)
    if text.upper() in {"URN:OGC:DEF:CRS:OGC:1.3:CRS84", "CRS84", "OGC:CRS84"}:
        return CRS.from_epsg(4326)
    try:
        return CRS.from_user_input(text)
    except CRSError:
        try:
            return CRS.from_string(text.replace("urn:ogc:def:crs:", "").replace("::", ":"))
        except CRSError:
            raise InputError(
                f"label file {path} names CRS {text!r}, which PROJ does not know; give it as "
                f"EPSG:<code> (or pass --crs)"
            ) from None


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
    store: Any,
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
    from rasterio.warp import transform_geom

    survey = store.survey(survey_id)
    grid = grid or TileGrid.for_survey(survey)
    _check_grid(grid, survey)
    if not 0 < min_cover <= 1:
        raise InputError(f"polygon cover fraction {min_cover} must lie in (0, 1]")
    path = Path(path)
    features, crs_name = _read_geojson(path)
    source_crs = _parse_crs(crs, crs_name, path)
    date = None
    if on_date is not None:
        date = survey.date if str(on_date) == "survey" else _parse_date(on_date)
    selected, no_geometry = _select(features, where, date, path)

    hits = np.zeros(grid.shape, dtype=bool)
    outside = 0
    for f in selected:
        geometry = transform_geom(source_crs, survey.crs, f["geometry"])
        object_hits, inside = _vector_hits(_parts(geometry), grid, min_cover)
        hits |= object_hits
        outside += not inside

    values = np.where(hits, POSITIVE, NEGATIVE).astype(np.int8)
    unknown_region = 0
    if region is not None:
        region_path = Path(region)
        region_features, region_crs_name = _read_geojson(region_path)
        region_crs = _parse_crs(crs, region_crs_name, region_path)
        region_parts = [
            p
            for f in region_features
            if f.get("geometry")
            for p in _parts(transform_geom(region_crs, survey.crs, f["geometry"]))
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


def _parse_date(value: str | dt.date) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise InputError(f"date {value!r} is not an ISO date (YYYY-MM-DD) or 'survey'") from None


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
_COMPARE = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}
_ARITHMETIC = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide}
_LOGICAL = {ast.BitAnd: np.logical_and, ast.BitOr: np.logical_or}
_INDICES = {"ndvi": ("nir", "red"), "ndwi": ("green", "nir")}  # (a, b): (a − b)/(a + b)
_FUNCTIONS = {"abs": np.abs}


def _names_in(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not _is_function_name(tree, n)}


def _is_function_name(tree: ast.AST, name: ast.Name) -> bool:
    return any(isinstance(n, ast.Call) and n.func is name for n in ast.walk(tree))


def _describe(node: ast.AST) -> str:
    operators = {ast.Pow: "**", ast.Mod: "%", ast.FloorDiv: "//", ast.MatMult: "@", ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>"}
    if type(node) in operators:
        return operators[type(node)]
    try:
        return ast.unparse(node) or type(node).__name__
    except Exception:  # noqa: BLE001 - some nodes have no source form
        return type(node).__name__


def parse_expression(expr: str, band_names: tuple[str, ...] | list[str], survey_id: str = "the survey") -> ast.Expression:
    """Parse and check a band expression (language: module docstring); InputError if it is unusable."""
    allowed_names = set(band_names) | {f"b{i + 1}" for i in range(len(band_names))}
    allowed_names |= {k for k, (a, b) in _INDICES.items() if a in band_names and b in band_names}
    help_names = ", ".join(sorted(allowed_names))
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise InputError(f"band expression {expr!r} is not valid ({exc.msg}); write e.g. 'ndwi > 0'") from None
    for node in ast.walk(tree):
        ok = isinstance(
            node,
            (ast.Expression, ast.Compare, ast.BoolOp, ast.And, ast.Or, ast.BinOp, ast.UnaryOp, ast.Name, ast.Load, ast.Call),
        ) or type(node) in _COMPARE or type(node) in _ARITHMETIC or type(node) in _LOGICAL
        ok |= isinstance(node, (ast.USub, ast.UAdd, ast.Not, ast.Invert))
        ok |= isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
        if isinstance(node, ast.Call):
            ok = isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS and len(node.args) == 1 and not node.keywords
        if not ok:
            raise InputError(
                f"band expression {expr!r} uses {_describe(node)!r}, "
                f"which the expression language does not allow; use band names ({help_names}), numbers, "
                f"+ - * /, abs(), comparisons and and/or/not"
            )
    unknown = sorted(_names_in(tree) - allowed_names)
    if unknown:
        missing_index = [n for n in unknown if n in _INDICES]
        extra = (
            f" ({', '.join(missing_index)} need{'s' if len(missing_index) == 1 else ''} bands "
            f"{' and '.join(sorted({b for n in missing_index for b in _INDICES[n]}))})"
            if missing_index
            else ""
        )
        raise InputError(
            f"band expression {expr!r} names {', '.join(unknown)}, which {survey_id} does not have"
            f"{extra}; it has bands {list(band_names)}, so the expression may use {help_names}"
        )
    body = tree.body
    is_condition = isinstance(body, (ast.Compare, ast.BoolOp)) or (
        isinstance(body, ast.UnaryOp) and isinstance(body.op, (ast.Not, ast.Invert))
    ) or (isinstance(body, ast.BinOp) and type(body.op) in _LOGICAL)
    if not is_condition:
        raise InputError(
            f"band expression {expr!r} is a value, not a condition; compare it with a threshold, "
            f"e.g. '{expr.strip()} > 0'"
        )
    return tree


def evaluate_expression(tree: ast.Expression, bands: dict[str, np.ndarray]) -> np.ndarray:
    """Evaluate a parsed expression over pixel arrays ``bands`` (name → array, float); returns bool."""
    cache: dict[str, np.ndarray] = {}

    def name(n: str) -> np.ndarray:
        if n not in cache:
            if n in bands:
                cache[n] = bands[n]
            elif n in _INDICES:
                a, b = (bands[k] for k in _INDICES[n])
                den = a + b
                out = np.zeros_like(den)
                np.divide(a - b, den, out=out, where=den != 0)
                cache[n] = out
            else:  # b1..bN
                cache[n] = bands[f"b{int(n[1:])}"]
        return cache[n]

    def ev(node: ast.AST):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return name(node.id)
        if isinstance(node, ast.BinOp):
            op = _ARITHMETIC.get(type(node.op)) or _LOGICAL[type(node.op)]
            return op(ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp):
            value = ev(node.operand)
            if isinstance(node.op, (ast.Not, ast.Invert)):
                return np.logical_not(value)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BoolOp):
            op = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            result = ev(node.values[0])
            for v in node.values[1:]:
                result = op(result, ev(v))
            return result
        if isinstance(node, ast.Compare):
            left, result = ev(node.left), None
            for op, right_node in zip(node.ops, node.comparators):
                right = ev(right_node)
                part = _COMPARE[type(op)](left, right)
                result = part if result is None else np.logical_and(result, part)
                left = right
            return result
        if isinstance(node, ast.Call):
            return _FUNCTIONS[node.func.id](ev(node.args[0]))
        raise AssertionError(f"unchecked node {node!r}")  # parse_expression refuses these

    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(ev(tree), dtype=bool)


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
    store: Any,
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
    result = compute_with_progress(lazy, client, f"labels {survey_id}", "tile-labels")
    if not isinstance(result, np.ndarray):
        result = client.compute(result).result()
    hit_fraction, valid_fraction = result[..., 0], result[..., 1]
    values = np.where(hit_fraction >= min_fraction, POSITIVE, NEGATIVE).astype(np.int8)
    values[valid_fraction < min_valid] = UNKNOWN
    source = f"expr:{expr} on >= {min_fraction:g} of the tile"
    report = {
        "expression": expr,
        "min_fraction": min_fraction,
        "rule": (
            f"positive where `{expr}` holds on >= {min_fraction:g} of the tile's valid pixels; "
            f"unknown where valid fraction < {min_valid:g}"
        ),
    }
    labels = TileLabels(survey_id, grid, values, source, name, report)
    _count(labels)
    return save_labels(store, labels, survey.source_sha256) if save else labels


# ----------------------------------------------------------------------------------------------
# The store
# ----------------------------------------------------------------------------------------------
def labels_path(survey_id: str, name: str = "default", stride: int = TRAINING_STRIDE, size: int = DEFAULT_TILE_SIZE) -> str:
    """Path inside ``store.zarr``: ``labels/<survey_id>/<name>/size<S>_stride<T>``."""
    return f"labels/{survey_id}/{name}/size{int(size)}_stride{int(stride)}"


def save_labels(store: Any, labels: TileLabels, source_sha256: str | None = None) -> TileLabels:
    """Write ``labels`` to the store (replacing labels of the same name and grid); returns them with ``path``."""
    import zarr

    if not labels.name or "/" in labels.name or labels.name.startswith("."):
        raise InputError(f"label set name {labels.name!r} must be a plain name such as 'default' or 'water'")
    grid = labels.grid
    path = labels_path(labels.survey_id, labels.name, grid.stride, grid.size)
    parent, leaf = path.rsplit("/", 1)
    tmp_name = f".tmp-{leaf}-{uuid.uuid4().hex[:8]}"
    root = zarr.open_group(store=str(store.zarr_path), mode="a")
    group = root.require_group(parent).create_group(tmp_name)
    tmp_dir, final_dir = store.zarr_path / parent / tmp_name, store.zarr_path / path
    try:
        group.create_array(
            "values",
            data=np.asarray(labels.values, dtype=np.int8),
            chunks=grid.shape,
            compressors=zarr.codecs.ZstdCodec(level=3),
            dimension_names=["tile_row", "tile_col"],
            attributes={"flag_values": [1, 0, -1], "flag_meanings": "positive negative unknown"},
        )
        group.attrs.update(
            {
                "survey_id": labels.survey_id,
                "source": labels.source,
                "report": _jsonable(labels.report),
                "grid": grid.to_dict(),
                "source_sha256": source_sha256,
                "complete": True,  # written last
            }
        )
        move_into_place(tmp_dir, final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    labels.path = path
    return labels


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def open_labels(
    store: Any,
    survey_id: str,
    name: str = "default",
    stride: int = TRAINING_STRIDE,
    size: int = DEFAULT_TILE_SIZE,
) -> TileLabels:
    """Open stored labels (StoreError naming the labels that exist if these do not)."""
    path = labels_path(survey_id, name, stride, size)
    directory = store.zarr_path / path
    group = store.open_group(path) if directory.is_dir() else None
    if group is None or not group.attrs.get("complete"):
        base = store.zarr_path / "labels" / survey_id
        available = sorted(str(p.relative_to(base)) for p in base.glob("*/size*_stride*")) if base.is_dir() else []
        raise StoreError(
            f"no labels {name!r} for survey {survey_id} with tile size {size} and stride {stride} in "
            f"the store at {store.zarr_path.parent} (available for this survey: "
            f"{', '.join(available) or 'none'}); make them with `damwatch labels {survey_id} "
            f"--from FILE` or `--expr EXPR`"
        )
    attrs = dict(group.attrs)
    return TileLabels(
        survey_id=survey_id,
        grid=TileGrid.from_dict(attrs["grid"]),
        values=np.asarray(group["values"][...], dtype=np.int8),
        source=attrs["source"],
        name=name,
        report=dict(attrs.get("report") or {}),
        path=path,
    )
