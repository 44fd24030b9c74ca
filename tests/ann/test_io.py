"""Model files: save -> load gives the same predictions; every kind of bad file its own error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ann.errors import FeatureSpecMismatch, ModelFileError
from ann.io import Classifier, load_model, save_model
from ann.network import MLP
from ann.standardize import Standardizer

SPEC = {"name": "default", "version": 1, "bands": ["red", "nir"], "names": ["f0", "f1", "f2", "f3", "f4", "f5"]}


def make_classifier(dtype=np.float32, seed=0) -> Classifier:
    rng = np.random.default_rng(seed)
    raw = rng.normal(50, 10, size=(100, 6))
    net = MLP(6, (5, 3), "tanh", dtype=dtype, seed=seed)
    metadata = {"history": {"best_epoch": np.int64(3), "val_roc_auc": float("nan")}, "provenance": {"surveys": ("a", "b")}}
    return Classifier(net, Standardizer.fit(raw), SPEC, threshold=0.37, metadata=metadata)


@pytest.fixture
def saved(tmp_path):
    clf = make_classifier()
    model_id = save_model(clf, tmp_path / "models")
    return clf, model_id, tmp_path / "models"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_gives_identical_predictions_and_fields(tmp_path, dtype):
    clf = make_classifier(dtype)
    model_id = save_model(clf, tmp_path)
    raw = np.random.default_rng(1).normal(50, 10, size=(300, 6))
    for source in (tmp_path / f"{model_id}.json", tmp_path / f"{model_id}.npz"):
        loaded = load_model(source)
        np.testing.assert_array_equal(loaded.predict_proba(raw), clf.predict_proba(raw))
        assert loaded.model_id == model_id and loaded.threshold == 0.37
        assert loaded.network.architecture() == clf.network.architecture()
        assert loaded.standardizer == clf.standardizer and loaded.feature_spec == SPEC
    loaded = load_model(model_id, tmp_path)
    assert loaded.metadata == {"history": {"best_epoch": 3, "val_roc_auc": None}, "provenance": {"surveys": ["a", "b"]}}
    np.testing.assert_array_equal(loaded.predict(raw), clf.predict_proba(raw) >= 0.37)


def test_classifier_standardizes_then_runs_the_network():
    clf = make_classifier(np.float64)
    raw = np.random.default_rng(2).normal(50, 10, size=(20, 6))
    expected = clf.network.predict_proba((raw - clf.standardizer.mean) / clf.standardizer.scale)
    np.testing.assert_allclose(clf.predict_proba(raw), expected, rtol=1e-12)


def test_model_id_is_a_content_hash(tmp_path):
    a, b = make_classifier(), make_classifier()
    assert save_model(a, tmp_path / "1") == save_model(b, tmp_path / "2")  # same content, same id
    b.threshold = 0.5
    assert save_model(b, tmp_path / "3") != a.model_id
    assert sorted(p.name for p in (tmp_path / "1").iterdir()) == [f"{a.model_id}.json", f"{a.model_id}.npz"]


def test_other_feature_spec_is_refused_naming_both(saved):
    clf, model_id, _ = saved
    clf.check_feature_spec(dict(SPEC))  # same spec: fine
    other = {**SPEC, "names": ["f0", "f1", "f2", "fX", "f4", "f5"]}
    with pytest.raises(FeatureSpecMismatch, match=r"'default-v1'.*Feature 3 is 'f3' in the model but 'fX'"):
        clf.check_feature_spec(other)
    with pytest.raises(FeatureSpecMismatch, match=r"'texture-v2' \(6 features\).*'default-v1' \(6 features\)"):
        clf.check_feature_spec({**SPEC, "name": "texture", "version": 2})
    with pytest.raises(FeatureSpecMismatch, match=r"\(N, 6\)"):
        clf.predict_proba(np.zeros((3, 7)))


# --------------------------------------------------------------------- each malformed file
def rewrite_json(models: Path, model_id: str, change) -> None:
    path = models / f"{model_id}.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def rewrite_npz(models: Path, model_id: str, change) -> None:
    path = models / f"{model_id}.npz"
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CASES = {
    # name: (how to damage (models_dir, model_id), words the error must contain)
    "json missing": (lambda d, i: (d / f"{i}.json").unlink(), "not found"),
    "npz missing": (lambda d, i: (d / f"{i}.npz").unlink(), "not found"),
    "json truncated": (lambda d, i: truncate(d / f"{i}.json"), "not valid JSON"),
    "not a model json": (lambda d, i: (d / f"{i}.json").write_text('{"type": "FeatureCollection"}'), "not a damwatch model file"),
    "newer format": (lambda d, i: rewrite_json(d, i, lambda doc: doc.update(format_version=99)), "format version 99"),
    "field missing": (lambda d, i: rewrite_json(d, i, lambda doc: doc.pop("normalization")), "lacks the fields ['normalization']"),
    "bad architecture": (lambda d, i: rewrite_json(d, i, lambda doc: doc["architecture"].update(activation="swish")), "invalid architecture"),
    "npz truncated": (lambda d, i: truncate(d / f"{i}.npz"), "truncated or not an .npz"),
    "npz not a zip": (lambda d, i: (d / f"{i}.npz").write_bytes(b"W1,b1\n1,2\n"), "truncated or not an .npz"),
    "pickled array": (
        lambda d, i: rewrite_npz(d, i, lambda a: a.update(W1=np.array([{"x": 1}], dtype=object))),
        "pickled Python objects",
    ),
    "array missing": (lambda d, i: rewrite_npz(d, i, lambda a: a.pop("b2")), "holds arrays"),
    "wrong shape": (lambda d, i: rewrite_npz(d, i, lambda a: a.update(W2=np.zeros((5, 4), np.float32))), "has shape (5, 4)"),
    "wrong dtype": (lambda d, i: rewrite_npz(d, i, lambda a: a.update(W1=a["W1"].astype(np.float64))), "is float64"),
    "weights changed": (lambda d, i: rewrite_npz(d, i, lambda a: a["W1"].__iadd__(1e-3)), "do not match the checksum"),
    "json edited": (lambda d, i: rewrite_json(d, i, lambda doc: doc.update(threshold=0.9)), "does not match its model id"),
    "non-finite weights": (lambda d, i: None, "NaN or infinity"),  # prepared in the test (needs a fresh save)
    "normalization mismatched": (lambda d, i: None, "inconsistent"),  # idem
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_malformed_file_gives_its_own_clear_error(tmp_path, case):
    damage, words = CASES[case]
    clf = make_classifier()
    if case == "non-finite weights":
        clf.network.params[2][0, 0] = np.inf
    if case == "normalization mismatched":
        clf.standardizer.mean = clf.standardizer.mean[:5]
        clf.standardizer.scale = clf.standardizer.scale[:5]
    model_id = save_model(clf, tmp_path)
    damage(tmp_path, model_id)
    with pytest.raises(ModelFileError) as info:
        load_model(tmp_path / f"{model_id}.json")
    message = str(info.value)
    assert words in message
    assert model_id in message  # names the file
    # Each case has its own message: no other case's words appear.
    assert not any(other in message for name, (_, other) in CASES.items() if other != words and name != case)


def test_an_interrupted_save_leaves_no_partial_model(tmp_path, monkeypatch):
    def savez_then_crash(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", savez_then_crash)
    with pytest.raises(KeyboardInterrupt):
        save_model(make_classifier(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_metadata_that_json_cannot_hold_is_refused_up_front():
    from ann.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot be written to JSON"):
        Classifier(MLP(6, (2,)), None, SPEC, metadata={"when": object()})


# ----------------------------------------------------------------- format 1, ids, sizes, modes
DATA = Path(__file__).parent / "data"
FORMAT1_ID = "25824e03835a"  # written by commit 36b7899 (format 1), with its probabilities


def test_a_format_1_model_loads_and_scores_bit_identically(tmp_path):
    loaded = load_model(DATA / f"{FORMAT1_ID}.json")  # its id is checked the format-1 way
    assert loaded.model_id == FORMAT1_ID and loaded.model_type == "classic"
    with np.load(DATA / "format1-expected.npz") as expected:
        np.testing.assert_array_equal(loaded.predict_proba(expected["features"]), expected["probabilities"])
    # Saved again it becomes a format-2 file with a new id, scoring the same.
    new_id = save_model(loaded, tmp_path)
    assert new_id != FORMAT1_ID and json.loads((tmp_path / f"{new_id}.json").read_text())["format_version"] == 2
    with np.load(DATA / "format1-expected.npz") as expected:
        np.testing.assert_array_equal(load_model(new_id, tmp_path).predict_proba(expected["features"]), expected["probabilities"])


def test_format_1_file_edited_is_still_refused(tmp_path):
    for name in (f"{FORMAT1_ID}.json", f"{FORMAT1_ID}.npz"):
        (tmp_path / name).write_bytes((DATA / name).read_bytes())
    rewrite_json(tmp_path, FORMAT1_ID, lambda doc: doc["metadata"].update(note="edited"))  # format 1 hashed metadata too
    with pytest.raises(ModelFileError, match="does not match its model id"):
        load_model(tmp_path / f"{FORMAT1_ID}.json")


def test_model_id_ignores_metadata_and_timings(tmp_path):
    a, b = make_classifier(), make_classifier()
    b.metadata = {"history": {"seconds": 99.0}, "run": "another day"}
    assert save_model(a, tmp_path / "a") == save_model(b, tmp_path / "b")
    b.network.params[0][0, 0] += 1e-3
    assert save_model(b, tmp_path / "c") != a.model_id  # weights define the model


def test_absurd_layer_sizes_are_refused_before_anything_is_allocated(saved):
    import time
    import tracemalloc

    _, model_id, models = saved
    rewrite_json(models, model_id, lambda doc: doc["architecture"].update(n_inputs=100000, hidden=[100000, 3]))
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ModelFileError, match="invalid architecture.*more than the 50000000 allowed"):
        load_model(models / f"{model_id}.json")
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 1.0 and peak < 10 * 2**20  # nothing like 100000 x 100000 floats (40 GB)


def test_json_shapes_that_disagree_with_the_npz_headers_are_refused_before_loading(saved, monkeypatch):
    _, model_id, models = saved
    # Architecture and npz disagree (hidden 5 -> 4); np.load must not even be called.
    rewrite_json(models, model_id, lambda doc: (doc["architecture"].update(hidden=[4, 3]), doc["weights"].pop("arrays")))
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("arrays were loaded before their shapes were checked"))
    with pytest.raises(ModelFileError, match=r"has shape \(6, 5\) but the architecture"):
        load_model(models / f"{model_id}.json")


def test_model_files_honour_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o027)
    try:
        model_id = save_model(make_classifier(), tmp_path)
    finally:
        os.umask(old)
    for suffix in (".json", ".npz"):
        assert stat.S_IMODE((tmp_path / f"{model_id}{suffix}").stat().st_mode) == 0o640


# ------------------------------------------------------------------------------------- cnn
def make_cnn_classifier(seed=0) -> Classifier:
    from ann.convnet import ConvNet

    layers = [
        {"type": "conv", "filters": 4, "kernel": 3},
        {"type": "maxpool", "size": 2},
        {"type": "conv", "filters": 6, "kernel": 3, "stride": 2},
        {"type": "global_max"},
        {"type": "dense", "units": 5},
        {"type": "dense", "units": 1},
    ]
    net = ConvNet((16, 16, 3), layers, seed=seed)
    pixels = np.random.default_rng(seed).normal(100, 20, size=(10, 16, 16, 3))
    spec = {"bands": ["red", "green", "nir"], "gsd_m": 2.0, "window": 16, "scale": 1.0}
    return Classifier(net, Standardizer.fit(pixels), spec, threshold=0.3, metadata={"seconds": 1.0})


def test_cnn_classifier_round_trip_standardizes_per_channel_and_scores_maps(tmp_path):
    clf = make_cnn_classifier()
    model_id = save_model(clf, tmp_path)
    loaded = load_model(model_id, tmp_path)
    doc = json.loads((tmp_path / f"{model_id}.json").read_text())
    assert doc["model_type"] == "cnn" == loaded.model_type and loaded.spec["gsd_m"] == 2.0
    windows = np.random.default_rng(1).normal(100, 20, size=(7, 16, 16, 3))
    np.testing.assert_array_equal(loaded.predict_proba(windows), clf.predict_proba(windows))
    std = clf.standardizer
    expected = clf.network.predict_proba(((windows - std.mean) / std.scale).astype(np.float32))
    np.testing.assert_allclose(clf.predict_proba(windows), expected, rtol=1e-5, atol=1e-6)
    image = np.random.default_rng(2).normal(100, 20, size=(40, 36, 3))
    S = loaded.network.total_stride
    grid = loaded.score_map(image)
    assert grid.shape == ((40 - 16) // S + 1, (36 - 16) // S + 1)
    for i, j in [(0, 0), (grid.shape[0] - 1, grid.shape[1] - 1), (1, 2)]:
        one = loaded.predict_proba(image[None, i * S : i * S + 16, j * S : j * S + 16])[0]
        assert grid[i, j] == pytest.approx(one, rel=1e-5, abs=1e-6)
    with pytest.raises(FeatureSpecMismatch, match=r"\(N, rows, columns, 3\)"):
        loaded.predict_proba(np.zeros((2, 16, 16, 4)))
    loaded.check_feature_spec(dict(loaded.spec))
    with pytest.raises(FeatureSpecMismatch, match=r"gsd_m: model 2.0, data 1.0"):
        loaded.check_feature_spec({**loaded.spec, "gsd_m": 1.0})


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda doc: doc["architecture"]["layers"][0].update(filters=5), "has shape (3, 3, 3, 4) but the architecture"),
        (lambda doc: doc["architecture"]["layers"][0].update(dilation=2), "unknown keys ['dilation']"),
        (lambda doc: doc["architecture"]["layers"].insert(0, {"type": "batchnorm"}), "unknown type 'batchnorm'"),
        (lambda doc: doc.update(model_type="transformer"), "model_type 'transformer'"),
        (lambda doc: doc["architecture"]["layers"][4].update(units=10**8), "more than the 50000000 allowed"),
    ],
)
def test_damaged_cnn_files_are_refused_with_their_own_error(tmp_path, edit, words):
    model_id = save_model(make_cnn_classifier(), tmp_path)
    rewrite_json(tmp_path, model_id, lambda doc: (edit(doc), doc["weights"].pop("arrays")))
    with pytest.raises(ModelFileError) as info:
        load_model(tmp_path / f"{model_id}.json")
    assert words in str(info.value) and model_id in str(info.value)
