"""Metrics against scikit-learn's implementations and hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from ann import metrics
from ann.errors import ConfigError


@pytest.fixture(scope="module")
def sk():
    return pytest.importorskip("sklearn.metrics")


@pytest.fixture(params=[0, 1, 2])
def scored(request):
    """Labels and scores; seed 2 rounds the scores to create many ties."""
    rng = np.random.default_rng(request.param)
    y = (rng.random(500) < 0.2).astype(np.int8)
    p = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1)
    if request.param == 2:
        p = np.round(p, 1)
    return y, p


def test_decision_metrics_equal_sklearn(scored, sk):
    y, p = scored
    pred = p >= 0.5
    assert metrics.accuracy(y, pred) == pytest.approx(sk.accuracy_score(y, pred))
    assert metrics.precision(y, pred) == pytest.approx(sk.precision_score(y, pred, zero_division=0))
    assert metrics.recall(y, pred) == pytest.approx(sk.recall_score(y, pred))
    assert metrics.f1(y, pred) == pytest.approx(sk.f1_score(y, pred))
    np.testing.assert_array_equal(metrics.confusion_matrix(y, pred), sk.confusion_matrix(y, pred))


def test_ranking_metrics_equal_sklearn(scored, sk):
    y, p = scored
    assert metrics.roc_auc(y, p) == pytest.approx(sk.roc_auc_score(y, p), rel=1e-12)
    assert metrics.average_precision(y, p) == pytest.approx(sk.average_precision_score(y, p), rel=1e-12)


def test_hand_worked_small_case():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    # Positive-negative pairs: (0.35 vs 0.1) win, (0.35 vs 0.4) loss, (0.8 vs both) win: AUC 3/4.
    assert metrics.roc_auc(y, p) == 0.75
    # Thresholds 0.8: P=1, R=1/2; 0.4: P=1/2, R=1/2; 0.35: P=2/3, R=1: AP = 1/2*1 + 0 + 1/2*2/3.
    assert metrics.average_precision(y, p) == pytest.approx(0.5 + 1 / 3)
    pred = p >= 0.5
    assert (metrics.precision(y, pred), metrics.recall(y, pred), metrics.f1(y, pred)) == (1.0, 0.5, pytest.approx(2 / 3))


def test_undefined_cases_follow_the_documented_conventions():
    y = np.zeros(4, int)
    assert np.isnan(metrics.roc_auc(y, np.linspace(0, 1, 4)))
    assert np.isnan(metrics.average_precision(y, np.linspace(0, 1, 4)))
    assert metrics.precision([1, 0], [0, 0]) == 0.0 and metrics.recall(y, y) == 0.0 and metrics.f1(y, y) == 0.0
    with pytest.raises(ConfigError, match="0/1 labels"):
        metrics.accuracy([0, -1, 1], [0, 0, 1])


def test_calibration_bins_and_ece_by_hand():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.15, 0.95, 0.85, 1.0])
    cal = metrics.calibration(y, p, n_bins=2)
    # bin [0, .5): p = .05, .15, .15 (mean 0.1167), 1 of 3 positive; bin [.5, 1]: .95, .85, 1.0 (mean .9333), 2 of 3.
    assert cal["count"] == [3, 3]
    np.testing.assert_allclose(cal["mean_predicted"], [0.35 / 3, 2.8 / 3])
    np.testing.assert_allclose(cal["fraction_positive"], [1 / 3, 2 / 3])
    np.testing.assert_allclose(cal["ece"], 0.5 * abs(0.35 / 3 - 1 / 3) + 0.5 * abs(2.8 / 3 - 2 / 3))


@pytest.mark.parametrize("seed", [0, 1])
def test_calibration_curve_equals_sklearn(seed):
    calibration_curve = pytest.importorskip("sklearn.calibration").calibration_curve

    # Continuous scores: none falls on an inner bin edge, where the conventions differ
    # (ours [a, b), sklearn's (a, b]).
    rng = np.random.default_rng(seed)
    y = (rng.random(500) < 0.3).astype(np.int8)
    p = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1)
    cal = metrics.calibration(y, p, n_bins=5)
    frac, mean = calibration_curve(y, p, n_bins=5, strategy="uniform")
    keep = [v is not None for v in cal["mean_predicted"]]
    np.testing.assert_allclose(np.array(cal["fraction_positive"])[keep].astype(float), frac)
    np.testing.assert_allclose(np.array(cal["mean_predicted"])[keep].astype(float), mean)


def test_thresholds_for_target_precision_and_recall(scored, sk):
    y, p = scored
    prec, rec, thr = sk.precision_recall_curve(y, p)
    for target in (0.6, 0.8):
        t = metrics.threshold_for_precision(y, p, target)
        # Reference: the lowest sklearn threshold with precision >= target.
        assert t == pytest.approx(thr[np.flatnonzero(prec[:-1] >= target)[0]])
        assert metrics.precision(y, p >= t) >= target
        t = metrics.threshold_for_recall(y, p, target)
        assert metrics.recall(y, p >= t) >= target
        higher = np.unique(p)[np.unique(p) > t]
        assert higher.size == 0 or metrics.recall(y, p >= higher[0]) < target  # the highest such threshold


def test_unreachable_precision_is_an_error_not_a_silent_fallback():
    with pytest.raises(ConfigError, match="no threshold reaches precision 0.99"):
        metrics.threshold_for_precision([1, 0, 1, 0], [0.9, 0.9, 0.1, 0.1], 0.99)


def test_binary_report_collects_everything(scored, sk):
    y, p = scored
    report = metrics.binary_report(y, p, threshold=0.4)
    pred = p >= 0.4
    assert report["f1"] == pytest.approx(sk.f1_score(y, pred))
    assert report["log_loss"] == pytest.approx(sk.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)), rel=1e-2)
    assert report["confusion"] == dict(zip(["tn", "fp", "fn", "tp"], sk.confusion_matrix(y, pred).ravel().tolist()))
    assert report["n"] == 500 and report["n_positive"] == int(y.sum()) and report["threshold"] == 0.4


def test_calibration_of_nan_or_logits_names_the_cause_and_the_fix():
    with pytest.raises(ConfigError, match=r"2 NaN of 3.*diverged.*lower learning_rate"):
        metrics.calibration([0, 1, 1], [0.2, np.nan, np.nan])
    with pytest.raises(ConfigError, match=r"ranges over \[-3, 2\].*not logits"):
        metrics.calibration([0, 1], [-3.0, 2.0])
