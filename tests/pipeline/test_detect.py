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
from pipeline.tiling import TileGrid

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
    from ann.io import load_model

    store, sid, mid = naip["store"], naip["ids"][1], naip["model_id"]
    monkeypatch.setattr(detect, "TILES_PER_TASK", 40)  # several Dask tasks on this small survey
    pred = detect.detect_survey(store, sid, mid, stride=64, client=dask_client, reuse=False)
    features = open_features(store, sid, "rgbn", stride=64)
    classifier = load_model(store.models_dir / f"{mid}.json")
    values = np.asarray(features.values[...])
    keep = features.valid_fraction >= detect.MIN_VALID_FRACTION
    expected = np.full(features.grid.shape, np.nan, np.float32)
    expected[keep] = classifier.predict_proba(values[keep])
    assert pred.grid == features.grid and pred.grid.stride == 64
    # float32 products over other batch sizes round differently: agree to float32 precision
    np.testing.assert_allclose(pred.probabilities, expected, rtol=1e-4, atol=1e-5, equal_nan=True)
    stored = detect.open_predictions(store, mid, sid)
    np.testing.assert_array_equal(stored.probabilities, pred.probabilities)
    assert stored.grid == pred.grid and stored.model_id == mid
    assert (store.zarr_path / "predictions" / mid / sid).is_dir()


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
        "detections.geojson", "detections.stac.json", "probability.stac.json", "probability.tif", "provenance.json",
        "quicklook.png"]
    survey = store.survey(sid)
    pred = detect.open_predictions(store, mid, sid)

    valid, errors, _ = cog_validate(str(out / "probability.tif"), quiet=True)
    assert valid, errors
    with rasterio.open(out / "probability.tif") as ds:
        assert ds.crs == survey.crs
        assert ds.transform == survey.transform * Affine.scale(64)
        assert np.isnan(ds.nodata) and ds.overviews(1)
        expected, cells = maps.probability_map(pred.probabilities, pred.grid)
        expected[maps.cells_beyond(cells, expected.shape, survey.bounds)] = np.nan  # ground the survey never saw
        np.testing.assert_array_equal(ds.read(1), expected)

    fc = json.loads((out / "detections.geojson").read_text())
    assert "crs" not in fc
    flagged = np.isfinite(pred.probabilities) & (pred.probabilities >= 0.5)
    assert sum(f["properties"]["tile_count"] for f in fc["features"]) == flagged.sum()
    if flagged.any():
        assert fc["features"][0]["properties"]["peak_probability"] == pytest.approx(np.nanmax(pred.probabilities), abs=1e-6)
    for f in fc["features"]:
        west, south, east, north = f["bbox"]
        assert west <= f["properties"]["peak_lon"] <= east and south <= f["properties"]["peak_lat"] <= north
        assert f["properties"]["survey_id"] == sid and f["properties"]["model_id"] == mid

    prov = json.loads((out / "provenance.json").read_text())
    assert prov["damwatch_version"] == __version__
    assert prov["inputs"]["survey"]["source_sha256"] == file_sha256(naip["files"][0])
    assert prov["inputs"]["model"]["id"] == mid
    assert prov["inputs"]["model"]["npz_sha256"] == file_sha256(store.models_dir / f"{mid}.npz")
    assert TileGrid.from_dict(prov["tile_grid"]) == pred.grid
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
    store, sid, mid = naip["store"], naip["ids"][1], naip["model_id"]
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


def test_change_on_real_dates_uses_one_map_grid_and_is_symmetric(naip, dask_client):
    store, (a, b), mid = naip["store"], naip["ids"], naip["model_id"]
    sa, sb = store.survey(a), store.survey(b)
    assert sa.transform != sb.transform or sa.height != sb.height  # not pixel-aligned
    forward = change.change_surveys(store, a, b, mid, stride=64, client=dask_client)
    backward = change.change_surveys(store, b, a, mid, stride=64, client=dask_client)
    grid = forward.grid
    assert backward.grid == grid
    assert grid.cell_size == 64 * 5.0  # stride x the 5 m NAIP pixel
    assert grid.transform.c % grid.cell_size == 0 and grid.transform.f % grid.cell_size == 0
    left, bottom, right, top = grid.extent
    assert (left, right) == (max(sa.bounds[0], sb.bounds[0]), min(sa.bounds[2], sb.bounds[2]))
    assert (bottom, top) == (max(sa.bounds[1], sb.bounds[1]), min(sa.bounds[3], sb.bounds[3]))
    np.testing.assert_array_equal(backward.p_before, forward.p_after)
    np.testing.assert_array_equal(backward.p_after, forward.p_before)
    swap = {change.NEW: change.GONE, change.GONE: change.NEW}
    expected = np.vectorize(lambda c: swap.get(int(c), int(c)))(forward.classes)
    np.testing.assert_array_equal(backward.classes, expected)
    counts = forward.counts()
    assert counts["new"] == backward.counts()["gone"] and counts["gone"] == backward.counts()["new"]
    # Each date read in map coordinates: a cell's value is that survey's own map at the cell centre.
    xs, ys = grid.centres()
    for pred, values in ((forward.before, forward.p_before), (forward.after, forward.p_after)):
        cols, rows = ~pred.grid.transform * (xs, ys)
        np.testing.assert_allclose(values, maps.sample_tiles(pred.probabilities, maps.tile_edges(pred.grid), rows, cols), equal_nan=True)


def test_change_command_outputs_and_metrics(naip, dask_client, prefect, tmp_path, capsys):
    from rasterio.warp import transform as warp_transform
    from rio_cogeo.cogeo import cog_validate

    store, (a, b), mid = naip["store"], naip["ids"], naip["model_id"]
    result = change.change_surveys(store, a, b, mid, stride=64, client=dask_client)
    # A hand-made truth: objects 50 m east and 30 m north of three cell centres (off the
    # cells' boundaries), one per class, existing on the given dates.
    xs, ys = result.grid.centres()
    da, db = store.survey(a).date.isoformat(), store.survey(b).date.isoformat()
    picks = [((1, 1), [db]), ((3, 4), [da]), ((5, 6), [da, db])]  # new, gone, persisting
    px, py = [xs[p] + 50 for p, _ in picks], [ys[p] + 30 for p, _ in picks]
    lon, lat = warp_transform(result.grid.crs, "EPSG:4326", px, py)
    truth = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [x, y]}, "properties": {"class": "dam", "dates": d}}
        for x, y, (_, d) in zip(lon, lat, picks)
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
        assert ds.crs == result.grid.crs and ds.transform == result.grid.transform
        assert ds.nodata == change.NODATA and ds.colormap(1)[change.NEW][:3] == change.CLASS_COLOURS[change.NEW][:3]
        np.testing.assert_array_equal(ds.read(1), result.classes)
    fc = json.loads((out / "change.geojson").read_text())
    for code in (change.NEW, change.GONE, change.PERSISTING):  # dissolved shapes hold every cell of each class
        name = change.CLASS_NAMES[code]
        assert sum(f["properties"]["cells"] for f in fc["features"] if f["properties"]["class"] == name) == int(
            (result.classes == code).sum())

    # Metrics recomputed by hand: a cell truly holds class c when an object of class c lies in
    # the 128-px (640 m) square centred on the cell.
    metrics = json.loads((out / "metrics.json").read_text())
    scored = result.classes != change.NODATA
    for x, y, name, code in zip(px, py, ("new", "gone", "persisting"), (change.NEW, change.GONE, change.PERSISTING)):
        true = (np.abs(xs - x) <= 320) & (np.abs(ys - y) <= 320) & scored
        pred = (result.classes == code) & scored
        tp, fp, fn = int((true & pred).sum()), int((~true & pred).sum()), int((true & ~pred).sum())
        m = metrics["classes"][name]
        assert (m["tp"], m["fp"], m["fn"]) == (tp, fp, fn)
        assert m["iou"] == (pytest.approx(tp / (tp + fp + fn)) if tp + fp + fn else None)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["inputs"]["before"]["id"] == a and prov["inputs"]["after"]["id"] == b
    assert prov["change_grid"]["cell_size"] == result.grid.cell_size
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
    # Each date still read at the cell centres, the after survey's in its own CRS.
    from rasterio.warp import transform as warp_transform

    xs, ys = result.grid.centres()
    tx, ty = warp_transform(result.grid.crs, result.after.grid.crs, xs.ravel(), ys.ravel())
    cols, rows = ~result.after.grid.transform * (np.reshape(tx, xs.shape), np.reshape(ty, xs.shape))
    expected = maps.sample_tiles(result.after.probabilities, maps.tile_edges(result.after.grid), rows, cols)
    np.testing.assert_allclose(result.p_after, expected, equal_nan=True)


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
