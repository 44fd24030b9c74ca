"""The store and the output folders opened with the tools scientists use.

xarray/rioxarray on the survey, feature, label and prediction groups (coordinates, CRS,
transform, names, no warning on open); the probability COG holds no cell beyond the survey
(read by rasterio); every STAC item and the run catalog validated by stac-validator (offline,
against the published schemas). The store is small and built in this process (no cluster).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from pipeline.coords import tile_transform
from pipeline.detect import detect_survey
from pipeline.features import compute_features, get_spec, open_features
from pipeline.ingest import ingest
from pipeline.labels import labels_from_expression, open_labels
from pipeline.stac import write_model_item, write_run_catalog
from pipeline.tiling import TileGrid

RGBN = ["red", "green", "blue", "nir"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A store with one 300 x 410 px survey (UTM 14N, 2 m), its features, labels and predictions."""
    from pipeline.store import Store

    root = tmp_path_factory.mktemp("small")
    tif = root / "creek.tif"
    pixels = np.random.default_rng(0).integers(1, 256, size=(4, 300, 410), dtype=np.uint8)
    with rasterio.open(tif, "w", driver="GTiff", width=410, height=300, count=4, dtype="uint8", crs="EPSG:32614",
                       transform=from_origin(500000, 5000000, 2.0, 2.0), tiled=True, blockxsize=256, blockysize=256) as dst:
        dst.write(pixels)
    store = Store(root / "store")
    survey = ingest(tif, "creek", "2024-06-01", store, bands=RGBN).survey
    features = compute_features(store, survey.id, get_spec("rgbn"), stride=64, size=128)
    labels = labels_from_expression(store, survey.id, "ndwi > 0", TileGrid.for_survey(survey, 128, 64), name="water")
    from ann.io import Classifier, save_model
    from ann.network import MLP
    from ann.standardize import Standardizer

    X = np.asarray(features.values[...]).reshape(-1, get_spec("rgbn").n_features)
    classifier = Classifier(MLP(X.shape[1], hidden=(4,), seed=0), Standardizer.fit(X), get_spec("rgbn").to_dict(), 0.5,
                            {"tile_size": 128})
    model_id = save_model(classifier, store.models_dir)
    predictions = detect_survey(store, survey.id, model_id, stride=64)  # a map of 64-px (128 m) cells
    return {"store": store, "survey": survey, "features": features, "labels": labels, "predictions": predictions}


def _open(path):
    import rioxarray  # noqa: F401 - registers .rio
    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "Failed to open Zarr store with consolidated metadata"
        warnings.simplefilter("error", UserWarning)
        return xr.open_zarr(path, decode_coords="all")


def test_survey_band_dimension_has_band_names(small):
    store, survey = small["store"], small["survey"]
    ds = _open(store.survey_dir(survey.id))
    assert list(ds.band.values) == RGBN
    nir = ds.image.sel(band="nir")
    np.testing.assert_array_equal(nir.values, np.asarray(survey.image()[3]))
    assert ds.image.rio.crs.to_epsg() == 32614 and ds.image.rio.transform() == survey.transform


@pytest.mark.parametrize("which", ["features", "labels", "predictions"])
def test_tile_groups_are_georeferenced_in_xarray(small, which):
    store = small["store"]
    path = {"features": small["features"].path, "labels": small["labels"].path,
            "predictions": small["predictions"].path}[which]
    if which == "predictions":
        path = f"predictions/{small['predictions'].model_id}/{small['survey'].id}/{small['predictions'].grid}"
    ds = _open(store.zarr_path / path)
    name = {"features": "features", "labels": "labels", "predictions": "probability"}[which]
    assert name in ds.data_vars and "values" not in ds.data_vars
    var = ds[name]
    assert var.dims[:2] == ("y", "x")
    assert var.rio.crs.to_epsg() == 32614
    if which == "predictions":  # a map of whole cells from the survey's corner: 300 x 410 px -> 4 x 6 cells of 64 px
        t = small["survey"].transform
        assert var.shape == (4, 6)
        np.testing.assert_allclose(ds.x.values, t.c + t.a * 64 * (np.arange(6) + 0.5))
        np.testing.assert_allclose(ds.y.values, t.f + t.e * 64 * (np.arange(4) + 0.5))
        assert var.rio.transform() == t * t.scale(64)
        np.testing.assert_array_equal(ds.probability.values, small["predictions"].values)
        return
    grid = small["features"].grid
    xs, ys = grid.tile_centers()
    np.testing.assert_allclose(ds.x.values, xs[0])  # tile centres, the shifted last tile included
    np.testing.assert_allclose(ds.y.values, ys[:, 0])
    assert var.rio.transform() == tile_transform(grid)
    if which == "features":
        assert ds.features.sel(feature="ndwi_mean").shape == grid.shape
        np.testing.assert_array_equal(ds.features.values, np.asarray(small["features"].values[...]))
    if which == "labels":
        np.testing.assert_array_equal(ds.labels.values, small["labels"].values)


def test_groups_written_before_the_rename_still_open(small, tmp_path):
    """A store from before 2026-12 named the arrays "values": damwatch still reads them."""
    import shutil

    from pipeline.store import Store

    old = Store(tmp_path / "old")
    shutil.copytree(small["store"].root, old.root)
    for path in (small["features"].path, small["labels"].path):
        group = old.zarr_path / path
        new_name = "features" if path.startswith("features") else "labels"
        (group / new_name).rename(group / "values")
        (group / "zarr.json").write_text((group / "zarr.json").read_text().replace(f'"{new_name}"', '"values"'))
    sid = small["survey"].id
    f = open_features(old, sid, "rgbn", stride=64, size=128)
    np.testing.assert_array_equal(np.asarray(f.values[...]), np.asarray(small["features"].values[...]))
    np.testing.assert_array_equal(open_labels(old, sid, "water", stride=64, size=128).values, small["labels"].values)


def test_detection_outputs_open_in_rasterio_and_validate_as_stac(small, tmp_path, stac_validate):
    from pipeline.results import write_detection_maps

    store, survey = small["store"], small["survey"]
    out = tmp_path / "run" / "detect" / survey.id
    written = write_detection_maps(store, small["predictions"], out)
    with rasterio.open(written["probability"]) as ds:
        values = ds.read(1)
        cell = ds.transform.a
        xs = ds.transform.c + cell * (np.arange(ds.width) + 0.5)
        ys = ds.transform.f + ds.transform.e * (np.arange(ds.height) + 0.5)
        west, south, east, north = survey.bounds
        # 410 px / 64 px: six whole cells across, the last 26 px (a partial cell) left out, so
        # no cell reaches beyond the survey; every cell has data.
        assert values.shape == (4, 6) and np.isfinite(values).all()
        assert xs.min() - cell / 2 >= west and xs.max() + cell / 2 <= east
        assert ys.min() - cell / 2 >= south and ys.max() + cell / 2 <= north
        np.testing.assert_array_equal(values, small["predictions"].values)
    items = sorted(out.glob("*.stac.json"))
    assert [p.name for p in items] == ["detections.stac.json", "probability.stac.json"]
    catalog = write_run_catalog(tmp_path / "run", [written["probability"], written["detections"]], "run-1", "a run")
    for path in [*items, catalog]:
        report = stac_validate(path)
        assert report[0]["valid_stac"], report
    item = json.loads((out / "probability.stac.json").read_text())
    assert item["properties"]["datetime"] == "2024-06-01T00:00:00Z"
    assert item["properties"]["proj:code"] == "EPSG:32614"
    assert item["assets"]["data"]["proj:shape"] == list(values.shape)
    assert item["assets"]["data"]["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"
    survey_link, model_link = [lk for lk in item["links"] if lk["rel"] == "derived_from"]
    assert (out / survey_link["href"]).resolve() == store.survey_dir(survey.id).resolve()
    model_id = small["predictions"].model_id
    assert (out / model_link["href"]).resolve() == (store.models_dir / f"{model_id}.stac.json").resolve()
    assert stac_validate(store.models_dir / f"{model_id}.stac.json")[0]["valid_stac"]
    from rasterio.warp import transform_bounds  # the footprint's bbox is the survey's, by GDAL

    assert item["bbox"] == pytest.approx(list(transform_bounds(survey.crs, "EPSG:4326", *survey.bounds, densify_pts=21)),
                                         abs=1e-7)


def test_model_item_uses_the_mlm_extension_and_validates(small, tmp_path, stac_validate):
    from ann.io import Classifier, save_model
    from ann.network import MLP
    from ann.standardize import Standardizer

    X = np.asarray(small["features"].values[...]).reshape(-1, get_spec("rgbn").n_features)
    classifier = Classifier(MLP(X.shape[1], hidden=(4,), seed=0), Standardizer.fit(X), get_spec("rgbn").to_dict(), 0.5,
                            {"tile_size": 128, "surveys": [{"id": small["survey"].id}]})
    model_id = save_model(classifier, tmp_path)
    path = write_model_item(tmp_path, model_id, [(small["survey"].bounds, small["survey"].crs)])
    report = stac_validate(path)
    assert report[0]["valid_stac"], report
    item = json.loads(path.read_text())
    assert "https://stac-extensions.github.io/mlm/v1.4.0/schema.json" in item["stac_extensions"]
    props = item["properties"]
    assert props["mlm:input"][0]["bands"] == RGBN and props["mlm:tasks"] == ["classification"]
    assert props["mlm:total_parameters"] == X.shape[1] * 4 + 4 + 4 + 1
    assert item["assets"]["model"]["roles"][0] == "mlm:model" and (tmp_path / item["assets"]["model"]["href"]).is_file()
