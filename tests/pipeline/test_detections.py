"""Detections: tile components and GeoJSON per RFC 7946.

References: a brute-force search for touching tile footprints; point-in-polygon tests of tile
centres projected with PROJ (rasterio.warp), independent of the polygonizer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from pipeline import detections, geojson, maps
from pipeline.tiling import TileGrid

UTM14 = CRS.from_epsg(26914)


def _grid(height, width, size, stride, res=0.5, x0=500_000.0, y0=5_200_000.0):
    return TileGrid(height, width, size, stride, Affine(res, 0, x0, 0, -res, y0), UTM14)


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
    labels = detections.tile_components(flagged, maps.tile_edges(grid))
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
    labels = detections.tile_components(flagged, maps.tile_edges(grid))
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
    fc = detections.detections_geojson(p, grid, 0.5, {"survey_id": "creek-2024-06-01", "model_id": "abc"})
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
                assert (geojson._ring_area(ring) > 0) == (k == 0)  # exterior counter-clockwise
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
    assert detections.confidence_class(peak) == expected
