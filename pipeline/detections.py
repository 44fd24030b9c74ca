"""Detections: the objects a scientist counts, from a map of probabilities.

A tile is *flagged* when its probability reaches the decision threshold. Flagged tiles whose
footprints touch or overlap are one *detection* (an object spanning tiles is one detection,
:func:`tile_components`). Each detection is an RFC 7946 GeoJSON feature
(:func:`detections_geojson`) whose geometry is the union of its tiles' footprints, with its
peak and mean probability, tile count and a *confidence class* from the peak probability
(:data:`CONFIDENCE_LEVELS`: ``high`` ≥ 0.9, ``medium`` ≥ 0.7, else ``low``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
import rasterio.features
from affine import Affine
from rasterio.warp import transform as warp_transform

from pipeline.errors import InputError
from pipeline.geojson import feature, feature_collection, parse_crs, read_features, single_parts, to_wgs84
from pipeline.maps import TileEdges, tile_edges

__all__ = [
    "CONFIDENCE_LEVELS",
    "confidence_class",
    "tile_components",
    "detections_geojson",
    "footprints_geojson",
    "Points",
    "find_peaks",
    "read_detections",
    "footprints",
]

#: Confidence classes of a detection, from its peak tile probability: the first level whose
#: lower bound the peak reaches. "low" is any flagged detection below 0.7 (its peak is at
#: least the detection threshold).
CONFIDENCE_LEVELS: tuple[tuple[str, float], ...] = (("high", 0.9), ("medium", 0.7), ("low", 0.0))


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


def _component_geometries(labels: np.ndarray, edges: TileEdges, transform: Affine) -> dict[int, dict]:
    """Union of the footprints of each component's tiles, in map coordinates, by label.

    The tiles' edges cut the survey into a coarse irregular lattice of *elementary cells*
    (at most 2 n_rows x 2 n_cols); each cell takes the label of the component covering it
    (two components never share a cell: tiles sharing one would touch). One pass of
    rasterio's polygonizer over that lattice traces every component in index space, and the
    vertices are mapped back to pixels, then to map coordinates. Exact, and never touches
    survey-resolution arrays.
    """
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
            geometry = to_wgs84(geometries[k], grid.crs)
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
            features.append(feature(geometry, props, id=rank))
    return feature_collection(features)


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
        geometry = to_wgs84({"type": "Polygon", "coordinates": [[list(pt) for pt in ring]]}, crs)
        features.append(feature(geometry, props))
    return feature_collection(features)


# --------------------------------------------------------------------------------------------
# Objects from a probability map


@dataclass(frozen=True)
class Points:
    """Point detections in map coordinates: ``x``, ``y`` and ``probability``, (N,) each,
    strongest first."""

    x: np.ndarray
    y: np.ndarray
    probability: np.ndarray

    def __len__(self) -> int:
        return int(self.probability.size)

    def above(self, threshold: float) -> "Points":
        keep = self.probability >= threshold
        return Points(self.x[keep], self.y[keep], self.probability[keep])


def find_peaks(values: np.ndarray, transform: Affine, radius: float, floor: float = 0.0) -> Points:
    """The objects of a probability map: local maxima at least ``floor``, lesser maxima within
    ``radius`` (map units) of a stronger one suppressed.

    ``values`` (h, w) on the grid of ``transform`` (NaN where not scored). A cell is a local
    maximum when no neighbour among its 8 is larger; maxima are then taken strongest first,
    and each removes the weaker ones whose centres lie within ``radius`` of its own (greedy
    non-maximum suppression, as object detectors do). Ties keep the first in row-major order.
    Each object sits at its cell's centre.
    """
    from scipy import ndimage, spatial  # ~0.5 s: only when objects are made

    v = np.where(np.isfinite(values), values, -np.inf).astype(np.float64)
    local = (v == ndimage.maximum_filter(v, size=3, mode="constant", cval=-np.inf)) & (v >= floor) & np.isfinite(v)
    rows, cols = np.nonzero(local)
    p = v[rows, cols]
    order = np.lexsort((cols, rows, -p))  # strongest first; ties in row-major order
    rows, cols, p = rows[order], cols[order], p[order]
    x, y = transform * (cols + 0.5, rows + 0.5)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.ones(p.size, dtype=bool)
    if p.size > 1 and radius > 0:
        tree = spatial.cKDTree(np.column_stack([x, y]))
        for i in range(p.size):
            if keep[i]:
                near = np.asarray(tree.query_ball_point([x[i], y[i]], r=radius), dtype=np.int64)
                keep[near[near > i]] = False
    return Points(x[keep], y[keep], p[keep])


def read_detections(path: str | os.PathLike, crs: Any) -> Points:
    """The detections of a GeoJSON file as points in ``crs`` map coordinates, strongest first.

    A detection is a feature with a probability (``probability``, else ``peak_probability``):
    a Point is where it is; another geometry is located at its ``peak_lon``/``peak_lat`` when
    given (damwatch's own detections), else at the mean of its vertices. Coordinates are WGS84
    unless the file's legacy ``crs`` member names another CRS, and are reprojected.
    """
    features, crs_name = read_features(path, what="detections file")
    source = parse_crs(None, crs_name, path, "detections file")
    u, v, p = [], [], []
    for k, f in enumerate(features):
        props = f.get("properties") or {}
        prob = props.get("probability", props.get("peak_probability"))
        if not isinstance(prob, (int, float)) or isinstance(prob, bool) or not 0 <= prob <= 1:
            raise InputError(
                f"detections file {path}: feature {k} (id {f.get('id', props.get('id'))!r}) has no probability in "
                f"[0, 1] (property 'probability' or 'peak_probability'); give each detection one"
            )
        geometry = f.get("geometry") or {}
        if geometry.get("type") == "Point":
            a, b = geometry["coordinates"][:2]
        elif "peak_lon" in props and "peak_lat" in props and crs_name is None:
            a, b = props["peak_lon"], props["peak_lat"]
        elif geometry:
            xy = np.array([q[:2] for part in single_parts(geometry) for q in _positions(part["coordinates"])], float)
            a, b = xy.mean(axis=0)
        else:
            raise InputError(f"detections file {path}: feature {k} has no geometry; give each detection a location")
        u.append(float(a))
        v.append(float(b))
        p.append(float(prob))
    if not p:
        return Points(np.zeros(0), np.zeros(0), np.zeros(0))
    x, y = warp_transform(source, crs, u, v)
    order = np.argsort(-np.asarray(p), kind="stable")
    return Points(np.asarray(x)[order], np.asarray(y)[order], np.asarray(p)[order])


def _positions(coords: Any) -> list:
    if coords and isinstance(coords[0], (int, float)):
        return [coords]
    return [q for c in coords for q in _positions(c)]


def footprints(values: np.ndarray, transform: Affine, points: Points, threshold: float, radius: float) -> list[dict | None]:
    """Footprint polygons (map coordinates) of point detections on their probability map.

    A detection's footprint is the cells at or above ``threshold`` within ``radius`` of it
    that are nearer to it than to any other detection: the extent of the map's response that
    the detection stands for. One geometry per point (None when no cell qualifies).
    """
    h, w = values.shape
    label = np.zeros((h, w), np.int32)
    best = np.full((h, w), np.inf)
    above = np.isfinite(values) & (values >= threshold)
    inv = ~transform
    cell = abs(transform.a)
    k = int(np.ceil(radius / cell)) + 1
    for i, (x, y) in enumerate(zip(points.x, points.y), start=1):
        c, r = inv * (x, y)
        r0, r1, c0, c1 = max(int(r) - k, 0), min(int(r) + k + 1, h), max(int(c) - k, 0), min(int(c) + k + 1, w)
        if r0 >= r1 or c0 >= c1:
            continue
        rr, cc = np.mgrid[r0:r1, c0:c1]
        cx, cy = transform * (cc + 0.5, rr + 0.5)
        d = np.hypot(cx - x, cy - y)
        take = (d <= radius) & (d < best[r0:r1, c0:c1]) & above[r0:r1, c0:c1]
        best[r0:r1, c0:c1][take] = d[take]
        label[r0:r1, c0:c1][take] = i
    parts: dict[int, list] = {}
    for shape, value in rasterio.features.shapes(label, mask=label > 0, transform=transform, connectivity=4):
        parts.setdefault(int(value), []).append(shape["coordinates"])
    out: list[dict | None] = []
    for i in range(1, len(points) + 1):
        polys = parts.get(i)
        out.append(None if not polys else {"type": "Polygon", "coordinates": polys[0]} if len(polys) == 1
                   else {"type": "MultiPolygon", "coordinates": polys})
    return out
