"""``damwatch evaluate`` on files the test writes itself, with hand-worked expected numbers.

References: the matches are worked out by hand from the positions below (metres apart in UTM
14N), the label scores from the quadrant layout; bad input leaves no metrics file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from flows.cli import main

UTM14 = CRS.from_epsg(26914)
X0, Y0 = 500_000.0, 5_200_000.0


def _lonlat(xs, ys, crs=UTM14):
    lon, lat = warp_transform(crs, "EPSG:4326", list(xs), list(ys))
    return list(zip(lon, lat))


def _point(coords, **props):
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": list(coords)}, "properties": props}


@pytest.fixture
def files(tmp_path):
    """Three dams (two main-stream, one side-channel) and a road crossing; four detections."""
    dams = _lonlat([X0, X0 + 400, X0 + 800, X0 + 1200], [Y0] * 4)
    truth = {"type": "FeatureCollection", "features": [
        _point(dams[0], **{"class": "dam", "context": "main_stream", "dates": ["2024-06-01"]}),
        _point(dams[1], **{"class": "dam", "context": "main_stream", "dates": ["2024-06-01"]}),
        _point(dams[2], **{"class": "dam", "context": "side_channel", "dates": ["2024-06-01"]}),
        _point(dams[3], **{"class": "hard_negative", "kind": "road_crossing", "dates": ["2024-06-01"]}),
    ]}
    (tmp_path / "truth.geojson").write_text(json.dumps(truth))
    # Detections in Web Mercator with a legacy crs member: 30 m from dam 0 (found), 10 m from
    # dam 2 (found), 20 m from the road crossing (a false positive it drew), and one 90 m from
    # dam 1 (too far at radius 60: a false positive, and dam 1 is missed).
    utm = [(X0 + 30, Y0), (X0 + 810, Y0), (X0 + 1220, Y0), (X0 + 400, Y0 + 90)]
    merc = warp_transform(UTM14, "EPSG:3857", [u[0] for u in utm], [u[1] for u in utm])
    detections = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "EPSG:3857"}},
                  "features": [_point(xy, probability=p) for xy, p in zip(zip(*merc), [0.95, 0.9, 0.8, 0.7])]}
    (tmp_path / "detections.geojson").write_text(json.dumps(detections))
    return tmp_path


def test_evaluate_a_detections_file_against_a_truth(files, capsys):
    out = files / "metrics.json"
    argv = ["evaluate", "--detections", str(files / "detections.geojson"), "--truth", str(files / "truth.geojson"),
            "--radius", "60", "--date", "2024-06-01", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    r = report["detection"]["detections.geojson"]
    o = r["object"]
    assert (o["n_truth"], o["n_detections"], o["true_positives"], o["false_positives"]) == (3, 4, 2, 2)
    assert (o["precision"], o["recall"]) == (0.5, pytest.approx(2 / 3))
    assert o["f1"] == pytest.approx(2 * 2 / (4 + 3))
    # ranked 0.95 hit, 0.9 hit, 0.8 miss, 0.7 miss: AP = 1/3 * 1 + 1/3 * 1
    assert o["average_precision"] == pytest.approx(2 / 3)
    assert r["by_context"]["main_stream"]["recall"] == 0.5 and r["by_context"]["side_channel"]["recall"] == 1.0
    assert r["lookalikes"]["road_crossing"]["n_detected"] == 1
    assert report["radius_m"] == 60
    assert (files / "metrics-pr.png").is_file()
    assert "precision 0.500" in capsys.readouterr().out


@pytest.mark.parametrize(
    "change, words",
    [
        ({"where": ["class=weir"]}, "no feature matches --where class=weir"),
        ({"radius": "-5"}, "--radius -5.0 must be"),
        ({"truth_text": "{not json"}, "is not GeoJSON"),
        ({"truth_text": json.dumps({"type": "Topology"})}, "GeoJSON type 'Topology'"),
    ],
)
def test_bad_input_is_one_error_and_no_metrics_file(files, capsys, change, words):
    truth = files / "truth.geojson"
    if "truth_text" in change:
        truth = files / "bad.geojson"
        truth.write_text(change["truth_text"])
    out = files / "metrics.json"
    argv = ["evaluate", "--detections", str(files / "detections.geojson"), "--truth", str(truth),
            "--radius", change.get("radius", "60"), "--out", str(out)]
    for w in change.get("where", []):
        argv += ["--where", w]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in " ".join(err.split()) and "Traceback" not in err
    assert not out.exists() and not (files / "metrics-pr.png").exists()


def test_stored_predictions_scored_against_labels_on_another_grid(store, capsys, tmp_path):
    """Predictions on a 64-px grid, labels on a 32-px grid of the same 128-px survey."""
    import rasterio

    from ann.io import Classifier, save_model
    from ann.network import MLP
    from ann.standardize import Standardizer
    from pipeline.detect import _create_map_array
    from pipeline.ingest import ingest
    from pipeline.labels import TileLabels, save_labels
    from pipeline.tiling import TileGrid

    path = tmp_path / "s.tif"
    transform = Affine(1.0, 0, X0, 0, -1.0, Y0)
    with rasterio.open(path, "w", driver="GTiff", width=128, height=128, count=3, dtype="uint8", crs=UTM14,
                       transform=transform) as ds:
        ds.write(np.full((3, 128, 128), 50, np.uint8))
        ds.descriptions = ("red", "green", "blue")
    survey = ingest(path, "pond", "2024-06-01", store).survey
    clf = Classifier(MLP(2, (2,), seed=0), Standardizer(np.zeros(2), np.ones(2)), {"name": "t", "names": ["a", "b"]}, 0.5, {})
    model_id = save_model(clf, store.models_dir)
    # A map on 64-m cells (two by two over the survey), stored the way detect stores it.
    attrs = {"survey_id": survey.id, "model_id": model_id, "model_type": "classic", "grid": "size64_stride64",
             "threshold": 0.5, "footprint_m": 64.0, "cell_m": 64.0, "reading": {}, "spec": {},
             "crs_wkt": survey.crs.to_wkt(), "transform": list(Affine(64.0, 0, X0, 0, -64.0, Y0))[:6]}
    with store.new_group(f"predictions/{model_id}/{survey.id}/size64_stride64", attrs) as group:
        _create_map_array(group, (2, 2), (2, 2))[...] = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    lgrid = TileGrid.for_survey(survey, size=32, stride=32)
    values = np.zeros((4, 4), np.int8)
    values[:2, :2] = 1  # top-left quadrant: water, predicted 0.9
    values[2:, :2] = 1  # bottom-left: water, predicted 0.2 (missed) ...
    values[3, :2] = -1  # ... two of its tiles unknown
    save_labels(store, TileLabels(survey.id, lgrid, values, "hand", "water"))
    out = tmp_path / "m.json"
    assert main(["evaluate", "--survey", survey.id, "--model", model_id, "--labels", "water", "--size", "32",
                 "--stride", "32", "--out", str(out), "--store", str(store.root)]) == 0
    t = json.loads(out.read_text())["tile"]
    # known tiles 14: TL 4 positive p .9; TR 4 negative p .1; BL 2 positive p .2; BR 4 negative p .8
    assert (t["n_tiles"], t["n_positive"]) == (14, 6)
    assert (t["precision"], t["recall"], t["f1"]) == (0.5, pytest.approx(4 / 6), pytest.approx(8 / 14))
