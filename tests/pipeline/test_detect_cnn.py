"""Fully convolutional detection of whole surveys, and reading surveys at the model's resolution.

References: each cell scored window by window with ``Classifier.predict_proba`` on windows read
whole by ``read_channels`` (the identity the fully convolutional scorer claims); block means
computed by NumPy on the whole array; the footprint in metres from the pixel sizes by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from ann.convnet import ConvNet
from ann.io import Classifier, save_model
from ann.standardize import Standardizer
from pipeline import detect
from pipeline.errors import InputError
from pipeline.ingest import ingest
from pipeline.pixels import InputSpec, channel_statistics, read_channels, reading_for

UTM = CRS.from_epsg(32618)
LAYERS = [
    {"type": "conv", "filters": 4, "kernel": 3},
    {"type": "maxpool", "size": 2},
    {"type": "conv", "filters": 4, "kernel": 3},
    {"type": "maxpool", "size": 2},
    {"type": "global_max"},
    {"type": "dense", "units": 4},
    {"type": "dense", "units": 1},
]


def _write(path, pixels, res=1.0, nodata=None):
    bands, h, w = pixels.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=bands, dtype=pixels.dtype, crs=UTM,
                       transform=Affine(res, 0, 400_000, 0, -res, 4_900_000), nodata=nodata) as ds:
        ds.write(pixels)
        ds.descriptions = ("red", "green", "blue", "nir")[:bands]
    return path


def _model(store, gsd, window=24, normalization="survey", seed=1):
    spec = InputSpec(("red", "green", "blue", "nir"), True, gsd, window, normalization)
    net = ConvNet((window, window, len(spec.channels)), LAYERS, seed=seed)
    clf = Classifier(net, Standardizer(np.zeros(5), np.ones(5)), spec.to_dict(), 0.5, {})
    save_model(clf, store.models_dir)
    return clf


@pytest.fixture
def survey(store, tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (4, 150, 170), dtype=np.uint8)
    pixels[:, 100:, :40] = 0  # a nodata corner
    return ingest(_write(tmp_path / "s.tif", pixels, nodata=0), "creek", "2024-06-01", store).survey


def test_fully_convolutional_scores_equal_window_by_window_across_blocks(store, survey, monkeypatch):
    monkeypatch.setattr(detect, "BLOCK_PIXELS", 40)  # several blocks (tasks) on this small survey
    clf = _model(store, 1.0)
    pm = detect.detect_survey(store, survey.id, clf.model_id)
    S, W = clf.network.total_stride, 24
    P = (W - S) // 2
    assert pm.values.shape == (150 // S, 170 // S) and pm.cell_m == S
    spec = InputSpec.from_dict(clf.feature_spec)
    reading = reading_for(survey, 1.0)
    stats = channel_statistics(survey, spec)
    scored = 0
    for i in range(pm.values.shape[0]):
        for j in range(pm.values.shape[1]):
            x, valid = read_channels(survey, reading, spec, i * S - P, j * S - P, W, W, stats)
            if valid.mean() < 0.5:
                assert np.isnan(pm.values[i, j])  # mostly nodata: never a detection
                continue
            assert pm.values[i, j] == pytest.approx(clf.predict_proba(x[None])[0], rel=1e-5, abs=1e-6)
            scored += 1
    assert scored > 0.7 * pm.values.size
    # the map's cells tile the survey: cell (i, j) covers pixels [iS, (i+1)S)
    assert pm.transform == survey.transform * Affine.scale(S)


def test_a_second_grid_never_replaces_the_first(store, survey):
    a = detect.detect_survey(store, survey.id, _model(store, 1.0, window=24).model_id)
    classic_like = detect.stored_maps(store, a.model_id, survey.id)
    assert classic_like == [a.grid]
    again = detect.detect_survey(store, survey.id, a.model_id)  # reused, same bits
    np.testing.assert_array_equal(again.values, a.values)


@pytest.mark.parametrize("res, factor, method", [(0.5, 2, "mean of 2 x 2"), (2.0, 0.5, "bilinear")])
def test_surveys_at_other_resolutions_are_read_at_the_model_s(store, tmp_path, res, factor, method):
    rng = np.random.default_rng(3)
    n = int(96 / res)
    pixels = rng.integers(1, 255, (4, n, n), dtype=np.uint8)
    survey = ingest(_write(tmp_path / f"r{res}.tif", pixels, res=res), "creek", "2024-06-01", store).survey
    reading = reading_for(survey, 1.0)
    assert reading.factor == factor and method in reading.method
    assert (reading.height, reading.width) == (96, 96)  # 96 m at 1 m pixels whatever the survey's
    spec = InputSpec(("red", "green", "blue", "nir"), True, 1.0, 24, "none")
    assert spec.footprint_m == 24.0
    x, valid = read_channels(survey, reading, spec, 10, 20, 24, 24)
    assert valid.all() and x.shape == (24, 24, 5)
    if factor == 2:  # NumPy's block mean of the 0.5 m pixels over the same ground
        src = pixels[:, 20:68, 40:88].astype(np.float64) / 255
        expected = src.reshape(4, 24, 2, 24, 2).mean(axis=(2, 4))
        np.testing.assert_allclose(np.moveaxis(x[..., 1:], -1, 0), expected, rtol=1e-6)
    else:  # bilinear from 2 m: each 1 m pixel lies between its 2 m neighbours' values
        src = pixels.astype(np.float64) / 255
        assert x[..., 1:].min() >= src.min() - 1e-6 and x[..., 1:].max() <= src.max() + 1e-6


def test_a_survey_much_coarser_than_the_model_is_refused(store, tmp_path):
    pixels = np.full((4, 40, 40), 9, np.uint8)
    survey = ingest(_write(tmp_path / "coarse.tif", pixels, res=10.0), "creek", "2024-06-01", store).survey
    clf = _model(store, 1.0)
    with pytest.raises(InputError, match="more than 2 times coarser"):
        detect.detect_survey(store, survey.id, clf.model_id)


def test_a_survey_lacking_a_band_is_refused(store, tmp_path):
    survey = ingest(_write(tmp_path / "rgb.tif", np.full((3, 64, 64), 9, np.uint8)), "creek", "2024-06-01", store).survey
    clf = _model(store, 1.0)
    with pytest.raises(InputError, match=r"missing: nir"):
        detect.detect_survey(store, survey.id, clf.model_id)


def test_the_wrong_model_family_is_refused(store):
    clf = Classifier(ConvNet((24, 24, 5), LAYERS), None, InputSpec(("red", "green", "blue", "nir"), True, 1.0, 24).to_dict())
    clf.model_id = "abc"
    with pytest.raises(InputError, match="is a cnn model but --model-type classic"):
        detect.check_model_type(clf, "classic")
