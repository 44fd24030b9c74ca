"""Detection maps: the overlap rule, tile components, GeoJSON per RFC 7946, the COG, outputs.

References: brute-force loops over tiles using the tile grid's own map-coordinate bounds
(``TileGrid.tile_bounds``, independent of the summed-area tables in ``pipeline.maps``),
scikit-learn for metrics, rio-cogeo's validator for the COG.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from pipeline import maps
from pipeline.errors import InputError
from pipeline.tiling import TileGrid

UTM14 = CRS.from_epsg(26914)


def _grid(height, width, size, stride, res=0.5, x0=500_000.0, y0=5_200_000.0):
    return TileGrid(height, width, size, stride, Affine(res, 0, x0, 0, -res, y0), UTM14)


def _brute_mean(p, bounds, x, y):
    """Mean of scored tiles whose map-coordinate bounds contain (x, y): the documented rule."""
    vals = []
    for r in range(bounds.shape[0]):
        for c in range(bounds.shape[1]):
            left, bottom, right, top = bounds[r, c]
            if left <= x < right and bottom < y <= top and np.isfinite(p[r, c]):
                vals.append(p[r, c])
    return np.mean(vals) if vals else np.nan


@pytest.mark.parametrize(
    "height, width, size, stride",
    [
        (256, 384, 128, 128),  # no overlap: the map is the tile grid itself
        (300, 400, 128, 64),  # half-tile overlap, last row/column shifted inward
        (250, 170, 50, 20),  # stride not dividing the size, shifted edges
    ],
)
def test_probability_map_is_mean_of_tiles_containing_cell_centre(height, width, size, stride):
    grid = _grid(height, width, size, stride)
    rng = np.random.default_rng(1)
    p = rng.random(grid.shape).astype(np.float32)
    p[rng.random(grid.shape) < 0.2] = np.nan  # unscored tiles
    values, transform = maps.probability_map(p, grid)
    assert transform == grid.transform * Affine.scale(stride)
    assert values.shape == (-(-height // stride), -(-width // stride))
    expected = np.full(values.shape, np.nan)
    bounds = grid.bounds_array()  # (n_rows, n_cols, 4) left, bottom, right, top
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            # centre of the part of the cell inside the survey
            cx = 0.5 * (j * stride + min((j + 1) * stride, width))
            cy = 0.5 * (i * stride + min((i + 1) * stride, height))
            x, y = grid.transform * (cx, cy)
            expected[i, j] = _brute_mean(p, bounds, x, y)
    np.testing.assert_allclose(values, expected, rtol=1e-6, equal_nan=True)


def test_probability_map_hand_worked():
    # 2 x 2 tiles of 4 px with stride 2 on a 6 x 6 raster: cell (1, 1) is covered by all four.
    grid = _grid(6, 6, 4, 2, res=1.0)
    p = np.array([[0.2, 0.4], [0.6, 1.0]], dtype=np.float32)
    values, _ = maps.probability_map(p, grid)
    np.testing.assert_allclose(
        values,
        [[0.2, 0.3, 0.4], [0.4, 0.55, 0.7], [0.6, 0.8, 1.0]],
        rtol=1e-6,
    )


def _brute_components(flagged, grid):
    """Connected components by BFS over the 'closed footprints intersect' relation."""
    bounds = {(r, c): grid.tile_bounds(r, c) for r, c in zip(*np.nonzero(flagged))}

    def touch(a, b):
        return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]

    comps, seen = [], set()
    for start in bounds:
        if start in seen:
            continue
        comp, stack = set(), [start]
        while stack:
            t = stack.pop()
            if t in comp:
                continue
            comp.add(t)
            stack.extend(u for u in bounds if u not in comp and touch(bounds[t], bounds[u]))
        seen |= comp
        comps.append(frozenset(comp))
    return set(comps)


@pytest.mark.parametrize("size, stride", [(10, 10), (10, 5), (10, 3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_tile_components_match_touching_footprints(size, stride, seed):
    grid = _grid(95, 83, size, stride, res=1.0)
    flagged = np.random.default_rng(seed).random(grid.shape) < 0.12
    labels = maps.tile_components(flagged, maps.tile_edges(grid))
    assert set(np.unique(labels[flagged])) == set(range(1, labels.max() + 1))
    assert not labels[~flagged].any()
    got = {frozenset(zip(*np.nonzero(labels == k))) for k in range(1, labels.max() + 1)}
    got = {frozenset((int(r), int(c)) for r, c in comp) for comp in got}
    assert got == _brute_components(flagged, grid)


def test_tile_components_diagonal_and_gap():
    grid = _grid(40, 40, 10, 10, res=1.0)
    flagged = np.zeros(grid.shape, bool)
    flagged[0, 0] = flagged[1, 1] = True  # corners touch: one detection
    flagged[3, 3] = True  # one tile of gap: another
    labels = maps.tile_components(flagged, maps.tile_edges(grid))
    assert labels[0, 0] == labels[1, 1] != labels[3, 3]


def _point_in_ring(x, y, ring):
    inside = False
    for (x1, y1), (x2, y2) in zip(ring[:-1], ring[1:]):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def _in_geometry(lon, lat, geometry):
    polys = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    for rings in polys:
        if _point_in_ring(lon, lat, rings[0]) and not any(_point_in_ring(lon, lat, h) for h in rings[1:]):
            return True
    return False


def test_detections_geojson_is_rfc7946_and_lands_on_the_tiles():
    grid = _grid(640, 640, 128, 64)
    p = np.full(grid.shape, 0.05, dtype=np.float32)
    p[1, 1], p[1, 2], p[2, 2] = 0.95, 0.8, 0.75  # one object spanning three tiles
    p[7, 0] = 0.6  # a second, weak one, far away
    p[0, 8] = np.nan
    fc = maps.detections_geojson(p, grid, 0.5, {"survey_id": "creek-2024-06-01", "model_id": "abc"})
    json.dumps(fc, allow_nan=False)  # plain JSON
    assert fc["type"] == "FeatureCollection" and "crs" not in fc
    assert len(fc["features"]) == 2
    strong, weak = fc["features"]
    assert strong["properties"]["tile_count"] == 3
    assert strong["properties"]["peak_probability"] == pytest.approx(0.95, abs=1e-6)
    assert strong["properties"]["mean_probability"] == pytest.approx((0.95 + 0.8 + 0.75) / 3, abs=1e-6)
    assert strong["properties"]["confidence"] == "high" and weak["properties"]["confidence"] == "low"
    assert strong["properties"]["survey_id"] == "creek-2024-06-01" and strong["properties"]["model_id"] == "abc"
    for f in fc["features"]:
        geom = f["geometry"]
        for rings in [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]:
            for k, ring in enumerate(rings):
                assert ring[0] == ring[-1]
                assert all(-180 <= x <= 180 and -90 <= y <= 90 for x, y in ring)
                assert (maps._ring_area(ring) > 0) == (k == 0)  # exterior counter-clockwise
        west, south, east, north = f["bbox"]
        assert west < east and south < north
    # Where the tiles are: the centre of each flagged tile lies inside its detection, and the
    # centres of tiles far from any flagged tile lie outside every detection.
    xs, ys = grid.tile_centers()
    lon, lat = warp_transform(UTM14, "EPSG:4326", xs.ravel(), ys.ravel())
    lon, lat = np.reshape(lon, xs.shape), np.reshape(lat, xs.shape)
    for (r, c), f in [((1, 1), strong), ((1, 2), strong), ((2, 2), strong), ((7, 0), weak)]:
        assert _in_geometry(lon[r, c], lat[r, c], f["geometry"])
    for r, c in [(5, 5), (8, 8), (0, 8), (4, 0)]:
        assert not any(_in_geometry(lon[r, c], lat[r, c], f["geometry"]) for f in fc["features"])
    # The union's outer edge is the tiles' outer edge: its bbox equals the union of tile bounds.
    bounds = grid.bounds_array(wgs84=True)
    tiles = bounds[[1, 1, 2], [1, 2, 2]]
    np.testing.assert_allclose(strong["bbox"], [tiles[:, 0].min(), tiles[:, 1].min(), tiles[:, 2].max(), tiles[:, 3].max()], atol=1e-7)


@pytest.mark.parametrize("peak, expected", [(0.95, "high"), (0.9, "high"), (0.89, "medium"), (0.7, "medium"), (0.5, "low")])
def test_confidence_class(peak, expected):
    assert maps.confidence_class(peak) == expected


def test_write_cog_is_valid_and_georeferenced(tmp_path):
    from rio_cogeo.cogeo import cog_validate

    transform = Affine(32.0, 0, 500_000, 0, -32.0, 5_200_000)
    values = np.random.default_rng(0).random((700, 600)).astype(np.float32)
    values[:50, :50] = np.nan
    path = maps.write_cog(tmp_path / "p.tif", values, transform, UTM14, maps.PROBABILITY_NODATA)
    valid, errors, warnings = cog_validate(str(path), quiet=True)
    assert valid, errors
    assert not warnings
    with rasterio.open(path) as ds:
        assert ds.crs == UTM14 and ds.transform == transform
        assert ds.dtypes == ("float32",) and np.isnan(ds.nodata)
        assert ds.block_shapes == [(512, 512)]
        assert ds.overviews(1)
        np.testing.assert_array_equal(ds.read(1), values)
    assert not list(tmp_path.glob(".*"))  # the scratch GeoTIFF is gone


def test_atomic_output_dir_refuses_and_cleans_up(tmp_path):
    out = tmp_path / "out"
    with maps.atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"
    with pytest.raises(InputError, match="already holds results.*--overwrite"):
        with maps.atomic_output_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with maps.atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "b.txt").write_text("partial")
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial directory left
    with maps.atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]


def _truth(points_lonlat, contexts):
    return {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": list(pt)}, "properties": {"context": ctx, "status": "persisting"}}
            for pt, ctx in zip(points_lonlat, contexts)
        ]
        + [{"type": "Feature", "geometry": {"type": "Point", "coordinates": list(points_lonlat[0])}, "properties": {"kind": "culvert"}}],
    }


def test_detection_metrics_against_sklearn():
    from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

    grid = _grid(512, 512, 128, 128)  # 4 x 4 tiles, no overlap
    rng = np.random.default_rng(3)
    p = rng.random(grid.shape)
    p[3, 3] = np.nan
    xs, ys = grid.tile_centers()
    where = [(0, 0), (1, 2), (2, 1), (3, 0)]
    contexts = ["main_stream", "main_stream", "lake_outlet", "side_channel"]
    lon, lat = warp_transform(UTM14, "EPSG:4326", [xs[w] for w in where], [ys[w] for w in where])
    report = maps.detection_metrics(p, grid, _truth(list(zip(lon, lat)), contexts), threshold=0.5)
    y = np.zeros(grid.shape, bool)
    for w in where:
        y[w] = True
    scored = np.isfinite(p)
    yt, ps = y[scored], p[scored]
    overall = report["overall"]
    assert overall["n_positive"] == 4 and overall["n_tiles"] == 15
    assert overall["precision"] == pytest.approx(precision_score(yt, ps >= 0.5, zero_division=0))
    assert overall["recall"] == pytest.approx(recall_score(yt, ps >= 0.5))
    assert overall["f1"] == pytest.approx(f1_score(yt, ps >= 0.5))
    assert overall["roc_auc"] == pytest.approx(roc_auc_score(yt, ps))
    assert overall["average_precision"] == pytest.approx(average_precision_score(yt, ps))
    # per context: its tiles against the tiles holding no object at all
    ms = np.zeros(grid.shape, bool)
    ms[0, 0] = ms[1, 2] = True
    keep = scored & (ms | ~y)
    assert report["by_context"]["main_stream"]["roc_auc"] == pytest.approx(roc_auc_score(ms[keep], p[keep]))
    assert set(report["by_context"]) == {"main_stream", "lake_outlet", "side_channel"}
