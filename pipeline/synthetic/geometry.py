"""Plane geometry for drawing a scene: meandering paths, their tangents, and a point index.

Everything is in *scene coordinates*: metres east (``x``) and south (``y``) of the area's
north-west corner. A *path* (a stream, a road, a track) is an (n, 2) array of vertices about
:data:`STEP_M` apart, drawn by :func:`meander` from a random generator; :func:`tangents` gives
its unit direction at each vertex. A :class:`PointIndex` answers "is anything within r metres
of here?" in constant time, which is how every object keeps its distance from the others.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["STEP_M", "PointIndex", "meander", "respace", "smooth_series", "tangents", "tangent"]

STEP_M = 4.0  # vertex spacing of streams and roads (m)


class PointIndex:
    """Points bucketed on a square grid, for "anything within r metres?" queries (r <= cell)."""

    def __init__(self, points: np.ndarray, cell: float = 100.0):
        self.cell = cell
        self.points = np.asarray(points, float).reshape(-1, 2)
        self.buckets: dict[tuple[int, int], list[int]] = {}
        keys = np.floor(self.points / cell).astype(np.int64)
        for i, (kx, ky) in enumerate(keys.tolist()):
            self.buckets.setdefault((kx, ky), []).append(i)
        self.extra: list[tuple[float, float]] = []  # points added one by one

    def add(self, x: float, y: float) -> None:
        self.extra.append((x, y))
        key = (math.floor(x / self.cell), math.floor(y / self.cell))
        self.buckets.setdefault(key, []).append(len(self.points) + len(self.extra) - 1)

    def near(self, x: float, y: float, r: float) -> np.ndarray:
        """Indices (in order of addition, bucket by bucket) of the points closer than ``r`` m."""
        kx, ky = math.floor(x / self.cell), math.floor(y / self.cell)
        idx = [i for dx in (-1, 0, 1) for dy in (-1, 0, 1) for i in self.buckets.get((kx + dx, ky + dy), ())]
        if not idx:
            return np.zeros(0, np.int64)
        if self.extra:
            self.points = np.vstack([self.points, np.asarray(self.extra).reshape(-1, 2)])
            self.extra = []
        idx = np.asarray(idx)
        d2 = ((self.points[idx] - (x, y)) ** 2).sum(axis=1)
        return idx[d2 < r * r]


def meander(
    rng: np.random.Generator,
    start: tuple[float, float] | np.ndarray,
    end: tuple[float, float] | np.ndarray,
    amplitude: float,
    wavelength: float,
    wander: float = 0.03,
    max_len: float | None = None,
) -> np.ndarray:
    """Vertices (n, 2) every STEP_M from ``start`` towards ``end``, swinging +-amplitude rad about
    the bearing with the given wavelength (m): a meandering channel or a gently curving road.

    ``wander`` (rad) is the step of a slowly decaying random walk added to the heading; the swing
    tapers off within 0.6 wavelengths of ``end`` so the path arrives there.
    """
    p = np.array(start, float)
    end = np.asarray(end, float)
    pts = [p.copy()]
    phase = rng.uniform(0, 2 * math.pi)
    walk = 0.0
    s = 0.0
    total = float(np.hypot(*(end - p)))
    max_len = max_len or 3 * total + 100
    while s < max_len:
        rest = end - p
        dist = math.hypot(rest[0], rest[1])
        if dist < STEP_M:
            pts.append(end.copy())
            break
        taper = min(1.0, dist / (0.6 * wavelength))
        walk = 0.97 * walk + rng.normal(0, wander)
        heading = math.atan2(rest[1], rest[0]) + taper * (amplitude * math.sin(2 * math.pi * s / wavelength + phase) + walk)
        p = p + STEP_M * np.array([math.cos(heading), math.sin(heading)])
        pts.append(p.copy())
        s += STEP_M
    return np.asarray(pts)


def respace(pts: np.ndarray, step: float) -> np.ndarray:
    """The path (n, 2) re-sampled every ``step`` m along its length, keeping both ends (m, 2)."""
    along = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    at = np.linspace(0.0, along[-1], max(2, round(along[-1] / step) + 1))
    return np.stack([np.interp(at, along, pts[:, 0]), np.interp(at, along, pts[:, 1])], axis=1)


def smooth_series(rng: np.random.Generator, n: int, period: int, amount: float) -> np.ndarray:
    """A smooth random multiplicative profile (n,) of 1 +- amount, with a knot every ``period`` vertices."""
    k = max(2, n // period + 2)
    knots = rng.uniform(-amount, amount, k)
    return 1.0 + np.interp(np.arange(n), np.linspace(0, n - 1, k), knots)


def tangents(pts: np.ndarray, reach: int = 3) -> np.ndarray:
    """Unit tangents (n, 2) of a path: the chord from ``reach`` vertices back to ``reach`` ahead."""
    n = len(pts)
    i0 = np.clip(np.arange(n) - reach, 0, n - 1)
    i1 = np.clip(np.arange(n) + reach, 0, n - 1)
    t = pts[i1] - pts[i0]
    return t / np.maximum(np.hypot(t[:, 0], t[:, 1]), 1e-9)[:, None]


def tangent(pts: np.ndarray, i: int, reach: int = 3) -> np.ndarray:
    """The unit tangent (2,) of vertex ``i``, exactly as :func:`tangents` computes it."""
    n = len(pts)
    t = pts[min(i + reach, n - 1)] - pts[max(i - reach, 0)]
    return t / max(float(np.hypot(t[0], t[1])), 1e-9)
