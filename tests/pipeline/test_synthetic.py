"""Synthetic surveys: determinism, files as declared, and truth that agrees with the pixels.

References: the bytes of another run (other block size, worker count), block renders against
one render of the whole window, the scene's own vector geometry for where the truth must be,
a pixel water test independent of the generator (NDWI > 0 and dark near-infrared, as the NAIP
README states for real water), and rasterio's reprojection of the truth back to UTM.
"""

from __future__ import annotations

import collections
import hashlib
import json

import numpy as np
import pytest
import rasterio

from pipeline.synthetic import (
    STEP_M,
    TILE,
    build_scene,
    generate_area,
    morton_blocks,
    render_block,
)
from pipeline.synthetic.morton import tile_order

DATES = ["2023-06-01", "2024-06-01"]
SIZE, SEED = 1024, 8  # seed 8 at 1024 px: a dam on a main stream, one on a side channel, one at a lake outlet


@pytest.fixture(scope="module")
def area(tmp_path_factory):
    return generate_area(tmp_path_factory.mktemp("synth") / "a", "creek", DATES, SIZE, SEED, block=512, workers=2, progress=False)


@pytest.fixture(scope="module")
def images(area):
    out = {}
    for k, path in enumerate(area.surveys.values()):
        with rasterio.open(path) as ds:
            out[k] = ds.read()
    return out


def _digest(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_gives_identical_files_whatever_block_size_or_worker_count(area, tmp_path):
    again = generate_area(tmp_path / "b", "creek", DATES, SIZE, SEED, block=1024, workers=1, progress=False)
    assert _digest(again.out_dir) == _digest(area.out_dir)
    assert len(_digest(area.out_dir)) == 7  # 2 GeoTIFFs, 2 quicklooks, truth, shapes, manifest


# sha256 of each file's decoded content -- the pixels (band, row, col) of a GeoTIFF or PNG, the
# bytes of the truth -- as the single-module generator wrote them for the `area` fixture before
# the package split (commit 097994d). Pixels rather than file bytes, so that a zlib or GDAL
# release that compresses differently does not fail it; any change to the scene or the
# rendering does.
PINNED = {
    "creek-2023-06-01.tif": "4a60174356115079badf18ca739200046362985cb3457fe74d1a99aa30b8f43b",
    "creek-2024-06-01.tif": "04b01efa7ee979d442ce389690747804bb8c9cc0012edfa819e36eebf77515cb",
    "creek-2023-06-01-quicklook.png": "52bbb50ebd11e8f49b8eb9889b37646fa502fa6eca63aee9bb0ee65df9542a09",
    "creek-2024-06-01-quicklook.png": "638df5be338297b7577622d6f0ffa86010409117dc7cb7b3998274a473c6bd18",
    "creek-truth.geojson": "fdeec9d252fd76a110d1ca9161575eea1ab46e530aef6cdbd27e8d13663744bb",
}


def test_the_default_layout_gives_the_pinned_pixels_and_truth(area):
    from PIL import Image

    got = {}
    for path in [*area.surveys.values(), *area.quicklooks.values()]:
        if path.suffix == ".tif":
            with rasterio.open(path) as ds:
                content = ds.read().tobytes()
        else:
            with Image.open(path) as img:
                content = np.asarray(img).tobytes()
        got[path.name] = hashlib.sha256(content).hexdigest()
    got[area.truth.name] = hashlib.sha256(area.truth.read_bytes()).hexdigest()
    assert got == PINNED


def test_a_block_renders_the_same_pixels_as_the_same_window_of_a_larger_render():
    scene = build_scene("creek", DATES, 1024, 3)
    whole = render_block(scene, 1, 0, 0, 600, 700)
    # Odd offsets and shapes: nothing about a block's position or size may leak into pixels.
    for r0, c0, h, w in [(0, 0, 600, 700), (101, 37, 130, 77), (512, 512, 88, 188), (599, 1, 1, 699)]:
        np.testing.assert_array_equal(render_block(scene, 1, r0, c0, h, w), whole[:, r0 : r0 + h, c0 : c0 + w])


def test_a_different_seed_gives_a_different_scene(area, images):
    other = build_scene("creek", DATES, SIZE, SEED + 1)
    pixels = render_block(other, 0, 0, 0, 512, 512)
    differ = np.mean(np.any(pixels != images[0][:, :512, :512], axis=0))
    assert differ > 0.5
    assert [(d.x, d.y) for d in other.dams] != [(d.x, d.y) for d in area.scene.dams]


@pytest.mark.parametrize(
    "size, block",
    [
        (2048, 512),  # a whole number of blocks
        (2048, 1024),
        (1500, 512),  # partial blocks and tiles on the right and bottom edges
        (1500, 1024),
        (700, 2048),  # one block larger than the image
    ],
)
def test_morton_blocks_cover_the_image_once_and_visit_tiles_in_one_order(size, block):
    covered = np.zeros((size, size), np.int32)
    tiles = []
    for r0, c0, h, w in morton_blocks(size, block):
        covered[r0 : r0 + h, c0 : c0 + w] += 1
        tiles += [(r0 + tr, c0 + tc) for tr, tc in tile_order(h, w)]
    assert (covered == 1).all()
    reference = [(r0, c0) for r0, c0, _, _ in morton_blocks(size, TILE)]
    assert tiles == reference


# --- the files are what they say --------------------------------------------------------------


def test_geotiffs_open_with_the_declared_crs_transform_bands_and_layout(area):
    scene = area.scene
    for k, (date, path) in enumerate(area.surveys.items()):
        assert path.name == f"creek-{date}.tif"
        with rasterio.open(path) as ds:
            assert ds.crs.to_epsg() == 32618
            assert ds.transform == scene.transform(k)
            assert ds.transform.a == 1.0 and ds.transform.e == -1.0
            assert (ds.width, ds.height, ds.count) == (SIZE, SIZE, 4)
            assert ds.dtypes == ("uint8",) * 4
            assert ds.descriptions == ("red", "green", "blue", "nir")
            assert ds.block_shapes == [(TILE, TILE)] * 4
            assert ds.compression.value.lower() == "deflate"
    # The later date's footprint is shifted by whole pixels, as its manifest says.
    manifest = json.loads(area.manifest.read_text())
    assert [s["transform"] for s in manifest["surveys"]] == [list(scene.transform(k))[:6] for k in range(2)]
    assert manifest["surveys"][1]["footprint_offset_px"] != [0, 0] or manifest["surveys"][1]["misregistration_m"] != {"east": 0.0, "north": 0.0}


def test_rgb_only_when_nir_is_off(tmp_path):
    result = generate_area(tmp_path / "rgb", "creek", ["2024-06-01"], 512, 1, nir=False, workers=1, progress=False)
    with rasterio.open(result.surveys["2024-06-01"]) as ds:
        assert ds.count == 3 and ds.descriptions == ("red", "green", "blue")
        # The same scene with NIR has the same red, green and blue.
        np.testing.assert_array_equal(ds.read(), render_block(result.scene, 0, 0, 0, 512, 512)[:3])


def test_quicklooks_are_pngs_at_a_fixed_fraction_of_the_raster(area):
    from PIL import Image

    for path in area.quicklooks.values():
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == (SIZE, SIZE)  # up to 1024 px: full size


# --- truth agrees with the scene and the pixels ----------------------------------------------


def test_truth_is_rfc7946_and_reprojects_onto_the_scene_objects(area):
    from rasterio.warp import transform

    doc = json.loads(area.truth.read_text())
    assert doc["type"] == "FeatureCollection" and "crs" not in doc
    scene = area.scene
    dams = [f for f in doc["features"] if f["properties"]["class"] == "dam"]
    negatives = [f for f in doc["features"] if f["properties"]["class"] == "hard_negative"]
    assert len(dams) == len(scene.dams) and len(negatives) == len(scene.negatives)
    lon, lat = np.array([f["geometry"]["coordinates"] for f in doc["features"]]).T
    assert ((-76 < lon) & (lon < -74) & (40 < lat) & (lat < 50)).all()  # UTM 18N, WGS84 lon/lat
    east, north = (np.asarray(v) for v in transform("EPSG:4326", "EPSG:32618", lon, lat))
    objects = list(scene.dams) + list(scene.negatives)
    want_e, want_n = scene.to_map([o.x for o in objects], [o.y for o in objects])
    np.testing.assert_allclose(east, want_e, atol=0.01)  # 8 decimals of a degree: ~1 mm
    np.testing.assert_allclose(north, want_n, atol=0.01)
    # Every dam is inside every date's raster.
    for k in range(len(DATES)):
        with rasterio.open(area.surveys[DATES[k]]) as ds:
            left, bottom, right, top = ds.bounds
        assert ((left < east[: len(dams)]) & (east[: len(dams)] < right)).all()
        assert ((bottom < north[: len(dams)]) & (north[: len(dams)] < top)).all()


def test_truth_properties_say_status_context_and_dates_consistently(area):
    doc = json.loads(area.truth.read_text())
    seen_status, seen_context = set(), set()
    for f in doc["features"]:
        p = f["properties"]
        if p["class"] == "dam":
            want = {"new": [DATES[1]], "gone": [DATES[0]], "persisting": DATES}[p["status"]]
            assert p["dates"] == want, p
            seen_status.add(p["status"])
            seen_context.add(p["context"])
        else:
            assert p["kind"] in {"road_crossing", "culvert", "fallen_tree", "narrows", "pond_without_dam"}
            assert p["dates"] == DATES
    assert seen_status == {"new", "gone", "persisting"}
    assert seen_context == {"main_stream", "side_channel", "lake_outlet"}


def _water(pixels: np.ndarray) -> np.ndarray:
    """Open water from the pixels alone: NDWI > 0 and a dark near-infrared."""
    green, nir = pixels[1].astype(np.int32), pixels[3].astype(np.int32)
    return (green > nir) & (nir < 45)


def _water_across(scene, k, water, stream, vertex, half_length) -> float:
    """Metres of water on a line across the channel at ``vertex``, sampled every 0.25 m."""
    pts = stream.points
    tangent = pts[min(vertex + 2, len(pts) - 1)] - pts[max(vertex - 2, 0)]
    tangent = tangent / np.hypot(*tangent)
    t = np.arange(-half_length, half_length, 0.25)
    xs = pts[vertex, 0] - tangent[1] * t
    ys = pts[vertex, 1] + tangent[0] * t
    rows, cols = scene.to_pixel(k, xs, ys)  # where the point appears in date k's image
    return float(water[np.floor(rows).astype(int), np.floor(cols).astype(int)].sum() * 0.25)


def test_each_dam_shows_barrier_pond_upstream_and_narrow_channel_downstream(area, images):
    scene = area.scene
    water = {k: _water(images[k]) for k in images}
    for dam in scene.dams:
        stream = scene.streams[dam.stream_id]
        up = dam.vertex - max(2, round(dam.pond_length / 3 / STEP_M))
        down = dam.vertex + round((dam.curve + dam.thickness + 8) / STEP_M)
        widths = {}
        for k, standing in enumerate(dam.exists):
            img = images[k]
            row, col = (int(np.floor(v)) for v in scene.to_pixel(k, dam.x, dam.y))
            red, nir = int(img[0, row, col]), int(img[3, row, col])
            if standing:
                # The barrier: neither water nor vegetation (red about as bright as near-infrared).
                assert not water[k][row, col] and nir > 30 and red > 0.8 * nir, (dam.id, k, img[:, row, col])
            else:
                # Not built yet, or breached: the channel flows through where the barrier stands.
                assert water[k][row, col], (dam.id, k, img[:, row, col])
            widths[k] = (
                _water_across(scene, k, water[k], stream, up, dam.pond_half + 6),
                _water_across(scene, k, water[k], stream, down, 2 * dam.channel_half + 6),
            )
            if standing:
                up_w, down_w = widths[k]
                assert up_w >= 1.8 * down_w and up_w >= 8, (dam.id, k, widths[k])
        # A new dam's pond appears, a gone dam's pond drains: compare the two dates upstream.
        if dam.status != "persisting" and dam.context != "lake_outlet":
            before, after = (widths[k][0] for k in range(2))
            wet, dry = (after, before) if dam.status == "new" else (before, after)
            assert dry <= 0.5 * wet, (dam.id, dam.status, widths)


def test_hard_negatives_have_no_pond_and_no_barrier_where_truth_puts_them(area, images):
    scene = area.scene
    water = _water(images[0])
    for neg in scene.negatives:
        if neg.kind == "pond_without_dam" and neg.width > 0:
            # An off-channel pond: water at its centre, away from every channel.
            row, col = (int(np.floor(v)) for v in scene.to_pixel(0, neg.x, neg.y))
            assert water[row, col], neg
        if neg.kind == "road_crossing":
            row, col = (int(np.floor(v)) for v in scene.to_pixel(0, neg.x, neg.y))
            assert not water[row, col], neg  # the road passes over the channel
    # No dam sits on any hard negative's spot.
    for neg in scene.negatives:
        assert min(np.hypot(d.x - neg.x, d.y - neg.y) for d in scene.dams) > 30


# --- shapes: each dam's barrier and pond, for explanations -----------------------------------


def _segment_distance(p: np.ndarray, line: np.ndarray) -> float:
    """Distance (m) from point p (2,) to the polyline (n, 2), worked out segment by segment."""
    a, b = line[:-1], line[1:]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(axis=1) / (ab * ab).sum(axis=1), 0.0, 1.0)
    return float(np.hypot(*(a + t[:, None] * ab - p).T).min())


def _to_utm(coords) -> np.ndarray:
    from rasterio.warp import transform

    lon, lat = np.asarray(coords, float).T
    return np.stack(transform("EPSG:4326", "EPSG:32618", lon, lat), axis=1)


def test_shapes_give_each_dam_a_barrier_through_its_truth_point_and_a_pond(area):
    doc = json.loads(area.shapes.read_text())
    assert area.shapes.name == "creek-shapes.geojson"
    assert doc["type"] == "FeatureCollection" and "crs" not in doc
    truth = {f["id"]: f for f in json.loads(area.truth.read_text())["features"] if f["properties"]["class"] == "dam"}
    parts = collections.defaultdict(dict)
    for f in doc["features"]:
        parts[f["properties"]["id"]][f["properties"]["part"]] = f
    assert set(parts) == set(truth) and all(set(p) == {"barrier", "pond"} for p in parts.values())
    for dam_id, p in parts.items():
        point = _to_utm([truth[dam_id]["geometry"]["coordinates"]])[0]
        barrier = p["barrier"]["geometry"]
        assert barrier["type"] == "LineString"
        assert _segment_distance(point, _to_utm(barrier["coordinates"])) < 1.0, dam_id
        # Its length is the truth's barrier length, give or take the bend of the arc (< 10 %).
        length = np.hypot(*np.diff(_to_utm(barrier["coordinates"]), axis=0).T).sum()
        assert 0.99 < length / truth[dam_id]["properties"]["barrier_length_m"] < 1.1, dam_id
        pond = p["pond"]["geometry"]
        ring = np.asarray(pond["coordinates"][0])
        assert pond["type"] == "Polygon" and len(pond["coordinates"]) == 1 and (ring[0] == ring[-1]).all()
        # RFC 7946: the exterior ring is counter-clockwise (shoelace area > 0 in lon/lat).
        assert np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1]) > 0, dam_id
        assert p["pond"]["properties"]["dates"] == truth[dam_id]["properties"]["dates"]


def test_a_standing_ponds_outline_is_mostly_water_in_the_pixels(area, images):
    from rasterio.features import rasterize

    doc = json.loads(area.shapes.read_text())
    scene = area.scene
    with rasterio.open(area.surveys[DATES[0]]) as ds:
        crs, grid = ds.crs, ds.transform  # date 0: no misregistration, pixels are where the transform says
    water = _water(images[0])
    for f in doc["features"]:
        if f["properties"]["part"] != "pond" or DATES[0] not in f["properties"]["dates"]:
            continue
        ring = _to_utm(f["geometry"]["coordinates"][0])
        inside = rasterize([({"type": "Polygon", "coordinates": [ring.tolist()]}, 1)], out_shape=water.shape, transform=grid).astype(bool)
        assert inside.sum() > 100, f["properties"]["id"]  # tens of metres across at 1 m
        assert water[inside].mean() > 0.6, (f["properties"]["id"], water[inside].mean())
    assert crs.to_epsg() == scene.epsg
