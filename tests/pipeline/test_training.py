"""Training from the store: region hold-out, shards read from Zarr, threshold, held-out metrics, CLI.

Real input: two dates of the NAIP survey in ../shared/data/naip, 32-px tiles (690 per date),
weakly labelled "open water" where NDWI > 0 on 20 % of a tile. References: the features array
read whole with NumPy, ann.metrics on brute-force thresholds, and the saved model reloaded and
re-scored on the held-out tiles.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ann import metrics
from ann.io import load_model
from ann.shards import ShardPlan
from ann.train import TrainConfig
from flows.cli import main
from pipeline.errors import InputError
from pipeline.examples import (
    GAP,
    TEST,
    TRAIN,
    VALIDATION,
    HoldOut,
    StoreShardLoader,
    column_regions,
    example_table,
)
from pipeline.features import compute_features, get_spec, open_features
from pipeline.ingest import ingest
from pipeline.labels import labels_from_expression
from pipeline.store import Store
from pipeline.training import TrainingSettings, choose_threshold, train_model

SIZE = 32  # small tiles: enough examples from a 934 x 723 px survey
LABELS = "water"


@pytest.fixture(scope="module")
def naip_store(naip_files, tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("training") / "store")
    ids = []
    for path, date in [(naip_files[0], "2009-08-18"), (naip_files[4], "2015-09-26")]:
        survey = ingest(path, "prairie", date, store, bands=["red", "green", "blue", "nir"]).survey
        features = compute_features(store, survey.id, "rgbn", stride=SIZE, size=SIZE)
        labels_from_expression(store, survey.id, "ndwi > 0", features.grid, min_fraction=0.2, name=LABELS)
        ids.append(survey.id)
    return store, ids


@pytest.mark.parametrize(
    "n_cols, holdout, size, stride, expected",
    [
        # 10 columns, 20 % + 20 %: 6 train | 2 validation | 2 test, no gap at stride = size
        (10, HoldOut(), 128, 128, [0] * 6 + [1] * 2 + [2] * 2),
        # half-overlapping tiles: one column dropped before each held-out band
        (10, HoldOut(), 128, 64, [0] * 4 + [-1] + [1] * 2 + [-1] + [2] * 2),
        # fractions round up: 7 columns give 2 test and 2 validation columns
        (7, HoldOut(), 32, 32, [0] * 3 + [1] * 2 + [2] * 2),
        # an explicit gap of 2 and small fractions still keep one column per band
        (12, HoldOut(test_fraction=0.05, val_fraction=0.05, gap=2), 32, 32, [0] * 6 + [-1] * 2 + [1] + [-1] * 2 + [2]),
    ],
)
def test_column_regions(n_cols, holdout, size, stride, expected):
    assert column_regions(n_cols, holdout, size, stride).tolist() == expected
    assert (TRAIN, VALIDATION, TEST, GAP) == (0, 1, 2, -1)


def test_column_regions_refuses_a_survey_too_narrow_to_hold_out():
    with pytest.raises(InputError, match="creek-2024-06-01 is 2 tile columns wide"):
        column_regions(2, HoldOut(), 128, 128, "creek-2024-06-01")


def test_best_f1_threshold_equals_brute_force_over_every_threshold():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.random(60) < 0.3
        p = np.round(np.clip(y * 0.3 + rng.random(60) * 0.7, 0, 1), 2)  # ties on purpose
        f1s = {t: metrics.f1(y, p >= t) for t in np.unique(p)}
        best = max(f1s.values())
        t = choose_threshold(y, p)
        assert f1s[t] == pytest.approx(best, abs=1e-12)
        assert t == max(k for k, v in f1s.items() if abs(v - best) <= 1e-12)  # ties: the higher threshold
    assert choose_threshold(np.zeros(5), np.linspace(0, 1, 5)) == 0.5  # no positive: nothing to tune


@pytest.mark.naip
def test_shards_read_from_the_store_equal_the_features_array(naip_store):
    store, ids = naip_store
    holdout = HoldOut()
    tables = example_table(store, ids, "rgbn", LABELS, holdout, SIZE, SIZE)
    train = tables[TRAIN]
    # the held-out bands never reach training: every training tile lies west of them
    n_cols = open_features(store, ids[0], "rgbn", SIZE, SIZE).valid_fraction.shape[1]
    assert train.col.max() < np.flatnonzero(column_regions(n_cols, holdout, SIZE, SIZE) != TRAIN)[0]
    plan = ShardPlan(n_examples=len(train), n_shards=5, seed=3)
    loader = StoreShardLoader(str(store.root), tuple(ids), get_spec("rgbn").to_dict(),
                              LABELS, holdout, SIZE, SIZE, plan, (1.0, 4.0))
    X = np.empty((len(train), 1047), np.float32)
    y = np.empty(len(train))
    w = np.empty(len(train))
    for s in range(5):
        X[plan.shard_indices(s)], y[plan.shard_indices(s)], w[plan.shard_indices(s)] = loader(s)
    reference = np.concatenate([
        np.asarray(open_features(store, sid, "rgbn", SIZE, SIZE).values[...])[train.row[train.survey == k], train.col[train.survey == k]]
        for k, sid in enumerate(ids)
    ])
    np.testing.assert_array_equal(X, reference)
    np.testing.assert_array_equal(y, train.label)
    np.testing.assert_array_equal(w, np.where(train.label == 1, 4.0, 1.0))


@pytest.mark.naip
def test_symmetry_shards_are_the_training_features_permuted_by_each_tile_symmetry(naip_store):
    store, ids = naip_store
    spec = get_spec("rgbn")
    train = example_table(store, ids, "rgbn", LABELS, HoldOut(), SIZE, SIZE)[TRAIN]
    perms = spec.symmetry_permutations()
    plan = ShardPlan(n_examples=8 * len(train), n_shards=3, seed=5)
    loader = StoreShardLoader(str(store.root), tuple(ids), spec.to_dict(), LABELS, HoldOut(), SIZE, SIZE,
                              plan, None, symmetries=True)
    X = np.empty((plan.n_examples, spec.n_features), np.float32)
    y = np.empty(plan.n_examples)
    for s in range(3):
        X[plan.shard_indices(s)], y[plan.shard_indices(s)], w = loader(s)
        assert w is None
    tiles = np.concatenate([
        np.asarray(open_features(store, sid, "rgbn", SIZE, SIZE).values[...])[train.row[train.survey == k], train.col[train.survey == k]]
        for k, sid in enumerate(ids)
    ])
    # example j is symmetry j // N of training tile j % N: the identity block first
    np.testing.assert_array_equal(X, np.concatenate([tiles[:, p] for p in perms]))
    np.testing.assert_array_equal(y, np.tile(train.label, 8))
    with pytest.raises(InputError, match="changed while training"):
        StoreShardLoader(str(store.root), tuple(ids), spec.to_dict(), LABELS, HoldOut(), SIZE, SIZE,
                         plan, None, symmetries=False)(0)


def _held_out_reference(store, ids, clf, region):
    """Probabilities of the saved model on one region's tiles, read straight from the arrays."""
    from pipeline.labels import open_labels

    ps, ys = [], []
    for sid in ids:
        features = open_features(store, sid, "rgbn", SIZE, SIZE)
        labels = open_labels(store, sid, LABELS, SIZE, SIZE).values
        cols = column_regions(labels.shape[1], HoldOut(), SIZE, SIZE) == region
        keep = (labels >= 0) & (features.valid_fraction >= 0.5) & cols[None, :]
        ps.append(clf.predict_proba(np.asarray(features.values[...])[keep]))
        ys.append(labels[keep])
    return np.concatenate(ys), np.concatenate(ps)


@pytest.mark.naip
def test_train_model_in_process_and_on_dask_agree_and_report_held_out_metrics(naip_store, dask_client):
    store, ids = naip_store
    settings = TrainingSettings(model_type="classic", spec="rgbn", labels=LABELS, size=SIZE, stride=SIZE, hidden=(16,),
                                micro_batch=64, config=TrainConfig(max_epochs=8, learning_rate=0.01, class_weight="balanced", batch_size=256))
    clf1, id1, report1 = train_model(store, ids, settings, workers=1)
    clf2, id2, report2 = train_model(store, ids, settings, client=dask_client)
    assert (report1.workers, report2.workers) == (1, 2)
    for a, b in zip(clf1.network.params, clf2.network.params):
        np.testing.assert_array_equal(a, b)  # the worker count never changes the weights
    assert report1.threshold == report2.threshold and report1.test == report2.test

    saved = load_model(id1, store.models_dir)
    y_val, p_val = _held_out_reference(store, ids, saved, VALIDATION)
    assert report1.threshold == pytest.approx(choose_threshold(y_val, p_val), abs=1e-6)
    y_test, p_test = _held_out_reference(store, ids, saved, TEST)
    want = metrics.binary_report(y_test, p_test, saved.threshold)
    got = report1.test
    assert got["n"] == want["n"] == report1.counts["test"]["tiles"]
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert got["accuracy"] > 0.7  # open water is learnable from these features
    assert saved.metadata["metrics"]["test"]["accuracy"] == pytest.approx(got["accuracy"])
    assert len(report1.history["epochs"]) == 8 and report1.history["stop_reason"] == "max_epochs"


@pytest.mark.naip
def test_train_command(naip_store, tmp_path, prefect, capsys):
    store, ids = naip_store
    report_path = tmp_path / "report.json"
    common = ["--store", str(store.root), "--model-type", "classic", "--spec", "rgbn", "--labels", LABELS, "--tile-size", str(SIZE),
              "--stride", str(SIZE)]
    code = main(["train", "--survey", ids[0], "--survey", ids[1], *common, "--workers", "1",
                 "--epochs", "3", "--batch-size", "512", "--report", str(report_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(report_path.read_text())
    assert f"trained classic model {report['model_id']}" in out
    assert (store.models_dir / f"{report['model_id']}.json").is_file()
    assert len(report["history"]["epochs"]) == 3
    assert "held-out test region" in out
    # The command ran the train flow with its options mapped onto the flow's parameters.
    run_dir = Path(out.split("run record: ")[1].split()[0])
    assert json.loads((run_dir / "train-report.json").read_text()) == report
    run = json.loads((run_dir / "provenance.json").read_text())
    assert run["flow"] == "train" and run["status"] == "completed" and run["prefect_flow_run_id"]
    settings = run["parameters"]["settings"]
    assert (settings["config"]["batch_size"], settings["config"]["max_epochs"], settings["size"], settings["labels"]) == (512, 3, SIZE, LABELS)
    assert report["workers"] == 1  # --workers 1: trained in this process, without Dask

    assert main(["train", "--survey", "prairie-1999-01-01", *common, "--workers", "1"]) == 2
    assert "prairie-1999-01-01" in capsys.readouterr().err
    # what the store lacks is named, with the command that makes it
    no_labels = [a if a != LABELS else "dams" for a in common]
    assert main(["train", "--survey", ids[0], *no_labels, "--workers", "1"]) == 2
    assert "no labels 'dams'" in capsys.readouterr().err
    no_features = [a if a != str(SIZE) else "128" for a in common]
    assert main(["train", "--survey", ids[0], *no_features, "--workers", "1"]) == 2
    assert "damwatch features" in capsys.readouterr().err
