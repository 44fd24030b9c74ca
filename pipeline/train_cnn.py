"""Training the convolutional detector: windows in, a calibrated model with its threshold out.

The steps (:func:`train_cnn`), each on data the model may use:

1. **Windows** (:mod:`pipeline.windows`): labelled windows of the training surveys, from a
   truth GeoJSON (points: dams) or from a stored tile label set (e.g. ``ndwi > 0`` water), split
   by map position into a training band and a validation band (the east).
2. **Data-parallel training** (:mod:`ann.parallel`): shards of the training windows are read
   from the store by Dask tasks and stay on their workers; every step averages the gradients
   of a global mini-batch exactly; each window is seen under a seeded one of the 8 symmetries
   of the square, and rare positives are sampled as often as negatives. Early stopping watches
   the validation windows' average precision; the best epoch's weights are kept.
3. **Hard negatives** (``mining_rounds``): the model scores the training band of each training
   survey (fully convolutionally), and its strongest peaks that are not near a target become
   negative windows; training goes on with them. This is what removes the false peaks along
   streams and on ponds that a first round leaves.
4. **Calibration and threshold on the validation band**: the validation band is scored, its
   peaks matched to the truth (point truth: one to one within half the footprint; tile labels:
   the cell's window label); a one-dimensional logistic fit on the logits (Platt scaling) makes
   the probabilities mean what they say, and the decision threshold is the one with the best
   F1 there (or the lowest reaching a target precision / the highest reaching a target recall).

Nothing of the evaluation area is ever seen.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine
from threadpoolctl import threadpool_limits

from ann import metrics
from ann.convnet import DEFAULT_LAYERS, ConvNet
from ann.io import Classifier
from ann.shards import ShardedSource, ShardPlan
from ann.train import History, fit
from pipeline.cluster import cluster_address, dask_client
from pipeline.detect import MIN_VALID_FRACTION, calibrate, window_valid_share
from pipeline.detections import find_peaks
from pipeline.errors import InputError
from pipeline.evaluate import match_objects, metric_coordinates
from pipeline.labels import open_labels
from pipeline.pixels import InputSpec, channel_statistics, input_spec_for, read_channels, reading_for
from pipeline.progress import EpochBar
from pipeline.truth import truth_objects
from pipeline.windows import TRAIN, VALIDATION, WindowShardLoader, WindowTable, band_of, read_windows, window_table

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.store import Store, Survey
    from pipeline.training import TrainingSettings

__all__ = ["train_cnn", "labels_window_table", "fit_platt", "choose_threshold_objects"]

#: Validation windows used for early stopping (a seeded subset beyond this many): validating
#: every epoch on all of them would cost more than the epoch.
MAX_VALIDATION_WINDOWS = 1500
#: Peaks below this probability are not candidates for hard negatives, calibration or the threshold.
PEAK_FLOOR = 0.02


def labels_window_table(
    store: "Store", survey_ids: Sequence[str], spec: InputSpec, labels: str, size: int, stride: int,
    val_fraction: float, seed: int,
) -> dict[int, WindowTable]:
    """Windows centred on the known tiles of a stored label set (label = the tile's), by region.

    The window (``spec.window`` pixels at the model's GSD) is centred on the tile's centre, so
    the network sees the tile and its surroundings; a window is in the training or validation
    band only when it lies wholly inside it.
    """
    rng = np.random.default_rng(seed)
    surveys = [store.survey(s) for s in survey_ids]
    west, east = min(s.bounds[0] for s in surveys), max(s.bounds[2] for s in surveys)
    parts: dict[int, list[WindowTable]] = {TRAIN: [], VALIDATION: []}
    W = spec.window
    for k, survey in enumerate(surveys):
        tl = open_labels(store, survey.id, labels, stride, size)
        reading = reading_for(survey, spec.gsd_m)
        cx, cy = tl.grid.tile_centers()
        known = tl.values >= 0
        col, row = ~reading.transform * (cx[known], cy[known])
        r0 = np.floor(np.asarray(row) - W / 2).astype(np.int32)
        c0 = np.floor(np.asarray(col) - W / 2).astype(np.int32)
        lab = tl.values[known].astype(np.int8)
        order = rng.permutation(lab.size)
        table = WindowTable(np.full(lab.size, k, np.int32), r0[order], c0[order], lab[order],
                            np.where(lab[order] == 1, "target", "background").astype(object),
                            np.full(lab.size, "", object))
        inside = (table.row >= 0) & (table.col >= 0) & (table.row + W <= reading.height) & (table.col + W <= reading.width)
        table = table.take(np.flatnonzero(inside))
        x0, _ = reading.transform * (table.col.astype(float), table.row.astype(float))
        x1, _ = reading.transform * ((table.col + W).astype(float), table.row.astype(float))
        b0 = band_of(np.minimum(x0, x1), west, east, val_fraction)
        b1 = band_of(np.maximum(x0, x1), west, east, val_fraction)
        for region in parts:
            parts[region].append(table.take(np.flatnonzero((b0 == region) & (b1 == region))))
    return {region: WindowTable.concat(t) for region, t in parts.items()}


def fit_platt(logits: np.ndarray, y: np.ndarray, iterations: int = 100) -> dict[str, float]:
    """Platt scaling: (a, b) maximizing the likelihood of ``y`` under sigmoid(a · logit + b).

    Newton's method on the two parameters with a backtracking line search (each step must lower
    the loss), and Platt's target smoothing ((n₊ + 1)/(n₊ + 2) and 1/(n₋ + 2) instead of 1 and
    0) so that a separable set does not send ``a`` to infinity.
    """
    z = np.asarray(logits, np.float64)
    y = np.asarray(y, np.float64)
    n_pos, n_neg = y.sum(), y.size - y.sum()
    t = np.where(y > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

    def loss(a: float, b: float) -> float:
        f = a * z + b
        return float(np.sum(np.logaddexp(0, f) - t * f))  # cross-entropy with soft targets, stable

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(iterations):
        f = a * z + b
        p = np.exp(-np.logaddexp(0, -f))  # sigmoid, stable
        g = np.array([np.sum((p - t) * z), np.sum(p - t)])
        w = p * (1 - p)
        H = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]]) + 1e-6 * np.eye(2)
        step = np.linalg.solve(H, g)
        scale = 1.0
        while scale > 1e-6 and loss(a - scale * step[0], b - scale * step[1]) > current:
            scale /= 2
        a, b = a - scale * step[0], b - scale * step[1]
        new = loss(a, b)
        if current - new < 1e-10 * max(1.0, abs(current)):
            current = new
            break
        current = new
    return {"method": "platt", "a": float(a), "b": float(b), "n": int(y.size), "positives": int(n_pos)}


def choose_threshold_objects(p: np.ndarray, hit: np.ndarray, n_truth: int, precision: float | None = None,
                             recall: float | None = None) -> float:
    """The decision threshold over candidate detections ``p`` (hit: matched a target) for best
    object F1 (ties: the higher threshold), or the lowest reaching ``precision``, or the highest
    reaching ``recall``."""
    order = np.argsort(-p, kind="stable")
    ps, hs = p[order], np.asarray(hit, bool)[order]
    if ps.size == 0 or n_truth == 0:
        return 0.5
    tp, fp = np.cumsum(hs), np.cumsum(~hs)
    last = np.r_[ps[1:] != ps[:-1], True]
    prec, rec = tp / (tp + fp), tp / n_truth
    f1 = 2 * tp / (tp + fp + n_truth)
    idx = np.flatnonzero(last)
    if precision is not None:
        ok = idx[prec[idx] >= precision]
        if ok.size == 0:
            raise InputError(f"no threshold reaches precision {precision} on the validation band (best {prec[idx].max():.2f}); lower --precision")
        return float(ps[ok[-1]])
    if recall is not None:
        ok = idx[rec[idx] >= recall]
        if ok.size == 0:
            raise InputError(f"no threshold reaches recall {recall} on the validation band (best {rec[idx].max():.2f}); lower --recall")
        return float(ps[ok[0]])
    best = idx[np.flatnonzero(f1[idx] == f1[idx].max())[0]]
    return float(ps[best])


def _score_region(classifier: Classifier, survey: "Survey", spec: InputSpec, col_range: tuple[int, int]) -> tuple[np.ndarray, Any]:
    """The logit map (cells) of the columns ``col_range`` (model pixels) of a survey, in this
    process: for hard negatives and the validation band during training. Logits, not
    probabilities: their order survives where probabilities saturate."""
    reading = reading_for(survey, spec.gsd_m)
    S, W = classifier.network.total_stride, spec.window
    P = (W - S) // 2
    stats = channel_statistics(survey, spec)
    c_lo, c_hi = col_range[0] // S, col_range[1] // S
    rows = reading.height // S
    out = np.full((rows, max(0, c_hi - c_lo)), np.nan, np.float32)
    band = max(8, 512 // S)
    image, valid_array = survey.image(), survey.valid()
    for i0 in range(0, rows, band):
        i1 = min(rows, i0 + band)
        h, w = (i1 - i0 - 1) * S + W, (c_hi - c_lo - 1) * S + W
        if w < W:
            break
        x, valid = read_channels(survey, reading, spec, i0 * S - P, c_lo * S - P, h, w, stats, image, valid_array)
        z = classifier.score_map(x, W, logits=True)
        share = window_valid_share(valid, S, W, i1 - i0, c_hi - c_lo)
        out[i0:i1] = np.where(share >= MIN_VALID_FRACTION, z, np.nan)
    return out, reading.transform * Affine.translation(c_lo * S, 0) * Affine.scale(S)


def train_cnn(
    store: "Store",
    survey_ids: Sequence[str],
    settings: "TrainingSettings",
    truth: Mapping[str, Any] | None = None,
    where: Mapping[str, Any] | None = None,
    *,
    workers: int | None = None,
    cluster: str | None = None,
    client: Any = None,
    progress: bool | None = None,
) -> tuple[Classifier, dict]:
    """Train a convolutional detector (the module docstring); returns the classifier and a report."""
    started = time.perf_counter()
    s, config = settings, settings.config
    surveys = [store.survey(sid) for sid in survey_ids]
    spec = input_spec_for(surveys[0].bands, s.bands, s.gsd_m, s.window, s.normalization)
    for survey in surveys:
        reading_for(survey, spec.gsd_m)  # refuse a survey too coarse for the model
    if truth is not None:
        tables = window_table(store, survey_ids, truth, spec, s.windows, where, config.seed)
    else:
        tables = labels_window_table(store, survey_ids, spec, s.labels, s.size, s.stride, s.windows.val_fraction, config.seed)
    train, val = tables[TRAIN], tables[VALIDATION]
    for name, t in (("training", train), ("validation", val)):
        c = t.counts()
        if c["positive"] == 0 or c["positive"] == c["windows"]:
            raise InputError(
                f"the {name} band of {', '.join(survey_ids)} has {c['windows']} windows, {c['positive']} of them "
                f"positive; training needs both. Add surveys or objects, or change the validation fraction"
            )
    layers = list(s.layers) if s.layers else DEFAULT_LAYERS
    net = ConvNet((spec.window, spec.window, len(spec.channels)), layers, seed=config.seed)
    rng = np.random.default_rng(config.seed)
    val_idx = np.sort(rng.permutation(len(val))[:MAX_VALIDATION_WINDOWS])
    X_val_raw = read_windows(store, survey_ids, spec, val.take(val_idx))
    y_val = val.label[val_idx].astype(np.float32)
    histories: list[dict] = []
    standardizer = None
    address = cluster_address(cluster) if client is None else None
    in_process = client is None and address is None and (workers or os.cpu_count() or 1) == 1

    def run(table: WindowTable, epochs: int, round_name: str) -> None:
        """Train ``net`` on ``table`` for up to ``epochs``; the first round fixes the standardizer
        (exact per-channel statistics over its shards), later rounds read their windows with it."""
        nonlocal standardizer
        plan = ShardPlan.from_config(len(table), config, n_shards=s.n_shards, micro_batch=s.micro_batch)
        fixed = None if standardizer is None else standardizer.to_dict()
        loader = WindowShardLoader(str(store.root), tuple(survey_ids), spec.to_dict(), table.to_dict(), plan,
                                   standardize=fixed)
        cfg = dataclasses.replace(config, max_epochs=epochs)
        bar = EpochBar(epochs, f"train cnn ({round_name})", cfg.metric, None if progress is None else not progress)

        def go(source) -> History:
            std = source.standardizer if standardizer is None else standardizer
            return fit(net, source, std.transform(X_val_raw, net.dtype), y_val, cfg, callback=bar), std

        try:
            if in_process:
                with threadpool_limits(1):
                    source = ShardedSource(loader, plan, net, standardize=fixed is None)
                    (history, std), n_workers = go(source), 1
            else:
                from ann.parallel import DaskGradientSource  # dask and distributed: ~1.3 s, only here

                def on(c):
                    with DaskGradientSource(c, loader, plan, net, standardize=fixed is None) as source:
                        return go(source), sum(c.nthreads().values())

                if client is not None:
                    (history, std), n_workers = on(client)
                else:
                    with dask_client(address=address, n_workers=workers) as c:
                        (history, std), n_workers = on(c)
        finally:
            bar.close()
        standardizer = std
        histories.append({"round": round_name, "windows": table.counts(), "plan": plan.to_dict(),
                          "workers": n_workers, **history.to_dict()})

    run(train, config.max_epochs, "windows")
    radius = spec.footprint_m / 2
    mined_total = 0
    for r in range(s.mining_rounds):
        clf = Classifier(net, standardizer, spec.to_dict(), 0.5, {})
        mined = _mine(store, surveys, clf, spec, truth, where, radius, train, tables, r, s)
        mined_total += len(mined)
        if len(mined) == 0:
            break
        train = WindowTable.concat([train, mined])
        run(train, s.mining_epochs, f"hard negatives {r + 1}")
    # Calibration and threshold on the validation band.
    clf = Classifier(net, standardizer, spec.to_dict(), 0.5, {})
    cand_p, cand_hit, n_truth = _validation_candidates(store, surveys, clf, spec, truth, where, radius, s)
    calibration = fit_platt(np.log(np.clip(cand_p, 1e-7, 1 - 1e-7) / (1 - np.clip(cand_p, 1e-7, 1 - 1e-7))), cand_hit) \
        if s.calibrate and cand_hit.any() and not cand_hit.all() else None
    p_cal = calibrate(cand_p.astype(np.float32), calibration)
    threshold = choose_threshold_objects(p_cal, cand_hit, n_truth, s.target_precision, s.target_recall)
    at = p_cal >= threshold
    tp = int((cand_hit & at).sum())
    validation = {
        "rule": "peaks of the validation band matched to the truth (within half the footprint)" if truth is not None
        else "cells of the validation band at the centres of labelled tiles",
        "n_truth": int(n_truth), "n_candidates": int(cand_p.size), "n_detections": int(at.sum()),
        "precision": tp / max(int(at.sum()), 1), "recall": tp / max(n_truth, 1),
        "f1": 2 * tp / max(int(at.sum()) + n_truth, 1),
        "average_precision": float(metrics.average_precision(cand_hit, p_cal) * cand_hit.sum() / max(n_truth, 1)) if cand_hit.any() else None,
        "calibration": metrics.calibration(cand_hit.astype(np.int8), p_cal) if cand_p.size else None,
    }
    spec_dict = {**spec.to_dict(), **({"calibration": calibration} if calibration else {})}
    counts = {"train": tables[TRAIN].counts(), "validation": val.counts(), "mined": mined_total}
    per_context = _training_coverage(truth, surveys, where) if truth is not None else {}
    metadata = {
        "training": {
            "model_type": "cnn",
            "surveys": [{"id": sv.id, "date": sv.date.isoformat(), "source_sha256": sv.source_sha256} for sv in surveys],
            "gsd_m": spec.gsd_m, "window": spec.window, "footprint_m": spec.footprint_m,
            "source": "truth" if truth is not None else f"labels {s.labels} ({s.size} px, stride {s.stride})",
            "counts": counts, "coverage": per_context, "settings": s.to_dict(),
            "band_statistics": {sv.id: {**(sv.band_statistics or {}), "dtype": str(sv.dtype)} for sv in surveys},
            "rounds": histories,
        },
        "threshold_rule": ("precision", s.target_precision) if s.target_precision is not None
        else ("recall", s.target_recall) if s.target_recall is not None else ("best_f1", None),
        "metrics": {"validation": validation},
        "seconds": time.perf_counter() - started,
    }
    return Classifier(net, standardizer, spec_dict, threshold, metadata), {
        "threshold": threshold, "validation": validation, "counts": counts, "rounds": histories,
        "calibration": calibration, "seconds": metadata["seconds"],
    }


def _mine(store, surveys, clf, spec, truth, where, radius, train, tables, round_index, s) -> WindowTable:
    """Hard negatives: the strongest peaks of the training band far from every target."""
    W = spec.window
    rows, cols, sids, ids = [], [], [], []
    west, east = min(sv.bounds[0] for sv in surveys), max(sv.bounds[2] for sv in surveys)
    n_pos = int((train.label == 1).sum())
    budget = max(1, int(s.mining_per_positive * n_pos / max(len(surveys), 1)))
    for k, survey in enumerate(surveys):
        reading = reading_for(survey, spec.gsd_m)
        cut_px = _cut_column(reading, west, east, s.windows.val_fraction)
        values, transform = _score_region(clf, survey, spec, (0, cut_px))
        peaks = find_peaks(values, transform, radius, _logit(PEAK_FLOOR))
        if truth is not None:
            targets = truth_objects(truth, survey.crs, survey.date, where)
            far = _far_from(peaks, targets, survey.crs, W * spec.gsd_m)
        else:
            tl = open_labels(store, survey.id, s.labels, s.stride, s.size)
            far = _negative_label_at(peaks, tl)
        keep = np.flatnonzero(far)[:budget]
        col, row = ~reading.transform * (peaks.x[keep], peaks.y[keep])
        rows += list(np.floor(np.asarray(row) - W / 2).astype(int))
        cols += list(np.floor(np.asarray(col) - W / 2).astype(int))
        sids += [k] * len(keep)
        ids += [f"mined{round_index}"] * len(keep)
    table = WindowTable(np.asarray(sids, np.int32), np.asarray(rows, np.int32), np.asarray(cols, np.int32),
                        np.zeros(len(rows), np.int8), np.full(len(rows), "mined", object), np.asarray(ids, object))
    inside = (table.row >= 0) & (table.col >= 0)
    return table.take(np.flatnonzero(inside))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _cut_column(reading, west: float, east: float, val_fraction: float) -> int:
    """Model-pixel column of the training band's east edge (minus one window of margin)."""
    cut = east - val_fraction * (east - west)
    col, _ = ~reading.transform * (cut, reading.transform.f)
    return max(0, int(math.floor(col)))


def _far_from(peaks, targets, crs, distance: float) -> np.ndarray:
    if len(targets) == 0:
        return np.ones(len(peaks), bool)
    px, py = metric_coordinates(peaks.x, peaks.y, crs)
    tx, ty = metric_coordinates(targets.x, targets.y, crs)
    d = np.hypot(px[:, None] - tx[None, :], py[:, None] - ty[None, :]).min(axis=1)
    return d > distance


def _negative_label_at(peaks, tl) -> np.ndarray:
    col, row = ~tl.grid.transform * (peaks.x, peaks.y)
    r = np.clip(np.floor(np.asarray(row) / tl.grid.stride).astype(int), 0, tl.values.shape[0] - 1)
    c = np.clip(np.floor(np.asarray(col) / tl.grid.stride).astype(int), 0, tl.values.shape[1] - 1)
    return tl.values[r, c] == 0


def _validation_candidates(store, surveys, clf, spec, truth, where, radius, s) -> tuple[np.ndarray, np.ndarray, int]:
    """Candidates of the validation band: their logits, whether each is right, and how many
    truth objects (or positive tiles) the band holds."""
    west, east = min(sv.bounds[0] for sv in surveys), max(sv.bounds[2] for sv in surveys)
    ps, hits, n_truth = [], [], 0
    for survey in surveys:
        reading = reading_for(survey, spec.gsd_m)
        cut_px = _cut_column(reading, west, east, s.windows.val_fraction)
        values, transform = _score_region(clf, survey, spec, (cut_px, reading.width))
        if truth is not None:
            peaks = find_peaks(values, transform, radius, _logit(PEAK_FLOOR))
            targets = truth_objects(truth, survey.crs, survey.date, where)
            tcol, _ = ~transform * (targets.x, targets.y)
            inside = (np.asarray(tcol) >= 0) & (np.asarray(tcol) < values.shape[1])
            targets = targets.take(inside)
            px, py = metric_coordinates(peaks.x, peaks.y, survey.crs)
            tx, ty = metric_coordinates(targets.x, targets.y, survey.crs)
            m = match_objects(np.column_stack([px, py]), peaks.probability, np.column_stack([tx, ty]), radius)
            ps.append(peaks.probability)
            hits.append(m >= 0)
            n_truth += len(targets)
        else:
            tl = open_labels(store, survey.id, s.labels, s.stride, s.size)
            cx, cy = tl.grid.tile_centers()
            col, row = ~transform * (cx, cy)
            r, c = np.floor(np.asarray(row)).astype(int), np.floor(np.asarray(col)).astype(int)
            ok = (tl.values >= 0) & (r >= 0) & (r < values.shape[0]) & (c >= 0) & (c < values.shape[1])
            p = values[r[ok], c[ok]]
            y = tl.values[ok] == 1
            fin = np.isfinite(p)
            ps.append(p[fin])
            hits.append(y[fin])
            n_truth += int(y[fin].sum())
    return np.concatenate(ps) if ps else np.zeros(0), np.concatenate(hits) if hits else np.zeros(0, bool), n_truth


def _training_coverage(truth, surveys, where) -> dict:
    """What the training surveys' truth holds per context and per look-alike kind (for the
    report's coverage check: what the model saw)."""
    contexts: dict[str, int] = {}
    kinds: dict[str, int] = {}
    for survey in surveys:
        for p in truth_objects(truth, survey.crs, survey.date, where).props:
            c = str(p.get("context", "unspecified"))
            contexts[c] = contexts.get(c, 0) + 1
        for p in truth_objects(truth, survey.crs, survey.date, where, "lookalikes").props:
            k = str(p.get("kind"))
            kinds[k] = kinds.get(k, 0) + 1
    return {"contexts": contexts, "lookalikes": kinds}
