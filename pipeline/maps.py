"""Detection maps: what a scientist opens in QGIS after a survey has been scored.

A *tile probability* is the model's probability that one tile of the survey's tile grid holds
the target (a beaver dam by default). Tiles overlap when the stride is smaller than the tile
size, so a point of the ground is seen by up to ``ceil(size / stride) ** 2`` tiles. This module
turns the grid of tile probabilities into:

- a **probability map**: a Cloud-Optimized GeoTIFF, float32, NaN nodata, internal tiles of
  512, overviews, on the survey's CRS. Its pixels are *map cells* of ``cell`` survey pixels
  (the stride by default, the finest step at which the tile probabilities change). The rule
  that combines overlapping tiles: **a cell's value is the mean probability of every scored
  tile whose footprint contains the cell's centre** (nodata where no scored tile does). With
  stride = size this is the tile's own probability; with stride = size / 2 it is the mean of
  the four tiles around the cell, a 2 × 2 box filter that removes the blocky tile edges;
- **detections**: flagged tiles (probability ≥ threshold) whose footprints touch or overlap
  are one detection (an object spanning tiles is one detection). Each is a GeoJSON feature
  (RFC 7946: WGS84 longitude/latitude, counter-clockwise exterior rings, no ``crs`` member)
  whose geometry is the union of its tiles' footprints, with its peak and mean probability,
  tile count and a confidence class from the peak probability: ``high`` ≥ 0.9, ``medium`` ≥
  0.7, else ``low`` (see :data:`CONFIDENCE_LEVELS`);
- a **quicklook** PNG: the probabilities over the imagery, with detection outlines;
- ``provenance.json`` (input hashes, model id, settings, damwatch version, tile grid) and, with
  a ground truth, ``metrics.json`` (tile-level precision, recall, F1, ROC AUC, average
  precision, overall and per truth ``context``).

Output directories are written whole or not at all: :func:`atomic_output_dir` writes into a
hidden sibling and renames it into place at the end, and refuses a directory that already
holds results unless ``overwrite`` is set.

The maths (:func:`sample_tiles`, :func:`probability_map`, :func:`tile_components`,
:func:`detections_geojson`) takes arrays and a tile grid and returns arrays and dicts; the
writers around it do the I/O.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine

from pipeline.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.detect import Predictions
    from pipeline.store import Store

__all__ = [
    "CONFIDENCE_LEVELS",
    "PROBABILITY_NODATA",
    "TileEdges",
    "tile_edges",
    "sample_tiles",
    "cell_centres",
    "probability_map",
    "tile_components",
    "confidence_class",
    "detections_geojson",
    "footprints_geojson",
    "write_cog",
    "cog_overview_count",
    "render_quicklook",
    "survey_thumbnail",
    "read_truth",
    "truth_points",
    "truth_tile_labels",
    "detection_metrics",
    "refuse_existing_results",
    "atomic_output_dir",
    "file_sha256",
    "write_json",
    "base_provenance",
    "model_provenance",
    "survey_provenance",
    "DETECTION_FILES",
    "write_detection_maps",
]

#: Confidence classes of a detection, from its peak tile probability: the first level whose
#: lower bound the peak reaches. "low" is any flagged detection below 0.7 (its peak is at
#: least the detection threshold).
CONFIDENCE_LEVELS: tuple[tuple[str, float], ...] = (("high", 0.9), ("medium", 0.7), ("low", 0.0))

#: Nodata of probability rasters: NaN, never a valid probability.
PROBABILITY_NODATA = float("nan")

#: File names inside a detection output directory.
DETECTION_FILES = {
    "probability": "probability.tif",
    "detections": "detections.geojson",
    "quicklook": "quicklook.png",
    "provenance": "provenance.json",
    "metrics": "metrics.json",
}


# --------------------------------------------------------------------------------------------
# Tile geometry


@dataclass(frozen=True)
class TileEdges:
    """Pixel extents of a tile grid's rows and columns (half-open intervals, survey pixels).

    Tile ``(r, c)`` covers rows ``row_starts[r] <= y < row_stops[r]`` and columns
    ``col_starts[c] <= x < col_stops[c]``. Starts and stops never decrease along the grid,
    which is what lets a search find the tiles containing a point.
    """

    row_starts: np.ndarray  # (n_rows,) float64
    row_stops: np.ndarray  # (n_rows,)
    col_starts: np.ndarray  # (n_cols,)
    col_stops: np.ndarray  # (n_cols,)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.row_starts), len(self.col_starts)


def tile_edges(grid: Any) -> TileEdges:
    """The :class:`TileEdges` of a tile grid, read from its windows (whatever its edge rule)."""
    n_rows, n_cols = grid.shape
    rows = [grid.window(r, 0) for r in range(n_rows)]
    cols = [grid.window(0, c) for c in range(n_cols)]
    edges = TileEdges(
        row_starts=np.array([w.row_off for w in rows], dtype=np.float64),
        row_stops=np.array([w.row_off + w.height for w in rows], dtype=np.float64),
        col_starts=np.array([w.col_off for w in cols], dtype=np.float64),
        col_stops=np.array([w.col_off + w.width for w in cols], dtype=np.float64),
    )
    for name in ("row_starts", "row_stops", "col_starts", "col_stops"):
        if np.any(np.diff(getattr(edges, name)) < 0):
            raise ValueError(f"tile grid {name} decrease along the grid; cannot locate tiles")
    return edges


def _covering_range(starts: np.ndarray, stops: np.ndarray, points: np.ndarray):
    """Index range [lo, hi) of the intervals ``starts[i] <= p < stops[i]`` containing each point."""
    lo = np.searchsorted(stops, points, side="right")  # first interval ending after p
    hi = np.searchsorted(starts, points, side="right")  # first interval starting after p
    return lo, np.maximum(hi, lo)


def sample_tiles(
    probabilities: np.ndarray, edges: TileEdges, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """Mean probability of the scored tiles containing each point; NaN where none does.

    ``probabilities`` is (n_rows, n_cols), NaN where a tile was not scored; ``rows``/``cols``
    are fractional survey pixel coordinates of the points, any equal shapes. The tiles that
    contain a point form a rectangle of the grid (tiles are sorted along both axes), so its
    sum and count come from summed-area tables in O(1) per point, whatever the overlap.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.shape != edges.shape:
        raise ValueError(f"probabilities have shape {p.shape}, the tile grid {edges.shape}")
    scored = np.isfinite(p)
    # Summed-area tables with a zero first row/column: sum over [r0, r1) x [c0, c1).
    total = np.zeros((p.shape[0] + 1, p.shape[1] + 1))
    count = np.zeros_like(total)
    total[1:, 1:] = np.where(scored, p, 0.0).cumsum(0).cumsum(1)
    count[1:, 1:] = scored.cumsum(0).cumsum(1)

    rows = np.asarray(rows, dtype=np.float64)
    cols = np.asarray(cols, dtype=np.float64)
    r0, r1 = _covering_range(edges.row_starts, edges.row_stops, rows.ravel())
    c0, c1 = _covering_range(edges.col_starts, edges.col_stops, cols.ravel())

    def box(table):
        return table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]

    n = box(count)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, box(total) / np.maximum(n, 1), np.nan)
    return mean.reshape(rows.shape)


def cell_centres(length: float, cell: float, origin: float = 0.0) -> np.ndarray:
    """Centres of the cells ``[origin + k cell, origin + (k+1) cell)`` covering ``[origin, origin + length)``.

    The last cell is cut at ``origin + length``, and its centre is the centre of the part
    kept, so no sample point ever falls outside the extent.
    """
    n = math.ceil(length / cell - 1e-9)
    starts = origin + np.arange(n) * cell
    stops = np.minimum(starts + cell, origin + length)
    return 0.5 * (starts + stops)


def probability_map(
    probabilities: np.ndarray, grid: Any, cell: int | None = None
) -> tuple[np.ndarray, Affine]:
    """The probability map of a tile grid: (h, w) float32 cells and their affine transform.

    A cell is ``cell`` × ``cell`` survey pixels (default: the grid's stride); the map has
    ``ceil(height / cell)`` × ``ceil(width / cell)`` cells, starting at the survey's origin, so
    the last row/column may reach up to ``cell - 1`` pixels past the survey's edge; such a
    cell is sampled at the centre of its part inside the survey. Each cell holds the mean
    probability of the scored tiles containing its centre (the module's rule).
    """
    cell = int(cell or grid.stride)
    if cell < 1:
        raise InputError(f"map cell must be at least 1 pixel, got {cell}")
    h = math.ceil(grid.height / cell)
    w = math.ceil(grid.width / cell)
    centres_r = cell_centres(grid.height, cell)
    centres_c = cell_centres(grid.width, cell)
    rr, cc = np.meshgrid(centres_r, centres_c, indexing="ij")
    values = sample_tiles(probabilities, tile_edges(grid), rr, cc).astype(np.float32)
    return values, grid.transform * Affine.scale(cell)


# --------------------------------------------------------------------------------------------
# Detections


def tile_components(flagged: np.ndarray, edges: TileEdges) -> np.ndarray:
    """Label flagged tiles whose footprints touch or overlap: (n_rows, n_cols) int32, 0 = none.

    Two tiles touch when their closed footprints intersect (a shared edge or corner counts),
    so with stride = size this is 8-connectivity, and with overlapping tiles every tile within
    ``size / stride`` steps is a neighbour. A small union-find joins them; labels are 1..K in
    row-major order of each component's first tile.
    """
    flagged = np.asarray(flagged, dtype=bool)
    n_rows, n_cols = flagged.shape
    parent = np.arange(n_rows * n_cols)

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:  # path compression
            parent[i], i = root, parent[i]
        return root

    def reach(starts, stops):
        # Largest index step k such that some interval i touches interval i + k.
        ahead = np.searchsorted(starts, stops, side="right") - 1 - np.arange(len(starts))
        return int(ahead.max(initial=0))

    kr = reach(edges.row_starts, edges.row_stops)
    kc = reach(edges.col_starts, edges.col_stops)
    for dr in range(0, kr + 1):
        for dc in range(-kc, kc + 1):
            if dr == 0 and dc <= 0:
                continue
            # Pairs (r, c) -- (r + dr, c + dc), both inside the grid.
            r = np.arange(0, n_rows - dr)
            c = np.arange(max(0, -dc), min(n_cols, n_cols - dc))
            if len(r) == 0 or len(c) == 0:
                continue
            touch_r = edges.row_starts[r + dr] <= edges.row_stops[r]
            a, b = edges.col_starts[c], edges.col_starts[c + dc]
            a_stop, b_stop = edges.col_stops[c], edges.col_stops[c + dc]
            touch_c = (np.maximum(a, b) <= np.minimum(a_stop, b_stop))
            both = flagged[np.ix_(r, c)] & flagged[np.ix_(r + dr, c + dc)]
            both &= touch_r[:, None] & touch_c[None, :]
            for i, j in zip(*np.nonzero(both)):
                ra, rb = find(int(r[i] * n_cols + c[j])), find(int((r[i] + dr) * n_cols + c[j] + dc))
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)

    labels = np.zeros(n_rows * n_cols, dtype=np.int32)
    roots: dict[int, int] = {}
    for i in np.flatnonzero(flagged.ravel()):
        root = find(int(i))
        labels[i] = roots.setdefault(root, len(roots) + 1)
    return labels.reshape(n_rows, n_cols)


def confidence_class(peak_probability: float) -> str:
    """``high``/``medium``/``low`` from a detection's peak probability (:data:`CONFIDENCE_LEVELS`)."""
    for name, lower in CONFIDENCE_LEVELS:
        if peak_probability >= lower:
            return name
    return CONFIDENCE_LEVELS[-1][0]


def _ring_area(ring: Sequence[Sequence[float]]) -> float:
    """Signed area of a closed ring (shoelace); positive when counter-clockwise."""
    xy = np.asarray(ring, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def _rfc7946_orient(geometry: dict) -> dict:
    """Exterior rings counter-clockwise, holes clockwise (RFC 7946 section 3.1.6)."""

    def polygon(rings):
        out = []
        for k, ring in enumerate(rings):
            ring = [list(map(float, pt)) for pt in ring]
            ccw = _ring_area(ring) > 0
            if ccw != (k == 0):
                ring = ring[::-1]
            out.append(ring)
        return out

    if geometry["type"] == "Polygon":
        return {"type": "Polygon", "coordinates": polygon(geometry["coordinates"])}
    if geometry["type"] == "MultiPolygon":
        return {"type": "MultiPolygon", "coordinates": [polygon(p) for p in geometry["coordinates"]]}
    return geometry


def _bbox(geometry: dict) -> list[float]:
    coords = np.array(
        [pt for poly in _polygons(geometry) for ring in poly for pt in ring], dtype=np.float64
    )
    return [float(coords[:, 0].min()), float(coords[:, 1].min()), float(coords[:, 0].max()), float(coords[:, 1].max())]


def _polygons(geometry: dict) -> list:
    return [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]


def _to_wgs84(geometry: dict, crs: Any) -> dict:
    """Reproject a map-coordinate geometry to RFC 7946 longitude/latitude, oriented."""
    from rasterio.warp import transform_geom

    geom = transform_geom(crs, "EPSG:4326", geometry, precision=8)
    return _rfc7946_orient(dict(geom))


def _component_geometries(labels: np.ndarray, edges: TileEdges, transform: Affine) -> dict[int, dict]:
    """Union of the footprints of each component's tiles, in map coordinates, by label.

    The tiles' edges cut the survey into a coarse irregular lattice of *elementary cells*
    (at most 2 n_rows x 2 n_cols); each cell takes the label of the component covering it
    (two components never share a cell: tiles sharing one would touch). One pass of
    rasterio's polygonizer over that lattice traces every component in index space, and the
    vertices are mapped back to pixels, then to map coordinates. Exact, and never touches
    survey-resolution arrays.
    """
    import rasterio.features

    ys = np.unique(np.concatenate([edges.row_starts, edges.row_stops]))
    xs = np.unique(np.concatenate([edges.col_starts, edges.col_stops]))
    i0 = np.searchsorted(ys, edges.row_starts)  # lattice rows [i0, i1) of each tile row
    i1 = np.searchsorted(ys, edges.row_stops)
    j0 = np.searchsorted(xs, edges.col_starts)
    j1 = np.searchsorted(xs, edges.col_stops)
    lattice = np.zeros((len(ys) - 1, len(xs) - 1), dtype=np.int32)
    for r, c in zip(*np.nonzero(labels)):
        lattice[i0[r]:i1[r], j0[c]:j1[c]] = labels[r, c]
    polygons: dict[int, list] = {}
    for shape, value in rasterio.features.shapes(lattice, mask=lattice > 0, connectivity=4):
        rings = []
        for ring in shape["coordinates"]:
            idx = np.rint(np.asarray(ring)).astype(int)  # (n, 2) lattice vertex (j, i)
            mx, my = transform * (xs[idx[:, 0]], ys[idx[:, 1]])
            rings.append(np.column_stack([mx, my]).tolist())
        polygons.setdefault(int(value), []).append(rings)
    return {
        k: {"type": "Polygon", "coordinates": polys[0]} if len(polys) == 1 else {"type": "MultiPolygon", "coordinates": polys}
        for k, polys in polygons.items()
    }


def detections_geojson(
    probabilities: np.ndarray,
    grid: Any,
    threshold: float,
    properties: Mapping[str, Any] | None = None,
) -> dict:
    """Detections as an RFC 7946 FeatureCollection (dict), strongest first.

    ``probabilities`` (n_rows, n_cols) on ``grid`` (NaN = not scored). A tile is flagged when
    its probability is ≥ ``threshold``; flagged tiles that touch are one detection (see
    :func:`tile_components`). Each feature carries ``id``, ``peak_probability``,
    ``mean_probability`` (over its tiles), ``tile_count``, ``confidence``, ``threshold``,
    the longitude/latitude of its peak tile's centre, and the constant ``properties`` given
    (survey id, model id).
    """
    import rasterio
    from rasterio.warp import transform as warp_transform

    p = np.asarray(probabilities, dtype=np.float64)
    edges = tile_edges(grid)
    flagged = np.isfinite(p) & (p >= threshold)
    labels = tile_components(flagged, edges)
    n_cols = p.shape[1]
    # The tiles of each component, without scanning the whole grid once per component.
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.cumsum(np.bincount(flat, minlength=1))
    components = []
    for k in range(1, len(bounds)):
        idx = order[bounds[k - 1]:bounds[k]]
        rows, cols = idx // n_cols, idx % n_cols
        values = p[rows, cols]
        peak = int(np.argmax(values))
        components.append((float(values[peak]), k, values, (rows[peak], cols[peak])))
    components.sort(key=lambda item: (-item[0], item[1]))  # strongest first

    # Peak tile centres to longitude/latitude in one call.
    peaks = np.array([pk for *_, pk in components], dtype=np.int64).reshape(-1, 2)
    cx = 0.5 * (edges.col_starts[peaks[:, 1]] + edges.col_stops[peaks[:, 1]])
    cy = 0.5 * (edges.row_starts[peaks[:, 0]] + edges.row_stops[peaks[:, 0]])
    mx, my = grid.transform * (cx, cy)
    lons, lats = warp_transform(grid.crs, "EPSG:4326", list(mx), list(my)) if len(peaks) else ([], [])

    geometries = _component_geometries(labels, edges, grid.transform)
    features = []
    with rasterio.Env():  # one GDAL environment for all the per-detection calls
        for rank, (peak, k, values, _) in enumerate(components, start=1):
            geometry = _to_wgs84(geometries[k], grid.crs)
            props = {
                "id": rank,
                "peak_probability": round(peak, 6),
                "mean_probability": round(float(values.mean()), 6),
                "tile_count": int(len(values)),
                "confidence": confidence_class(peak),
                "threshold": float(threshold),
                "peak_lon": round(float(lons[rank - 1]), 8),
                "peak_lat": round(float(lats[rank - 1]), 8),
                **dict(properties or {}),
            }
            features.append(
                {"type": "Feature", "id": rank, "bbox": _bbox(geometry), "geometry": geometry, "properties": props}
            )
    return {"type": "FeatureCollection", "features": features}


def footprints_geojson(
    select: np.ndarray,
    edges: TileEdges,
    transform: Affine,
    crs: Any,
    properties: Sequence[Mapping[str, Any]],
) -> dict:
    """One RFC 7946 polygon feature per selected tile (row-major), with its own properties."""
    features = []
    rows, cols = np.nonzero(select)
    if len(properties) != len(rows):
        raise ValueError(f"{len(properties)} property dicts for {len(rows)} selected tiles")
    for r, c, props in zip(rows, cols, properties):
        x0, x1 = edges.col_starts[c], edges.col_stops[c]
        y0, y1 = edges.row_starts[r], edges.row_stops[r]
        ring = [transform * (x, y) for x, y in ((x0, y0), (x0, y1), (x1, y1), (x1, y0), (x0, y0))]
        geometry = _to_wgs84({"type": "Polygon", "coordinates": [[list(pt) for pt in ring]]}, crs)
        features.append({"type": "Feature", "bbox": _bbox(geometry), "geometry": geometry, "properties": dict(props)})
    return {"type": "FeatureCollection", "features": features}


# --------------------------------------------------------------------------------------------
# Rasters


def cog_overview_count(height: int, width: int, smallest: int = 64) -> int:
    """Overview levels (each halving) until the larger side is at most ``smallest``; at least 1.

    GDAL's COG driver adds no overview to a raster smaller than one 512 block unless asked;
    QGIS opens coarse maps faster with them, so damwatch always asks for at least one.
    """
    return max(1, math.ceil(math.log2(max(height, width, 1) / smallest)))


def write_cog(
    path: str | os.PathLike,
    array: np.ndarray,
    transform: Affine,
    crs: Any,
    nodata: float | int | None,
    colormap: Mapping[int, tuple[int, ...]] | None = None,
    resampling: str = "average",
    tags: Mapping[str, str] | None = None,
) -> Path:
    """Write one band as a Cloud-Optimized GeoTIFF: 512 internal tiles, overviews, deflate.

    GDAL's COG driver only copies from an existing dataset, so a tiled GeoTIFF is written
    beside the target first and removed after. ``resampling`` builds the overviews
    (``average`` for probabilities, ``nearest`` for class codes).
    """
    import rasterio
    import rasterio.shutil

    path = Path(path)
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"write_cog takes one band (h, w), got shape {array.shape}")
    h, w = array.shape
    scratch = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tif")
    profile = dict(
        driver="GTiff", width=w, height=h, count=1, dtype=array.dtype.name, crs=crs,
        transform=transform, nodata=nodata, tiled=True, blockxsize=512, blockysize=512,
        compress="deflate",
    )
    try:
        with rasterio.open(scratch, "w", **profile) as dst:
            dst.write(array, 1)
            if colormap is not None:
                dst.write_colormap(1, dict(colormap))
            if tags:
                dst.update_tags(**tags)
        predictor = "YES" if array.dtype.kind == "f" else "NO"
        rasterio.shutil.copy(
            scratch, path, driver="COG", BLOCKSIZE=512, COMPRESS="DEFLATE", PREDICTOR=predictor,
            OVERVIEW_RESAMPLING=resampling.upper(), OVERVIEW_COUNT=cog_overview_count(h, w),
        )
    finally:
        scratch.unlink(missing_ok=True)
    return path


def survey_thumbnail(survey: Any, max_side: int = 1200, client: Any = None) -> tuple[np.ndarray, Affine]:
    """An RGB (h, w, 3) float array in [0, 1] of a survey, every k-th pixel, and its transform.

    Uses the bands named red/green/blue when present, else the first band in grey; each band
    is stretched between its 2nd and 98th percentile over valid pixels. The strided read goes
    through Dask (``client`` or the default scheduler), chunk by chunk.
    """
    k = max(1, math.ceil(max(survey.height, survey.width) / max_side))
    names = ("red", "green", "blue")
    bands = [survey.bands.index(n) for n in names] if all(n in survey.bands for n in names) else [0]
    image = survey.image_dask()[bands, ::k, ::k]
    valid = survey.valid_dask()[::k, ::k]
    if client is not None:
        image, valid = client.compute([image, valid], sync=True)
    else:
        import dask

        image, valid = dask.compute(image, valid)
    image = np.asarray(image, dtype=np.float32)
    valid = np.asarray(valid, dtype=bool)
    out = np.zeros(image.shape[1:] + (3,), dtype=np.float32)
    for i, band in enumerate(image):
        values = band[valid] if valid.any() else band.ravel()
        lo, hi = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
        out[..., i] = np.clip((band - lo) / max(hi - lo, 1e-6), 0, 1)
    if len(bands) == 1:
        out[..., 1] = out[..., 2] = out[..., 0]
    out[~valid] = 1.0  # nodata shows as white paper
    return out, survey.transform * Affine.scale(k)


def _extent(transform: Affine, height: int, width: int) -> tuple[float, float, float, float]:
    """(left, right, bottom, top) of a north-up raster, for matplotlib's ``imshow(extent=)``."""
    left, top = transform * (0, 0)
    right, bottom = transform * (width, height)
    return left, right, bottom, top


def render_quicklook(
    path: str | os.PathLike,
    panels: Sequence[Mapping[str, Any]],
    title: str,
    dpi: int = 110,
) -> Path:
    """Draw side-by-side map panels to a PNG.

    Each panel is a dict with ``title``, optional ``image`` (h, w, 3) and ``image_transform``,
    and an ``overlay`` (h, w) with ``overlay_transform``, ``cmap`` (name or Colormap),
    ``vmin``/``vmax``, ``alpha``, optional ``norm`` and ``colorbar`` label, optional
    ``outlines`` (list of lists of map-coordinate (x, y) rings). Axes are map coordinates.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(6.2 * n, 6.0), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel.get("image") is not None:
            img = panel["image"]
            ax.imshow(img, extent=_extent(panel["image_transform"], *img.shape[:2]), interpolation="bilinear")
        ov = np.ma.masked_invalid(np.asarray(panel["overlay"], dtype=np.float64))
        if "mask_below" in panel:
            ov = np.ma.masked_where(ov.filled(-np.inf) < panel["mask_below"], ov)
        shown = ax.imshow(
            ov, extent=_extent(panel["overlay_transform"], *ov.shape), cmap=panel.get("cmap", "magma"),
            vmin=panel.get("vmin"), vmax=panel.get("vmax"), norm=panel.get("norm"),
            alpha=panel.get("alpha", 0.6), interpolation="nearest",
        )
        if panel.get("outlines"):  # one collection: thousands of ax.plot calls take seconds
            from matplotlib.collections import LineCollection

            ax.add_collection(LineCollection(
                [np.asarray(ring) for ring in panel["outlines"]],
                colors=panel.get("outline_color", "cyan"), linewidths=1.0,
            ))
        if panel.get("colorbar"):
            cb = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
            cb.set_label(panel["colorbar"])
            if panel.get("ticks") is not None:
                cb.set_ticks(panel["ticks"], labels=panel.get("ticklabels"))
        ax.set_title(panel["title"], fontsize=10)
        ax.ticklabel_format(useOffset=False, style="plain")
        ax.tick_params(labelsize=7)
        ax.set_xlabel("easting (map units)", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


# --------------------------------------------------------------------------------------------
# Ground truth and metrics


def read_truth(path: str | os.PathLike) -> dict:
    """A ground-truth GeoJSON FeatureCollection (RFC 7946 longitude/latitude unless it names a crs)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"truth file {path} does not exist; give the ground-truth GeoJSON written by `damwatch synth` or your own") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"truth file {path} is not valid JSON ({exc}); give a GeoJSON FeatureCollection") from None
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection" or not isinstance(data.get("features"), list):
        raise InputError(f"truth file {path} is not a GeoJSON FeatureCollection; give one whose features are the objects to find")
    return data


def _is_target(props: Mapping[str, Any]) -> bool:
    """Truth features that are objects to find, not hard negatives.

    ``class`` "dam" (the synthetic truth; ``class`` "hard_negative" is not), or, in a truth
    without ``class``, a feature without a ``kind`` or with ``kind`` "dam".
    """
    if "class" in props:
        return props["class"] == "dam"
    return props.get("kind", "dam") in ("dam", None)


def _exists_on(props: Mapping[str, Any], date: _dt.date | None) -> bool:
    """Whether a truth object exists on ``date``, from its ``dates`` list when it has one."""
    dates = props.get("dates")
    if date is None or dates is None:
        return True
    return date.isoformat() in {str(d)[:10] for d in dates}


def _representative_point(geometry: Mapping[str, Any]) -> tuple[float, float]:
    """The mean of a geometry's vertices (a point for a point; the middle of a short dam line)."""
    def flatten(coords):
        if isinstance(coords[0], (int, float)):
            yield coords
        else:
            for c in coords:
                yield from flatten(c)

    pts = np.array([c[:2] for c in flatten(geometry["coordinates"])], dtype=np.float64)
    return float(pts[:, 0].mean()), float(pts[:, 1].mean())


def truth_points(
    truth: Mapping[str, Any], crs: Any, date: _dt.date | None = None
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Map coordinates (xs, ys) in ``crs`` and properties of the truth's target objects.

    Target objects: see :func:`_is_target` (hard negatives are left out); with ``date``, only
    those whose ``dates`` list holds it. Each object is located at the mean of its vertices.
    """
    from rasterio.warp import transform as warp_transform

    lonlat, props = [], []
    for feature in truth["features"]:
        p = feature.get("properties") or {}
        if feature.get("geometry") and _is_target(p) and _exists_on(p, date):
            lonlat.append(_representative_point(feature["geometry"]))
            props.append(p)
    if not lonlat:
        return np.zeros(0), np.zeros(0), []
    lon, lat = np.array(lonlat).T
    xs, ys = warp_transform("EPSG:4326", crs, lon.tolist(), lat.tolist())
    return np.asarray(xs), np.asarray(ys), props


def truth_tile_labels(
    xs: np.ndarray, ys: np.ndarray, edges: TileEdges, transform: Affine
) -> np.ndarray:
    """(n_objects, n_rows, n_cols) bool: which tiles contain each object's point (map coords)."""
    inverse = ~transform
    out = np.zeros((len(xs),) + edges.shape, dtype=bool)
    for k, (x, y) in enumerate(zip(xs, ys)):
        col, row = inverse * (x, y)
        r0, r1 = _covering_range(edges.row_starts, edges.row_stops, np.array([row]))
        c0, c1 = _covering_range(edges.col_starts, edges.col_stops, np.array([col]))
        out[k, r0[0]:r1[0], c0[0]:c1[0]] = True
    return out


def _binary_metrics(y_true: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """Tile-level precision, recall, F1, ROC AUC and average precision (ann.metrics)."""
    from ann import metrics

    y_true = np.asarray(y_true).astype(np.int8)
    p = np.asarray(p, dtype=np.float64)
    y_pred = (p >= threshold).astype(np.int8)
    n_pos = int(y_true.sum())
    out = {
        "n_tiles": int(y_true.size),
        "n_positive": n_pos,
        "precision": float(metrics.precision(y_true, y_pred)),
        "recall": float(metrics.recall(y_true, y_pred)),
        "f1": float(metrics.f1(y_true, y_pred)),
    }
    both = 0 < n_pos < y_true.size
    out["roc_auc"] = float(metrics.roc_auc(y_true, p)) if both else None
    out["average_precision"] = float(metrics.average_precision(y_true, p)) if n_pos else None
    return out


def detection_metrics(
    probabilities: np.ndarray,
    grid: Any,
    truth: Mapping[str, Any],
    threshold: float,
    date: _dt.date | None = None,
) -> dict:
    """Tile-level metrics of a scored grid against a ground truth, overall and per ``context``.

    A tile is positive when it contains a target object's point (see :func:`truth_points`),
    negative otherwise; unscored tiles are left out. Per context, the positives are the tiles
    holding an object of that context and the negatives the tiles holding no object at all
    (tiles holding only other contexts are left out), so a context's recall says how many of
    its objects the model finds and its precision is measured against the same negatives.
    """
    edges = tile_edges(grid)
    xs, ys, props = truth_points(truth, grid.crs, date)
    holds = truth_tile_labels(xs, ys, edges, grid.transform)  # (n_objects, n_rows, n_cols)
    p = np.asarray(probabilities, dtype=np.float64)
    scored = np.isfinite(p)
    positive = holds.any(axis=0)
    report: dict[str, Any] = {
        "threshold": float(threshold),
        "rule": "tile positive when it contains a truth object's point (mean of its vertices); unscored tiles left out",
        "n_objects": len(props),
        "overall": _binary_metrics(positive[scored], p[scored], threshold),
        "by_context": {},
    }
    contexts = sorted({str(pr.get("context")) for pr in props if pr.get("context") is not None})
    for ctx in contexts:
        mine = holds[[str(pr.get("context")) == ctx for pr in props]].any(axis=0)
        keep = scored & (mine | ~positive)
        report["by_context"][ctx] = _binary_metrics(mine[keep], p[keep], threshold)
        report["by_context"][ctx]["n_objects"] = sum(str(pr.get("context")) == ctx for pr in props)
    return report


# --------------------------------------------------------------------------------------------
# Output directories and provenance


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write indented JSON (NaN written as null, as JSON has no NaN)."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, np.generic):
            return clean(v.item())
        if isinstance(v, Path):
            return str(v)
        return v

    Path(path).write_text(json.dumps(clean(data), indent=2, allow_nan=False) + "\n")
    return Path(path)


def refuse_existing_results(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raise :class:`InputError` if ``out_dir`` is a file, or holds anything and not ``overwrite``.

    Commands call it before any work, so a refused run costs nothing.
    """
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


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``out_dir`` only if the block succeeds.

    An ``out_dir`` that exists and holds anything is refused (:class:`InputError`) unless
    ``overwrite``; then the old directory is replaced only once the new one is complete. On
    any error the temporary directory is removed and ``out_dir`` is left as it was.
    """
    out_dir = refuse_existing_results(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def model_provenance(store: "Store", model_id: str) -> dict:
    """Hashes of a model's files in the store (absent files are listed as None)."""
    out = {"id": model_id}
    for ext in ("npz", "json"):
        f = Path(store.models_dir) / f"{model_id}.{ext}"
        out[f"{ext}_sha256"] = file_sha256(f) if f.is_file() else None
    return out


def survey_provenance(survey: Any) -> dict:
    """What identifies a survey's input: id, source file name and hash, grid and CRS."""
    return {
        "id": survey.id,
        "area": survey.area,
        "date": survey.date.isoformat(),
        "source_name": survey.source_name,
        "source_sha256": survey.source_sha256,
        "crs": survey.crs.to_string(),
        "transform": list(survey.transform)[:6],
        "shape": [survey.height, survey.width],
        "bands": list(survey.bands),
    }


def base_provenance(kind: str, settings: Mapping[str, Any]) -> dict:
    """The common head of every provenance.json: what made it, when, with which settings."""
    from pipeline import __version__

    return {
        "kind": kind,
        "damwatch_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": dict(settings),
    }


def _outline_rings(geojson: Mapping[str, Any], crs: Any) -> list[list[tuple[float, float]]]:
    """Exterior rings of a GeoJSON's polygons, back in ``crs`` map coordinates, for plots."""
    from rasterio.warp import transform_geom

    rings = []
    for feature in geojson["features"]:
        geom = transform_geom("EPSG:4326", crs, feature["geometry"])
        for poly in _polygons(geom):
            rings.append(poly[0])
    return rings


def write_detection_maps(
    store: "Store",
    predictions: "Predictions",
    out_dir: str | os.PathLike,
    threshold: float | None = None,
    truth: str | os.PathLike | None = None,
    overwrite: bool = False,
    cell: int | None = None,
    client: Any = None,
) -> dict[str, Any]:
    """Write the detection outputs of one scored survey into ``out_dir``, all or nothing.

    ``threshold`` defaults to the model's decision threshold; ``cell`` (survey pixels) to the
    grid's stride. ``truth`` (a GeoJSON path) adds ``metrics.json``. Returns the
    output files (Paths) by name: ``probability``, ``detections``, ``quicklook``,
    ``provenance`` and, with truth, ``metrics_file``; plus ``n_detections`` (int) and
    ``metrics`` (the report dict, or None).
    """
    threshold = float(predictions.threshold if threshold is None else threshold)
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"--threshold must be a probability between 0 and 1, got {threshold}")
    truth_data = read_truth(truth) if truth is not None else None  # fail before any work
    survey = store.survey(predictions.survey_id)
    grid = predictions.grid
    out_dir = Path(out_dir)
    result: dict[str, Any] = {"metrics": None}
    with atomic_output_dir(out_dir, overwrite) as tmp:
        values, map_transform = probability_map(predictions.probabilities, grid, cell)
        write_cog(
            tmp / DETECTION_FILES["probability"], values, map_transform, grid.crs, PROBABILITY_NODATA,
            tags={"survey_id": survey.id, "model_id": predictions.model_id, "rule": "mean of scored tiles containing the cell centre"},
        )
        detections = detections_geojson(
            predictions.probabilities, grid, threshold,
            {"survey_id": survey.id, "model_id": predictions.model_id},
        )
        write_json(tmp / DETECTION_FILES["detections"], detections)
        thumb, thumb_transform = survey_thumbnail(survey, client=client)
        render_quicklook(
            tmp / DETECTION_FILES["quicklook"],
            [{
                "title": f"tile probability (cells of {cell or grid.stride} px), {len(detections['features'])} detections ≥ {threshold:g}",
                "image": thumb, "image_transform": thumb_transform,
                "overlay": values, "overlay_transform": map_transform, "cmap": "magma",
                "vmin": 0.0, "vmax": 1.0, "alpha": 0.55, "mask_below": min(0.2, threshold),
                "colorbar": "probability", "outlines": _outline_rings(detections, grid.crs),
            }],
            title=f"{survey.id} — model {predictions.model_id}",
        )
        provenance = base_provenance("detect", {
            "threshold": threshold, "map_cell_px": int(cell or grid.stride),
            "overlap_rule": "mean of scored tiles whose footprint contains the cell centre",
            "confidence_levels": dict(CONFIDENCE_LEVELS),
            "truth": str(truth) if truth is not None else None,
        })
        provenance["inputs"] = {
            "survey": survey_provenance(survey),
            "model": model_provenance(store, predictions.model_id),
            "feature_spec": predictions.spec,
            "truth_sha256": file_sha256(truth) if truth is not None else None,
            "predictions": f"predictions/{predictions.model_id}/{survey.id}",
        }
        provenance["tile_grid"] = grid.to_dict()
        provenance["n_scored_tiles"] = int(np.isfinite(predictions.probabilities).sum())
        provenance["n_detections"] = len(detections["features"])
        if truth_data is not None:
            metrics = detection_metrics(predictions.probabilities, grid, truth_data, threshold, survey.date)
            write_json(tmp / DETECTION_FILES["metrics"], metrics)
            result["metrics"] = metrics
        provenance["outputs"] = {
            name: {"file": f.name, "sha256": file_sha256(f)} for name, f in sorted(
                (n, tmp / fn) for n, fn in DETECTION_FILES.items() if n != "provenance" and (tmp / fn).exists()
            )
        }
        write_json(tmp / DETECTION_FILES["provenance"], provenance)
        written = {n for n, fn in DETECTION_FILES.items() if (tmp / fn).exists()}
    for name in sorted(written):  # the metrics *file* is "metrics_file": "metrics" is the report
        result["metrics_file" if name == "metrics" else name] = out_dir / DETECTION_FILES[name]
    result["n_detections"] = len(detections["features"])
    return result
