"""Detection and change end to end on the real NAIP surveys, with a real store and a real model.

The model is a small ann MLP trained in a few seconds on one date's ``rgbn`` features with
weak labels (open water: the tile's mean NDWI > 0), saved to the store with ``ann.io``.
References: the classifier applied in NumPy to the whole feature array, the module's own
rules recomputed from stored predictions, the NAIP files' own hashes, rio-cogeo's validator,
and the symmetry of change under swapping the dates.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from flows.cli import main
from pipeline import __version__, change, detect, maps, render
from pipeline.errors import InputError
from pipeline.features import compute_features, get_spec, open_features
from pipeline.files import file_sha256
from pipeline.ingest import ingest
from pipeline.store import Store

pytestmark = pytest.mark.naip
RGBN = ["red", "green", "blue", "nir"]


def _date(path):
    d = path.stem.rsplit("_", 1)[1]
    return f"{d[:4]}-{d[4:6]}-{d[6:]}"


@pytest.fixture(scope="module")
def naip(tmp_path_factory, naip_files, dask_client):
    """A store with the first two NAIP dates (not pixel-aligned) and a trained model."""
    from ann.io import Classifier, save_model
    from ann.network import MLP
    from ann.standardize import Standardizer
    from ann.train import InMemorySource, TrainConfig, fit

    store = Store(tmp_path_factory.mktemp("naip") / "store")
    ids = [ingest(f, "pothole", _date(f), store, bands=RGBN, client=dask_client).survey.id for f in naip_files[:2]]
    spec = get_spec("rgbn")
    features = compute_features(store, ids[0], spec, stride=64, size=128, client=dask_client)
    X, _, _ = features.as_table()
    y = (X[:, spec.names.index("ndwi_mean")] > 0).astype(np.int8)
    standardizer = Standardizer.fit(X)
    Xs = standardizer.transform(X)
    net = MLP(X.shape[1], hidden=(16,), seed=0)
    fit(net, InMemorySource(net, Xs, y, batch_size=64), Xs, y,
        TrainConfig(max_epochs=40, patience=40, learning_rate=3e-3, target=0.97))
    classifier = Classifier(net, standardizer, spec.to_dict(), 0.5, {"tile_size": 128})
    model_id = save_model(classifier, store.models_dir)
    return {"store": store, "ids": ids, "model_id": model_id, "files": naip_files}


def _err(capsys) -> str:
    """stderr with the CLI's line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


def _cli(naip, dask_client, *args):
    return main([*args, "--store", str(naip["store"].root), "--cluster", dask_client.scheduler.address])


def test_detect_equals_numpy_on_the_whole_feature_array(naip, dask_client, monkeypatch):
    """A classic model's map: the classifier on the whole feature array, then the overlap rule."""
    from ann.io import load_model

    store, sid, mid = naip["store"], naip["ids"][1], naip["model_id"]
    monkeypatch.setattr(detect, "TILES_PER_TASK", 40)  # several Dask tasks on this small survey
    pm = detect.detect_survey(store, sid, mid, stride=64, client=dask_client, reuse=False)
    features = open_features(store, sid, "rgbn", stride=64)
    classifier = load_model(store.models_dir / f"{mid}.json")
    values = np.asarray(features.values[...])
    keep = features.valid_fraction >= detect.MIN_VALID_FRACTION
    tiles = np.full(features.grid.shape, np.nan, np.float32)
    tiles[keep] = classifier.predict_proba(values[keep])
    expected, transform = maps.probability_map(tiles, features.grid, cell=64)
    survey = store.survey(sid)
    expected = expected[: survey.height // 64, : survey.width // 64]  # whole cells: no overhang
    assert pm.transform == transform and pm.grid == "size128_stride64" and pm.cell_m == 64 * 5.0
    # float32 products over other batch sizes round differently: agree to float32 precision
    np.testing.assert_allclose(pm.values, expected, rtol=1e-4, atol=1e-5, equal_nan=True)
    stored = detect.open_probability_map(store, mid, sid, "size128_stride64")
    np.testing.assert_array_equal(stored.values, pm.values)
    assert stored.model_id == mid and stored.footprint_m == 128 * 5.0


def test_detect_command_writes_valid_maps(naip, dask_client, prefect, tmp_path, capsys):
    from rio_cogeo.cogeo import cog_validate

    store, sid, mid = naip["store"], naip["ids"][0], naip["model_id"]
    out = tmp_path / "maps"
    assert _cli(naip, dask_client, "detect", sid, "--model", mid, "--out", str(out), "--threshold", "0.5") == 0
    printed = capsys.readouterr().out
    assert "detection(s)" in printed and f"maps in {out}" in printed
    # The command ran the detect flow: its run record names the Prefect flow run and the --out.
    run_dir = Path(printed.split("run record: ")[1].split()[0])
    assert run_dir.parent == store.runs_dir
    run = json.loads((run_dir / "provenance.json").read_text())
    assert run["flow"] == "detect" and run["status"] == "completed" and run["prefect_flow_run_id"]
    assert run["parameters"]["out"] == str(out) and run["parameters"]["threshold"] == 0.5
    assert sorted(p.name for p in out.iterdir()) == [
        "detections.geojson", "detections.stac.json", "footprints.geojson", "probability.stac.json", "probability.tif",
        "provenance.json", "quicklook.png"]
    survey = store.survey(sid)
    pm = detect.open_probability_map(store, mid, sid, "size128_stride64")

    valid, errors, _ = cog_validate(str(out / "probability.tif"), quiet=True)
    assert valid, errors
    with rasterio.open(out / "probability.tif") as ds:
        assert ds.crs == survey.crs
        assert ds.transform == survey.transform * Affine.scale(64)
        assert np.isnan(ds.nodata) and ds.overviews(1)
        np.testing.assert_array_equal(ds.read(1), pm.values)

    fc = json.loads((out / "detections.geojson").read_text())
    assert "crs" not in fc
    # Every detection is a cell of the map at or above the threshold, and no 8-neighbour is higher.
    from rasterio.warp import transform as warp_transform

    above = np.isfinite(pm.values) & (pm.values >= 0.5)
    assert (len(fc["features"]) > 0) == bool(above.any())
    for f in fc["features"]:
        lon, lat = f["geometry"]["coordinates"]
        (x,), (y,) = warp_transform("EPSG:4326", pm.crs, [lon], [lat])
        c, r = ~pm.transform * (x, y)
        r, c = int(r), int(c)
        assert f["properties"]["probability"] == pytest.approx(float(pm.values[r, c]), abs=1e-6) and pm.values[r, c] >= 0.5
        around = pm.values[max(r - 1, 0): r + 2, max(c - 1, 0): c + 2]
        assert np.nanmax(around) == pm.values[r, c]
        assert f["properties"]["survey_id"] == sid and f["properties"]["model_id"] == mid

    prov = json.loads((out / "provenance.json").read_text())
    assert prov["damwatch_version"] == __version__
    assert prov["inputs"]["survey"]["source_sha256"] == file_sha256(naip["files"][0])
    assert prov["inputs"]["model"]["id"] == mid
    assert prov["inputs"]["model"]["npz_sha256"] == file_sha256(store.models_dir / f"{mid}.npz")
    assert prov["settings"]["grid"] == "size128_stride64" and prov["settings"]["footprint_m"] == 640.0
    assert prov["outputs"]["probability"]["sha256"] == file_sha256(out / "probability.tif")

    # The same --out again: refused, nothing touched; with --overwrite: replaced.
    before = {p.name: file_sha256(p) for p in out.iterdir()}
    assert _cli(naip, dask_client, "detect", sid, "--model", mid, "--out", str(out)) == 2
    assert "already holds results" in _err(capsys)
    assert {p.name: file_sha256(p) for p in out.iterdir()} == before
    stamp = (out / "probability.tif").stat().st_mtime_ns
    assert _cli(naip, dask_client, "detect", sid, "--model", mid, "--out", str(out), "--overwrite") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps"]  # no temporary directory left
    # The maps a user asks for in --out are written there even when nothing else changed.
    assert "skipped" not in capsys.readouterr().out
    assert (out / "probability.tif").stat().st_mtime_ns != stamp


def test_detect_command_without_out_writes_into_its_run_and_then_skips(naip, dask_client, prefect, capsys):
    sid, mid = naip["ids"][1], naip["model_id"]
    assert _cli(naip, dask_client, "detect", sid, "--model", mid, "--stride", "128") == 0
    first = capsys.readouterr().out
    run_dir = Path(first.split("run record: ")[1].split()[0])
    maps_dir = run_dir / "detect" / sid
    assert f"maps in {maps_dir}" in first and (maps_dir / "probability.tif").is_file()
    stamp = (maps_dir / "probability.tif").stat().st_mtime_ns

    # Same survey, model and settings: the stage is skipped and points to the first run's maps.
    assert _cli(naip, dask_client, "detect", sid, "--model", mid, "--stride", "128") == 0
    again = capsys.readouterr().out
    assert f"maps in {maps_dir}" in again and "skipped: inputs unchanged" in again
    second = Path(again.split("run record: ")[1].split()[0])
    assert second != run_dir and not (second / "detect").exists()
    assert (maps_dir / "probability.tif").stat().st_mtime_ns == stamp
    assert json.loads((second / "summary.json").read_text())["stages"][0]["status"] == "skipped"


def test_model_needing_a_band_the_survey_lacks_is_refused(naip, dask_client, tmp_path, capsys):
    store, mid = naip["store"], naip["model_id"]
    path = naip["files"][2]
    sid = ingest(path, "nonir", _date(path), store, bands=["red", "green", "blue", "band4"], client=dask_client).survey.id
    out = tmp_path / "maps"
    assert _cli(naip, dask_client, "detect", sid, "--model", mid, "--out", str(out)) == 2
    err = _err(capsys)
    assert "nir" in err and sid in err and "rgbn" in err
    assert not out.exists() and not (store.zarr_path / "predictions" / mid / sid).exists()
    assert not (store.zarr_path / "features" / sid).exists()


def test_change_on_real_dates_is_symmetric(naip, dask_client):
    store, (a, b), mid = naip["store"], naip["ids"], naip["model_id"]
    sa, sb = store.survey(a), store.survey(b)
    assert sa.transform != sb.transform or sa.height != sb.height  # not pixel-aligned
    forward = change.change_surveys(store, a, b, mid, stride=64, client=dask_client)
    backward = change.change_surveys(store, b, a, mid, stride=64, client=dask_client)
    counts = forward.counts()
    assert counts["new"] == backward.counts()["gone"] and counts["gone"] == backward.counts()["new"]
    assert counts["persisting"] == backward.counts()["persisting"]
    assert forward.transform == forward.before.transform  # the raster is on BEFORE's map grid
    # Each object's probability on each date: the largest of that date's map within reach of it.
    for pm, values in ((forward.before, forward.p_before), (forward.after, forward.p_after)):
        for x, y, v in zip(forward.x, forward.y, values):
            rows, cols = np.mgrid[0 : pm.values.shape[0], 0 : pm.values.shape[1]]
            cx, cy = pm.transform * (cols + 0.5, rows + 0.5)
            near = (np.hypot(cx - x, cy - y) <= forward.reach_m) & np.isfinite(pm.values)
            if near.any():
                assert v == pytest.approx(float(pm.values[near].max()))
            else:
                assert np.isnan(v)


def test_change_command_outputs_and_metrics(naip, dask_client, prefect, tmp_path, capsys):
    from rasterio.warp import transform as warp_transform
    from rio_cogeo.cogeo import cog_validate

    store, (a, b), mid = naip["store"], naip["ids"], naip["model_id"]
    result = change.change_surveys(store, a, b, mid, stride=64, client=dask_client)
    # A hand-made truth: one object next to each of up to three change objects, of another class
    # for the first, so that the metrics have a hit and a miss to count.
    da, db = store.survey(a).date.isoformat(), store.survey(b).date.isoformat()
    dates = {change.NEW: [db], change.GONE: [da], change.PERSISTING: [da, db]}
    reported = np.flatnonzero(np.isin(result.classes, [change.NEW, change.GONE, change.PERSISTING]))[:3]
    lon, lat = warp_transform(result.crs, "EPSG:4326", list(result.x[reported] + 20), list(result.y[reported] + 10))
    truth = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [x, y]},
         "properties": {"class": "dam", "dates": dates[int(result.classes[i])]}}
        for x, y, i in zip(lon, lat, reported)
    ]}
    truth_path = tmp_path / "truth.geojson"
    truth_path.write_text(json.dumps(truth))
    out = tmp_path / "change"
    assert _cli(naip, dask_client, "change", a, b, "--model", mid, "--out", str(out), "--truth", str(truth_path)) == 0
    assert {"change.geojson", "change.png", "change.tif", "change.tif.aux.xml", "metrics.json", "provenance.json"} <= {
        p.name for p in out.iterdir()}

    valid, errors, _ = cog_validate(str(out / "change.tif"), quiet=True)
    assert valid, errors
    with rasterio.open(out / "change.tif") as ds:
        assert ds.crs == result.crs and ds.transform == result.transform
        assert ds.nodata == change.NODATA and ds.colormap(1)[change.NEW][:3] == change.CLASS_COLOURS[change.NEW][:3]
        np.testing.assert_array_equal(ds.read(1), result.classes_map)
    fc = json.loads((out / "change.geojson").read_text())
    assert len(fc["features"]) == len(result.classes)
    assert [f["properties"]["class"] for f in fc["features"]] == [change.CLASS_NAMES[int(c)] for c in result.classes]
    metrics = json.loads((out / "metrics.json").read_text())
    # every truth object sits 22 m from a change object of its own class: all found
    for i in reported:
        name = change.CLASS_NAMES[int(result.classes[i])]
        assert metrics[name]["recall"] == 1.0 and metrics["confusion"][name][name] >= 1
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["inputs"]["before"]["id"] == a and prov["inputs"]["after"]["id"] == b
    capsys.readouterr()


def _shifted_copy(src, dst, dx):
    with rasterio.open(src) as ds:
        profile = ds.profile
        profile["transform"] = Affine.translation(dx, 0) * ds.transform  # dx metres east
        with rasterio.open(dst, "w", **profile) as out:
            out.write(ds.read())


def test_change_refuses_surveys_it_cannot_compare(naip, dask_client, tmp_path, capsys):
    store, (a, _), mid = naip["store"], naip["ids"], naip["model_id"]
    files = naip["files"]
    other = ingest(files[3], "elsewhere", _date(files[3]), store, bands=RGBN, client=dask_client).survey.id
    far_file = tmp_path / "far.tif"
    _shifted_copy(files[4], far_file, 100_000.0)
    far = ingest(far_file, "pothole", _date(files[4]), store, bands=RGBN, client=dask_client).survey.id
    out = tmp_path / "change"
    cases = [
        (other, "different areas"),
        (far, "do not overlap"),
    ]
    for after, message in cases:
        assert _cli(naip, dask_client, "change", a, after, "--model", mid, "--out", str(out)) == 2
        assert message in _err(capsys)
        assert not out.exists()
        assert not (store.zarr_path / "predictions" / mid / after).exists()
    with pytest.raises(InputError, match="both"):
        change.check_comparable(store.survey(a), store.survey(a))
    out.mkdir()
    (out / "change.tif").write_text("earlier results")
    assert _cli(naip, dask_client, "change", a, naip["ids"][1], "--model", mid, "--out", str(out)) == 2
    assert "already holds results" in _err(capsys)
    assert (out / "change.tif").read_text() == "earlier results"


def _reprojected_copy(src, dst, crs):
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(src) as ds:
        transform, width, height = calculate_default_transform(ds.crs, crs, ds.width, ds.height, *ds.bounds)
        profile = {**ds.profile, "crs": crs, "transform": transform, "width": width, "height": height}
        with rasterio.open(dst, "w", **profile) as out:
            for band in range(1, ds.count + 1):
                reproject(rasterio.band(ds, band), rasterio.band(out, band), resampling=Resampling.nearest)


def test_change_across_crs_only_with_reproject(naip, dask_client, prefect, tmp_path, capsys):
    # The 2012 date warped from NAD83 / UTM 14N to WGS 84 / UTM 14N (the same place, ~1 m apart).
    store, (a, _), mid = naip["store"], naip["ids"], naip["model_id"]
    path = tmp_path / "wgs84.tif"
    _reprojected_copy(naip["files"][5], path, "EPSG:32614")
    other = ingest(path, "pothole", _date(naip["files"][5]), store, bands=RGBN, client=dask_client).survey.id
    out = tmp_path / "change"
    assert _cli(naip, dask_client, "change", a, other, "--model", mid, "--out", str(out)) == 2
    assert "--reproject" in _err(capsys) and not out.exists()
    assert _cli(naip, dask_client, "change", a, other, "--model", mid, "--out", str(out), "--reproject") == 0
    printed = capsys.readouterr().out
    assert f"maps in {out}" in printed
    run = json.loads((Path(printed.split("run record: ")[1].split()[0]) / "provenance.json").read_text())
    assert run["flow"] == "change" and run["parameters"]["reproject"] is True and run["stages"][0]["inputs"]["reproject"]
    with rasterio.open(out / "change.tif") as ds:
        assert ds.crs == store.survey(a).crs  # the grid is on BEFORE's CRS
    result = change.change_surveys(store, a, other, mid, reproject=True, client=dask_client)
    assert result.crs == store.survey(a).crs and result.after.crs != result.crs
    # The same place ~1 m apart: every object found on both dates is persisting or uncertain, none new/gone
    assert result.counts()["new"] + result.counts()["gone"] <= 0.2 * max(1, len(result.classes))


@pytest.mark.parametrize(
    "metadata, expected",
    [
        ({"training": {"tile_size": 256, "stride": 128}}, 256),  # as pipeline.training saves it
        ({"tile_size": 64}, 64),  # a hand-made model
        ({}, 128),  # nothing recorded: the default tile
    ],
)
def test_model_tile_size_from_metadata(metadata, expected):
    class Model:
        pass

    model = Model()
    model.metadata = metadata
    assert detect.model_tile_size(model) == expected


def test_survey_thumbnail_equals_numpy_on_the_whole_image(naip, dask_client):
    survey = naip["store"].survey(naip["ids"][0])
    thumb, transform = render.survey_thumbnail(survey, max_side=200, client=dask_client)
    k = 5  # ceil(934 / 200)
    assert transform == survey.transform * Affine.scale(k)
    image = np.asarray(survey.image()[...])[[0, 1, 2], ::k, ::k].astype(np.float32)  # red, green, blue
    valid = np.asarray(survey.valid()[...])[::k, ::k]
    assert thumb.shape == image.shape[1:] + (3,)
    for i, band in enumerate(image):
        lo, hi = np.percentile(band[valid], [2, 98])
        expected = np.where(valid, np.clip((band - lo) / (hi - lo), 0, 1), 1.0)
        np.testing.assert_allclose(thumb[..., i], expected, atol=1e-6)


def test_unknown_model_is_refused_naming_the_known_ones(naip, dask_client, tmp_path, capsys):
    out = tmp_path / "maps"
    assert _cli(naip, dask_client, "detect", naip["ids"][0], "--model", "nosuchmodel", "--out", str(out)) == 2
    err = _err(capsys)
    assert "nosuchmodel" in err and naip["model_id"] in err
    assert not out.exists()


def test_latest_model_is_the_most_recently_saved(tmp_path):
    """`--model latest` names the newest model file; an empty store says how to get one."""
    import os

    from ann.io import Classifier, save_model
    from ann.network import MLP
    from ann.standardize import Standardizer
    from pipeline.detect import resolve_model

    store = Store(tmp_path / "s")
    with pytest.raises(InputError, match="holds no model yet"):
        resolve_model(store, "latest")
    spec = get_spec("default")
    ids = []
    for seed in (0, 1):
        net = MLP(spec.n_features, hidden=(4,), seed=seed)
        standardizer = Standardizer(np.zeros(spec.n_features), np.ones(spec.n_features))
        ids.append(save_model(Classifier(net, standardizer, spec.to_dict(), 0.5, {"tile_size": 128}), store.models_dir))
    # The first model saved is made the newer one on disk: "latest" follows file time, not ids.
    newest = store.models_dir / f"{ids[0]}.json"
    os.utime(newest, (newest.stat().st_atime, newest.stat().st_mtime + 60))
    assert resolve_model(store, "latest").model_id == ids[0]
