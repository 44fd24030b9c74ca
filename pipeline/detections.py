"""Detections: the objects a scientist counts, from a map of probabilities.

A *detection* is a peak of the probability map at or above the decision threshold: a local
maximum, with lesser maxima within half the model's footprint suppressed (:func:`find_peaks`),
so one object seen by overlapping windows is one detection. Its *footprint* is the patch of
cells at or above the threshold around the peak, within the same radius (:func:`footprints`).
Each detection carries a *confidence class* from its probability (:data:`CONFIDENCE_LEVELS`:
``high`` ≥ 0.9, ``medium`` ≥ 0.7, else ``low``). Detections written by other tools are read
back by :func:`read_detections` (for ``damwatch evaluate``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
import rasterio.features
from affine import Affine
from rasterio.warp import transform as warp_transform

from pipeline.errors import InputError
from pipeline.geojson import parse_crs, read_features, single_parts

__all__ = [
    "CONFIDENCE_LEVELS",
    "confidence_class",
    "Points",
    "find_peaks",
    "read_detections",
    "footprints",
]

#: Confidence classes of a detection, from its peak tile probability: the first level whose
#: lower bound the peak reaches. "low" is any flagged detection below 0.7 (its peak is at
#: least the detection threshold).
CONFIDENCE_LEVELS: tuple[tuple[str, float], ...] = (("high", 0.9), ("medium", 0.7), ("low", 0.0))


def confidence_class(peak_probability: float) -> str:
    """``high``/``medium``/``low`` from a detection's peak probability (:data:`CONFIDENCE_LEVELS`)."""
    for name, lower in CONFIDENCE_LEVELS:
        if peak_probability >= lower:
            return name
    return CONFIDENCE_LEVELS[-1][0]


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
