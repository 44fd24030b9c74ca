"""Helpers shared by the tests of ann/."""

from __future__ import annotations

import numpy as np
import pytest

H = 1e-6  # central-difference step: error O(H²) ~ 1e-12, rounding O(eps / H) ~ 1e-10


def _central_difference(f, x: np.ndarray) -> np.ndarray:
    """∂f/∂x elementwise for scalar f, perturbing x in place."""
    grad = np.zeros_like(x)
    for i in range(x.size):
        old = x.flat[i]
        x.flat[i] = old + H
        up = f()
        x.flat[i] = old - H
        down = f()
        x.flat[i] = old
        grad.flat[i] = (up - down) / (2 * H)
    return grad


@pytest.fixture
def central_difference():
    """``central_difference(f, x)``: the float64 reference gradient of scalar ``f()`` wrt ``x``."""
    return _central_difference
