"""Evaluation against ground truth: how well detections match what is really there.

Scores are computed on **objects**, as a scientist counts dams, with the tile-level scores kept
beside them. Every report states the rule it applies.

*Object matching* (:func:`match_objects`): a detection is a point with a probability; a truth
object is a point (:mod:`pipeline.truth`). Detections are taken strongest first, and each is
matched to the nearest still unmatched truth object within ``radius`` metres (a distance equal
to the radius counts); matched detections are true positives, unmatched ones false positives,
unmatched truth objects false negatives. Because a detection's match never depends on weaker
detections, keeping the detections at or above any threshold keeps their matches: one pass
gives the object-level precision–recall curve over all thresholds and its *average precision*
(Σ over the ranked detections of precision × the recall it adds, as scikit-learn defines it).

Per object, around that core (:func:`evaluate_detections`):

- **by context**: the recall of each truth ``context`` (main stream, side channel, lake outlet,
  any other value) with its number of objects and a 95 % Wilson interval; ``null``, never 0,
  where there are none;
- **look-alikes**: for each ``kind`` of look-alike in the truth, how many of its objects drew a
  detection (a detection within the radius that matches no target), and those false positives
  per km² of the scored area;
- **calibration**: the reliability table of the detections' probabilities against whether they
  matched a target (does a detection reported at 0.8 turn out to be a dam 80 % of the time?),
  its expected calibration error and the Brier score;
- **change** (:func:`evaluate_change`): truth objects carry a change class between two dates
  (:func:`pipeline.truth.change_class`); predicted change objects of each class are matched to
  the truth objects of that class; precision, recall and F1 per class, and the confusion table
  of truth class against predicted class.

A set with no truth objects is *not scorable*: its counts are reported with ``scorable: false``,
never as precision 0 / recall 0 / F1 0.

Cell level, kept beside the object scores: a probability map's cell is positive when a target
lies in the central half of its window (:func:`cell_metrics`); a change cell is positive for a
class when a target of that class lies within the change radius (:func:`change_metrics`).

Distances are in metres: in a geographic CRS the points are first projected to their UTM zone.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from ann import metrics
from pipeline.change import CLASS_NAMES, GONE, NEW, NODATA, PERSISTING
from pipeline.detections import Points, find_peaks, read_detections
from pipeline.errors import InputError
from pipeline.geojson import read_features
from pipeline.truth import TruthObjects, change_class, check_targets, exists_on, truth_objects

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.change import ChangeResult

__all__ = [
    "Z95",
    "wilson_interval",
    "metric_coordinates",
    "match_objects",
    "object_scores",
    "recall_by_context",
    "lookalike_scores",
    "detection_calibration",
    "evaluate_detections",
    "ChangeObjects",
    "evaluate_change",
    "cell_labels",
    "cell_metrics",
    "change_metrics",
    "CANDIDATE_FLOOR",
    "footprint_m",
    "evaluate_detection_folder",
    "change_objects_from_folder",
    "evaluate_change_folder",
    "evaluate_path",
    "score_on_labels",
]

#: The normal quantile of a two-sided 95 % interval.
Z95 = 1.959963984540054
CHANGE_CLASSES = ("new", "gone", "persisting")


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion k/n (None when n = 0).

    ``(p + z²/2n ± z sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n)``: unlike p ± z sqrt(p(1−p)/n) it
    stays inside [0, 1] and is not zero-width at p = 0 or 1, which matters for a context of a
    handful of dams.
    """
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def metric_coordinates(x: np.ndarray, y: np.ndarray, crs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Points of ``crs`` in metres: as they are in a projected CRS in metres, else projected
    to the UTM zone of their mean longitude."""
    crs = CRS.from_user_input(crs)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if crs.is_projected and abs(crs.linear_units_factor[1] - 1.0) < 1e-9:
        return x, y
    lon, lat = (x, y) if crs.is_geographic else warp_transform(crs, "EPSG:4326", x.tolist(), y.tolist())
    lon, lat = np.asarray(lon), np.asarray(lat)
    if lon.size == 0:
        return lon, lat
    zone = int((np.mean(lon) + 180) // 6) % 60 + 1
    utm = CRS.from_epsg((32600 if np.mean(lat) >= 0 else 32700) + zone)
    mx, my = warp_transform("EPSG:4326", utm, lon.tolist(), lat.tolist())
    return np.asarray(mx), np.asarray(my)


def match_objects(
    det_xy: np.ndarray, det_p: np.ndarray, truth_xy: np.ndarray, radius: float
) -> np.ndarray:
    """For each detection, the index of the truth object it matches, or −1 (rule: module docstring).

    ``det_xy`` (D, 2) and ``truth_xy`` (T, 2) in metres; ``det_p`` (D,). Detections of equal
    probability are taken in their given order; a detection equally near two objects takes the
    one listed first.
    """
    det_xy = np.asarray(det_xy, dtype=np.float64).reshape(-1, 2)
    truth_xy = np.asarray(truth_xy, dtype=np.float64).reshape(-1, 2)
    matched = np.full(len(det_xy), -1, dtype=np.int64)
    if len(det_xy) == 0 or len(truth_xy) == 0:
        return matched
    free = np.ones(len(truth_xy), dtype=bool)
    tol = 1e-9 * max(1.0, radius)  # a distance equal to the radius counts, whatever the rounding
    for i in np.argsort(-np.asarray(det_p, dtype=np.float64), kind="stable"):
        d = np.hypot(truth_xy[:, 0] - det_xy[i, 0], truth_xy[:, 1] - det_xy[i, 1])
        d[~free] = np.inf
        j = int(np.argmin(d))
        if d[j] <= radius + tol:
            matched[i] = j
            free[j] = False
    return matched


def _not_scorable(**counts: Any) -> dict:
    return {"precision": None, "recall": None, "f1": None, "average_precision": None, "scorable": False, **counts}


def object_scores(det_p: np.ndarray, matched: np.ndarray, n_truth: int, threshold: float) -> dict:
    """Object-level precision, recall, F1 at ``threshold``, and average precision over all thresholds.

    Also ``curve``: the precision–recall curve (``threshold``, ``precision``, ``recall`` lists,
    one point per distinct detection probability, strongest first).
    """
    p = np.asarray(det_p, dtype=np.float64)
    hit = np.asarray(matched) >= 0
    at = p >= threshold
    counts = {"n_truth": int(n_truth), "n_detections": int(at.sum()), "n_candidates": int(p.size),
              "threshold": float(threshold)}
    if n_truth == 0:
        return _not_scorable(**counts, true_positives=0, false_positives=int(at.sum()),
                             note="no truth objects in the scored area: not scorable")
    tp, fp = int((hit & at).sum()), int((~hit & at).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / n_truth
    f1 = 2 * tp / (2 * tp + fp + (n_truth - tp))
    order = np.argsort(-p, kind="stable")
    ctp, cfp = np.cumsum(hit[order]), np.cumsum(~hit[order])
    last = np.r_[p[order][1:] != p[order][:-1], True] if p.size else np.zeros(0, bool)
    prec, rec = ctp / np.maximum(ctp + cfp, 1), ctp / n_truth
    ap = float(np.sum(np.diff(np.r_[0.0, rec[last]]) * prec[last])) if p.size else 0.0
    return {
        "precision": precision, "recall": recall, "f1": f1, "average_precision": ap, "scorable": True,
        **counts, "true_positives": tp, "false_positives": fp, "false_negatives": int(n_truth - tp),
        "curve": {"threshold": p[order][last].tolist(), "precision": prec[last].tolist(), "recall": rec[last].tolist()},
    }


def recall_by_context(targets: TruthObjects, found: np.ndarray, contexts_known: Sequence[str] = ()) -> dict[str, dict]:
    """Recall per truth ``context``: found / objects, with the 95 % Wilson interval.

    ``contexts_known`` (e.g. every context the truth file uses) are listed too; one without
    objects here has recall ``None``, never 0.
    """
    found = np.asarray(found, dtype=bool)
    contexts = [str(c) for c in targets.values("context", "unspecified")]
    out = {}
    for ctx in sorted(set(contexts) | set(contexts_known)):
        mine = np.array([c == ctx for c in contexts])
        n, k = int(mine.sum()), int((found & mine).sum())
        interval = wilson_interval(k, n)
        out[ctx] = {"recall": k / n if n else None, "n_objects": n, "n_detected": k,
                    "ci95": list(interval) if interval else None}
    return out


def lookalike_scores(
    lookalikes: TruthObjects, look_xy: np.ndarray, fp_xy: np.ndarray, radius: float, area_km2: float,
    kinds_known: Sequence[str] = (),
) -> dict[str, dict]:
    """Per look-alike ``kind``: objects, how many drew a false positive within ``radius``, and
    those false positives per km² (each false positive counted once, for its nearest look-alike)."""
    look_xy = np.asarray(look_xy, dtype=np.float64).reshape(-1, 2)
    fp_xy = np.asarray(fp_xy, dtype=np.float64).reshape(-1, 2)
    kinds = [str(k) for k in lookalikes.values("kind")]
    fooled = np.zeros(len(kinds), dtype=bool)
    fp_kind: list[str | None] = []
    for x, y in fp_xy:
        if not kinds:
            break
        d = np.hypot(look_xy[:, 0] - x, look_xy[:, 1] - y)
        j = int(np.argmin(d))
        if d[j] <= radius * (1 + 1e-9):
            fooled[j] = True
            fp_kind.append(kinds[j])
        else:
            fp_kind.append(None)
    out = {}
    for kind in sorted(set(kinds) | set(kinds_known)):
        mine = np.array([k == kind for k in kinds], dtype=bool)
        n_fp = sum(k == kind for k in fp_kind)
        out[kind] = {
            "n_objects": int(mine.sum()),
            "n_detected": int((fooled & mine).sum()),
            "false_positives": int(n_fp),
            "false_positives_per_km2": n_fp / area_km2 if area_km2 > 0 else None,
        }
    return out


def detection_calibration(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> dict:
    """Reliability table, expected calibration error and Brier score of probabilities ``p`` (N,)
    against outcomes ``y`` (N,) in {0, 1}; ``ece``/``brier`` None when there is nothing to score."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if p.size == 0:
        return {"ece": None, "brier": None, "n": 0, "bins": None}
    table = metrics.calibration(y, p, n_bins)
    return {"ece": table["ece"], "brier": float(np.mean((p - y) ** 2)), "n": int(p.size), "bins": table}


def evaluate_detections(
    candidates: Points,
    crs: Any,
    truth: Mapping[str, Any],
    threshold: float,
    radius_m: float,
    area_km2: float,
    date: _dt.date | None = None,
    where: Mapping[str, Any] | None = None,
) -> dict:
    """Object-level evaluation of one scored survey (rules: the module docstring).

    ``candidates``: every detection the scorer would make at any threshold (e.g. all peaks of the
    probability map above a low floor), in ``crs`` map coordinates; the reported detections are
    those at or above ``threshold``. ``area_km2``: the scored area, for look-alike rates.
    Truth objects are those existing on ``date``, targets chosen by ``where`` (default:
    :func:`pipeline.truth.is_target`).
    """
    targets = truth_objects(truth, crs, date, where, "targets")
    looks = truth_objects(truth, crs, date, where, "lookalikes")
    every_target = truth_objects(truth, crs, None, where, "targets")  # all dates: the contexts the file knows
    every_look = truth_objects(truth, crs, None, where, "lookalikes")
    dx, dy = metric_coordinates(candidates.x, candidates.y, crs)
    tx, ty = metric_coordinates(targets.x, targets.y, crs)
    lx, ly = metric_coordinates(looks.x, looks.y, crs)
    matched = match_objects(np.column_stack([dx, dy]), candidates.probability, np.column_stack([tx, ty]), radius_m)
    scores = object_scores(candidates.probability, matched, len(targets), threshold)
    at = candidates.probability >= threshold
    found = np.zeros(len(targets), dtype=bool)
    found[matched[at & (matched >= 0)]] = True
    false_pos = at & (matched < 0)
    report = {
        "rule": (f"detections (strongest first) matched one to one to the nearest unmatched target within "
                 f"{radius_m:g} m; probability >= {threshold:g} reported"),
        "radius_m": float(radius_m),
        "area_km2": float(area_km2),
        "object": scores,
        "by_context": recall_by_context(targets, found, [str(c) for c in every_target.values("context", "unspecified")]),
        "lookalikes": lookalike_scores(looks, np.column_stack([lx, ly]),
                                       np.column_stack([dx[false_pos], dy[false_pos]]), radius_m, area_km2,
                                       [str(k) for k in every_look.values("kind")]),
        "calibration": detection_calibration(candidates.probability, matched >= 0),
    }
    if not scores["scorable"]:
        report["warning"] = f"no target in the scored area on {date or 'this date'}: detection scores are not scorable"
    return report


@dataclass(frozen=True)
class ChangeObjects:
    """Predicted change objects in map coordinates: ``x``, ``y``, a ``strength`` (their order of
    confidence, e.g. the larger probability of the two dates) and a ``label`` (new, gone,
    persisting), (N,) each."""

    x: np.ndarray
    y: np.ndarray
    strength: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return int(np.asarray(self.strength).size)


def evaluate_change(
    predicted: ChangeObjects,
    crs: Any,
    truth: Mapping[str, Any],
    before: _dt.date,
    after: _dt.date,
    radius_m: float,
    where: Mapping[str, Any] | None = None,
) -> dict:
    """Object-level change scores: per class, and the confusion of truth class against prediction.

    Truth: every target with its change class between the dates (absent on both: left out).
    Per class *c*: the predicted objects of class *c* matched to the truth objects of class *c*
    (the matching rule of :func:`match_objects`, strongest change first). Confusion: every truth
    object and every predicted object are paired one to one across classes (the same rule), and
    counted by (truth class or "no dam", predicted class or "none").
    """
    targets = truth_objects(truth, crs, None, where, "targets")
    classes = np.array([change_class(p, before, after) for p in targets.props], dtype=object)
    keep = classes != "absent"
    targets, classes = targets.take(keep), classes[keep]
    tx, ty = metric_coordinates(targets.x, targets.y, crs)
    px, py = metric_coordinates(predicted.x, predicted.y, crs)
    labels = np.asarray(predicted.label, dtype=object)
    report: dict[str, Any] = {"radius_m": float(radius_m), "rule": "change objects matched to truth of their class within the radius"}
    for c in CHANGE_CLASSES:
        mine_p, mine_t = labels == c, classes == c
        m = match_objects(np.column_stack([px[mine_p], py[mine_p]]), np.asarray(predicted.strength)[mine_p],
                          np.column_stack([tx[mine_t], ty[mine_t]]), radius_m)
        n_truth, n_pred, tp = int(mine_t.sum()), int(mine_p.sum()), int((m >= 0).sum())
        if n_truth == 0:
            report[c] = {"precision": None, "recall": None, "f1": None, "n_truth": 0, "n_predicted": n_pred,
                         "scorable": False}
            continue
        report[c] = {"precision": tp / n_pred if n_pred else None, "recall": tp / n_truth,
                     "f1": 2 * tp / (n_pred + n_truth), "n_truth": n_truth, "n_predicted": n_pred, "scorable": True}
    m = match_objects(np.column_stack([px, py]), predicted.strength, np.column_stack([tx, ty]), radius_m)
    rows = list(CHANGE_CLASSES) + ["no dam"]
    cols = list(CHANGE_CLASSES) + ["none"]
    confusion = {r: dict.fromkeys(cols, 0) for r in rows}
    for i, j in enumerate(m):
        confusion[classes[j] if j >= 0 else "no dam"][labels[i]] += 1
    for j in set(range(len(classes))) - set(int(v) for v in m if v >= 0):
        confusion[classes[j]]["none"] += 1
    report["confusion"] = confusion
    return report


def _binary_metrics(y_true: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """Precision, recall, F1, ROC AUC and average precision of probabilities against labels (ann.metrics)."""
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


def cell_labels(values: np.ndarray, transform: Affine, crs: Any, targets: TruthObjects, footprint_m: float) -> np.ndarray:
    """Truth of each cell of a probability map under the window rule: 1 when a target lies in the
    central half of the window centred on the cell (within footprint / 4 along both axes), 0
    when none lies in the window (footprint / 2), −1 (left out) in between."""
    h, w = values.shape
    rows, cols = np.mgrid[0:h, 0:w]
    cx, cy = transform * (cols + 0.5, rows + 0.5)
    out = np.zeros((h, w), np.int8)
    if len(targets) == 0:
        return out
    inv = ~transform
    cell = abs(transform.a)
    k = int(np.ceil(footprint_m / 2 / cell))
    for tx, ty in zip(targets.x, targets.y):
        c, r = inv * (tx, ty)
        r0, r1, c0, c1 = max(int(r) - k, 0), min(int(r) + k + 2, h), max(int(c) - k, 0), min(int(c) + k + 2, w)
        if r0 >= r1 or c0 >= c1:
            continue
        dx, dy = np.abs(cx[r0:r1, c0:c1] - tx), np.abs(cy[r0:r1, c0:c1] - ty)
        inside = (dx <= footprint_m / 2) & (dy <= footprint_m / 2)
        central = (dx <= footprint_m / 4) & (dy <= footprint_m / 4)
        block = out[r0:r1, c0:c1]
        block[inside & (block == 0)] = -1
        block[central] = 1
    return out


def cell_metrics(pm: Any, truth: Mapping[str, Any], date: _dt.date | None = None, where: Mapping[str, Any] | None = None) -> dict:
    """Cell-level scores of a probability map (:class:`pipeline.detect.ProbabilityMap`) against a
    truth, under the window rule of :func:`cell_labels`; unscored cells left out."""
    targets = truth_objects(truth, pm.crs, date, where)
    labels = cell_labels(pm.values, pm.transform, pm.crs, targets, pm.footprint_m)
    keep = np.isfinite(pm.values) & (labels >= 0)
    report = _binary_metrics(labels[keep] == 1, pm.values[keep], pm.threshold)
    report["rule"] = ("cell positive when a target lies within a quarter footprint of its centre (the central half of "
                      "its window), negative when none lies in its window; cells in between and unscored cells left out")
    report["scorable"] = report["n_positive"] > 0
    return report


def change_metrics(result: "ChangeResult", truth: Mapping[str, Any], before: _dt.date, after: _dt.date,
                   where: Mapping[str, Any] | None = None) -> dict:
    """Cell-level precision, recall, F1 and IoU of each class of the change raster.

    A cell truly holds class *c* when a target of change class *c* lies within the change's
    radius of its centre; nodata cells are left out. IoU = TP / (TP + FP + FN); a class with no
    true and no predicted cell has no scores (null).
    """
    dams = truth_objects(truth, result.crs, None, where)
    classes = [change_class(p, before, after) for p in dams.props]
    h, w = result.classes_map.shape
    rows, cols = np.mgrid[0:h, 0:w]
    cx, cy = result.transform * (cols + 0.5, rows + 0.5)
    scored = result.classes_map != NODATA
    report: dict[str, Any] = {"rule": f"cell positive for class c when a target of class c lies within "
                              f"{result.radius_m:g} m of its centre; nodata cells left out", "classes": {}}
    for code in (NEW, GONE, PERSISTING):
        name = CLASS_NAMES[code]
        true = np.zeros((h, w), dtype=bool)
        for x, y, c in zip(dams.x, dams.y, classes):
            if c == name:
                true |= np.hypot(cx - x, cy - y) <= result.radius_m
        pred = result.classes_map == code
        tp = int(np.sum(true & pred & scored))
        fp = int(np.sum(~true & pred & scored))
        fn = int(np.sum(true & ~pred & scored))
        report["classes"][name] = {
            "precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
            "iou": tp / (tp + fp + fn) if tp + fp + fn else None,
            "tp": tp, "fp": fp, "fn": fn, "n_objects": classes.count(name),
        }
    return report


# --------------------------------------------------------------------------------------------
# Output folders: the thin layer that reads what detection and change wrote

#: Candidate detections are the peaks of the probability map at least this probable: the
#: object-level precision–recall curve runs from the strongest peak down to here.
CANDIDATE_FLOOR = 0.02


def _provenance(folder: Path, kind: str) -> dict:
    path = folder / "provenance.json"
    try:
        prov = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(
            f"{folder} holds no provenance.json: it is not a complete damwatch {kind} output folder; give "
            f"the folder a `damwatch {kind}` run wrote (runs/<run>/{kind}/...), or a detections GeoJSON"
        ) from None
    except ValueError as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); the output folder is damaged: run `damwatch {kind}` again") from None
    if prov.get("kind") != kind:
        raise InputError(f"{folder} is a damwatch {prov.get('kind')!r} output folder, not a {kind} folder")
    return prov


def footprint_m(prov: Mapping[str, Any]) -> float:
    """The model's input footprint (tile or window edge) in metres, from a detection provenance."""
    settings = prov.get("settings", {})
    if settings.get("footprint_m"):
        return float(settings["footprint_m"])
    grid = prov["tile_grid"]
    t = grid["transform"]
    pixel = math.hypot(t[0], t[3])
    crs = CRS.from_wkt(grid["crs_wkt"]) if grid.get("crs_wkt") else None
    if crs is not None and crs.is_geographic:  # degrees: metres at the grid's latitude
        lat = t[5] + t[4] * grid["height"] / 2
        pixel *= 111_320 * math.cos(math.radians(lat))
    return float(grid["size"]) * pixel


def evaluate_detection_folder(
    folder: str | os.PathLike,
    truth: Mapping[str, Any],
    radius_m: float | None = None,
    where: Mapping[str, Any] | None = None,
) -> dict:
    """Object-level evaluation of a detection output folder against ``truth``.

    Candidates are the peaks of its ``probability.tif`` (:func:`pipeline.detections.find_peaks`,
    suppressed within the radius, at least :data:`CANDIDATE_FLOOR`); detections are those at or
    above the threshold the folder was made with. ``radius_m`` defaults to half the model's
    footprint. The scored area is the area of the scored cells. Truth objects: those existing on
    the survey's date.
    """
    folder = Path(folder)
    prov = _provenance(folder, "detect")
    radius = float(radius_m) if radius_m is not None else footprint_m(prov) / 2
    with rasterio.open(folder / "probability.tif") as ds:
        values, transform, crs = ds.read(1, masked=True).filled(np.nan), ds.transform, ds.crs
    candidates = find_peaks(values, transform, radius, CANDIDATE_FLOOR)
    area_km2 = float(np.isfinite(values).sum()) * abs(transform.a * transform.e) / 1e6
    if crs.is_geographic:
        lat = transform.f + transform.e * values.shape[0] / 2
        area_km2 *= (111_320 ** 2) * math.cos(math.radians(lat))
    date = _dt.date.fromisoformat(prov["inputs"]["survey"]["date"])
    report = evaluate_detections(candidates, crs, truth, float(prov["settings"]["threshold"]), radius, area_km2,
                                 date, where)
    report["survey"] = prov["inputs"]["survey"]["id"]
    report["date"] = date.isoformat()
    report["candidates"] = f"peaks of probability.tif >= {CANDIDATE_FLOOR}, suppressed within {radius:g} m"
    return report


def change_objects_from_folder(folder: str | os.PathLike) -> tuple[ChangeObjects, Any, _dt.date, _dt.date]:
    """The change objects of a change output folder, its CRS and its two dates.

    Point features of ``change.geojson`` with a ``class`` are the objects themselves; otherwise
    (a change map of cells) each connected group of cells of one class in ``change.tif`` is one
    object at its cells' mean position, its strength the number of cells.
    """
    folder = Path(folder)
    prov = _provenance(folder, "change")
    before = _dt.date.fromisoformat(prov["inputs"]["before"]["date"])
    after = _dt.date.fromisoformat(prov["inputs"]["after"]["date"])
    with rasterio.open(folder / "change.tif") as ds:
        codes, transform, crs = ds.read(1), ds.transform, ds.crs
    features, _ = read_features(folder / "change.geojson", what="change file")
    points = [f for f in features if (f.get("geometry") or {}).get("type") == "Point" and "class" in (f.get("properties") or {})]
    if points:
        lon = [f["geometry"]["coordinates"][0] for f in points]
        lat = [f["geometry"]["coordinates"][1] for f in points]
        x, y = warp_transform("EPSG:4326", crs, lon, lat)
        props = [f["properties"] for f in points]
        strength = [float(p.get("probability", p.get("strength", 1.0))) for p in props]
        return ChangeObjects(np.asarray(x), np.asarray(y), np.asarray(strength), np.array([p["class"] for p in props], dtype=object)), crs, before, after
    from scipy import ndimage  # ~0.3 s: only for change maps of cells

    xs, ys, strength, labels = [], [], [], []
    for code in (NEW, GONE, PERSISTING):
        components, n = ndimage.label(codes == code, structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            rows, cols = np.nonzero(components == k)
            x, y = transform * (cols.mean() + 0.5, rows.mean() + 0.5)
            xs.append(x)
            ys.append(y)
            strength.append(float(rows.size))
            labels.append(CLASS_NAMES[code])
    return ChangeObjects(np.asarray(xs), np.asarray(ys), np.asarray(strength), np.array(labels, dtype=object)), crs, before, after


def evaluate_change_folder(
    folder: str | os.PathLike, truth: Mapping[str, Any], radius_m: float, where: Mapping[str, Any] | None = None
) -> dict:
    """Object-level change scores of a change output folder against ``truth`` (:func:`evaluate_change`)."""
    objects, crs, before, after = change_objects_from_folder(folder)
    report = evaluate_change(objects, crs, truth, before, after, radius_m, where)
    report["before"], report["after"] = before.isoformat(), after.isoformat()
    return report


def evaluate_path(
    path: str | os.PathLike,
    truth: Mapping[str, Any],
    radius_m: float | None = None,
    date: _dt.date | None = None,
    where: Mapping[str, Any] | None = None,
) -> dict:
    """Evaluate whatever ``path`` holds against ``truth``: a detections GeoJSON file, a detect
    or change output folder, or a run folder holding ``detect/<survey>/`` and ``change/<pair>/``.

    Returns ``{"radius_m", "detection": {<name>: report}, "change": {<name>: report}}``. A
    detections file is scored against the truth objects existing on ``date`` (all when None);
    its radius must be given (a file does not say which model made it), and its scored area is
    the bounding box of the truth's objects. ``date`` overrides a folder's survey date.
    """
    path = Path(path)
    check_targets(truth, where)
    if radius_m is not None and not radius_m > 0:
        raise InputError(f"--radius {radius_m} must be a distance in metres > 0, e.g. --radius 60")
    if path.is_file():
        if radius_m is None:
            raise InputError(
                f"detections file {path} does not say which model made it, so the matching radius is "
                f"unknown; give it in metres, e.g. --radius 60 (half the model's window)"
            )
        crs = CRS.from_epsg(4326)
        points = read_detections(path, crs)
        targets = truth_objects(truth, crs, date, where)
        area = _bbox_area_km2(truth_objects(truth, crs, date, where, "lookalikes"), targets)
        threshold = float(points.probability.min()) if len(points) else 0.5
        report = evaluate_detections(points, crs, truth, threshold, radius_m, area, date, where)
        report["candidates"] = f"the {len(points)} detections of the file (the curve stops at its weakest)"
        report["area"] = "bounding box of the truth's objects"
        return {"radius_m": radius_m, "detection": {path.name: report}, "change": {}}
    if not path.is_dir():
        raise InputError(f"--detections {path} does not exist; give a detections GeoJSON, an output folder or a run folder")
    detect_dirs = [path] if (path / "probability.tif").is_file() else sorted(p.parent for p in path.glob("detect/*/probability.tif"))
    change_dirs = [path] if (path / "change.tif").is_file() else sorted(p.parent for p in path.glob("change/*/change.tif"))
    if not detect_dirs and not change_dirs:
        raise InputError(
            f"{path} holds no detection (probability.tif) or change (change.tif) output; give a folder "
            f"`damwatch detect` or `damwatch change` wrote, or a run folder runs/<run_id>"
        )
    out: dict[str, Any] = {"detection": {}, "change": {}}
    radii = []
    for d in detect_dirs:
        prov = _provenance(d, "detect")
        r = radius_m if radius_m is not None else footprint_m(prov) / 2
        radii.append(r)
        report = evaluate_detection_folder(d, _on_date(truth, date), r, where) if date else evaluate_detection_folder(d, truth, r, where)
        out["detection"][d.name] = report
    for c in change_dirs:
        r = radius_m if radius_m is not None else (radii[0] if radii else None)
        if r is None:
            r = footprint_m(_detect_provenance_near(c)) / 2
        out["change"][c.name] = evaluate_change_folder(c, truth, r, where)
    out["radius_m"] = radius_m if radius_m is not None else (sorted(set(radii))[0] if radii else None)
    return out


def _on_date(truth: Mapping[str, Any], date: _dt.date) -> dict:
    """``truth`` with only the objects existing on ``date`` (their ``dates`` dropped, so that a
    folder's own survey date no longer filters them)."""
    kept = []
    for f in truth["features"]:
        p = f.get("properties") or {}
        if exists_on(p, date):
            kept.append({**f, "properties": {k: v for k, v in p.items() if k != "dates"}})
    return {**truth, "features": kept}


def _detect_provenance_near(change_dir: Path) -> dict:
    for d in sorted(change_dir.parent.parent.glob("detect/*")):
        if (d / "provenance.json").is_file():
            return _provenance(d, "detect")
    raise InputError(
        f"change folder {change_dir} has no detection beside it to take the model's footprint from; "
        f"give the matching radius, e.g. --radius 60"
    )


def _bbox_area_km2(*objects: TruthObjects) -> float:
    x = np.concatenate([o.x for o in objects])
    y = np.concatenate([o.y for o in objects])
    if x.size < 2:
        return 0.0
    mx, my = metric_coordinates(x, y, CRS.from_epsg(4326))
    return float((mx.max() - mx.min()) * (my.max() - my.min()) / 1e6)


def score_on_labels(
    values: np.ndarray, transform: Affine, crs: Any, labels: Any, threshold: float
) -> dict:
    """Tile-level scores of a probability map (``values`` (h, w) on ``transform``/``crs``)
    against stored tile labels on any grid (:class:`pipeline.labels.TileLabels`).

    Each known label tile (1 or 0) takes the probability of the map cell holding its centre,
    matched in map coordinates, so a map made at one stride is scored against labels made at
    another. Tiles whose centre falls on no scored cell are left out. With no positive label
    the set is not scorable.
    """
    grid = labels.grid
    cx, cy = grid.tile_centers()
    known = labels.values >= 0
    x, y = cx[known], cy[known]
    if grid.crs is not None and CRS.from_user_input(crs) != grid.crs:
        x, y = (np.asarray(v) for v in warp_transform(grid.crs, crs, x.tolist(), y.tolist()))
    cols, rows = ~transform * (x, y)
    rows, cols = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    inside = (rows >= 0) & (rows < values.shape[0]) & (cols >= 0) & (cols < values.shape[1])
    p = np.full(x.shape, np.nan)
    p[inside] = values[rows[inside], cols[inside]]
    y_true = labels.values[known]
    scored = np.isfinite(p)
    report = {
        "rule": "each known label tile takes the probability of the map cell holding its centre; "
        "tiles on no scored cell left out",
        "labels": {"name": labels.name, "source": labels.source, "grid": grid.to_dict()},
        "threshold": float(threshold),
    }
    n_pos = int((y_true[scored] == 1).sum())
    if n_pos == 0:
        report["tile"] = {"scorable": False, "n_tiles": int(scored.sum()), "n_positive": 0,
                          "precision": None, "recall": None, "f1": None, "roc_auc": None, "average_precision": None}
        report["warning"] = "no positive label among the scored tiles: not scorable"
        return report
    report["tile"] = {**_binary_metrics(y_true[scored] == 1, p[scored], threshold), "scorable": True}
    return report
