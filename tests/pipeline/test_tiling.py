"""Tile grid arithmetic: hand-worked tables, then properties over random grids."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from rasterio.windows import bounds as window_bounds

from pipeline.errors import InputError
from pipeline.tiling import TileGrid, gather_tiles, n_tiles, tile_offsets, tile_valid_fraction

UTM14 = CRS.from_epsg(26914)
NAIP_TRANSFORM = Affine(5.0, 0.0, 485900.0, 0.0, -5.0, 5209247.0)  # a real NAIP survey's


@pytest.mark.parametrize(
    "length, size, stride, offsets",
    [
        (128, 128, 128, [0]),  # exactly one tile
        (256, 128, 128, [0, 128]),  # two tiles side by side, nothing shifted
        (300, 128, 128, [0, 128, 172]),  # 44 px left over: a third tile shifted inward to end at 300
        (129, 128, 128, [0, 1]),  # one pixel left over still gets a tile (ceiling, not floor)
        (256, 128, 64, [0, 64, 128]),  # half-tile overlap, evenly spaced, last ends at 256
        (300, 128, 64, [0, 64, 128, 172]),  # overlap, last tile shifted inward by 20 px
        (934, 128, 128, [0, 128, 256, 384, 512, 640, 768, 806]),  # a NAIP survey's width
        (10, 4, 3, [0, 3, 6]),  # stride that does not divide anything: 6 + 4 = 10 exactly
        (11, 4, 3, [0, 3, 6, 7]),  # ... and one more pixel: last shifted from 9 to 7
        (5, 1, 1, [0, 1, 2, 3, 4]),  # 1-pixel tiles: one per pixel
    ],
)
def test_tile_offsets_table(length, size, stride, offsets):
    assert n_tiles(length, size, stride) == len(offsets)
    assert tile_offsets(length, size, stride).tolist() == offsets


@pytest.mark.parametrize(
    "length, size, stride, message",
    [
        (100, 128, 128, "smaller than one tile"),  # survey smaller than a tile
        (256, 128, 129, "stride 129 is outside"),  # stride > size would leave gaps
        (256, 128, 0, "stride 0 is outside"),  # zero stride: infinitely many tiles
        (256, 0, 1, "at least 1 pixel"),  # degenerate tile
    ],
)
def test_bad_grids_are_refused(length, size, stride, message):
    with pytest.raises(InputError, match=message):
        n_tiles(length, size, stride)


def test_grid_of_a_naip_sized_survey():
    grid = TileGrid(724, 934, 128, 64, NAIP_TRANSFORM, UTM14)
    assert grid.shape == (11, 14)  # ceil((724-128)/64)+1 = 11, ceil((934-128)/64)+1 = 14
    w = grid.window(10, 13)
    assert (w.row_off, w.col_off, w.height, w.width) == (596, 806, 128, 128)  # bottom-right, shifted inward
    # tile (0, 0): top-left corner at the survey's origin, 128 px × 5 m = 640 m across
    assert grid.tile_bounds(0, 0) == (485900.0, 5209247.0 - 640.0, 485900.0 + 640.0, 5209247.0)
    # tile (1, 2): 64 px down, 128 px across
    assert grid.tile_bounds(1, 2) == (485900.0 + 640.0, 5209247.0 - 320.0 - 640.0, 485900.0 + 1280.0, 5209247.0 - 320.0)
    xs, ys = grid.tile_centers()
    assert xs.shape == ys.shape == (11, 14)
    assert (xs[0, 0], ys[0, 0]) == (485900.0 + 320.0, 5209247.0 - 320.0)
    with pytest.raises(IndexError):
        grid.window(11, 0)


def test_wgs84_bounds_match_rasterio_transform_bounds():
    grid = TileGrid(724, 934, 128, 128, NAIP_TRANSFORM, UTM14)
    for row, col in [(0, 0), (3, 5), (grid.n_rows - 1, grid.n_cols - 1)]:
        expected = transform_bounds(UTM14, "EPSG:4326", *grid.tile_bounds(row, col), densify_pts=21)
        np.testing.assert_allclose(grid.tile_bounds_wgs84(row, col), expected, rtol=0, atol=1e-9)
    west, south, east, north = grid.tile_bounds_wgs84(0, 0)
    assert -99.3 < west < east < -99.1 and 46.9 < south < north < 47.1  # the README's location


def test_dict_round_trip():
    grid = TileGrid(724, 934, 128, 64, NAIP_TRANSFORM, UTM14)
    assert TileGrid.from_dict(grid.to_dict()) == grid


@pytest.mark.parametrize(
    "height, width, size, stride, per_block",
    [
        (724, 934, 128, 128, (8, 8)),  # one block: the whole NAIP survey
        (724, 934, 128, 64, (4, 3)),  # overlapping tiles, uneven blocks
        (50, 70, 8, 5, (3, 4)),  # nothing divides anything
    ],
)
def test_blocks_partition_the_tiles_and_span_their_pixels(height, width, size, stride, per_block):
    grid = TileGrid(height, width, size, stride)
    seen = np.zeros(grid.shape, dtype=int)
    for block in grid.blocks(per_block):
        seen[block.rows, block.cols] += 1
        w = block.window
        assert w.row_off == grid.row_offsets[block.rows.start]
        assert w.col_off == grid.col_offsets[block.cols.start]
        assert w.row_off + w.height == grid.row_offsets[block.rows.stop - 1] + size
        assert w.col_off + w.width == grid.col_offsets[block.cols.stop - 1] + size
    assert (seen == 1).all()  # every tile in exactly one block


def test_gather_tiles_matches_windows():
    rng = np.random.default_rng(0)
    block = rng.integers(0, 255, (3, 50, 70))
    grid = TileGrid(50, 70, 8, 5)
    tiles = gather_tiles(block, grid.row_offsets, grid.col_offsets, 8)
    assert tiles.shape == (*grid.shape, 3, 8, 8)
    for row in range(grid.n_rows):
        for col in range(grid.n_cols):
            w = grid.window(row, col)
            np.testing.assert_array_equal(tiles[row, col], block[:, w.row_off : w.row_off + 8, w.col_off : w.col_off + 8])
    # the non-overlapping fast path (a reshape) gives the same as windows too
    even = gather_tiles(block, [0, 8, 16], [0, 8], 8)
    np.testing.assert_array_equal(even[2, 1], block[:, 16:24, 8:16])


def test_valid_fraction_hand_worked():
    valid = np.ones((8, 8), dtype=bool)
    valid[:4, :4] = False  # top-left tile all nodata
    valid[4, 4:] = False  # one row of 4 px of the bottom-right tile
    fraction = tile_valid_fraction(valid, [0, 4], [0, 4], 4)
    np.testing.assert_array_equal(fraction, [[0.0, 1.0], [1.0, 0.75]])


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 300),
    width=st.integers(1, 300),
    size=st.integers(1, 64),
    stride_fraction=st.floats(0.01, 1.0),
    a=st.floats(0.1, 30),
    e=st.floats(0.1, 30),
)
def test_grid_properties(height, width, size, stride_fraction, a, e):
    size = min(size, height, width)
    stride = max(1, int(size * stride_fraction))
    transform = Affine(a, 0.0, 1000.0, 0.0, -e, 5000.0)
    grid = TileGrid(height, width, size, stride, transform, UTM14)
    covered = np.zeros((height, width), dtype=int)
    for row in range(grid.n_rows):
        for col in range(grid.n_cols):
            w = grid.window(row, col)
            # every window is a full tile inside the raster
            assert w.width == w.height == size
            assert 0 <= w.row_off and w.row_off + size <= height
            assert 0 <= w.col_off and w.col_off + size <= width
            covered[w.row_off : w.row_off + size, w.col_off : w.col_off + size] += 1
    assert covered.min() >= 1  # every pixel in at least one tile
    # no tile is redundant: tile origins strictly increase, and interior gaps are the stride
    for offsets in (grid.row_offsets, grid.col_offsets):
        steps = np.diff(offsets)
        assert (steps > 0).all() and (steps[:-1] == stride).all() and (steps <= stride).all()
    # bounds agree with rasterio's own window → bounds under the survey's transform
    bounds = grid.bounds_array()
    for row, col in [(0, 0), (grid.n_rows - 1, grid.n_cols - 1), (grid.n_rows // 2, 0)]:
        np.testing.assert_allclose(bounds[row, col], window_bounds(grid.window(row, col), transform), rtol=1e-12)


@pytest.mark.parametrize(
    "stride, chunk_edge, min_tiles, expected",
    [
        (128, 1024, 1, (8, 8)),  # one 1024-px chunk holds 8 × 8 tiles of stride 128
        (128, 1024, 128, (8, 16)),  # 64 tiles < 128: two chunks across
        (64, 1024, 128, (16, 16)),  # stride 64: one chunk already holds 256 tiles
        (128, 256, 128, (2, 64)),  # small chunks: a strip 32 chunks wide
        (96, 1024, 1, (10, 10)),  # stride not dividing the chunk: whole tiles starting in it
    ],
)
def test_tiles_per_chunk_table(stride, chunk_edge, min_tiles, expected):
    assert TileGrid(4096, 4096, 128, stride).tiles_per_chunk(chunk_edge, min_tiles) == expected
