"""Change on hand-made probability maps with known answers (no store, no model).

References: hand-worked class tables, objects placed by hand on two maps whose grids are offset
(misregistration), and the symmetry of the rules (swapping the dates swaps ``new`` and ``gone``).
"""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS

from pipeline import change
from pipeline.change import GONE, NEW, NODATA, NONE, PERSISTING, UNCERTAIN, ChangeThresholds
from pipeline.detect import ProbabilityMap
from pipeline.errors import InputError

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
        (0.1, 0.5, UNCERTAIN),  # after never reaches high: noise, no flicker
        (0.5, 0.6, UNCERTAIN),  # both in the band
        (0.3, 0.7, NEW),  # thresholds are inclusive; difference 0.4 >= 0.3
        (0.1, 0.2, UNCERTAIN),  # absent on both dates (never an object: objects reach high once)
        (np.nan, 0.9, NODATA),  # unscored on one date
        (0.9, np.nan, NODATA),
    ],
)
def test_classify_change_table(before, after, expected):
    assert change.classify_change(np.array([before]), np.array([after]), T)[0] == expected


def test_min_difference_blocks_small_jumps():
    narrow = ChangeThresholds(high=0.55, low=0.45, min_difference=0.3)
    # 0.44 -> 0.56 crosses both thresholds but rises by only 0.12: not "new"
    assert change.classify_change(np.array([0.44]), np.array([0.56]), narrow)[0] == UNCERTAIN
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
    swap = {NEW: GONE, GONE: NEW, NONE: NONE, PERSISTING: PERSISTING, UNCERTAIN: UNCERTAIN, NODATA: NODATA}
    assert [swap[int(c)] for c in forward] == list(backward)


def _map(survey_id, values, x0, y0, cell=10.0, crs=UTM14):
    return ProbabilityMap(survey_id, "m1", "cnn", "g", np.asarray(values, np.float32), Affine(cell, 0, x0, 0, -cell, y0),
                          crs, 0.7, footprint_m=40.0, cell_m=cell, reading={}, spec={})


def _blob(values, row, col, p):
    values[row - 1 : row + 2, col - 1 : col + 2] = np.maximum(values[row - 1 : row + 2, col - 1 : col + 2], p * 0.8)
    values[row, col] = p


def test_objects_on_offset_grids_hand_worked():
    """Three places on a 30 x 30 map of 10 m cells; the after map is shifted by 4 m east and
    7 m south (misregistration, and a grid that is not the before map's)."""
    before = np.full((30, 30), 0.05)
    after = np.full((30, 30), 0.05)
    _blob(before, 5, 5, 0.95)  # persisting: on both dates
    _blob(after, 5, 5, 0.9)
    _blob(before, 15, 20, 0.9)  # gone
    _blob(after, 25, 10, 0.92)  # new
    _blob(before, 25, 25, 0.5)  # a weak blip on one date: never an object
    b = _map("a-2023-06-01", before, 500_000.0, 5_200_300.0)
    a = _map("a-2024-06-01", after, 500_004.0, 5_200_293.0)
    result = change.compare_maps(b, a, T)
    got = {(round(x, 0), round(y, 0)): int(c) for x, y, c in zip(result.x, result.y, result.classes)}
    # object positions: the strongest detection's cell centre (before map: x0 + 10 c + 5)
    assert got == {(500_055.0, 5_200_245.0): PERSISTING, (500_109.0, 5_200_038.0): NEW, (500_205.0, 5_200_145.0): GONE}
    # the change raster agrees with the objects: the cells at the objects carry their class
    assert result.classes_map[5, 5] == PERSISTING and result.classes_map[15, 20] == GONE
    assert result.classes_map[26, 10] == NEW  # the new object sits 7 m south of the before cell (25, 10)'s centre
    assert result.classes_map[1, 28] == NONE  # nothing there, scored on both dates
    assert result.classes_map[0, 29] == NODATA  # the after survey starts 7 m south of this cell's centre
    assert (result.classes_map != NODATA).mean() > 0.9
    swapped = change.compare_maps(a, b, T)
    flipped = {GONE: NEW, NEW: GONE, PERSISTING: PERSISTING}
    assert sorted(flipped[int(c)] for c in swapped.classes) == sorted(int(c) for c in result.classes)


def test_an_object_shifted_by_misregistration_is_one_object():
    before = np.full((20, 20), 0.05)
    after = np.full((20, 20), 0.05)
    _blob(before, 10, 10, 0.9)
    _blob(after, 11, 10, 0.9)  # one cell (10 m) south on the after date: the same dam
    result = change.compare_maps(_map("a-2023", before, 0.0, 200.0), _map("a-2024", after, 0.0, 200.0), T)
    assert list(result.classes) == [PERSISTING]


def test_bad_thresholds_are_refused_and_thresholds_follow_the_model():
    assert ChangeThresholds.for_model(0.6).to_dict() == {"high": 0.6, "low": 0.3, "min_difference": 0.3}
