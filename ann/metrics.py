"""How good are the probabilities? Binary classification metrics in NumPy.

``y_true`` is always an array of 0/1 (or bool) labels of shape (N,). Metrics of *decisions*
(accuracy, precision, recall, F1, the confusion matrix) take predicted labels ``y_pred`` (N,);
metrics of *rankings* (ROC AUC, average precision) and calibration take probabilities or
scores ``p`` (N,). :func:`binary_report` turns probabilities and a decision threshold
(``p >= threshold`` is positive) into all of them at once.

Conventions where a metric is undefined: precision with no predicted positive, recall with no
actual positive and F1 when both are zero are 0.0 (as scikit-learn's ``zero_division=0``);
ROC AUC with a single class present and average precision with no positive are NaN.

Choosing the threshold: :func:`threshold_for_precision` returns the lowest threshold whose
precision reaches a target on validation data (the most recall you can get at that precision),
:func:`threshold_for_recall` the highest threshold whose recall reaches a target.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ann.errors import ConfigError
from ann.functions import binary_cross_entropy

__all__ = [
    "accuracy",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "average_precision",
    "confusion_matrix",
    "calibration",
    "expected_calibration_error",
    "threshold_for_precision",
    "threshold_for_recall",
    "binary_report",
]


def _labels(y: np.ndarray, name: str = "y_true") -> np.ndarray:
    y = np.asarray(y).reshape(-1)
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            bad = np.unique(y[~np.isin(y, (0, 1))])[:5]
            raise ConfigError(f"{name} must hold 0/1 labels; found {bad.tolist()} (unknown tiles, -1, must be dropped first)")
        y = y.astype(bool)
    return y


def _pair(y_true: np.ndarray, other: np.ndarray, other_name: str) -> tuple[np.ndarray, np.ndarray]:
    y = _labels(y_true)
    o = np.asarray(other).reshape(-1)
    if o.shape != y.shape:
        raise ConfigError(f"y_true has {y.shape[0]} values but {other_name} has {o.shape[0]}")
    return y, o


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """[[tn, fp], [fn, tp]] as int64 (rows: actual 0, 1; columns: predicted 0, 1)."""
    y, pred = _pair(y_true, y_pred, "y_pred")
    pred = _labels(pred, "y_pred")
    tp = int(np.count_nonzero(y & pred))
    fp = int(np.count_nonzero(~y & pred))
    fn = int(np.count_nonzero(y & ~pred))
    tn = y.size - tp - fp - fn
    return np.array([[tn, fp], [fn, tp]], dtype=np.int64)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of examples whose predicted label is right."""
    (tn, _), (_, tp) = confusion_matrix(y_true, y_pred)
    n = np.asarray(y_true).size
    return float((tn + tp) / n) if n else float("nan")


def precision(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """tp / (tp + fp): of the examples called positive, the fraction that are. 0 if none called."""
    (_, fp), (_, tp) = confusion_matrix(y_true, y_pred)
    return float(tp / (tp + fp)) if tp + fp else 0.0


def recall(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """tp / (tp + fn): of the actual positives, the fraction found. 0 if there are none."""
    _, (fn, tp) = confusion_matrix(y_true, y_pred)
    return float(tp / (tp + fn)) if tp + fn else 0.0


def f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Harmonic mean of precision and recall: 2 tp / (2 tp + fp + fn)."""
    (_, fp), (fn, tp) = confusion_matrix(y_true, y_pred)
    return float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0


def roc_auc(y_true: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative (ties count one half). Mann–Whitney U from average ranks, O(N log N). NaN if only
    one class is present."""
    y, p = _pair(y_true, p, "p")
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    s = p[order]
    first = np.r_[True, s[1:] != s[:-1]]  # first element of each run of tied scores
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], s.size]
    avg_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(s.size)
    ranks[order] = np.repeat(avg_rank, ends - starts)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _pr_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds descending, tp, fp) at each distinct score: predict positive iff p >= t."""
    order = np.argsort(-p, kind="mergesort")
    s = p[order]
    last = np.r_[s[1:] != s[:-1], True]  # last element of each run of tied scores
    tp = np.cumsum(y[order])[last]
    fp = np.flatnonzero(last) + 1 - tp
    return s[last], tp, fp


def average_precision(y_true: np.ndarray, p: np.ndarray) -> float:
    """Σ_k (R_k - R_{k-1}) P_k over the distinct thresholds, highest first (scikit-learn's
    definition: the step-wise area under the precision–recall curve). NaN without positives."""
    y, p = _pair(y_true, p, "p")
    n1 = int(y.sum())
    if n1 == 0:
        return float("nan")
    _, tp, fp = _pr_curve(y, p)
    prec = tp / (tp + fp)
    rec = tp / n1
    return float(np.sum(np.diff(np.r_[0.0, rec]) * prec))


def calibration(y_true: np.ndarray, p: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Reliability bins: does a predicted 0.8 come true 80 % of the time?

    Splits [0, 1] into ``n_bins`` equal bins (p = 1 falls in the last). Returns JSON-ready
    lists ``bin_edges`` (n_bins + 1), ``count``, ``mean_predicted`` and ``fraction_positive``
    (n_bins each; None for empty bins), and ``ece``, the expected calibration error
    ``Σ_b (n_b / N) |mean_predicted_b - fraction_positive_b|``.
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ConfigError(f"n_bins={n_bins!r} must be a positive integer (e.g. 10)")
    y, p = _pair(y_true, p, "p")
    p = p.astype(np.float64)
    n_nan = int(np.isnan(p).sum())
    if n_nan:
        raise ConfigError(
            f"calibration needs probabilities in [0, 1] but p holds {n_nan} NaN of {p.size}: the model that made "
            "them is broken, usually by a training that diverged; retrain with a lower learning_rate"
        )
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ConfigError(
            f"calibration needs probabilities in [0, 1] but p ranges over [{p.min():g}, {p.max():g}]; pass "
            "probabilities (e.g. Classifier.predict_proba), not logits or scores"
        )
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins)
    nonempty = count > 0
    mean_p = np.where(nonempty, sum_p / np.maximum(count, 1), np.nan)
    frac = np.where(nonempty, sum_y / np.maximum(count, 1), np.nan)
    ece = float(np.sum(count[nonempty] * np.abs(mean_p - frac)[nonempty]) / p.size) if p.size else float("nan")

    def listed(a: np.ndarray) -> list[float | None]:
        return [None if np.isnan(v) else float(v) for v in a]

    return {
        "bin_edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "count": count.tolist(),
        "mean_predicted": listed(mean_p),
        "fraction_positive": listed(frac),
        "ece": ece,
    }


def expected_calibration_error(y_true: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """The ``ece`` of :func:`calibration`."""
    return calibration(y_true, p, n_bins)["ece"]


def threshold_for_precision(y_true: np.ndarray, p: np.ndarray, target: float) -> float:
    """Lowest threshold t with precision(p >= t) >= target: the most recall at that precision.

    Raises :class:`ConfigError` if no threshold reaches the target on this data.
    """
    y, p = _pair(y_true, p, "p")
    if not 0 < target <= 1:
        raise ConfigError(f"target precision {target} must be in (0, 1]")
    thresholds, tp, fp = _pr_curve(y, p)
    ok = np.flatnonzero(tp >= target * (tp + fp))
    ok = ok[tp[ok] > 0]
    if ok.size == 0:
        best = float(np.max(tp / (tp + fp))) if thresholds.size else 0.0
        raise ConfigError(
            f"no threshold reaches precision {target} on these {y.size} validation examples "
            f"({int(y.sum())} positive); the best is {best:.3f}: lower the target or add validation data"
        )
    return float(thresholds[ok[-1]])


def threshold_for_recall(y_true: np.ndarray, p: np.ndarray, target: float) -> float:
    """Highest threshold t with recall(p >= t) >= target: the fewest false alarms at that recall.

    Raises :class:`ConfigError` if the data has no positive example.
    """
    y, p = _pair(y_true, p, "p")
    if not 0 < target <= 1:
        raise ConfigError(f"target recall {target} must be in (0, 1]")
    n1 = int(y.sum())
    if n1 == 0:
        raise ConfigError(f"these {y.size} validation examples have no positive; recall is undefined")
    thresholds, tp, _ = _pr_curve(y, p)
    first = int(np.argmax(tp >= target * n1))  # tp rises as the threshold falls; it ends at n1
    return float(thresholds[first])


def binary_report(y_true: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Every metric at once for probabilities ``p`` (N,) and a decision threshold.

    Returns a JSON-ready dict: n, n_positive, threshold, accuracy, precision, recall, f1,
    roc_auc, average_precision, log_loss (nats per example), ece, confusion
    {tn, fp, fn, tp}.
    """
    y, p = _pair(y_true, p, "p")
    pred = p >= threshold
    (tn, fp), (fn, tp) = confusion_matrix(y, pred)
    n = y.size
    return {
        "n": int(n),
        "n_positive": int(tp + fn),
        "threshold": float(threshold),
        "accuracy": float((tp + tn) / n) if n else float("nan"),
        "precision": precision(y, pred),
        "recall": recall(y, pred),
        "f1": f1(y, pred),
        "roc_auc": roc_auc(y, p),
        "average_precision": average_precision(y, p),
        "log_loss": binary_cross_entropy(y, p) if n else float("nan"),
        "ece": calibration(y, p)["ece"] if n else float("nan"),
        "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }
