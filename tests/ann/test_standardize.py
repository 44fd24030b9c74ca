"""Standardization statistics against NumPy on the whole array."""

from __future__ import annotations

import numpy as np
import pytest

from ann.errors import AnnError, ConfigError
from ann.standardize import Standardizer


def test_fit_transform_equals_numpy_mean_and_std():
    rng = np.random.default_rng(0)
    X = rng.normal([100.0, -3.0, 0.5], [20.0, 0.1, 3.0], size=(1000, 3)).astype(np.float32)
    s = Standardizer.fit(X)
    np.testing.assert_allclose(s.mean, X.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(s.scale, X.astype(np.float64).std(axis=0), rtol=1e-12)
    Z = s.transform(X)
    assert Z.dtype == np.float32
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(Z.std(axis=0), 1, rtol=1e-5)
    assert s.transform(X, dtype=np.float64).dtype == np.float64


def test_from_moments_equals_fit_and_constant_features_get_scale_one():
    X = np.array([[1.0, 5.0], [3.0, 5.0]])
    s = Standardizer.fit(X)
    assert s == Standardizer.from_moments(X.mean(axis=0), X.var(axis=0))
    np.testing.assert_array_equal(s.scale, [1.0, 1.0])  # std of column 0 is 1; column 1 is constant
    np.testing.assert_array_equal(s.transform(X), [[-1, 0], [1, 0]])


def test_dict_round_trip_is_exact():
    s = Standardizer.fit(np.random.default_rng(1).normal(size=(50, 4)) / 3)
    assert Standardizer.from_dict(s.to_dict()) == s


def test_bad_input_is_refused():
    with pytest.raises(AnnError, match="NaN or infinity in columns \\[1\\]"):
        Standardizer.fit(np.array([[1.0, np.nan], [2.0, 3.0]]))
    with pytest.raises(ConfigError, match="does not fit a standardizer of 2 features"):
        Standardizer.fit(np.ones((3, 2))).transform(np.ones((3, 5)))
    with pytest.raises(ConfigError, match="keys 'mean' and 'scale'"):
        Standardizer.from_dict({"mean": [0.0]})
    with pytest.raises(ConfigError, match="scale > 0"):
        Standardizer([0.0], [0.0])
