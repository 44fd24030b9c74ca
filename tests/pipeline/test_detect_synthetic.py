"""Detection and change metrics against a synthetic area's own ground truth, end to end.

A small synthetic area (two dates, dams new/gone/persisting in several contexts) goes through
the real store, an ann model and the real ``detect`` / ``change`` commands. The references are
independent of damwatch's evaluation code: the output GeoJSON and the truth GeoJSON read with
``json``, distances on the ellipsoid (pyproj's ``Geod``), and the one-to-one pairing as SciPy's
maximum bipartite matching. Greedy strongest-first matching (damwatch's rule) and a maximum
matching agree whenever no detection can reach two objects and no object two detections, which
the test checks first so that a disagreement means a wrong count, not a tie.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from flows.cli import main
from pipeline.ingest import ingest
from pipeline.store import Store

RGBN = ["red", "green", "blue", "nir"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory, dask_client):
    from ann.io import Classifier, save_model
    from ann.network import MLP
    from ann.standardize import Standardizer
    from ann.train import InMemorySource, TrainConfig, class_sample_weights, fit
    from pipeline.features import compute_features, get_spec
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


def _dams(truth_path, keep):
    """(lon, lat, properties) of the truth's dams passing ``keep(properties)``: the mean of each
    geometry's vertices (the representative point the truth format documents)."""

    def vertices(coords):
        if isinstance(coords[0], (int, float)):
            yield coords[:2]
        else:
            for c in coords:
                yield from vertices(c)

    out = []
    for f in json.loads(truth_path.read_text())["features"]:
        if f["properties"].get("class") == "dam" and keep(f["properties"]):
            pts = np.array(list(vertices(f["geometry"]["coordinates"])), dtype=float)
            out.append((pts[:, 0].mean(), pts[:, 1].mean(), f["properties"]))
    return out


def _reference_tp(points, dams, radius):
    """True positives of a one-to-one matching within ``radius`` metres, by SciPy, after checking
    the pairing is unambiguous (then every rule of one-to-one matching gives the same count)."""
    from pyproj import Geod
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    if not points or not dams:
        return 0, np.zeros(len(dams), bool)
    geod = Geod(ellps="WGS84")
    d = np.array([[geod.inv(px, py, tx, ty)[2] for tx, ty, _ in dams] for px, py in points])
    near = d <= radius
    # Unambiguous: distances are not within a metre of the radius (projection vs ellipsoid), and
    # no row or column has two partners.
    assert not (np.abs(d - radius) < 1.0).any()
    assert (near.sum(axis=0) <= 1).all() and (near.sum(axis=1) <= 1).all()
    match = maximum_bipartite_matching(csr_matrix(near.astype(np.int8)), perm_type="column")
    found = np.zeros(len(dams), bool)
    found[match[match >= 0]] = True
    return int((match >= 0).sum()), found


def test_detection_metrics_against_geodesic_matching(synth, dask_client, prefect, tmp_path):
    store, sid, mid = synth["store"], synth["ids"][1], synth["model_id"]
    out = tmp_path / "maps"
    assert _cli(synth, dask_client, "detect", sid, "--model", mid, "--out", str(out), "--truth", str(synth["truth"])) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    radius = metrics["radius_m"]
    provenance = json.loads((out / "provenance.json").read_text())
    assert radius == pytest.approx(provenance["settings"]["footprint_m"] / 2)

    points = [(f["properties"]["lon"], f["properties"]["lat"])
              for f in json.loads((out / "detections.geojson").read_text())["features"]]
    date = store.survey(sid).date.isoformat()
    dams = _dams(synth["truth"], lambda p: date in p["dates"])
    tp, found = _reference_tp(points, dams, radius)
    o = metrics["object"]
    assert (o["n_truth"], o["n_detections"], o["true_positives"]) == (len(dams), len(points), tp)
    assert tp > 0 and len(points) > tp  # the case exercises both hits and false alarms
    assert o["precision"] == pytest.approx(tp / len(points))
    assert o["recall"] == pytest.approx(tp / len(dams))
    assert o["f1"] == pytest.approx(2 * tp / (len(points) + len(dams)))
    contexts = {p["context"] for _, _, p in dams}
    for ctx in contexts:
        mine = np.array([p["context"] == ctx for _, _, p in dams])
        m = metrics["by_context"][ctx]
        assert (m["n_objects"], m["n_detected"]) == (int(mine.sum()), int((found & mine).sum()))


def test_change_metrics_against_truth_classes_from_dates(synth, dask_client, prefect, tmp_path):
    store, (a, b), mid = synth["store"], synth["ids"], synth["model_id"]
    out = tmp_path / "change"
    assert _cli(synth, dask_client, "change", a, b, "--model", mid, "--out", str(out), "--truth", str(synth["truth"])) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    radius = metrics["radius_m"]
    before, after = (store.survey(s).date.isoformat() for s in (a, b))

    def truth_class(p):
        on = (before in p["dates"], after in p["dates"])
        return {(False, True): "new", (True, False): "gone", (True, True): "persisting"}.get(on, "absent")

    objects = json.loads((out / "change.geojson").read_text())["features"]
    for name in ("new", "gone", "persisting"):
        dams = _dams(synth["truth"], lambda p, name=name: truth_class(p) == name)
        points = [(f["properties"]["lon"], f["properties"]["lat"]) for f in objects if f["properties"]["class"] == name]
        tp, _ = _reference_tp(points, dams, radius)
        m = metrics[name]
        assert (m["n_truth"], m["n_predicted"]) == (len(dams), len(points))
        if dams:
            assert m["recall"] == pytest.approx(tp / len(dams))
            assert m["f1"] == pytest.approx(2 * tp / (len(points) + len(dams)))
    # The dates' status in the truth file is the reference for the class of each dam.
    statuses = {p["status"] for _, _, p in _dams(synth["truth"], lambda p: True)}
    assert statuses <= {"new", "gone", "persisting"}
    for _, _, p in _dams(synth["truth"], lambda p: True):
        assert truth_class(p) == p["status"]
    assert dt.date.fromisoformat(before) < dt.date.fromisoformat(after)
