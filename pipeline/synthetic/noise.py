"""Hashed noise: every texture of the synthetic surveys as a function of global coordinates.

A *hash* maps integer coordinates (a lattice point, a pixel's row and column) and a seed to a
uint32 in which every input bit affects every output bit. Three patterns are built on it:

- **white noise**: the hash of a pixel's own indices (the sensor's noise);
- **value noise**: hashed values on an integer lattice of ``scale`` metres, blended with a
  smoothstep between lattice points (land-cover zones, shores, bark, sticks);
- **cellular patterns**: at most one object per lattice cell, at a hashed position with a
  hashed size (tree crowns of a closed canopy, drowned snags in a pond).

There is no random-number stream and nothing reaches beyond a lattice cell, so a pixel's value
depends on its coordinates and the seed only, never on the block that computed it: this is
what makes :func:`pipeline.synthetic.render.render_block` pure. Coordinates are scene metres
(float64 in, float32 out: 24 bits of the hash are exact in float32).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "F32",
    "mix",
    "hash_ints",
    "unit",
    "value_noise",
    "value_noise_at",
    "interp_lattice",
    "snags",
    "crowns",
]

F32 = np.float32  # pixel arithmetic is float32 throughout: half the memory, twice the speed


def mix(h: np.ndarray) -> np.ndarray:
    """A 32-bit integer finalizer (lowbias32): every input bit affects every output bit."""
    with np.errstate(over="ignore"):  # wrap-around is the point (0-d arrays warn otherwise)
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x7FEB352D)
        h ^= h >> np.uint32(15)
        h = h * np.uint32(0x846CA68B)
        h ^= h >> np.uint32(16)
    return h


def hash_ints(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """uint32 hash of integer coordinates (broadcast: pairs, or a (H,1) x (1,W) grid)."""
    with np.errstate(over="ignore"):
        hy = mix(np.asarray(iy).astype(np.uint32) * np.uint32(0x85EBCA77) ^ np.uint32(seed & 0xFFFFFFFF))
        return mix(np.asarray(ix).astype(np.uint32) * np.uint32(0x9E3779B1) ^ hy)


def unit(h: np.ndarray) -> np.ndarray:
    """uint32 hash -> float32 uniform in [0, 1) (24 bits, exact in float32)."""
    return (h >> np.uint32(8)).astype(F32) * F32(2.0**-24)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    return t * t * (F32(3.0) - F32(2.0) * t)


def _lattice(coords: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Lattice index (int64) and smoothstep fraction (float32) of 1-D coordinates in metres."""
    f = coords / scale
    i = np.floor(f)
    return i.astype(np.int64), _smoothstep((f - i).astype(F32))


def value_noise(xs: np.ndarray, ys: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Value noise (H, W) in [0, 1) on the grid xs (W,) x ys (H,) (metres), feature size ``scale`` m.

    Separable evaluation (lattice rows first, then columns) with the same element-wise
    operations for every pixel, so a pixel's value does not depend on the grid around it.
    """
    ix, sx = _lattice(xs, scale)
    iy, sy = _lattice(ys, scale)
    x0, y0 = int(ix.min()), int(iy.min())
    lx = np.arange(x0, int(ix.max()) + 2)
    ly = np.arange(y0, int(iy.max()) + 2)
    g = unit(hash_ints(lx[None, :], ly[:, None], seed))  # (nly, nlx)
    jx = ix - x0
    rows = g[:, jx] * (F32(1.0) - sx) + g[:, jx + 1] * sx  # (nly, W)
    jy = iy - y0
    wy = sy[:, None]
    return rows[jy] * (F32(1.0) - wy) + rows[jy + 1] * wy  # (H, W)


def value_noise_at(x: np.ndarray, y: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Value noise at scattered points (same formula as :func:`value_noise`), for scene geometry."""
    ix, sx = _lattice(np.asarray(x, float), scale)
    iy, sy = _lattice(np.asarray(y, float), scale)
    g00 = unit(hash_ints(ix, iy, seed))
    g01 = unit(hash_ints(ix + 1, iy, seed))
    g10 = unit(hash_ints(ix, iy + 1, seed))
    g11 = unit(hash_ints(ix + 1, iy + 1, seed))
    r0 = g00 * (F32(1.0) - sx) + g01 * sx
    r1 = g10 * (F32(1.0) - sx) + g11 * sx
    return r0 * (F32(1.0) - sy) + r1 * sy


def interp_lattice(grid: np.ndarray, lx0: int, ly0: int, xs: np.ndarray, ys: np.ndarray, spacing: float) -> np.ndarray:
    """Bilinear interpolation (H, W) of values on lattice points ``spacing`` m apart to the pixel grid.

    ``grid[j, i]`` is the value at lattice point (lx0 + i, ly0 + j) (in units of ``spacing``).
    """
    fx = xs / spacing
    fy = ys / spacing
    ix = np.floor(fx)
    iy = np.floor(fy)
    tx = (fx - ix).astype(F32)
    ty = (fy - iy).astype(F32)[:, None]
    jx = ix.astype(np.int64) - lx0
    jy = iy.astype(np.int64) - ly0
    rows = grid[:, jx] * (F32(1.0) - tx) + grid[:, jx + 1] * tx
    return rows[jy] * (F32(1.0) - ty) + rows[jy + 1] * ty


def snags(xs: np.ndarray, ys: np.ndarray, seed: int, density: float, spacing: float = 5.0) -> np.ndarray:
    """Standing trees on a jittered lattice: signed distance (H, W) in m to the cell's tree crown.

    One tree at most per ``spacing``-m cell, at a hashed position with a hashed crown radius
    (0.5-1.4 m), present with probability ``density``; negative inside the crown, inf where
    the cell has no tree.
    """
    fx = xs / spacing
    fy = ys / spacing
    ix = np.floor(fx).astype(np.int64)[None, :]
    iy = np.floor(fy).astype(np.int64)[:, None]
    h = hash_ints(ix, iy, seed)
    jx = F32(0.25) + F32(0.5) * unit(h)
    jy = F32(0.25) + F32(0.5) * unit(mix(h))
    present = unit(mix(h ^ np.uint32(0x5BD1E995))) < F32(density)
    dx = ((fx - np.floor(fx)).astype(F32)[None, :] - jx) * F32(spacing)
    dy = ((fy - np.floor(fy)).astype(F32)[:, None] - jy) * F32(spacing)
    radius = F32(0.5) + F32(0.9) * unit(mix(h ^ np.uint32(0x27D4EB2F)))
    dist = np.sqrt(dx * dx + dy * dy) - radius
    return np.where(present, dist, F32(np.inf))


def crowns(xs: np.ndarray, ys: np.ndarray, seed: int, to_sun: tuple[float, float], cell: float = 4.5) -> np.ndarray:
    """Tree crowns: brightness factor (H, W) around 1 of a closed canopy lit from ``to_sun``.

    One tree per ``cell``-m lattice cell at a hashed position with a hashed radius (0.4-0.65
    cells); each pixel looks at the 2 x 2 cells nearest to it, which always hold the crown
    covering it (a crown reaches at most 0.65 cells from its tree, and a tree outside the
    2 x 2 block is at least 0.7 cells away). The tallest dome wins; its slope towards the sun
    brightens the sunlit side and darkens the other; gaps between crowns are in shadow.
    """
    fx = xs / cell
    fy = ys / cell
    ix = np.floor(fx)
    iy = np.floor(fy)
    bx = (ix - (fx - ix < 0.5)).astype(np.int64)  # (W,) left cell of the 2 x 2 block
    by = (iy - (fy - iy < 0.5)).astype(np.int64)
    best = np.full((len(ys), len(xs)), F32(-1.0), F32)
    slope = np.zeros_like(best)
    tone = np.ones_like(best)
    sx, sy = F32(to_sun[0]), F32(to_sun[1])
    for ox in (0, 1):
        for oy in (0, 1):
            cx = bx + ox
            cy = by + oy
            h = hash_ints(cx[None, :], cy[:, None], seed)
            jx = F32(0.2) + F32(0.6 / 1024) * (h & np.uint32(1023)).astype(F32)
            jy = F32(0.2) + F32(0.6 / 1024) * ((h >> np.uint32(10)) & np.uint32(1023)).astype(F32)
            r = F32(0.4) + F32(0.25 / 1024) * ((h >> np.uint32(20)) & np.uint32(1023)).astype(F32)
            dx = (fx - cx).astype(F32)[None, :] - jx  # cells
            dy = (fy - cy).astype(F32)[:, None] - jy
            height = F32(1.0) - (dx * dx + dy * dy) / (r * r)  # 1 at the top, 0 at the rim
            win = height > best
            np.copyto(best, height, where=win)
            np.copyto(slope, (dx * sx + dy * sy) / r, where=win)
            np.copyto(tone, F32(0.8) + F32(0.4 / 3) * (h >> np.uint32(30)).astype(F32), where=win)  # per tree
    lit = F32(1.0) + F32(0.4) * slope
    return np.where(best > F32(0.0), (F32(0.72) + F32(0.45) * np.sqrt(np.maximum(best, F32(0.0)))) * lit * tone, F32(0.4))
