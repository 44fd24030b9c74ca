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
