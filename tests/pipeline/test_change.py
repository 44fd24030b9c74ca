"""Change on hand-made probability grids with known answers (no store, no model).

References: hand-worked class tables, a brute-force reading of each survey's tiles through the
tile grid's own map-coordinate bounds, and the symmetry of the rules (swapping the dates swaps
``new`` and ``gone``).
"""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS

from pipeline import change
from pipeline.change import GONE, NEW, NODATA, NONE, PERSISTING, ChangeThresholds
from pipeline.detect import Predictions
from pipeline.errors import InputError
from pipeline.tiling import TileGrid

UTM14 = CRS.from_epsg(26914)
T = ChangeThresholds(high=0.7, low=0.3, min_difference=0.3)


@pytest.mark.parametrize(
    "before, after, expected",
    [
        (0.1, 0.9, NEW),  # low then high
        (0.9, 0.1, GONE),  # high then low
        (0.9, 0.8, PERSISTING),  # high on both dates
        (0.9, 0.4, PERSISTING),  # dipped into the hysteresis band, not below low: still there
        (0.5, 0.9, PERSISTING),  # above low before, high after
        (0.31, 0.72, PERSISTING),  # just above low before: not absent, so not new
        (0.1, 0.5, NONE),  # after never reaches high: noise, no flicker
        (0.5, 0.6, NONE),  # both in the band
        (0.3, 0.7, NEW),  # thresholds are inclusive; difference 0.4 >= 0.3
        (0.1, 0.2, NONE),  # absent on both dates
        (np.nan, 0.9, NODATA),  # unscored on one date
        (0.9, np.nan, NODATA),
    ],
)
def test_classify_change_table(before, after, expected):
    assert change.classify_change(np.array([before]), np.array([after]), T)[0] == expected


def test_min_difference_blocks_small_jumps():
    narrow = ChangeThresholds(high=0.55, low=0.45, min_difference=0.3)
    # 0.44 -> 0.56 crosses both thresholds but rises by only 0.12: not "new"
    assert change.classify_change(np.array([0.44]), np.array([0.56]), narrow)[0] == NONE
    assert change.classify_change(np.array([0.2]), np.array([0.56]), narrow)[0] == NEW


def test_bad_thresholds_refused():
    with pytest.raises(InputError, match="low < high"):
        ChangeThresholds(high=0.3, low=0.7)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0, 1) | st.just(float("nan")), min_size=1, max_size=30),
    st.lists(st.floats(0, 1) | st.just(float("nan")), min_size=1, max_size=30),
)
def test_swapping_dates_swaps_new_and_gone(a, b):
    n = min(len(a), len(b))
    pa, pb = np.array(a[:n]), np.array(b[:n])
    forward = change.classify_change(pb, pa, T)
    backward = change.classify_change(pa, pb, T)
    swap = {NEW: GONE, GONE: NEW, NONE: NONE, PERSISTING: PERSISTING, NODATA: NODATA}
    assert [swap[int(c)] for c in forward] == list(backward)


def _predictions(survey_id, p, x0, y0, size=10, stride=10, res=1.0, height=None, width=None, crs=UTM14):
    n_rows, n_cols = p.shape
    height = height or (n_rows - 1) * stride + size
    width = width or (n_cols - 1) * stride + size
    grid = TileGrid(height, width, size, stride, Affine(res, 0, x0, 0, -res, y0), crs)
    assert grid.shape == p.shape
    return Predictions(survey_id, "m1", np.asarray(p, np.float32), grid, 0.5, {})


def test_offset_grids_hand_worked():
    # 4 x 4 tiles of 10 m. The after survey is shifted 6 m east (0.6 tile): on the change grid
    # (10 m cells on multiples of 10 m, over x in [500006, 500040)) cells 0 and 1 read after's
    # tile column 0, cell 2 its column 1, cell 3 its column 2 (worked out by hand).
    pb = np.full((4, 4), 0.1)
    pa = np.full((4, 4), 0.1)
    pb[1, 1] = 0.9  # an object at x in [500010, 500020) ...
    pa[1, 0] = 0.9  # ... seen after in the tile covering [500006, 500016): persisting at cell 1, new at cell 0
    pb[3, 3] = 0.9  # gone: after's tile column 2 at row 3 is low
    pa[2, 3] = 0.9  # after's last column [500036, 500046): no cell centre falls in it
    before = _predictions("a-2020-01-01", pb, 500_000, 5_000_040)
    after = _predictions("a-2021-01-01", pa, 500_006, 5_000_040)
    result = change.compare_predictions(before, after, T)
    assert result.grid.shape == (4, 4)
    assert result.grid.transform == Affine(10, 0, 500_000, 0, -10, 5_000_040)
    assert result.grid.extent == (500_006, 5_000_000, 500_040, 5_000_040)
    expected = np.zeros((4, 4), np.uint8)
    expected[1, 0], expected[1, 1], expected[3, 3] = NEW, PERSISTING, GONE
    np.testing.assert_array_equal(result.classes, expected)
    assert result.counts() == {"none": 13, "new": 1, "gone": 1, "persisting": 1, "nodata": 0}


def _brute_sample(pred, bounds, x, y):
    """Mean of the scored tiles whose map bounds (TileGrid.bounds_array) contain (x, y)."""
    vals = []
    for r in range(pred.grid.n_rows):
        for c in range(pred.grid.n_cols):
            left, bottom, right, top = bounds[r, c]
            if left <= x < right and bottom < y <= top and np.isfinite(pred.probabilities[r, c]):
                vals.append(pred.probabilities[r, c])
    return np.mean(vals) if vals else np.nan


@pytest.mark.parametrize(
    "dx, dy, extra_row",
    [
        (3.0, -4.0, 0),  # a fraction of a tile in both directions
        (-2.5, 1.5, 1),  # half-pixel offsets and one more row (as the NAIP dates)
        (12.0, 7.0, 1),  # more than a tile
    ],
)
def test_offset_overlapping_grids_match_brute_force(dx, dy, extra_row):
    rng = np.random.default_rng(5)
    size, stride = 20, 10
    before = _predictions("a-2020-01-01", rng.random((9, 11)), 500_000, 5_000_100, size, stride, height=100, width=120)
    pa = rng.random((9 + extra_row, 11))
    pa[2, 3] = np.nan
    after = _predictions("a-2021-01-01", pa, 500_000 + dx, 5_000_100 + dy, size, stride,
                         height=100 + 10 * extra_row, width=120)
    result = change.compare_predictions(before, after, T)
    xs, ys = result.grid.centres()
    left, bottom, right, top = result.grid.extent
    assert np.all((xs >= left) & (xs < right) & (ys > bottom) & (ys <= top))
    for pred, got in ((before, result.p_before), (after, result.p_after)):
        bounds = pred.grid.bounds_array()
        want = np.vectorize(lambda x, y: _brute_sample(pred, bounds, x, y))(xs, ys)
        np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(result.classes, change.classify_change(result.p_before, result.p_after, T))

    swapped = change.compare_predictions(after, before, T)
    assert swapped.grid == result.grid
    np.testing.assert_array_equal(swapped.p_before, result.p_after)
    swap = np.array([GONE if c == NEW else NEW if c == GONE else c for c in result.classes.ravel()], np.uint8)
    np.testing.assert_array_equal(swapped.classes.ravel(), swap)


def test_disjoint_extents_refused():
    before = _predictions("a-2020-01-01", np.zeros((2, 2)), 500_000, 5_000_020)
    after = _predictions("a-2021-01-01", np.zeros((2, 2)), 600_000, 5_000_020)
    with pytest.raises(InputError, match="do not overlap"):
        change.compare_predictions(before, after)


def test_different_crs_needs_reproject():
    # The same place in NAD83 / UTM 14N and WGS 84 / UTM 14N (the datums differ by ~1 m here).
    p = np.random.default_rng(2).random((6, 6))
    before = _predictions("a-2020-01-01", p, 500_000, 5_200_060)
    after = _predictions("a-2021-01-01", p, 500_000, 5_200_060, crs=CRS.from_epsg(32614))
    with pytest.raises(InputError, match="--reproject"):
        change.compare_predictions(before, after)
    result = change.compare_predictions(before, after, T, reproject=True)
    assert result.grid.crs == UTM14
    # Sub-metre datum shift on 10 m tiles: nearly every cell reads the same tile on both dates.
    same = np.isclose(result.p_before, result.p_after)
    assert same.mean() > 0.7
