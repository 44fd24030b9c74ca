"""The survey store: GeoTIFF -> georeferenced Zarr, checked against the source files themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from flows.cli import main
from pipeline.errors import InputError, StoreError
from pipeline.ingest import _strips, ingest
from pipeline.store import Store

NAIP_BANDS = ["red", "green", "blue", "nir"]


def write_raster(
    path: Path,
    data: np.ndarray,
    crs: str | None = "EPSG:32614",
    transform=from_origin(500000.0, 5200000.0, 1.0, 1.0),
    nodata=None,
    descriptions=None,
    tiled=True,
) -> Path:
    """A GeoTIFF of ``data`` (band, y, x), as a survey provider would write it."""
    profile = dict(
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        compress="deflate",
    )
    if tiled:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        if descriptions:
            ds.descriptions = tuple(descriptions)
    return path


def open_with_xarray(store: Store, survey_id: str):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("rioxarray")
    # The survey group is a Zarr group of its own, with consolidated metadata: open it by path.
    return xr.open_zarr(store.survey_dir(survey_id), decode_coords="all")


def assert_same_as_source(store: Store, survey_id: str, path: Path) -> None:
    """xarray + rioxarray give back the source's CRS, transform, shape and every pixel."""
    ds = open_with_xarray(store, survey_id)
    image = ds["image"]
    with rasterio.open(path) as src:
        pixels = src.read()
        assert image.rio.crs == src.crs
        assert image.rio.transform() == src.transform
        assert image.shape == (src.count, src.height, src.width)
        assert image.dtype == pixels.dtype
    np.testing.assert_array_equal(image.values, pixels)


# --- real surveys -----------------------------------------------------------------------------


@pytest.mark.naip
def test_real_naip_surveys_round_trip_exactly(naip_files, tmp_path):
    store = Store(tmp_path / "s")
    # Two dates whose pixel grids differ by metres and a row: each keeps its own grid.
    for path in (naip_files[0], naip_files[4]):
        date = path.stem.split("_")[-1]
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
        result = ingest(path, "pothole", date, store, bands=NAIP_BANDS)
        assert result.status == "ingested"
        assert_same_as_source(store, result.survey.id, path)
        with rasterio.open(path) as src:
            expected_valid = (src.read() != 0).all(axis=0)
        np.testing.assert_array_equal(result.survey.valid()[:], expected_valid)
        assert result.survey.bands == tuple(NAIP_BANDS)
        assert result.survey.crs.to_epsg() == 26914
    a, b = store.surveys(area="pothole")
    assert a.transform != b.transform and a.height != b.height


@pytest.mark.naip
def test_parallel_ingest_equals_serial(naip_files, tmp_path, dask_client):
    serial = ingest(naip_files[1], "a", "2010-06-29", Store(tmp_path / "serial"), chunk_edge=256)
    parallel = ingest(naip_files[1], "a", "2010-06-29", Store(tmp_path / "par"), chunk_edge=256, client=dask_client)
    np.testing.assert_array_equal(serial.survey.image()[:], parallel.survey.image()[:])
    np.testing.assert_array_equal(serial.survey.valid()[:], parallel.survey.valid()[:])
    assert parallel.survey.image().chunks == (4, 256, 256)


# --- odd cases, written by the tests ----------------------------------------------------------

ODD_CASES = [
    # geographic CRS: degrees, y increasing southwards by a negative pixel height
    dict(id="geographic", shape=(3, 200, 300), dtype="uint8", crs="EPSG:4326",
         transform=from_origin(-99.5, 47.2, 0.0001, 0.0001), nodata=None),
    # uint16 with nodata borders (0 around the edge)
    dict(id="uint16-nodata-border", shape=(4, 300, 260), dtype="uint16", crs="EPSG:32614",
         transform=from_origin(500000, 5200000, 0.5, 0.5), nodata=0),
    # a single band, size not a multiple of the chunk edge in either direction
    dict(id="one-band-odd-size", shape=(1, 517, 389), dtype="uint8", crs="EPSG:26914",
         transform=from_origin(485900, 5209247, 5, 5), nodata=None),
    # float32 with NaN nodata
    dict(id="float32-nan", shape=(2, 150, 140), dtype="float32", crs="EPSG:3857",
         transform=from_origin(-1.1e7, 6.0e6, 2.0, 2.0), nodata=float("nan")),
]


@pytest.mark.parametrize("case", ODD_CASES, ids=[c["id"] for c in ODD_CASES])
def test_odd_rasters_round_trip(case, tmp_path):
    rng = np.random.default_rng(0)
    if np.dtype(case["dtype"]).kind == "f":
        data = rng.normal(size=case["shape"]).astype(case["dtype"])
    else:
        data = rng.integers(1, 200, size=case["shape"]).astype(case["dtype"])
    if case["nodata"] is not None:
        data[:, :7, :] = case["nodata"]  # nodata border on top
        data[0, 50, 60] = case["nodata"]  # and one pixel of one band only
    path = write_raster(tmp_path / "in.tif", data, crs=case["crs"], transform=case["transform"], nodata=case["nodata"])
    store = Store(tmp_path / "s")
    survey = ingest(path, "odd", "2024-06-01", store, chunk_edge=128).survey
    assert_same_as_source(store, survey.id, path)
    expected_valid = np.ones(data.shape[1:], bool)
    if case["nodata"] is not None:
        expected_valid[:7, :] = False
        expected_valid[50, 60] = False
    np.testing.assert_array_equal(survey.valid()[:], expected_valid)
    assert survey.image().chunks[1] % 128 == 0 and survey.image().chunks[2] % 128 == 0
    assert survey.crs == CRS.from_string(case["crs"])


def test_band_names_from_descriptions_and_override(tmp_path):
    data = np.ones((3, 64, 64), np.uint8)
    path = write_raster(tmp_path / "in.tif", data, descriptions=["Red", "Green", "Blue"])
    store = Store(tmp_path / "s")
    assert ingest(path, "a", "2024-01-01", store).survey.bands == ("red", "green", "blue")
    # GDAL marks a 3-band uint8 file RGB: its colour interpretation names the bands
    assert ingest(write_raster(tmp_path / "rgb.tif", data), "e", "2024-01-01", store).survey.bands == (
        "red", "green", "blue")
    # gray + undefined, as in NAIP: no guess at what the bands are
    plain = write_raster(tmp_path / "plain.tif", np.ones((2, 64, 64), np.uint16))
    assert ingest(plain, "b", "2024-01-01", store).survey.bands == ("band1", "band2")
    named = ingest(plain, "c", "2024-01-01", store, bands=["red", "nir"]).survey
    assert named.bands == ("red", "nir")
    with pytest.raises(InputError, match="2 band"):
        ingest(plain, "d", "2024-01-01", store, bands=["red"])
    with pytest.raises(InputError, match="no band named 'nir'"):
        store.survey("b-2024-01-01").band_index("nir")


def test_task_strips_cover_the_raster_once():
    # 3 chunk rows x 5 chunk columns of 128 px, the last of each partial; 1-byte pixels, 4 bands
    strips = _strips(300, 600, 128, 4, 1)
    covered = np.zeros((300, 600), int)
    for r0, r1, c0, c1 in strips:
        assert r0 % 128 == 0 and c0 % 128 == 0  # whole chunks only: no two tasks share a chunk
        covered[r0:r1, c0:c1] += 1
    assert (covered == 1).all()


# --- re-ingest, overwrite ---------------------------------------------------------------------


def test_reingest_same_file_is_a_noop_and_other_file_is_refused(tmp_path, capsys, prefect):
    store_dir = tmp_path / "s"
    a = write_raster(tmp_path / "a.tif", np.full((1, 64, 64), 5, np.uint8))
    b = write_raster(tmp_path / "b.tif", np.full((1, 64, 64), 9, np.uint8))
    args = ["--area", "creek", "--date", "2024-06-01", "--store", str(store_dir), "--workers", "1"]
    assert main(["ingest", str(a), *args]) == 0
    before = (store_dir / "store.zarr/surveys/creek-2024-06-01/zarr.json").read_text()
    assert main(["ingest", str(a), *args]) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and "run record:" in out
    assert main(["ingest", str(b), *args]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "already exists" in err and "--overwrite" in err and "Traceback" not in err
    assert (store_dir / "store.zarr/surveys/creek-2024-06-01/zarr.json").read_text() == before
    assert main(["ingest", str(b), *args, "--overwrite"]) == 0
    survey = Store(store_dir).survey("creek-2024-06-01")
    assert survey.source_name == "b.tif" and int(survey.image()[0, 0, 0]) == 9
    assert list((store_dir / ".staging").iterdir()) == []


def test_ingest_command_runs_show_in_prefect_history(tmp_path, capsys, prefect):
    """The command line runs the ingest flow, so the run is in Prefect's history."""
    import asyncio

    from prefect.client.orchestration import get_client

    path = write_raster(tmp_path / "a.tif", np.full((1, 64, 64), 5, np.uint8))
    assert main(["ingest", str(path), "--area", "hist", "--date", "2024-06-01", "--store", str(tmp_path / "s"),
                 "--workers", "1"]) == 0
    run_dir = Path(capsys.readouterr().out.split("run record:")[1].strip())
    provenance = json.loads((run_dir / "provenance.json").read_text())

    async def read_run(run_id):
        async with get_client() as client:
            return await client.read_flow_run(run_id)

    flow_run = asyncio.run(read_run(provenance["prefect_flow_run_id"]))
    assert flow_run.state.is_completed()
    assert flow_run.parameters["area"] == "hist" and flow_run.parameters["path"] == str(path)


# --- bad input: clear error, exit 2, store untouched ------------------------------------------


def _truncated_tiff(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    good = write_raster(tmp_path / "good.tif", rng.integers(0, 255, (3, 1024, 1024), dtype=np.uint8))
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(good.read_bytes()[: int(good.stat().st_size * 0.6)])
    return bad


def _no_crs(tmp_path: Path) -> Path:
    return write_raster(tmp_path / "nocrs.tif", np.ones((1, 32, 32), np.uint8), crs=None)


def _no_transform(tmp_path: Path) -> Path:
    path = tmp_path / "notransform.tif"
    with rasterio.open(path, "w", driver="GTiff", width=32, height=32, count=1, dtype="uint8", crs="EPSG:32614") as ds:
        ds.write(np.ones((1, 32, 32), np.uint8))
    return path


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.tif"
    path.write_text("these are field notes, not a raster\n")
    return path


BAD_INPUTS = [
    # (case, make the input, extra args, words the message must contain)
    ("missing path", lambda t: t / "nope.tif", [], "does not exist"),
    ("not a raster", _text_file, [], "not a raster"),
    ("no CRS", _no_crs, [], "no coordinate reference system"),
    ("no transform", _no_transform, [], "no georeferencing transform"),
]


@pytest.mark.parametrize("case,make,extra,words", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_refused_and_store_untouched(case, make, extra, words, tmp_path, capsys):
    # All found before Prefect starts: no flow run, no run record.
    store_dir = tmp_path / "s"
    path = make(tmp_path)
    code = main(["ingest", str(path), "--area", "creek", "--date", "2024-06-01", "--store", str(store_dir),
                 "--workers", "1", *extra])
    err = " ".join(capsys.readouterr().err.split())  # the message is wrapped for the terminal
    assert code == 2, err
    assert words in err and "Traceback" not in err
    assert Store(store_dir).survey_ids() == []
    staging = store_dir / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def test_truncated_geotiff_fails_inside_the_flow_cleanly(tmp_path, prefect):
    """Found only when the workers read past the end: as a user meets it, in a process of its own."""
    import os
    import subprocess
    import sys

    store_dir = tmp_path / "s"
    bad = _truncated_tiff(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "ingest", str(bad), "--area", "creek", "--date", "2024-06-01",
         "--store", str(store_dir), "--workers", "1"],
        capture_output=True, text=True, timeout=180, env={**os.environ, "PREFECT_API_URL": prefect},
    )
    err = " ".join(done.stderr.split())
    assert done.returncode == 2, done.stderr
    assert "damwatch ingest: error:" in err and "truncated or corrupt" in err
    assert "Traceback" not in done.stderr
    assert Store(store_dir).survey_ids() == []
    assert list((store_dir / ".staging").iterdir()) == []


@pytest.mark.parametrize(
    "area,date,words",
    [
        ("Creek Valley", "2024-06-01", "area name"),  # spaces and capitals
        ("creek", "06/01/2024", "YYYY-MM-DD"),  # another date order
        ("creek", "2024-02-30", "not a real calendar date"),
    ],
)
def test_malformed_area_or_date(area, date, words, tmp_path, capsys):
    path = write_raster(tmp_path / "a.tif", np.ones((1, 32, 32), np.uint8))
    assert main(["ingest", str(path), "--area", area, "--date", date, "--store", str(tmp_path / "s")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_store_path_that_is_a_file(tmp_path, capsys):
    path = write_raster(tmp_path / "a.tif", np.ones((1, 32, 32), np.uint8))
    not_a_dir = tmp_path / "store"
    not_a_dir.write_text("x")
    assert main(["ingest", str(path), "--area", "a", "--date", "2024-06-01", "--store", str(not_a_dir)]) == 2
    assert "regular file" in capsys.readouterr().err
    assert not_a_dir.read_text() == "x"
    with pytest.raises(StoreError):
        Store(not_a_dir)


def test_surveys_lists_id_size_bands_crs_and_pixel_size(tmp_path, capsys, prefect):
    store_dir = tmp_path / "s"
    for date in ("2024-06-01", "2023-06-01"):
        path = write_raster(tmp_path / f"{date}.tif", np.ones((3, 40, 50), np.uint8), descriptions=["red", "green", "blue"])
        assert main(["ingest", str(path), "--area", "creek", "--date", date, "--store", str(store_dir), "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["surveys", "--store", str(store_dir), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == ["creek-2023-06-01", "creek-2024-06-01"]  # by date
    assert rows[0]["width"] == 50 and rows[0]["height"] == 40
    assert rows[0]["bands"] == ["red", "green", "blue"] and rows[0]["crs"] == "EPSG:32614"
    assert rows[0]["pixel_size"] == [1.0, 1.0]
    assert main(["surveys", "--store", str(store_dir)]) == 0
    table = capsys.readouterr().out
    assert "creek-2023-06-01" in table and "50 x 40" in table and "EPSG:32614" in table


def test_unknown_survey_names_known_ones(tmp_path):
    store = Store(tmp_path / "s")
    path = write_raster(tmp_path / "a.tif", np.ones((1, 32, 32), np.uint8))
    ingest(path, "creek", "2024-06-01", store)
    with pytest.raises(StoreError, match="creek-2024-06-01"):
        store.survey("creek-2025-06-01")
