"""The D4 symmetries against NumPy's own rotations and flips; the per-example choice is a pure
function of (seed, epoch, example id)."""

from __future__ import annotations

import numpy as np
import pytest

from ann.augment import N_SYMMETRIES, apply_d4, d4_codes, d4_transform
from ann.errors import ConfigError


def test_the_eight_symmetries_are_distinct_and_are_rotations_and_mirrors():
    x = np.arange(3 * 3 * 2).reshape(3, 3, 2)  # no symmetry of its own
    images = [d4_transform(x, k) for k in range(N_SYMMETRIES)]
    assert len({im.tobytes() for im in images}) == 8
    np.testing.assert_array_equal(images[0], x)
    np.testing.assert_array_equal(images[1], np.rot90(x, 1, axes=(0, 1)))  # 90° counter-clockwise
    np.testing.assert_array_equal(images[2], x[::-1, ::-1])  # 180°
    np.testing.assert_array_equal(images[4], x[:, ::-1])  # mirror left-right
    np.testing.assert_array_equal(images[6], x[::-1, :])  # mirror, then 180°: upside down
    # channels stay with their pixel
    np.testing.assert_array_equal(images[1][..., 1], np.rot90(x[..., 1]))


def test_apply_d4_transforms_each_window_by_its_own_code():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 5, 5, 3))
    codes = rng.integers(0, 8, 20)
    out = apply_d4(X, codes)
    for i in range(20):
        np.testing.assert_array_equal(out[i], d4_transform(X[i], int(codes[i])))
    np.testing.assert_array_equal(apply_d4(X, np.full(20, 3)), d4_transform(X, 3))
    with pytest.raises(ConfigError, match="square windows"):
        apply_d4(np.zeros((2, 4, 5, 1)), np.array([0, 1]))


def test_codes_depend_on_seed_epoch_and_id_only():
    ids = np.arange(10_000)
    codes = d4_codes(7, 3, ids)
    assert codes.dtype == np.uint8 and codes.max() < 8
    # any subset, in any order (any shard, any batch), gets the same codes
    pick = np.random.default_rng(1).permutation(10_000)[:500]
    np.testing.assert_array_equal(d4_codes(7, 3, pick), codes[pick])
    assert not np.array_equal(d4_codes(7, 4, ids), codes) and not np.array_equal(d4_codes(8, 3, ids), codes)
    counts = np.bincount(codes, minlength=8)
    assert counts.min() > 1100 and counts.max() < 1400  # about 1250 each
