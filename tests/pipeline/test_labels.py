"""Tile labels: hand-placed objects in other CRSs land on the expected tiles; NDWI labels NAIP ponds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from pipeline.errors import InputError, StoreError
from pipeline.labels import (
    NEGATIVE,
    POSITIVE,
    UNKNOWN,
    evaluate_expression,
    labels_from_expression,
    labels_from_vector,
    open_labels,
    parse_expression,
)
from pipeline.tiling import TileGrid

UTM14 = CRS.from_epsg(26914)
TRANSFORM = Affine(2.0, 0.0, 500000.0, 0.0, -2.0, 5200000.0)  # 2 m pixels
HEIGHT, WIDTH = 512, 640  # 4 × 5 tiles of 128 px
NODATA_FROM_ROW = 412  # rows 412.. are nodata: tile row 3 keeps 28/128 valid rows → unknown
RGBN = ("red", "green", "blue", "nir")


@pytest.fixture(scope="module")
def survey_store(tmp_path_factory):
    """A constructed 512 × 640 survey in UTM 14N, ingested on 2021-06-01."""
    from pipeline.ingest import ingest
    from pipeline.store import Store

    tmp = tmp_path_factory.mktemp("labels")
    pixels = np.full((4, HEIGHT, WIDTH), 100, dtype=np.uint8)
    pixels[:, NODATA_FROM_ROW:] = 0
    path = tmp / "constructed.tif"
    profile = dict(driver="GTiff", height=HEIGHT, width=WIDTH, count=4, dtype="uint8", crs=UTM14,
                   transform=TRANSFORM, nodata=0, tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    store = Store(tmp / "damwatch-data")
    ingest(path, "plot", "2021-06-01", store, bands=RGBN, chunk_edge=256)
    return store


def to_crs(crs: str, cols_rows: list[tuple[float, float]]) -> list[list[float]]:
    """Pixel (col, row) positions → coordinates in ``crs``, through the survey's transform."""
    xs, ys = zip(*(TRANSFORM * (c, r) for c, r in cols_rows))
    lon, lat = warp_transform(UTM14, crs, list(xs), list(ys))
    return [[x, y] for x, y in zip(lon, lat)]


def rectangle(crs: str, c0: float, r0: float, c1: float, r1: float) -> dict:
    ring = to_crs(crs, [(c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0)])
    return {"type": "Polygon", "coordinates": [ring]}


def point(crs: str, col: float, row: float) -> dict:
    return {"type": "Point", "coordinates": to_crs(crs, [(col, row)])[0]}


def feature(geometry: dict, **properties) -> dict:
    return {"type": "Feature", "properties": {"class": "dam", "dates": ["2021-06-01"], **properties}, "geometry": geometry}


def write(path, features, crs_name=None):
    doc = {"type": "FeatureCollection", "features": features}
    if crs_name:
        doc["crs"] = {"type": "name", "properties": {"name": crs_name}}
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def truth_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("truth")
    # Points and a line in WGS84 (RFC 7946, no crs member)
    wgs84 = write(
        tmp / "points.geojson",
        [
            feature(point("EPSG:4326", 300.5, 150.5)),  # → tile (1, 2)
            feature(point("EPSG:4326", 127.5, 10.5)),  # last pixel column of tile (0, 0)
            feature(point("EPSG:4326", -50.5, 10.5)),  # 100 m west of the raster: reported outside
            feature(point("EPSG:4326", 600.5, 200.5), dates=["2020-01-01"]),  # tile (1, 4) but another date
            feature(point("EPSG:4326", 450.5, 200.5), **{"class": "hard_negative"}),  # tile (1, 3), not a dam
            feature({"type": "LineString", "coordinates": to_crs("EPSG:4326", [(10.5, 300.5), (100.5, 300.5)])}),  # tile (2, 0)
        ],
    )
    # Polygons in Web Mercator, named by a legacy crs member
    mercator = write(
        tmp / "polygons.geojson",
        [
            # 130 × 110 px across tiles (2, 1) (56 × 110 = 38 % of it) and (2, 2) (74 × 110 = 50 %)
            feature(rectangle("EPSG:3857", 200, 270, 330, 380)),
            # small: 20 × 100 px, 60 % of it in tile (0, 3) (7 % of that tile), 40 % in tile (0, 4)
            feature(rectangle("EPSG:3857", 500, 20, 520, 120)),
            # 130 × 100 px: a 16-px sliver in tile (0, 1) (9.8 % of the tile, 12 % of it); rest in (0, 2)
            feature(rectangle("EPSG:3857", 240, 20, 370, 120)),
        ],
        crs_name="urn:ogc:def:crs:EPSG::3857",
    )
    region = write(tmp / "region.geojson", [feature(rectangle("EPSG:4326", 0, 0, 448, 512))])
    return wgs84, mercator, region


def test_points_and_line_in_wgs84_land_on_their_tiles(survey_store, truth_files):
    labels = labels_from_vector(
        survey_store, "plot-2021-06-01", truth_files[0], where={"class": "dam"}, on_date="survey", name="points"
    )
    expected = np.array(
        [
            [1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0],  # (1, 3) hard negative and (1, 4) other date stay negative
            [1, 0, 0, 0, 0],  # the line
            [-1, -1, -1, -1, -1],  # mostly nodata
        ]
    )
    np.testing.assert_array_equal(labels.values, expected)
    assert labels.report["selected"] == 4 and labels.report["outside"] == 1
    assert labels.report["objects"] == 6
    # every object selected without filters: the other-date and hard-negative points become positive
    everything = labels_from_vector(survey_store, "plot-2021-06-01", truth_files[0], save=False)
    assert everything.values[1, 3] == POSITIVE and everything.values[1, 4] == POSITIVE


def test_polygons_in_web_mercator_follow_the_cover_rule(survey_store, truth_files):
    labels = labels_from_vector(survey_store, "plot-2021-06-01", truth_files[1], min_cover=0.2, save=False)
    expected = np.array(
        [
            [0, 0, 1, 1, 0],  # sliver in (0, 1) too small either way; small polygon's majority in (0, 3)
            [0, 0, 0, 0, 0],
            [0, 1, 1, 0, 0],  # 38 % and 50 % of the tile ≥ 20 %
            [-1, -1, -1, -1, -1],
        ]
    )
    np.testing.assert_array_equal(labels.values, expected)
    assert labels.report["crs"] == "EPSG:3857" and labels.report["outside"] == 0
    # a stricter cover fraction drops tile (2, 1) (38 %) but keeps (2, 2) (50 %)
    strict = labels_from_vector(survey_store, "plot-2021-06-01", truth_files[1], min_cover=0.45, save=False)
    assert strict.values[2, 1] == NEGATIVE and strict.values[2, 2] == POSITIVE


def test_region_makes_unlooked_tiles_unknown(survey_store, truth_files):
    labels = labels_from_vector(survey_store, "plot-2021-06-01", truth_files[1], region=truth_files[2], save=False)
    # region: pixel columns 0..448: tile column 3 (384..512) half inside, column 4 outside
    np.testing.assert_array_equal(labels.values[:3, 3], [POSITIVE, UNKNOWN, UNKNOWN])  # a found object stays
    np.testing.assert_array_equal(labels.values[:3, 4], [UNKNOWN] * 3)
    np.testing.assert_array_equal(labels.values[:3, :3], [[0, 0, 1], [0, 0, 0], [0, 1, 1]])


def test_overlapping_tiles_all_take_a_point(survey_store, truth_files, tmp_path):
    survey = survey_store.survey("plot-2021-06-01")
    grid = TileGrid.for_survey(survey, size=128, stride=64)
    path = write(tmp_path / "one.geojson", [feature(point("EPSG:4326", 300.5, 150.5))])
    labels = labels_from_vector(survey_store, "plot-2021-06-01", path, grid, name="one")
    # row 150 is in tiles starting at rows 64 and 128; column 300 in those starting at 192 and 256
    assert sorted(zip(*np.nonzero(labels.values == POSITIVE))) == [(1, 3), (1, 4), (2, 3), (2, 4)]
    again = open_labels(survey_store, "plot-2021-06-01", "one", stride=64)
    np.testing.assert_array_equal(again.values, labels.values)
    assert again.grid == grid and again.report["selected"] == 1 and "one.geojson" in again.source


def test_bad_label_inputs_are_clear_errors(survey_store, truth_files, tmp_path):
    with pytest.raises(InputError, match="no feature with property 'kind'.*class"):
        labels_from_vector(survey_store, "plot-2021-06-01", truth_files[0], where={"kind": "dam"}, save=False)
    undated = write(tmp_path / "undated.geojson", [{"type": "Feature", "properties": {}, "geometry": point("EPSG:4326", 1, 1)}])
    with pytest.raises(InputError, match="no `dates` property"):
        labels_from_vector(survey_store, "plot-2021-06-01", undated, on_date="survey", save=False)
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(InputError, match="is not GeoJSON"):
        labels_from_vector(survey_store, "plot-2021-06-01", tmp_path / "bad.geojson", save=False)
    with pytest.raises(StoreError, match=r"--name never-made --size 128 --stride 128 \(`damwatch labels --help`"):
        open_labels(survey_store, "plot-2021-06-01", "never-made")


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("ndwi > 0", [True, False, False]),  # (g − n)/(g + n): 0.5, −0.5, 0 (0/0 → 0)
        ("ndwi >= 0 and nir < 30", [True, False, True]),
        ("~(b4 > 10) | (red == 7)", [True, False, True]),  # b4 is nir; `~`, `|` are logical
        ("not (b4 > 10 or red == 7)", [False, False, True]),
        ("0 < ndvi < 0.4", [True, False, False]),  # chained; ndvi = (n − r)/(n + r): 3/17, 0.5, 0/0 → 0
        ("abs(green - nir) * 2 / 10 > 1", [True, True, False]),
    ],
)
def test_expression_language_hand_worked(expr, expected):
    bands = {
        "red": np.array([7.0, 10.0, 0.0]),
        "green": np.array([30.0, 10.0, 0.0]),
        "blue": np.array([1.0, 1.0, 1.0]),
        "nir": np.array([10.0, 30.0, 0.0]),
    }
    bands |= {f"b{i + 1}": bands[n] for i, n in enumerate(RGBN)}
    tree = parse_expression(expr, RGBN)
    np.testing.assert_array_equal(evaluate_expression(tree, bands), expected)


@pytest.mark.parametrize(
    "expr, message",
    [
        ("ndwi", "is a value, not a condition"),  # no threshold
        ("__import__('os').system('x') > 0", "does not allow"),  # no calls but abs
        ("red.real > 0", "does not allow"),  # no attributes
        ("ndwi ** 2 > 0", "uses '\\*\\*'"),  # no powers
        ("swir > 0", "names swir, which survey s does not have"),
        ("ndwi > ", "is not valid"),
    ],
)
def test_bad_expressions_are_refused(expr, message):
    with pytest.raises(InputError, match=message):
        parse_expression(expr, RGBN, "survey s")


def test_missing_band_for_an_index(survey_store):
    with pytest.raises(InputError, match="ndvi needs bands nir and red"):
        parse_expression("ndvi > 0", ("red", "green", "blue"), "survey rgb")


@pytest.mark.naip
def test_ndwi_expression_labels_naip_ponds(tmp_path, naip_files, dask_client):
    from pipeline.ingest import ingest
    from pipeline.store import Store

    store = Store(tmp_path / "damwatch-data")
    ingest(naip_files[4], "naip", "2015-09-26", store, bands=RGBN, chunk_edge=256)
    labels = labels_from_expression(store, "naip-2015-09-26", "ndwi > 0", min_fraction=0.2, client=dask_client)

    # reference: NumPy on the whole file
    with rasterio.open(naip_files[4]) as src:
        pixels = src.read().astype(np.float64)
        valid = np.all(src.read() != src.nodata, axis=0)
    green, nir = pixels[1], pixels[3]
    water = ((green - nir) / np.where(green + nir == 0, 1, green + nir) > 0) & valid
    grid = labels.grid
    expected = np.empty(grid.shape, np.int8)
    for r in range(grid.n_rows):
        for c in range(grid.n_cols):
            w = grid.window(r, c)
            ys, xs = slice(w.row_off, w.row_off + 128), slice(w.col_off, w.col_off + 128)
            n_valid = valid[ys, xs].sum()
            expected[r, c] = UNKNOWN if n_valid < 0.5 * 128 * 128 else int(water[ys, xs].sum() >= 0.2 * n_valid)
    np.testing.assert_array_equal(labels.values, expected)
    # the README: about 29 % of the 2015 pixels are open water; ponds fill part of the tiles
    assert 0.1 < labels.n_positive / (labels.n_positive + labels.n_negative) < 0.9
    stored = open_labels(store, "naip-2015-09-26")
    np.testing.assert_array_equal(stored.values, labels.values)
    assert stored.source == "expr:ndwi > 0 on >= 0.2 of the tile"


def test_labels_command_from_file_and_expression(survey_store, truth_files, dask_client, prefect, capsys):
    from flows.cli import main

    store_dir = str(survey_store.root)
    argv = ["labels", "plot-2021-06-01", "--from", str(truth_files[0]), "--where", "class=dam,other",
            "--on-date", "survey", "--name", "cli", "--store", store_dir]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 of 6 objects selected, 1 of them outside the raster: 3 positive, 12 negative, 5 unknown" in out
    direct = labels_from_vector(survey_store, "plot-2021-06-01", truth_files[0], where={"class": ["dam", "other"]},
                                on_date="survey", save=False)
    np.testing.assert_array_equal(open_labels(survey_store, "plot-2021-06-01", "cli").values, direct.values)

    # the constructed survey is 100 everywhere: "nir > 50" holds on every valid pixel
    argv = ["labels", "plot-2021-06-01", "--expr", "nir > 50", "--name", "bright", "--store", store_dir,
            "--cluster", dask_client.scheduler.address]
    assert main(argv) == 0
    assert "15 positive, 0 negative, 5 unknown" in capsys.readouterr().out

    assert main(["labels", "plot-2021-06-01", "--expr", "swir > 0", "--store", store_dir]) == 2
    err = capsys.readouterr().err
    assert "names swir, which survey plot-2021-06-01 does not have" in err and "Traceback" not in err
    assert main(["labels", "plot-2021-06-01", "--from", str(truth_files[0]), "--where", "class", "--store", store_dir]) == 2
    assert "is not KEY=VALUE" in capsys.readouterr().err


def test_random_points_match_tile_windows(survey_store, tmp_path):
    """Points given in the survey's own CRS (``crs=``): positives are the tiles whose window holds a point's pixel."""
    rng = np.random.default_rng(5)
    cols, rows = rng.uniform(-20, WIDTH + 20, 40), rng.uniform(-20, NODATA_FROM_ROW, 40)
    xs, ys = TRANSFORM * (cols, rows)
    path = write(tmp_path / "utm.geojson", [feature({"type": "Point", "coordinates": [x, y]}) for x, y in zip(xs, ys)])
    grid = TileGrid.for_survey(survey_store.survey("plot-2021-06-01"), size=128, stride=96)
    labels = labels_from_vector(survey_store, "plot-2021-06-01", path, grid, crs="EPSG:26914", min_valid=0.3, save=False)

    expected = np.zeros(grid.shape, dtype=np.int8)
    for r in range(grid.n_rows):
        for c in range(grid.n_cols):
            w = grid.window(r, c)
            valid_rows = min(max(NODATA_FROM_ROW - w.row_off, 0), 128)  # the nodata band is whole rows
            inside = (np.floor(rows) >= w.row_off) & (np.floor(rows) < w.row_off + 128)
            inside &= (np.floor(cols) >= w.col_off) & (np.floor(cols) < w.col_off + 128)
            expected[r, c] = UNKNOWN if valid_rows / 128 < 0.3 else int(inside.any())
    assert {POSITIVE, NEGATIVE, UNKNOWN} <= set(np.unique(expected).tolist())
    np.testing.assert_array_equal(labels.values, expected)
    outside = int(((cols < 0) | (cols >= WIDTH) | (rows < 0)).sum())
    assert labels.report["outside"] == outside > 0
