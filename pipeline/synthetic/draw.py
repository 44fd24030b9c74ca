"""Drawing the scene's objects onto a block: lakes, dams, look-alikes and buildings.

Each ``draw_*`` function paints one object onto a :class:`Canvas` -- the block's colours, its
pixel grid and the date's light -- inside the object's bounding box only, in the object's own
frame (u along its direction, v to its left; metres). What an object looks like on a date is
decided here: a dam stands (pond, rim, drowned trees, barrier), is breached (drained mud, a
broken barrier) or is not built yet (nothing: the channel alone).

Road crossings, culverts and natural pools have nothing of their own to draw: they are the
roads, tracks and channel widths drawn by :mod:`pipeline.synthetic.render`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.synthetic.noise import F32, snags, value_noise
from pipeline.synthetic.objects import Building, Dam, DateConditions, HardNegative, Lake
from pipeline.synthetic.palette import ROOFS
from pipeline.synthetic.raster import Window, blend, frame, polyline_field, soft, window

__all__ = ["Canvas", "draw_lake", "draw_dam", "draw_negative", "draw_building"]


@dataclass(frozen=True)
class Canvas:
    """A block being drawn: colours ``C`` (bands, H, W) float32 (reflectance, drawn in place),
    its grid ``xs`` (W,) and ``ys`` (H,) in scene metres, the date's colours and conditions."""

    C: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    pal: dict[str, np.ndarray]
    pixel_size: float
    cond: DateConditions

    def window(self, bbox: tuple[float, float, float, float]) -> tuple[Window, np.ndarray, np.ndarray] | None:
        """The block's slices inside ``bbox`` and their grid coordinates, or None if it misses."""
        win = window(self.xs, self.ys, bbox)
        if win is None:
            return None
        return win, self.xs[win[1]], self.ys[win[0]]

    def shade(self, win: Window, shadow: np.ndarray) -> None:
        """Darken the window by ``shadow`` (0..1) in every band."""
        for b in range(self.C.shape[0]):
            self.C[b][win] *= F32(1.0) - shadow


def draw_lake(cv: Canvas, lake: Lake, shore_seed: int) -> None:
    """Open water inside the noisy shore (deeper, darker towards the middle), rushes along it."""
    found = cv.window(lake.bbox)
    if found is None:
        return
    win, lxs, lys = found
    qq = np.full((len(lys), len(lxs)), np.inf, F32)  # (distance / radius)^2 to the nearest disc
    for cx, cy, r in lake.circles:
        ddx = (lxs - cx).astype(F32)[None, :]
        ddy = (lys - cy).astype(F32)[:, None]
        np.minimum(qq, (ddx * ddx + ddy * ddy) * F32(1.0 / (r * r)), out=qq)
    shore = np.sqrt(qq) + F32(0.3) * (value_noise(lxs, lys, 30.0, shore_seed) - F32(0.5))  # Lake.shore_at
    rmin = float(lake.circles[:, 2].min())
    depth = np.clip((F32(1.0) - shore) * F32(3.0), F32(0.0), F32(1.0))[None]
    pal, p = cv.pal, cv.pixel_size
    water = pal["shallow"][:, None, None] * (F32(1.0) - depth) + pal["deep"][:, None, None] * depth
    blend(cv.C, soft((F32(1.12) - shore) * F32(rmin), p) * F32(0.8), pal["reeds"], win)
    blend(cv.C, soft((F32(1.0) - shore) * F32(rmin), p), water, win)


def draw_dam(cv: Canvas, dam: Dam, date_index: int, stream_alpha: np.ndarray) -> None:
    """The dam on date ``date_index``: a pond upstream of a curved barrier, or, once breached,
    drained mud with the channel running through a broken barrier.

    ``stream_alpha`` (H, W) is the block's channel coverage, redrawn through a drained pond.
    """
    standing = dam.exists[date_index]
    drained = not standing and dam.status == "gone"
    found = cv.window(dam.bbox)
    if found is None or not (standing or drained):
        return  # outside the block, or not built yet: the channel alone
    win, lxs, lys = found
    C, pal, p, cond = cv.C, cv.pal, cv.pixel_size, cv.cond
    u, v = frame(lxs, lys, dam.x, dam.y, dam.ux, dam.uy)  # (h, w) m
    arc = F32(dam.curve) * (v / F32(dam.barrier_half)) ** 2  # the barrier's centreline: u = arc
    shape_noise = value_noise(lxs, lys, 9.0, dam.seed)
    qp, _ = polyline_field(dam.pond, lxs, lys, reach=1.0)
    # Two octaves of shore noise: bays and points tens of metres apart, and a ragged margin.
    f = qp + F32(0.5) * (shape_noise - F32(0.5)) + F32(0.25) * (value_noise(lxs, lys, 3.5, dam.seed + 3) - F32(0.5))
    half_t = F32(dam.thickness / 2)
    # Metres inside the pond: inside the flooded channel and upstream of the barrier.
    inner = np.minimum((F32(1.0) - f) * F32(0.5 * dam.pond_half), arc - half_t - u + F32(0.5))
    pond = soft(inner, p)
    old = dam.status != "new"
    density = 0.3 if old else 0.25
    trees = snags(lxs, lys, dam.seed, density, spacing=6.0)
    crown = soft(-trees if old else F32(0.6) - trees, p) * pond
    if standing:
        # Ponded water, a muddy/reedy rim, drowned trees (grey snags; still green if new).
        rim = soft(inner + F32(2.0), p) * F32(0.45)
        blend(C, rim, pal["reeds"] if old else pal["wet_meadow"], win)
        tone = F32(0.8) + F32(0.4) * shape_noise
        blend(C, pond, pal["pond"][:, None, None] * tone[None], win)
        shadow_d = snags(lxs + cond.sun[0] * 2.5, lys + cond.sun[1] * 2.5, dam.seed, density, spacing=6.0)
        cv.shade(win, soft(-shadow_d, p) * pond * F32(0.5) * F32(0.6))
        blend(C, crown, pal["snag"] if old else pal["shrub"] * F32(1.2), win)
        # The barrier spans the pond where it meets the arc, and keys a few metres into the banks.
        span = (F32(1.0) - f) * F32(0.5 * dam.pond_half) + F32(3.0)
        barrier_e = np.minimum(np.minimum(half_t - np.abs(u - arc), F32(dam.barrier_half) - np.abs(v)), span)
        barrier = soft(barrier_e + F32(0.6) * (shape_noise - F32(0.5)), p)
    else:
        # Breached: the pond has drained to mud with regrowth; the channel runs through it.
        regrow = np.clip((value_noise(lxs, lys, 5.0, dam.seed + 1) - F32(0.35)) * F32(3.0), F32(0.0), F32(1.0))
        mud = pal["mud"][:, None, None] * (F32(1.0) - regrow[None]) + pal["wet_meadow"][:, None, None] * regrow[None]
        blend(C, pond * F32(0.95), mud, win)
        blend(C, crown, pal["snag"], win)
        blend(C, stream_alpha[win], pal["stream"], win)
        gap = F32(dam.channel_half + 2.5)
        barrier_e = np.minimum(np.minimum(half_t * 0.8 - np.abs(u - arc), F32(dam.barrier_half) - np.abs(v)), np.abs(v) - gap)
        barrier = soft(barrier_e, p) * F32(0.7)
    sticks = F32(0.75) + F32(0.5) * value_noise(lxs, lys, 1.2, dam.seed + 2)
    # Downstream face in the dam's own shadow when the sun is upstream of it.
    face = np.clip((u - arc) / half_t, F32(-1.0), F32(1.0))
    toward = F32(-(cond.sun[0] * dam.ux + cond.sun[1] * dam.uy))  # > 0: sun downstream
    shade = F32(1.0) - F32(0.25) * face * np.sign(toward) - F32(0.1)
    blend(C, barrier, pal["dam"][:, None, None] * (sticks * shade)[None], win)


def draw_negative(cv: Canvas, neg: HardNegative) -> None:
    """The look-alike's own shape, for the kinds that have one (see module doc)."""
    draw = _NEGATIVE_DRAWERS.get(neg.kind)
    if draw is None or (neg.kind == "pond_without_dam" and neg.width <= 0):
        return  # drawn as a road, a track or a channel width
    found = cv.window(neg.bbox)
    if found is not None:
        draw(cv, neg, *found)


def _fallen_tree(cv: Canvas, neg: HardNegative, win: Window, lxs: np.ndarray, lys: np.ndarray) -> None:
    """A trunk across the channel (within 0.6 rad of square to it), tapering, with its crown and shadow."""
    p, cond = cv.pixel_size, cv.cond
    rng = np.random.default_rng(neg.seed)
    ang = math.atan2(neg.uy, neg.ux) + math.pi / 2 + rng.uniform(-0.6, 0.6)
    ux, uy = math.cos(ang), math.sin(ang)
    a, b = frame(lxs, lys, neg.x, neg.y, ux, uy)
    half_len = F32(neg.length / 2)
    taper = F32(neg.width / 2) * (F32(1.15) - F32(0.3) * (a / half_len))
    sa, sb = frame(lxs - cond.sun[0] * 0.8, lys - cond.sun[1] * 0.8, neg.x, neg.y, ux, uy)
    cv.shade(win, soft(np.minimum(taper - np.abs(sb), half_len - np.abs(sa)), p) * F32(0.5))
    trunk = soft(np.minimum(taper - np.abs(b), half_len - np.abs(a)), p)
    top = value_noise(lxs, lys, 1.0, neg.seed)
    crown_r = F32(2.6)
    da = a - half_len
    crown = soft(crown_r - np.sqrt(da * da + b * b) - F32(1.2) * (top - F32(0.5)), p) * (top > F32(0.45))
    blend(cv.C, np.maximum(trunk, crown * F32(0.8)), cv.pal["bark"] * F32(1.1), win)


def _narrows(cv: Canvas, neg: HardNegative, win: Window, lxs: np.ndarray, lys: np.ndarray) -> None:
    """Rock and gravel on both banks where the channel pinches."""
    u, v = frame(lxs, lys, neg.x, neg.y, neg.ux, neg.uy)
    rough = value_noise(lxs, lys, 1.5, neg.seed)
    for side in (-1.0, 1.0):
        dv = v - F32(side * (neg.length - 2.0))
        r = np.sqrt(u * u * F32(0.35) + dv * dv)
        rock = cv.pal["rock"][:, None, None] * (F32(0.7) + F32(0.6) * rough)[None]
        blend(cv.C, soft(F32(2.6) - r - F32(2.0) * (rough - F32(0.5)), cv.pixel_size), rock, win)


def _off_channel_pond(cv: Canvas, neg: HardNegative, win: Window, lxs: np.ndarray, lys: np.ndarray) -> None:
    """An oval pond with a reedy margin and no barrier; half of them with drowned trees."""
    p, pal = cv.pixel_size, cv.pal
    u, v = frame(lxs, lys, neg.x, neg.y, neg.ux, neg.uy)
    n = value_noise(lxs, lys, 7.0, neg.seed)
    r = np.sqrt(u * u * F32(0.6) + v * v)
    e = F32(neg.length) - r - F32(0.35 * neg.length) * (n - F32(0.5))
    blend(cv.C, soft(e + F32(2.5), p) * F32(0.8), pal["reeds"], win)
    pond = soft(e, p)
    blend(cv.C, pond, pal["pond"][:, None, None] * (F32(0.85) + F32(0.3) * n)[None], win)
    if neg.seed % 2:  # half of them drowned trees too, as beaver ponds have
        blend(cv.C, soft(-snags(lxs, lys, neg.seed, 0.25, spacing=6.0), p) * pond, pal["snag"], win)


_NEGATIVE_DRAWERS = {"fallen_tree": _fallen_tree, "narrows": _narrows, "pond_without_dam": _off_channel_pond}


def draw_building(cv: Canvas, bld: Building) -> None:
    """A rectangular roof, lit on the side towards the sun, casting its shadow ``height`` m long."""
    found = cv.window(bld.bbox)
    if found is None:
        return
    win, lxs, lys = found
    p, cond = cv.pixel_size, cv.cond
    u, v = frame(lxs, lys, bld.x, bld.y, bld.ux, bld.uy)
    L, Wd = F32(bld.half_length), F32(bld.half_width)
    su, sv = frame(lxs - cond.sun[0] * bld.height, lys - cond.sun[1] * bld.height, bld.x, bld.y, bld.ux, bld.uy)
    cv.shade(win, soft(np.minimum(L - np.abs(su), Wd - np.abs(sv)), p) * F32(0.55))
    roof = soft(np.minimum(L - np.abs(u), Wd - np.abs(v)), p)
    lit = F32(1.0) + F32(0.12) * np.sign(v) * F32(np.sign(-(cond.sun[0] * -bld.uy + cond.sun[1] * bld.ux)) or 1.0)
    colour = np.asarray(ROOFS[bld.roof], F32)[:, None, None] * lit[None]
    blend(cv.C, roof, colour, win)
