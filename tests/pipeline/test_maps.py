"""Map maths: the overlap rule of probability maps.

Reference: brute-force loops over tiles using the tile grid's own map-coordinate bounds
(``TileGrid.tile_bounds``, independent of the summed-area tables in ``pipeline.maps``).
"""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from pipeline import maps
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
