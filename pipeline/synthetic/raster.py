"""Rasterizing vector shapes onto a block's pixel grid, with soft (anti-aliased) edges.

A shape is drawn from its *signed distance* e (metres, > 0 inside) at each pixel centre:
:func:`soft` turns e into the fraction of the pixel the shape covers, and :func:`blend` lays a
colour over the block with that coverage as alpha. The pixel grid is given as two 1-D arrays of
scene coordinates, ``xs`` (W,) and ``ys`` (H,), so a block is any rectangle of the global grid;
every function here uses element-wise arithmetic only, so a pixel's value does not depend on
the block that contains it.
"""

from __future__ import annotations

import numpy as np

from pipeline.synthetic.noise import F32
from pipeline.synthetic.objects import Polylines

__all__ = ["soft", "blend", "polyline_field", "window", "frame"]

Window = tuple[slice, slice]  # (rows, cols) of a block


def soft(e: np.ndarray, pixel_size: float) -> np.ndarray:
    """Coverage of a pixel by a shape, from the signed distance to its edge e (m, > 0 inside)."""
    return np.clip(e * F32(1.0 / pixel_size) + F32(0.5), F32(0.0), F32(1.0))


def blend(C: np.ndarray, alpha: np.ndarray, colour: np.ndarray, sl: Window = (slice(None), slice(None))) -> None:
    """C[:, sl] <- C * (1 - alpha) + colour * alpha, band by band, in place.

    ``C`` is (bands, H, W); ``colour`` is (bands,) or (bands, h, w); ``alpha`` is (h, w)."""
    for b in range(C.shape[0]):
        sub = C[b][sl]
        sub += (colour[b] - sub) * alpha


def polyline_field(
    poly: Polylines, xs: np.ndarray, ys: np.ndarray, reach: float, qcap: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-segment fields of polylines on the grid xs (W,) x ys (H,) (scene metres).

    Returns q (H, W) = min over segments of distance / half-width (capped at qcap) and d
    (H, W) = min distance in metres (capped at ``reach``). Each chunk of segments touches only
    pixels within its buffer, with the same arithmetic whatever block contains the pixel.
    """
    H, W = len(ys), len(xs)
    q = np.full((H, W), qcap, F32)
    d = np.full((H, W), reach, F32)
    if len(poly.start) < 2:
        return q, d
    buf = np.maximum(reach, qcap * poly.chunk_h)
    bb = poly.bbox
    hit = np.nonzero(
        (bb[:, 0] - buf <= xs[-1]) & (bb[:, 2] + buf >= xs[0]) & (bb[:, 1] - buf <= ys[-1]) & (bb[:, 3] + buf >= ys[0])
    )[0]
    for c in hit.tolist():
        c0 = int(np.searchsorted(xs, bb[c, 0] - buf[c], "left"))
        c1 = int(np.searchsorted(xs, bb[c, 2] + buf[c], "right"))
        r0 = int(np.searchsorted(ys, bb[c, 1] - buf[c], "left"))
        r1 = int(np.searchsorted(ys, bb[c, 3] + buf[c], "right"))
        if c1 <= c0 or r1 <= r0:
            continue
        s, e = poly.start[c], poly.start[c + 1]
        rx, ry = bb[c, 0], bb[c, 1]  # chunk-local origin keeps float32 exact enough
        px = (xs[c0:c1] - rx).astype(F32)[None, None, :]
        py = (ys[r0:r1] - ry).astype(F32)[None, :, None]
        ax = (poly.ax[s:e] - rx).astype(F32)[:, None, None]
        ay = (poly.ay[s:e] - ry).astype(F32)[:, None, None]
        dx = (poly.bx[s:e] - poly.ax[s:e]).astype(F32)[:, None, None]
        dy = (poly.by[s:e] - poly.ay[s:e]).astype(F32)[:, None, None]
        inv = F32(1.0) / np.maximum(dx * dx + dy * dy, F32(1e-6))
        ex = px - ax  # (K, 1, w)
        ey = py - ay  # (K, h, 1)
        t = np.clip((ex * dx + ey * dy) * inv, F32(0.0), F32(1.0))  # (K, h, w)
        ex = ex - t * dx
        ey = ey - t * dy
        dist = np.sqrt(ex * ex + ey * ey)
        ha = poly.ha[s:e].astype(F32)[:, None, None]
        hb = poly.hb[s:e].astype(F32)[:, None, None]
        half = ha + t * (hb - ha)
        np.minimum(q[r0:r1, c0:c1], (dist / half).min(axis=0), out=q[r0:r1, c0:c1])
        np.minimum(d[r0:r1, c0:c1], dist.min(axis=0), out=d[r0:r1, c0:c1])
    return q, d


def window(xs: np.ndarray, ys: np.ndarray, bbox: tuple[float, float, float, float]) -> Window | None:
    """Index slices (rows, cols) of the grid inside bbox (x0, y0, x1, y1), or None if it misses the grid."""
    c0 = int(np.searchsorted(xs, bbox[0], "left"))
    c1 = int(np.searchsorted(xs, bbox[2], "right"))
    r0 = int(np.searchsorted(ys, bbox[1], "left"))
    r1 = int(np.searchsorted(ys, bbox[3], "right"))
    if c1 <= c0 or r1 <= r0:
        return None
    return slice(r0, r1), slice(c0, c1)


def frame(xs: np.ndarray, ys: np.ndarray, x0: float, y0: float, ux: float, uy: float) -> tuple[np.ndarray, np.ndarray]:
    """Local coordinates (u along (ux, uy), v to its left), (H, W) float32, of the grid around (x0, y0)."""
    X = (xs - x0).astype(F32)[None, :]
    Y = (ys - y0).astype(F32)[:, None]
    u = X * F32(ux) + Y * F32(uy)
    v = Y * F32(ux) - X * F32(uy)
    return u, v
