"""Detection and change metrics against the synthetic surveys' own ground truth (issue 3's format).

A small synthetic area (two dates, dams new/gone/persisting in several contexts) goes through
the real store, features, labels and an ann model. The reference for the tile-level truth is
``pipeline.labels.labels_from_vector`` (another module's rasterization of the same GeoJSON) and
scikit-learn for the scores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from flows.cli import main
from pipeline import detect
from pipeline.features import compute_features, get_spec
from pipeline.ingest import ingest
from pipeline.store import Store
from pipeline.tiling import TileGrid

RGBN = ["red", "green", "blue", "nir"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory, dask_client):
    from ann.io import Classifier, save_model
    from ann.network import MLP
    from ann.standardize import Standardizer
    from ann.train import InMemorySource, TrainConfig, class_sample_weights, fit
    from pipeline.labels import labels_from_vector
    from pipeline.synthetic import generate_area

    root = tmp_path_factory.mktemp("synth")
    area = generate_area(root / "synth", size=1024, workers=1, progress=False)
    store = Store(root / "store")
    ids = [ingest(path, "creek", date, store, bands=RGBN, client=dask_client).survey.id
           for date, path in sorted(area.surveys.items())]
    spec = get_spec("rgbn")
    features = compute_features(store, ids[0], spec, stride=64, size=128, client=dask_client)
    labels = labels_from_vector(store, ids[0], area.truth, features.grid, where={"class": "dam"},
                                on_date="survey", save=False)
    keep = (labels.values >= 0) & (features.valid_fraction >= 0.5)
    X = np.asarray(features.values[...])[keep]
    y = (labels.values[keep] == 1).astype(np.int8)
    standardizer = Standardizer.fit(X)
    Xs = standardizer.transform(X)
    net = MLP(X.shape[1], hidden=(8,), seed=0)
    fit(net, InMemorySource(net, Xs, y, batch_size=32, sample_weight=class_sample_weights(y, "balanced")),
        Xs, y, TrainConfig(max_epochs=15, patience=15))
    model_id = save_model(Classifier(net, standardizer, spec.to_dict(), 0.5, {"tile_size": 128}), store.models_dir)
    return {"store": store, "ids": ids, "model_id": model_id, "truth": area.truth}


def _cli(synth, dask_client, *args):
    return main([*args, "--store", str(synth["store"].root), "--cluster", dask_client.scheduler.address])


def test_detection_metrics_against_labels_module_and_sklearn(synth, dask_client, prefect, tmp_path):
    from sklearn.metrics import average_precision_score, precision_score, recall_score, roc_auc_score

    from pipeline.labels import labels_from_vector

    store, sid, mid = synth["store"], synth["ids"][1], synth["model_id"]
    out = tmp_path / "maps"
    assert _cli(synth, dask_client, "detect", sid, "--model", mid, "--out", str(out), "--truth", str(synth["truth"])) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    pred = detect.open_predictions(store, mid, sid)
    threshold = metrics["threshold"]
    labels = labels_from_vector(store, sid, synth["truth"], pred.grid, where={"class": "dam"}, on_date="survey", save=False)
    scored = np.isfinite(pred.probabilities)
    y = labels.values[scored] == 1
    p = pred.probabilities[scored]
    overall = metrics["overall"]
    assert overall["n_positive"] == int(y.sum()) > 0
    assert overall["precision"] == pytest.approx(precision_score(y, p >= threshold, zero_division=0))
    assert overall["recall"] == pytest.approx(recall_score(y, p >= threshold))
    assert overall["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert overall["average_precision"] == pytest.approx(average_precision_score(y, p))

    truth = json.loads(synth["truth"].read_text())
    date = store.survey(sid).date.isoformat()
    dams = [f["properties"] for f in truth["features"] if f["properties"]["class"] == "dam" and date in f["properties"]["dates"]]
    assert metrics["n_objects"] == len(dams)
    assert set(metrics["by_context"]) == {d["context"] for d in dams}
    for ctx, m in metrics["by_context"].items():
        assert m["n_objects"] == sum(d["context"] == ctx for d in dams)


def test_change_metrics_count_truth_classes_from_dates(synth, dask_client, prefect, tmp_path):
    store, (a, b), mid = synth["store"], synth["ids"], synth["model_id"]
    out = tmp_path / "change"
    assert _cli(synth, dask_client, "change", a, b, "--model", mid, "--out", str(out), "--truth", str(synth["truth"])) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    truth = json.loads(synth["truth"].read_text())
    status = [f["properties"]["status"] for f in truth["features"] if f["properties"]["class"] == "dam"]

    # Independent reference: the change raster and both GeoTIFFs as rasterio reads them, the
    # truth's dams placed with PROJ, and scikit-learn's scores over the cells that have data on
    # both dates. The rule metrics.json states: a cell truly holds a class when a dam of that
    # class lies within half a model tile (128 px) of the cell's centre, the centre of the part
    # of the cell inside both surveys (border cells are cut by the overlap).
    import rasterio
    from rasterio.warp import transform as reproject_points
    from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score

    with rasterio.open(out / "change.tif") as ds:
        codes, transform, crs = ds.read(1), ds.transform, ds.crs
    sources = [rasterio.open(store.root.parent / "synth" / store.survey(s).source_name) for s in (a, b)]
    left, bottom = max(src.bounds.left for src in sources), max(src.bounds.bottom for src in sources)
    right, top = min(src.bounds.right for src in sources), min(src.bounds.top for src in sources)
    half = 128 * sources[0].res[0] / 2
    x0 = transform.c + np.arange(codes.shape[1]) * transform.a
    y0 = transform.f + np.arange(codes.shape[0]) * transform.e
    cx, cy = np.meshgrid(
        (np.maximum(x0, left) + np.minimum(x0 + transform.a, right)) / 2,
        (np.minimum(y0, top) + np.maximum(y0 + transform.e, bottom)) / 2,
    )
    scored = codes != 255
    for code, name in ((1, "new"), (2, "gone"), (3, "persisting")):
        dams = [f for f in truth["features"] if f["properties"]["class"] == "dam" and f["properties"]["status"] == name]
        true = np.zeros(codes.shape, dtype=bool)
        for f in dams:
            pts = np.asarray(f["geometry"]["coordinates"], dtype=float).reshape(-1, 2)
            (x,), (y,) = reproject_points("EPSG:4326", crs, [pts[:, 0].mean()], [pts[:, 1].mean()])
            true |= (np.abs(cx - x) <= half) & (np.abs(cy - y) <= half)
        y_true, y_pred = true[scored], codes[scored] == code
        m = metrics["classes"][name]
        assert m["n_objects"] == status.count(name) == len(dams)
        assert (m["tp"], m["fp"], m["fn"]) == (
            int((y_true & y_pred).sum()), int((~y_true & y_pred).sum()), int((y_true & ~y_pred).sum()))
        if y_true.any() or y_pred.any():
            assert m["iou"] == pytest.approx(jaccard_score(y_true, y_pred))
            assert m["f1"] == pytest.approx(f1_score(y_true, y_pred))
        if y_pred.any():
            assert m["precision"] == pytest.approx(precision_score(y_true, y_pred))
        if y_true.any():
            assert m["recall"] == pytest.approx(recall_score(y_true, y_pred))
    # The synthetic later date is misregistered by metres: still compared on one map grid.
    grids = json.loads((out / "provenance.json").read_text())["tile_grids"]
    assert TileGrid.from_dict(grids["before"]).transform != TileGrid.from_dict(grids["after"]).transform
