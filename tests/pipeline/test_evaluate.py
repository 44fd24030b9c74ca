"""Evaluation against ground truth. Reference: scikit-learn's metrics on the same arrays."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from pipeline import detections, evaluate
from pipeline.tiling import TileGrid

UTM14 = CRS.from_epsg(26914)


def _grid(height, width, size, stride, res=0.5, x0=500_000.0, y0=5_200_000.0):
    return TileGrid(height, width, size, stride, Affine(res, 0, x0, 0, -res, y0), UTM14)


def _truth(points_lonlat, contexts):
    return {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": list(pt)}, "properties": {"context": ctx, "status": "persisting"}}
            for pt, ctx in zip(points_lonlat, contexts)
        ]
        + [{"type": "Feature", "geometry": {"type": "Point", "coordinates": list(points_lonlat[0])}, "properties": {"kind": "culvert"}}],
    }


def test_cell_metrics_label_cells_by_the_window_rule_and_score_like_sklearn():
    from types import SimpleNamespace

    from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

    # 6 x 6 cells of 10 m, window footprint 44 m: a target is in a cell's central half when
    # within 11 m of its centre along both axes, in its window when within 22 m (no distance
    # below lies near either edge, so the lon/lat round trip cannot move a cell across one).
    transform = Affine(10.0, 0, 500_000.0, 0, -10.0, 5_200_000.0)
    rng = np.random.default_rng(3)
    p = rng.random((6, 6))
    p[5, 5] = np.nan
    # One target at the centre of cell (1, 1); one on the corner shared by cells (3,3),(3,4),(4,3),(4,4).
    xy = [transform * (1.5, 1.5), transform * (4.0, 4.0)]
    lon, lat = warp_transform(UTM14, "EPSG:4326", [x for x, _ in xy], [y for _, y in xy])
    truth = _truth(list(zip(lon, lat)), ["main_stream", "lake_outlet"])
    pm = SimpleNamespace(values=p, transform=transform, crs=UTM14, footprint_m=44.0, threshold=0.5)
    report = evaluate.cell_metrics(pm, truth)
    # Worked by hand. Target A at (1.5, 1.5) cells: cells within 1 cell along both axes are
    # central (rows/cols 0..2), within 2 cells (rows/cols 0..3) in the window only -> left out.
    # Target B at the corner (4, 4): cells whose centre is within 1 cell are rows/cols 3..4
    # (centres 3.5, 4.5), within 2 cells rows/cols 2..5.
    y = np.zeros((6, 6), np.int8)
    y[0:4, 0:4] = -1
    y[2:6, 2:6] = -1
    y[0:3, 0:3] = 1
    y[3:5, 3:5] = 1
    keep = np.isfinite(p) & (y >= 0)
    yt, ps = y[keep] == 1, p[keep]
    assert (report["n_tiles"], report["n_positive"]) == (int(keep.sum()), 13)
    assert report["precision"] == pytest.approx(precision_score(yt, ps >= 0.5, zero_division=0))
    assert report["recall"] == pytest.approx(recall_score(yt, ps >= 0.5))
    assert report["f1"] == pytest.approx(f1_score(yt, ps >= 0.5))
    assert report["roc_auc"] == pytest.approx(roc_auc_score(yt, ps))
    assert report["average_precision"] == pytest.approx(average_precision_score(yt, ps))


# ---------------------------------------------------------------------------------------------
# Object level: hand-worked cases


def test_two_detections_near_one_dam_make_one_true_and_one_false_positive():
    m = evaluate.match_objects([[10, 0], [-5, 0]], [0.9, 0.8], [[0, 0]], radius=20)
    assert m.tolist() == [0, -1]
    s = evaluate.object_scores([0.9, 0.8], m, n_truth=1, threshold=0.5)
    assert (s["true_positives"], s["false_positives"], s["false_negatives"]) == (1, 1, 0)
    assert (s["precision"], s["recall"], s["f1"]) == (0.5, 1.0, pytest.approx(2 / 3))


def test_ties_go_to_the_more_probable_detection():
    # The weaker detection sits right on the dam, the stronger 15 m off: the stronger takes it.
    m = evaluate.match_objects([[0, 0], [15, 0]], [0.6, 0.9], [[0, 0]], radius=20)
    assert m.tolist() == [-1, 0]


def test_a_detection_between_two_dams_takes_the_nearer():
    m = evaluate.match_objects([[4, 0]], [0.9], [[0, 0], [10, 0]], radius=20)
    assert m.tolist() == [0]
    # and the other dam is still free for the next detection
    m = evaluate.match_objects([[4, 0], [6, 0]], [0.9, 0.8], [[0, 0], [10, 0]], radius=20)
    assert m.tolist() == [0, 1]


@pytest.mark.parametrize("distance, matched", [(19.999, 0), (20.0, 0), (20.001, -1)])
def test_a_radius_exactly_on_the_boundary_matches(distance, matched):
    # 3-4-5 triangle scaled: the distance is computed, not given, so rounding is exercised too.
    dx, dy = 0.6 * distance, 0.8 * distance
    assert evaluate.match_objects([[100 + dx, 200 + dy]], [0.7], [[100, 200]], radius=20).tolist() == [matched]


def test_object_average_precision_against_sklearn():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(5)
    truth = rng.uniform(0, 1000, (30, 2))
    near = truth[:20] + rng.normal(0, 5, (20, 2))  # 20 dams found
    far = rng.uniform(0, 1000, (25, 2)) + 5000  # 25 false alarms
    det = np.vstack([near, far])
    p = rng.random(len(det))
    m = evaluate.match_objects(det, p, truth, radius=30)
    assert (m[:20] >= 0).all() and (m[20:] < 0).all()
    s = evaluate.object_scores(p, m, n_truth=30, threshold=0.5)
    hit = m >= 0
    # sklearn's AP counts recall against the hits it sees (20); the object AP against all 30 dams.
    assert s["average_precision"] == pytest.approx(average_precision_score(hit, p) * 20 / 30)
    at = p >= 0.5
    assert s["precision"] == pytest.approx((hit & at).sum() / at.sum())
    assert s["recall"] == pytest.approx((hit & at).sum() / 30)


def test_no_truth_is_not_scorable_never_zero():
    s = evaluate.object_scores([0.9, 0.3], np.array([-1, -1]), n_truth=0, threshold=0.5)
    assert s["scorable"] is False and s["precision"] is None and s["recall"] is None and s["f1"] is None
    assert s["n_detections"] == 1


@pytest.mark.parametrize(
    "k, n, lo, hi",
    [
        # hand-worked: p = k/n, z = 1.96; (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
        (0, 10, 0.0, 0.2775327998628892),
        (10, 10, 0.7224672001371108, 1.0),
        (5, 10, 0.236593090512564, 0.7634069094874361),
        (1, 1, 0.2065493143772375, 1.0),
    ],
)
def test_wilson_interval_hand_worked(k, n, lo, hi):
    got = evaluate.wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-9)


def test_wilson_interval_of_nothing_is_none():
    assert evaluate.wilson_interval(0, 0) is None


def _truth_fc(features):
    return {"type": "FeatureCollection", "features": features, "source": "test"}


def _pt(lon, lat, **props):
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]}, "properties": props}


def test_evaluate_detections_by_context_lookalikes_and_a_context_without_objects():
    # Points in UTM 14N metres, truth written in lon/lat.
    xy = {"d1": (500_000, 5_200_000), "d2": (500_500, 5_200_000), "d3": (501_000, 5_200_000),
          "road": (502_000, 5_200_000), "tree": (503_000, 5_200_000)}
    lon, lat = warp_transform(UTM14, "EPSG:4326", [v[0] for v in xy.values()], [v[1] for v in xy.values()])
    ll = dict(zip(xy, zip(lon, lat)))
    truth = _truth_fc([
        _pt(*ll["d1"], **{"class": "dam", "context": "main_stream", "dates": ["2024-06-01"]}),
        _pt(*ll["d2"], **{"class": "dam", "context": "main_stream", "dates": ["2024-06-01"]}),
        _pt(*ll["d3"], **{"class": "dam", "context": "lake_outlet", "dates": ["2023-06-01"]}),  # not on the date
        _pt(*ll["road"], **{"class": "hard_negative", "kind": "road_crossing", "dates": ["2024-06-01"]}),
        _pt(*ll["tree"], **{"class": "hard_negative", "kind": "fallen_tree", "dates": ["2024-06-01"]}),
    ])
    # d1 found, d2 missed, a false alarm on the road crossing, one weak one on the tree (below threshold)
    det = detections.Points(
        x=np.array([500_010.0, 502_005.0, 503_000.0]), y=np.array([5_200_000.0, 5_200_000.0, 5_200_010.0]),
        probability=np.array([0.9, 0.8, 0.2]),
    )
    r = evaluate.evaluate_detections(det, UTM14, truth, threshold=0.5, radius_m=40, area_km2=4.0,
                                     date=dt.date(2024, 6, 1))
    assert r["object"]["n_truth"] == 2 and r["object"]["n_detections"] == 2
    assert (r["object"]["precision"], r["object"]["recall"]) == (0.5, 0.5)
    assert r["by_context"]["main_stream"] == {"recall": 0.5, "n_objects": 2, "n_detected": 1,
                                              "ci95": list(evaluate.wilson_interval(1, 2))}
    # the file's lake outlet does not stand on this date: null, never 0
    assert r["by_context"]["lake_outlet"] == {"recall": None, "n_objects": 0, "n_detected": 0, "ci95": None}
    assert r["lookalikes"]["road_crossing"] == {"n_objects": 1, "n_detected": 1, "false_positives": 1,
                                                "false_positives_per_km2": 0.25}
    assert r["lookalikes"]["fallen_tree"]["n_detected"] == 0  # its detection was below the threshold
    # calibration over the three candidates: outcomes 1, 0, 0
    assert r["calibration"]["brier"] == pytest.approx(((0.9 - 1) ** 2 + 0.8**2 + 0.2**2) / 3)


def test_change_confusion_on_hand_made_objects():
    lon, lat = warp_transform(UTM14, "EPSG:4326", [500_000, 500_500, 501_000, 501_500], [5_200_000] * 4)
    truth = _truth_fc([
        _pt(lon[0], lat[0], **{"class": "dam", "dates": ["2024-06-01"]}),  # new
        _pt(lon[1], lat[1], **{"class": "dam", "dates": ["2023-06-01"]}),  # gone
        _pt(lon[2], lat[2], **{"class": "dam", "dates": ["2023-06-01", "2024-06-01"]}),  # persisting
        _pt(lon[3], lat[3], **{"class": "dam", "dates": ["2023-06-01", "2024-06-01"]}),  # persisting
    ])
    predicted = evaluate.ChangeObjects(
        x=np.array([500_000.0, 500_500.0, 501_000.0, 509_000.0]), y=np.full(4, 5_200_000.0),
        strength=np.array([0.9, 0.8, 0.7, 0.6]), label=np.array(["new", "persisting", "persisting", "gone"], dtype=object),
    )
    r = evaluate.evaluate_change(predicted, UTM14, truth, dt.date(2023, 6, 1), dt.date(2024, 6, 1), radius_m=30)
    assert r["new"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "n_truth": 1, "n_predicted": 1, "scorable": True}
    assert r["gone"]["recall"] == 0.0 and r["gone"]["precision"] == 0.0  # the one 'gone' is far from any dam
    assert r["persisting"]["precision"] == 0.5 and r["persisting"]["recall"] == 0.5
    c = r["confusion"]
    assert c["new"]["new"] == 1 and c["gone"]["persisting"] == 1 and c["persisting"]["persisting"] == 1
    assert c["persisting"]["none"] == 1 and c["no dam"]["gone"] == 1


def test_find_peaks_suppresses_lesser_maxima_within_the_radius():
    values = np.zeros((20, 20))
    values[5, 5], values[5, 7], values[15, 15] = 0.9, 0.8, 0.6  # 0.8 is 20 m from 0.9
    values[0, 19] = np.nan
    transform = Affine(10, 0, 0, 0, -10, 200)
    peaks = detections.find_peaks(values, transform, radius=25, floor=0.1)
    assert peaks.probability.tolist() == [0.9, 0.6]
    assert (peaks.x.tolist(), peaks.y.tolist()) == ([55.0, 155.0], [145.0, 45.0])
    assert detections.find_peaks(values, transform, radius=15, floor=0.1).probability.tolist() == [0.9, 0.8, 0.6]
