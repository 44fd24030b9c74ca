"""Evaluation against ground truth: how well detections match what is really there.

The *ground truth* is a GeoJSON of the objects really present (:func:`read_truth`): the
targets (``class`` "dam", or features without a ``kind``) and, in synthetic truth, hard
negatives (``class`` "hard_negative"), each with the ``dates`` on which it exists and a
``context`` (the kind of place). An object is located at the mean of its vertices.

Scores, each with the rule it applies written into the report:

- :func:`detection_metrics`: tile level. A tile is positive when it contains a target's
  point; precision, recall, F1, ROC AUC and average precision over the scored tiles, overall
  and per ``context``;
- :func:`change_metrics`: cell level, per change class (new, gone, persisting) of the change
  grid.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine
from rasterio.warp import transform as warp_transform

from ann import metrics
from pipeline.change import CLASS_NAMES, GONE, NEW, NODATA, PERSISTING
from pipeline.geojson import parse_crs, read_features
from pipeline.maps import TileEdges, covering_range, tile_edges

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.change import ChangeResult
    from pipeline.store import Survey

__all__ = ["read_truth", "truth_points", "truth_tile_labels", "detection_metrics", "change_metrics"]


def read_truth(path: str | os.PathLike) -> dict:
    """A ground-truth GeoJSON as a FeatureCollection dict (keeping a legacy ``crs`` member)."""
    features, crs_name = read_features(path, what="truth file")
    truth: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if crs_name is not None:
        truth["crs"] = {"type": "name", "properties": {"name": crs_name}}
    return truth


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

    The truth's coordinates are WGS84 longitude/latitude unless its legacy ``crs`` member
    names another CRS.

    Target objects: see :func:`_is_target` (hard negatives are left out); with ``date``, only
    those whose ``dates`` list holds it. Each object is located at the mean of its vertices.
    """
    lonlat, props = [], []
    for feature in truth["features"]:
        p = feature.get("properties") or {}
        if feature.get("geometry") and _is_target(p) and _exists_on(p, date):
            lonlat.append(_representative_point(feature["geometry"]))
            props.append(p)
    if not lonlat:
        return np.zeros(0), np.zeros(0), []
    lon, lat = np.array(lonlat).T
    source = parse_crs(None, (truth.get("crs") or {}).get("properties", {}).get("name"), "truth", "truth file")
    xs, ys = warp_transform(source, crs, lon.tolist(), lat.tolist())
    return np.asarray(xs), np.asarray(ys), props


def truth_tile_labels(
    xs: np.ndarray, ys: np.ndarray, edges: TileEdges, transform: Affine
) -> np.ndarray:
    """(n_objects, n_rows, n_cols) bool: which tiles contain each object's point (map coords)."""
    inverse = ~transform
    out = np.zeros((len(xs),) + edges.shape, dtype=bool)
    for k, (x, y) in enumerate(zip(xs, ys)):
        col, row = inverse * (x, y)
        r0, r1 = covering_range(edges.row_starts, edges.row_stops, np.array([row]))
        c0, c1 = covering_range(edges.col_starts, edges.col_stops, np.array([col]))
        out[k, r0[0]:r1[0], c0[0]:c1[0]] = True
    return out


def _binary_metrics(y_true: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """Tile-level precision, recall, F1, ROC AUC and average precision (ann.metrics)."""
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


def _truth_classes(truth: dict, before: "Survey", after: "Survey", crs: Any):
    """Truth objects' map coordinates (in ``crs``) and their change class name.

    From each object's ``dates`` list when it has one (present before only: gone; after only:
    new; both: persisting), else from its ``status`` (relative to the truth's first date, so
    swapped when ``before`` is the later survey).
    """
    xs, ys, props = truth_points(truth, crs)
    swap = {"new": "gone", "gone": "new"}
    classes = []
    for p in props:
        dates = p.get("dates")
        if dates is not None:
            days = {str(d)[:10] for d in dates}
            b, a = before.date.isoformat() in days, after.date.isoformat() in days
            classes.append("persisting" if a and b else "new" if a else "gone" if b else "absent")
        else:
            status = str(p.get("status", "persisting"))
            classes.append(swap.get(status, status) if before.date > after.date else status)
    return xs, ys, classes


def change_metrics(result: "ChangeResult", truth: dict, before: "Survey", after: "Survey", tile_size_map: float) -> dict:
    """Cell-level precision, recall, F1 and IoU of each change class against a ground truth.

    A cell truly holds class *c* when an object of class *c* lies within the square of one
    model tile (``tile_size_map`` map units) centred on the cell's centre: the area whose
    tiles see the object. Cells without data on either date are left out. IoU = TP / (TP +
    FP + FN); a class with no true and no predicted cell has no scores (null).
    """
    xs, ys, classes = _truth_classes(truth, before, after, result.grid.crs)
    cx, cy = result.grid.centres()
    half = tile_size_map / 2.0
    scored = result.classes != NODATA
    report: dict[str, Any] = {
        "rule": "cell positive for class c when an object of class c lies in the tile-sized square "
        "centred on the cell centre; nodata cells left out",
        "tile_size_map_units": tile_size_map,
        "thresholds": result.thresholds.to_dict(),
        "classes": {},
    }
    for code in (NEW, GONE, PERSISTING):
        name = CLASS_NAMES[code]
        true = np.zeros(result.grid.shape, dtype=bool)
        for x, y, c in zip(xs, ys, classes):
            if c == name:
                true |= (np.abs(cx - x) <= half) & (np.abs(cy - y) <= half)
        pred = result.classes == code
        tp = int(np.sum(true & pred & scored))
        fp = int(np.sum(~true & pred & scored))
        fn = int(np.sum(true & ~pred & scored))
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / (tp + fn) if tp + fn else None
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
        iou = tp / (tp + fp + fn) if tp + fp + fn else None
        report["classes"][name] = {
            "precision": precision, "recall": recall, "f1": f1, "iou": iou,
            "tp": tp, "fp": fp, "fn": fn, "n_objects": classes.count(name),
        }
    return report
