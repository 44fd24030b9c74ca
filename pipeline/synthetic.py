"""Synthetic aerial surveys of beaver country, with known ground truth.

A *synthetic area* is a square of made-up landscape -- fields, forest, meadow, roads, farms, a
meandering stream network with side channels and lakes, beaver dams and things that look like
them -- drawn from a seed. A *synthetic survey* is one GeoTIFF of that area on one date, as a
survey provider would deliver it (RGB uint8 plus near-infrared, UTM, about 1 m pixels, tiled and
compressed), and the *truth* is one GeoJSON of every dam (and every hard negative) in the area.

The generator works in two stages, so that any size can be made in bounded memory and the bytes
never depend on how the work was cut up:

1. **Scene** (:func:`build_scene`, once, cheap): every object is vector geometry in *scene
   coordinates* -- metres east (``x``) and south (``y``) of the area's north-west corner.
   Streams are polylines with a half-width at each vertex; lakes are unions of discs with a
   noisy shore; a dam is a point on a channel with a downstream direction, a pond (the
   channel upstream flooded to tens of metres wide) and a curved barrier across it; roads,
   tracks and buildings likewise. The scene also holds the per-date conditions: season
   (greenness), sun direction, exposure, colour tint, crop rotation, footprint shift and
   misregistration. It costs about 25 s and 50 MB for a 40 km square (~4000 dams).
2. **Pixels** (:func:`render_block`, pure): the colour of a pixel is a function of the scene,
   the date and the pixel's *global* row and column only. Texture comes from value noise on
   integer lattices and from white noise hashed from the pixel's indices (counter-based, no
   RNG stream), and only element-wise arithmetic and min/max reductions touch pixel arrays,
   so a block's bytes are the same whichever block size or worker computed it.

:func:`generate_area` renders the blocks (in worker processes when ``workers > 1``) and writes
them in one canonical order -- the Morton (Z) order of the file's 512-px tiles, which every
block size of 512 x 2**k visits identically -- so the GeoTIFF files are byte-identical too.
Peak memory is a few blocks per process (about 0.4 GB with the default 1024-px block), not the
survey: 4096 px (two dates, 4 km at 1 m, ~40 dams) takes about 13 s on one idle core.
Worker processes cannot be started from a daemonic process (e.g. inside a Dask worker task):
call it with ``workers=1`` there.

Scale and density: about 2.4 dams and 2 hard negatives per km^2 (at least 3 dams and 4
negatives), so a dam with its pond spans tens of pixels of a 128-px tile at 1 m, and dams sit
at least 140 m apart (at most one per tile, mostly).

Dates differ as real surveys do: dams are built (``new``: absent on the first date), breached
(``gone``: the pond drains to a muddy meadow and a broken barrier) or ``persisting``; fields
change crop; vegetation colour follows the season; sun direction, exposure and a colour tint
change; and each later date is shifted by a few pixels (footprint) and *misregistered* by a few
metres: its content sits that far from where its geotransform says it is.

Truth GeoJSON (RFC 7946: WGS84 longitude/latitude, no ``crs`` member): one Point per dam at the
middle of its barrier, properties ``class="dam"``, ``id``, ``status``, ``context``
(``main_stream`` -- the main channel of any stream, ``side_channel``, ``lake_outlet``),
``dates`` (ISO dates on which it stands), ``barrier_length_m``, ``pond_length_m``,
``pond_width_m``; one Point per hard negative with ``class="hard_negative"``, ``id``, ``kind``
(``road_crossing``, ``culvert``, ``fallen_tree``, ``narrows``, ``pond_without_dam``), ``dates``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import math
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import InputError

__all__ = [
    "BAND_NAMES",
    "MIN_SIZE",
    "TILE",
    "Scene",
    "Stream",
    "Lake",
    "Building",
    "Polylines",
    "Dam",
    "HardNegative",
    "DateConditions",
    "SynthResult",
    "build_scene",
    "render_block",
    "generate_area",
    "truth_geojson",
    "morton_blocks",
]

BAND_NAMES = ("red", "green", "blue", "nir")
TILE = 512  # internal GeoTIFF tile edge (px); blocks are 512 * 2**k so Morton order is shared
MIN_SIZE = 512  # px: below this a scene has no room for a stream with a dam and its pond
MAX_SIZE = 200_000
MIN_EXTENT_M = 400.0  # a scene narrower than this cannot hold a pond, a dam and spacing
STEP_M = 4.0  # vertex spacing of streams and roads (m)
MARGIN_M = 80.0  # objects are generated this far outside the area: shifted dates stay covered
_AREA_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_F32 = np.float32

# ---------------------------------------------------------------------------------------------
# Hashed noise: functions of global coordinates only.


def _mix(h: np.ndarray) -> np.ndarray:
    """A 32-bit integer finalizer (lowbias32): every input bit affects every output bit."""
    with np.errstate(over="ignore"):  # wrap-around is the point (0-d arrays warn otherwise)
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x7FEB352D)
        h ^= h >> np.uint32(15)
        h = h * np.uint32(0x846CA68B)
        h ^= h >> np.uint32(16)
    return h


def _hash(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """uint32 hash of integer coordinates (broadcast: pairs, or a (H,1) x (1,W) grid)."""
    with np.errstate(over="ignore"):
        hy = _mix(np.asarray(iy).astype(np.uint32) * np.uint32(0x85EBCA77) ^ np.uint32(seed & 0xFFFFFFFF))
        return _mix(np.asarray(ix).astype(np.uint32) * np.uint32(0x9E3779B1) ^ hy)


def _unit(h: np.ndarray) -> np.ndarray:
    """uint32 hash -> float32 uniform in [0, 1) (24 bits, exact in float32)."""
    return (h >> np.uint32(8)).astype(_F32) * _F32(2.0**-24)


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (_F32(3.0) - _F32(2.0) * t)


def _lattice(coords: np.ndarray, scale: float):
    """Lattice index (int64) and smoothstep fraction (float32) of 1-D coordinates in metres."""
    f = coords / scale
    i = np.floor(f)
    return i.astype(np.int64), _smooth((f - i).astype(_F32))


def _noise(xs: np.ndarray, ys: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Value noise in [0, 1) on the grid xs (W,) x ys (H,) (metres), feature size ``scale`` m.

    Separable evaluation (lattice rows first, then columns) with the same element-wise
    operations for every pixel, so a pixel's value does not depend on the block around it.
    """
    ix, sx = _lattice(xs, scale)
    iy, sy = _lattice(ys, scale)
    x0, y0 = int(ix.min()), int(iy.min())
    lx = np.arange(x0, int(ix.max()) + 2)
    ly = np.arange(y0, int(iy.max()) + 2)
    g = _unit(_hash(lx[None, :], ly[:, None], seed))  # (nly, nlx)
    jx = ix - x0
    rows = g[:, jx] * (_F32(1.0) - sx) + g[:, jx + 1] * sx  # (nly, W)
    jy = iy - y0
    wy = sy[:, None]
    return rows[jy] * (_F32(1.0) - wy) + rows[jy + 1] * wy  # (H, W)


def _noise_at(x: np.ndarray, y: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Value noise at scattered points (same formula as :func:`_noise`), for scene geometry."""
    ix, sx = _lattice(np.asarray(x, float), scale)
    iy, sy = _lattice(np.asarray(y, float), scale)
    g00 = _unit(_hash(ix, iy, seed))
    g01 = _unit(_hash(ix + 1, iy, seed))
    g10 = _unit(_hash(ix, iy + 1, seed))
    g11 = _unit(_hash(ix + 1, iy + 1, seed))
    r0 = g00 * (_F32(1.0) - sx) + g01 * sx
    r1 = g10 * (_F32(1.0) - sx) + g11 * sx
    return r0 * (_F32(1.0) - sy) + r1 * sy


def _interp_lattice(grid: np.ndarray, lx0: int, ly0: int, xs, ys, spacing: float) -> np.ndarray:
    """Bilinear interpolation of values on lattice points ``spacing`` m apart to the pixel grid."""
    fx = xs / spacing
    fy = ys / spacing
    ix = np.floor(fx)
    iy = np.floor(fy)
    tx = (fx - ix).astype(_F32)
    ty = (fy - iy).astype(_F32)[:, None]
    jx = ix.astype(np.int64) - lx0
    jy = iy.astype(np.int64) - ly0
    rows = grid[:, jx] * (_F32(1.0) - tx) + grid[:, jx + 1] * tx
    return rows[jy] * (_F32(1.0) - ty) + rows[jy + 1] * ty


# ---------------------------------------------------------------------------------------------
# Scene geometry.


@dataclass(frozen=True)
class Polylines:
    """Segments of a set of polylines with a half-width at each end, grouped for rasterizing.

    Segment arrays are (n,) float64 in scene metres; chunk ``c`` holds segments
    ``start[c]:start[c+1]`` and covers ``bbox[c]`` = (x0, y0, x1, y1) before any buffer.
    """

    ax: np.ndarray
    ay: np.ndarray
    bx: np.ndarray
    by: np.ndarray
    ha: np.ndarray
    hb: np.ndarray
    start: np.ndarray
    bbox: np.ndarray
    max_h: float
    chunk_h: np.ndarray = None  # (n_chunks,) largest half-width of each chunk

    @staticmethod
    def build(lines: Sequence[tuple[np.ndarray, np.ndarray]], chunk: int = 8) -> "Polylines":
        parts = {k: [] for k in ("ax", "ay", "bx", "by", "ha", "hb")}
        start, bbox, n = [0], [], 0
        for pts, half in lines:
            for i in range(0, len(pts) - 1, chunk):
                j = min(i + chunk, len(pts) - 1)
                a, b = pts[i:j], pts[i + 1 : j + 1]
                parts["ax"].append(a[:, 0])
                parts["ay"].append(a[:, 1])
                parts["bx"].append(b[:, 0])
                parts["by"].append(b[:, 1])
                parts["ha"].append(half[i:j])
                parts["hb"].append(half[i + 1 : j + 1])
                n += j - i
                start.append(n)
                seg = pts[i : j + 1]
                bbox.append((seg[:, 0].min(), seg[:, 1].min(), seg[:, 0].max(), seg[:, 1].max()))
        arrays = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in parts.items()}
        max_h = float(max(arrays["ha"].max(initial=0), arrays["hb"].max(initial=0)))
        starts = np.asarray(start, np.int64)
        chunk_h = (
            np.maximum.reduceat(np.maximum(arrays["ha"], arrays["hb"]), starts[:-1]) if n else np.zeros(0)
        )
        return Polylines(
            chunk_h=chunk_h,
            start=starts,
            bbox=np.asarray(bbox, float).reshape(-1, 4),
            max_h=max_h,
            **arrays,
        )


@dataclass(frozen=True)
class Stream:
    """A channel: vertices (n, 2) every ~STEP_M from upstream to downstream, half-widths (n,) m."""

    id: int
    kind: str  # "main", "tributary", "side"
    points: np.ndarray
    half: np.ndarray


@dataclass(frozen=True)
class Lake:
    circles: np.ndarray  # (k, 3): centre x, y and radius (m); the lake is their noisy union
    bbox: tuple[float, float, float, float]


@dataclass(frozen=True)
class Dam:
    """A beaver dam: barrier across a channel at (x, y), ponding water upstream.

    (ux, uy) is the unit downstream direction. In the dam's frame (u downstream, v across)
    the barrier is the arc u = curve * (v / barrier_half)**2, |v| <= barrier_half,
    ``thickness`` m thick: its middle, (x, y), sits on the channel and its ends bend downstream
    (convex upstream, as beaver dams are). The pond is the channel upstream flooded to
    ``pond_half`` m either side of it at the barrier, narrowing over ``pond_length`` m
    (``pond``: centreline from the barrier upstream with half-widths; noisy shore), cut off at
    the barrier. ``exists[k]``: standing on date k. The dam sits on vertex ``vertex`` of
    ``scene.streams[stream_id]``.
    """

    id: str
    x: float
    y: float
    ux: float
    uy: float
    context: str
    status: str
    exists: tuple[bool, ...]
    pond_length: float
    pond_half: float
    barrier_half: float
    curve: float
    thickness: float
    channel_half: float
    seed: int
    stream_id: int
    vertex: int
    pond: Polylines = field(repr=False)  # the flooded channel: upstream centreline, half-widths

    def pond_centre(self) -> tuple[float, float]:
        """A point well inside the pond (m): on the channel, a third of the pond upstream."""
        pts = np.stack([self.pond.ax, self.pond.ay], axis=1)
        s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
        i = int(np.searchsorted(s, self.pond_length / 3))
        return float(pts[min(i, len(pts) - 1), 0]), float(pts[min(i, len(pts) - 1), 1])

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        # The shore noise lets the pond reach 1.25 half-widths, and its rim a few metres more.
        r = self.barrier_half + 6
        m = 1.35 * self.pond_half + 8
        b = self.pond.bbox
        return (
            min(self.x - r, b[:, 0].min() - m),
            min(self.y - r, b[:, 1].min() - m),
            max(self.x + r, b[:, 2].max() + m),
            max(self.y + r, b[:, 3].max() + m),
        )


@dataclass(frozen=True)
class HardNegative:
    """Something a careless model takes for a dam. Geometry in the dam-like frame at (x, y)."""

    id: str
    kind: str
    x: float
    y: float
    ux: float
    uy: float
    length: float  # fallen tree length / pond radius (m)
    width: float  # fallen tree thickness / unused (m)
    seed: int

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        r = 1.6 * self.length + 8  # an off-channel pond is stretched 1.3x along, plus shore noise
        return (self.x - r, self.y - r, self.x + r, self.y + r)


@dataclass(frozen=True)
class Building:
    x: float
    y: float
    ux: float
    uy: float
    half_length: float
    half_width: float
    height: float
    roof: int

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        r = math.hypot(self.half_length, self.half_width) + self.height * 1.6 + 2
        return (self.x - r, self.y - r, self.x + r, self.y + r)


@dataclass(frozen=True)
class DateConditions:
    """How one date looks: the footprint/misregistration and the light and season.

    Pixel (row, col) of this date shows the scene at x = (col + 0.5) * pixel_size + shift_x
    (likewise y); the file's geotransform accounts for ``offset_px`` only, so its content is
    off by ``misregistration`` (m, east and south) from where the transform puts it.
    """

    date: dt.date
    offset_px: tuple[int, int]  # footprint shift (col, row) in pixels, in the geotransform
    misregistration: tuple[float, float]  # content shift (m, x east / y south), not in it
    greenness: float  # 1 = midsummer, 0 = dry late season
    sun: tuple[float, float]  # shadow offset per metre of height (m/m), scene x/y
    gain: float
    tint: tuple[float, float, float, float]
    gradient: tuple[float, float]
    crop_seed: int
    noise_seed: int

    def shift(self, pixel_size: float) -> tuple[float, float]:
        return (
            self.offset_px[0] * pixel_size + self.misregistration[0],
            self.offset_px[1] * pixel_size + self.misregistration[1],
        )


@dataclass(frozen=True)
class Scene:
    """Everything about an area that is decided before any pixel is drawn (see module doc)."""

    area: str
    seed: int
    size: int
    pixel_size: float
    epsg: int
    origin: tuple[float, float]  # easting, northing of the scene's north-west corner (m)
    conditions: tuple[DateConditions, ...]
    streams: tuple[Stream, ...]
    water: Polylines
    roads: Polylines
    tracks: Polylines
    lakes: tuple[Lake, ...]
    dams: tuple[Dam, ...]
    negatives: tuple[HardNegative, ...]
    buildings: tuple[Building, ...]
    field_angle: tuple[float, float]  # cos, sin of the field grid's rotation
    field_size: tuple[float, float]  # parcel length and width (m)
    seeds: dict = field(default_factory=dict)

    @functools.cached_property
    def boxes(self) -> dict[str, np.ndarray]:
        """(n, 4) bounding boxes of lakes, dams, negatives and buildings, to find a block's few."""
        return {
            name: np.asarray([o.bbox for o in getattr(self, name)], float).reshape(-1, 4)
            for name in ("lakes", "dams", "negatives", "buildings")
        }

    def objects_in(self, name: str, xs: np.ndarray, ys: np.ndarray) -> list:
        """The objects of kind ``name`` whose bounding box meets the grid xs x ys (metres)."""
        b = self.boxes[name]
        hit = (b[:, 0] <= xs[-1]) & (b[:, 2] >= xs[0]) & (b[:, 1] <= ys[-1]) & (b[:, 3] >= ys[0])
        objects = getattr(self, name)
        return [objects[i] for i in np.nonzero(hit)[0].tolist()]

    @property
    def extent(self) -> float:
        return self.size * self.pixel_size

    @property
    def dates(self) -> tuple[dt.date, ...]:
        return tuple(c.date for c in self.conditions)

    def transform(self, date_index: int):
        """The geotransform of date ``date_index`` (its footprint shift included)."""
        from affine import Affine

        ox, oy = self.conditions[date_index].offset_px
        p = self.pixel_size
        return Affine(p, 0.0, self.origin[0] + ox * p, 0.0, -p, self.origin[1] - oy * p)

    def to_map(self, x, y):
        """Scene metres -> projected easting, northing."""
        return self.origin[0] + np.asarray(x), self.origin[1] - np.asarray(y)

    def to_pixel(self, date_index: int, x, y):
        """Scene metres -> fractional (row, col) where that point *appears* in date's image."""
        sx, sy = self.conditions[date_index].shift(self.pixel_size)
        return (np.asarray(y) - sy) / self.pixel_size, (np.asarray(x) - sx) / self.pixel_size


# ---------------------------------------------------------------------------------------------
# Building the scene.


class _PointIndex:
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


def _meander(rng, start, end, amplitude, wavelength, wander=0.03, max_len=None) -> np.ndarray:
    """Vertices every STEP_M from ``start`` towards ``end``, swinging +-amplitude rad about the
    bearing with the given wavelength (m): a meandering channel or a gently curving road."""
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


def _smooth_series(rng, n: int, period: int, amount: float) -> np.ndarray:
    """A smooth random multiplicative profile 1 +- amount over n vertices."""
    k = max(2, n // period + 2)
    knots = rng.uniform(-amount, amount, k)
    return 1.0 + np.interp(np.arange(n), np.linspace(0, n - 1, k), knots)


def _tangents(pts: np.ndarray, reach: int = 3) -> np.ndarray:
    n = len(pts)
    i0 = np.clip(np.arange(n) - reach, 0, n - 1)
    i1 = np.clip(np.arange(n) + reach, 0, n - 1)
    t = pts[i1] - pts[i0]
    return t / np.maximum(np.hypot(t[:, 0], t[:, 1]), 1e-9)[:, None]


def _tangent(pts: np.ndarray, i: int, reach: int = 3) -> np.ndarray:
    """The unit tangent of one vertex, exactly as :func:`_tangents` computes it."""
    n = len(pts)
    t = pts[min(i + reach, n - 1)] - pts[max(i - reach, 0)]
    return t / max(float(np.hypot(t[0], t[1])), 1e-9)


def _lake_inside(lake: Lake, x, y, seed: int) -> np.ndarray:
    """Shore function at points: < 1 inside the lake (same formula as the rendered shore)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    q = np.full(x.shape, np.inf)
    for cx, cy, r in lake.circles:
        q = np.minimum(q, ((x - cx) ** 2 + (y - cy) ** 2) / (r * r))
    return np.sqrt(q).astype(_F32) + _F32(0.3) * (_noise_at(x, y, 30.0, seed) - _F32(0.5))


def _parse_dates(dates: Sequence[str | dt.date]) -> tuple[dt.date, ...]:
    if isinstance(dates, (str, dt.date)):
        dates = [dates]
    parsed = []
    for d in dates:
        if isinstance(d, dt.date):
            parsed.append(d)
            continue
        try:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(d)):
                raise ValueError
            parsed.append(dt.date.fromisoformat(str(d)))
        except ValueError:
            raise InputError(f"date {d!r} is not a calendar date of the form YYYY-MM-DD, e.g. 2024-06-01") from None
    if not parsed:
        raise InputError("no dates given: give at least one survey date, e.g. --dates 2023-06-01 2024-06-01")
    for a, b in zip(parsed, parsed[1:]):
        if b == a:
            raise InputError(
                f"date {a.isoformat()} is given twice in --dates {' '.join(x.isoformat() for x in parsed)}: "
                f"each survey date must be distinct; drop the repeat"
            )
        if b < a:
            raise InputError(
                f"dates are out of order: {b.isoformat()} is listed after the later {a.isoformat()} in --dates "
                f"{' '.join(x.isoformat() for x in parsed)}; list them oldest first, since dam status "
                f"(new/gone/persisting) is relative to the first date"
            )
    return tuple(parsed)


def _check_args(area: str, size: int, seed: int, pixel_size: float) -> None:
    if not isinstance(area, str) or not _AREA_RE.match(area):
        raise InputError(
            f"area name {area!r} is not usable: use lower-case letters, digits, '-' and '_' "
            f"(starting with a letter or digit, at most 63 characters), e.g. --area creek"
        )
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not MIN_SIZE <= size <= MAX_SIZE:
        raise InputError(
            f"--size {size!r} is outside {MIN_SIZE}..{MAX_SIZE} pixels: a scene smaller than "
            f"{MIN_SIZE} px has no room for a stream with a dam, its pond and its neighbours; "
            f"use e.g. --size 4096 (4 km at 1 m)"
        )
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InputError(f"--seed {seed!r} is not a non-negative integer; give e.g. --seed 7")
    if not (isinstance(pixel_size, (int, float)) and 0.25 <= pixel_size <= 2.0):
        raise InputError(
            f"--pixel-size {pixel_size!r} m is outside 0.25..2 m: the scene's dams and ponds are "
            f"drawn at real sizes (metres) and would vanish or fill tiles; use 0.5 or 1"
        )
    if size * pixel_size < MIN_EXTENT_M:
        raise InputError(
            f"--size {size} at --pixel-size {pixel_size} m covers only {size * pixel_size:.0f} m: "
            f"a scene needs at least {MIN_EXTENT_M:.0f} m across; raise --size"
        )


def _conditions(rng, dates: tuple[dt.date, ...], pixel_size: float) -> tuple[DateConditions, ...]:
    out = []
    for k, d in enumerate(dates):
        doy = d.timetuple().tm_yday
        green = float(np.clip(1.0 - abs(doy - 195) / 110.0, 0.1, 1.0) + rng.uniform(-0.08, 0.04))
        az = math.radians(rng.uniform(125, 235))  # sun azimuth, clockwise from north
        length = rng.uniform(0.6, 1.3)  # shadow length per metre of height
        if k == 0:
            offset, mis, gain = (0, 0), (0.0, 0.0), rng.uniform(0.95, 1.05)
        else:
            offset = (int(rng.integers(-6, 7)), int(rng.integers(-6, 7)))
            ang = rng.uniform(0, 2 * math.pi)
            r = rng.uniform(1.5, 4.0)  # metres of misregistration
            mis = (round(r * math.cos(ang), 3), round(r * math.sin(ang), 3))
            gain = rng.uniform(0.85, 1.15)
        out.append(
            DateConditions(
                date=d,
                offset_px=offset,
                misregistration=mis,
                greenness=float(np.clip(green, 0.0, 1.0)),
                sun=(-math.sin(az) * length, math.cos(az) * length),
                gain=float(gain),
                tint=tuple(float(v) for v in rng.uniform(0.93, 1.07, 4)),
                gradient=tuple(float(v) for v in rng.uniform(-0.07, 0.07, 2)),
                crop_seed=int(rng.integers(0, 2**31)) if k == 0 or d.year != dates[k - 1].year else out[-1].crop_seed,
                noise_seed=int(rng.integers(0, 2**31)),
            )
        )
    return tuple(out)


def build_scene(
    area: str,
    dates: Sequence[str | dt.date],
    size: int,
    seed: int,
    pixel_size: float = 1.0,
) -> Scene:
    """Draw the vector scene of ``area`` (``size`` x ``size`` px of ``pixel_size`` m) from ``seed``.

    Cost grows with the number of objects (about area in km^2 x 20), not with pixels. Raises
    :class:`InputError` for unusable arguments.
    """
    _check_args(area, size, seed, pixel_size)
    dates = _parse_dates(dates)
    rng = np.random.default_rng([int(seed), zlib.crc32(area.encode())])
    S = size * pixel_size
    km2 = S * S / 1e6
    lo, hi = -MARGIN_M, S + MARGIN_M
    seeds = {name: int(rng.integers(0, 2**31)) for name in ("zone", "canopy", "field", "shore", "texture", "rip")}

    # Main streams cross the area west to east, one per ~3 km of height.
    streams: list[dict] = []
    n_main = max(1, round(S / 3000))
    for i in range(n_main):
        band = S / n_main
        y0 = (i + 0.5) * band + rng.uniform(-0.2, 0.2) * band
        y1 = (i + 0.5) * band + rng.uniform(-0.2, 0.2) * band
        pts = _meander(rng, (lo - 20, y0), (hi + 20, y1), rng.uniform(0.75, 1.0), rng.uniform(220, 340))
        half = rng.uniform(3.2, 4.6) * _smooth_series(rng, len(pts), 40, 0.15)
        streams.append(dict(kind="main", points=pts, half=half))
    main_index = _PointIndex(np.vstack([s["points"] for s in streams]), cell=200.0)
    main_owner = np.concatenate([np.full(len(s["points"]), k) for k, s in enumerate(streams)])
    main_pos = np.concatenate([np.arange(len(s["points"])) for s in streams])

    # Tributaries from sources anywhere to a junction on the nearest main stream.
    n_trib = max(2, round(km2 * 0.55))
    for _ in range(n_trib * 4):
        if sum(s["kind"] == "tributary" for s in streams) >= n_trib:
            break
        src = rng.uniform(lo, hi, 2)
        d2 = ((main_index.points - src) ** 2).sum(axis=1)
        j = int(np.argmin(d2))
        dist = math.sqrt(d2[j])
        if not 350 < dist < 1800:
            continue
        owner, pos = int(main_owner[j]), int(main_pos[j])
        parent = streams[owner]["points"]
        pos = min(pos + int(rng.integers(10, 60)), len(parent) - 2)  # join a little downstream
        target = parent[pos]
        pts = _meander(rng, src, target, rng.uniform(0.5, 0.85), rng.uniform(110, 200))
        ramp = np.linspace(0.0, 1.0, len(pts))
        half = (1.4 + 1.3 * ramp * rng.uniform(0.7, 1.2)) * _smooth_series(rng, len(pts), 30, 0.12)
        streams.append(dict(kind="tributary", points=pts, half=half))

    # Side channels: anabranches that leave a channel and rejoin it downstream.
    n_side = max(1, round(km2 * 0.3))
    for _ in range(n_side * 6):
        if sum(s["kind"] == "side" for s in streams) >= n_side:
            break
        parent_k = int(rng.integers(0, len(streams)))
        parent = streams[parent_k]
        if parent["kind"] == "side":
            continue
        n = len(parent["points"])
        length = int(rng.uniform(200, 480) / STEP_M)
        if n < length + 60:
            continue
        i0 = int(rng.integers(20, n - length - 20))
        seg = parent["points"][i0 : i0 + length + 1]
        centre = seg[len(seg) // 2]
        if not (0 < centre[0] < S and 0 < centre[1] < S):
            continue
        tang = _tangents(seg, 6)
        normal = np.stack([-tang[:, 1], tang[:, 0]], axis=1)
        s = np.linspace(0, 1, len(seg))
        off = rng.choice([-1, 1]) * rng.uniform(28, 45) * np.sin(np.pi * s) ** 0.7 * _smooth_series(rng, len(seg), 25, 0.15)
        pts = seg + normal * off[:, None]
        half = rng.uniform(1.2, 1.9) * _smooth_series(rng, len(pts), 20, 0.15)
        half[:4] = half[-4:] = 0.8  # they narrow where they leave and rejoin
        streams.append(dict(kind="side", points=pts, half=half, parent=parent_k))

    all_pts = np.vstack([s["points"] for s in streams])
    owner = np.concatenate([np.full(len(s["points"]), k) for k, s in enumerate(streams)])
    stream_index = _PointIndex(all_pts, cell=120.0)
    first = np.concatenate([[0], np.cumsum([len(s["points"]) for s in streams])])

    # Lakes, each on a tributary; the tributary flows through and leaves at the outlet.
    lakes: list[Lake] = []
    lake_outlets: list[tuple[int, int]] = []  # (stream index, vertex index) of each outlet
    n_lakes = max(1, round(km2 * 0.15))
    tribs = [k for k, s in enumerate(streams) if s["kind"] == "tributary" and len(s["points"]) > 200]
    for _ in range(n_lakes * 8):
        if len(lakes) >= n_lakes or not tribs:
            break
        k = tribs[int(rng.integers(0, len(tribs)))]
        pts = streams[k]["points"]
        i = int(len(pts) * rng.uniform(0.3, 0.55))
        cx, cy = pts[i]
        R = rng.uniform(55, 140) * min(1.0, S / 1500)
        if not (R < cx < S - R and R < cy < S - R):
            continue
        near = stream_index.near(cx, cy, min(R * 2.2 + 40, 119))
        if any(owner[j] != k for j in near) or any(math.hypot(cx - l.circles[0, 0], cy - l.circles[0, 1]) < 3 * R + 200 for l in lakes):
            continue
        tang = _tangent(pts, i, 8)
        circles = [(cx, cy, R)]
        for _c in range(int(rng.integers(2, 5))):
            a = rng.uniform(0, 2 * math.pi)
            d = rng.uniform(0.3, 0.6) * R
            circles.append((cx + d * math.cos(a) - tang[0] * d * 0.3, cy + d * math.sin(a) - tang[1] * d * 0.3, rng.uniform(0.4, 0.75) * R))
        circles = np.asarray(circles)
        r_max = float((np.hypot(circles[:, 0] - cx, circles[:, 1] - cy) + circles[:, 2]).max()) * 1.35 + 4
        lake = Lake(circles=circles, bbox=(cx - r_max, cy - r_max, cx + r_max, cy + r_max))
        inside = _lake_inside(lake, pts[:, 0], pts[:, 1], seeds["shore"]) < 1.0
        out = np.nonzero(~inside[i:])[0]
        if len(out) == 0 or inside[: max(i - int(r_max / STEP_M) - 2, 0)].any() or inside[i + out[0] :].any():
            continue  # the stream must enter once and leave once
        lakes.append(lake)
        lake_outlets.append((k, i + int(out[0])))

    # Roads across the area and short farm tracks across channels.
    roads: list[np.ndarray] = []
    for _ in range(max(1, round(S / 2200))):
        if rng.random() < 0.5:
            a, b = (rng.uniform(0, S), lo - 20), (rng.uniform(0, S), hi + 20)
        else:
            a, b = (lo - 20, rng.uniform(0, S)), (hi + 20, rng.uniform(0, S))
        roads.append(_meander(rng, a, b, rng.uniform(0.08, 0.2), rng.uniform(900, 1600), wander=0.005))
    road_half = 3.4
    road_index = _PointIndex(np.vstack(roads), cell=120.0)

    # Dams keep `dam_spacing` m from each other and `neg_spacing` m from hard negatives, which
    # keep `neg_spacing` m from everything: one object per 128-px tile, most of the time.
    dam_pts = _PointIndex(np.zeros((0, 2)), cell=200.0)
    neg_pts = _PointIndex(np.zeros((0, 2)), cell=200.0)
    dam_spacing = min(140.0, S / 5)
    neg_spacing = min(70.0, S / 8)
    negatives: list[dict] = []
    tracks: list[np.ndarray] = []

    # Road crossings: where a road passes over a channel (culverts/bridges).
    for road in roads:
        last = None
        for x, y in road[::2]:
            hit = stream_index.near(x, y, 5.0)
            if len(hit) == 0 or not (0 <= x < S and 0 <= y < S):
                continue
            if last is not None and math.hypot(x - last[0], y - last[1]) < 40:
                continue
            last = (x, y)
            j = int(hit[0])
            tang = _tangent(streams[owner[j]]["points"], j - int(first[owner[j]]), 3)
            negatives.append(dict(kind="road_crossing", x=x, y=y, ux=tang[0], uy=tang[1], length=road_half, width=0.0))
            neg_pts.add(x, y)

    def stream_vertex(kinds=("main", "tributary", "side"), inner=0.0):
        """A random vertex (uniform along channels) inside the area, ``inner`` m from its edge."""
        for _ in range(50):
            j = int(rng.integers(0, len(all_pts)))
            k = int(owner[j])
            i = j - int(first[k])
            s = streams[k]
            n = len(s["points"])
            if s["kind"] not in kinds or not 10 <= i < n - 10:
                continue
            x, y = s["points"][i]
            if inner <= x < S - inner and inner <= y < S - inner:
                return k, i
        return None

    def clear_of_others(k, x, y, r, dam=False, allow=()):
        """No other stream (but ``allow``), road, lake, dam or hard negative too near (x, y)."""
        if any(owner[j] != k and owner[j] not in allow for j in stream_index.near(x, y, min(r, 119))):
            return False
        if len(road_index.near(x, y, min(r + 10, 119))):
            return False
        if len(dam_pts.near(x, y, dam_spacing if dam else neg_spacing)) or len(neg_pts.near(x, y, neg_spacing)):
            return False
        return not near_lake(x, y, 1.6)

    def near_lake(x, y, level):
        """Is (x, y) inside ``level`` times some lake's shore function? (bbox test first)"""
        for lake in lakes:
            b = lake.bbox
            if b[0] - 200 < x < b[2] + 200 and b[1] - 200 < y < b[3] + 200:
                if _lake_inside(lake, [x], [y], seeds["shore"])[0] < level:
                    return True
        return False

    n_tracks = max(1, round(km2 * 0.35))
    for _ in range(n_tracks * 10):
        if len(tracks) >= n_tracks:
            break
        pick = stream_vertex(("tributary", "side"), inner=60)
        if pick is None:
            continue
        k, i = pick
        x, y = streams[k]["points"][i]
        if not clear_of_others(k, x, y, 40):
            continue
        t = _tangent(streams[k]["points"], i, 3)
        ang = math.atan2(t[1], t[0]) + math.pi / 2 + rng.uniform(-0.4, 0.4)
        half_len = rng.uniform(120, 300)
        d = np.array([math.cos(ang), math.sin(ang)])
        track = _meander(rng, (x, y) - d * half_len, (x, y) + d * half_len, 0.1, 600, wander=0.0)
        tracks.append(track)
        negatives.append(dict(kind="culvert", x=x, y=y, ux=t[0], uy=t[1], length=2.2, width=0.0))
        neg_pts.add(x, y)

    # Dams: lake outlets first, then side channels and main channels.
    n_dams = max(3, round(km2 * 2.4))
    dams: list[dict] = []

    def add_dam(k, i, context, pond_length, pond_half):
        s = streams[k]
        x, y = s["points"][i]
        t = _tangent(s["points"], i, 4)
        ch = float(s["half"][i])
        # The pond floods the channel upstream: widest at the barrier, narrowing to the channel.
        n_up = min(i, int(pond_length * 1.15 / STEP_M) + 2)
        line = s["points"][i - n_up : i + 1][::-1]
        dist = np.arange(len(line)) * STEP_M
        prof = np.clip(1 - (dist / pond_length) ** 2, 0, 1) ** 0.6
        pond = Polylines.build([(line, np.maximum(s["half"][i - n_up : i + 1][::-1] * 1.3, pond_half * prof))], chunk=8)
        dams.append(
            dict(
                x=float(x), y=float(y), ux=float(t[0]), uy=float(t[1]), context=context,
                pond_length=float(pond_length), pond_half=float(pond_half),
                barrier_half=float(pond_half + rng.uniform(1.5, 4.0)),
                curve=float(rng.uniform(0.12, 0.3) * pond_half), thickness=float(rng.uniform(2.0, 3.2)),
                channel_half=ch, seed=int(rng.integers(0, 2**31)), stream_id=k, vertex=i, pond=pond,
            )
        )
        dam_pts.add(x, y)

    for k, i in lake_outlets:
        if rng.random() < 0.85:
            i2 = min(i + int(rng.integers(2, 6)), len(streams[k]["points"]) - 2)
            add_dam(k, i2, "lake_outlet", rng.uniform(14, 24), rng.uniform(9, 16))
    attempts = 0
    while len(dams) < n_dams and attempts < n_dams * 60:
        attempts += 1
        side = rng.random() < 0.35
        pick = stream_vertex(("side",) if side else ("main", "tributary"), inner=45)
        if pick is None:
            continue
        k, i = pick
        s = streams[k]
        ch = s["half"][i]
        pond_half = float(np.clip(ch * rng.uniform(3.0, 6.0) + rng.uniform(4, 10), 9, 34))
        allow = ()
        if s["kind"] == "side":
            # A side channel runs 28-45 m from its parent: a smaller pond that stays clear of it.
            pond_half = float(rng.uniform(8, 13))
            allow = (s["parent"],)
            parent_near = stream_index.near(*s["points"][i], pond_half + 10)
            if any(owner[j] == allow[0] for j in parent_near):
                continue
        pond_length = float(min(pond_half * rng.uniform(1.6, 2.8), 80.0))
        if i < pond_length / STEP_M + 8 or i > len(s["points"]) - 10:
            continue
        x, y = s["points"][i]
        t = _tangent(s["points"], i, 4)
        cx, cy = x - t[0] * pond_length * 0.5, y - t[1] * pond_length * 0.5
        if not clear_of_others(k, x, y, pond_half + 12, dam=True, allow=allow):
            continue
        if not clear_of_others(k, cx, cy, pond_length * 0.6 + pond_half, dam=True, allow=allow):
            continue
        add_dam(k, i, "side_channel" if s["kind"] == "side" else "main_stream", pond_length, pond_half)

    # Dam status over the dates: half persist, a quarter are new, a quarter are gone.
    n_dates = len(dates)
    pattern = ["persisting", "new", "gone", "persisting"]
    statuses = [pattern[j % 4] if n_dates > 1 else "persisting" for j in range(len(dams))]
    rng.shuffle(statuses)
    dam_objects = []
    for j, (d, status) in enumerate(zip(dams, statuses)):
        if status == "persisting":
            exists = (True,) * n_dates
        else:
            change = int(rng.integers(1, n_dates))  # first date on which the change is seen
            exists = tuple((k >= change) == (status == "new") for k in range(n_dates))
        dam_objects.append(Dam(id=f"dam-{j + 1:03d}", status=status, exists=exists, **d))

    # Other hard negatives on channels: fallen trees, narrows, pools and ponds without dams.
    n_neg = max(4, round(km2 * 2.0))
    kinds = ["fallen_tree", "narrows", "pond_without_dam", "fallen_tree", "pond_without_dam"]
    attempts = 0
    placed = 0
    while placed < n_neg and attempts < n_neg * 60:
        attempts += 1
        kind = kinds[placed % len(kinds)]
        pick = stream_vertex(inner=40)
        if pick is None:
            continue
        k, i = pick
        s = streams[k]
        x, y = s["points"][i]
        t = _tangent(s["points"], i, 4)
        ch = float(s["half"][i])
        if not 12 < i < len(s["points"]) - 12 or not clear_of_others(k, x, y, 30):
            continue
        if kind == "fallen_tree":
            neg = dict(kind=kind, x=x, y=y, ux=t[0], uy=t[1], length=2 * ch + rng.uniform(7, 15), width=rng.uniform(1.0, 1.5))
        elif kind == "narrows":
            n_span = int(rng.integers(2, 4))
            prof = np.ones(len(s["half"]))
            j = np.arange(len(prof))
            prof -= rng.uniform(0.4, 0.5) * np.clip(1 - np.abs(j - i) / (n_span + 1), 0, 1)
            s["half"] = s["half"] * prof
            neg = dict(kind=kind, x=x, y=y, ux=t[0], uy=t[1], length=ch + 4, width=0.0)
        elif rng.random() < 0.5:
            # A natural pool: the channel widens smoothly and narrows again, with no barrier.
            n_span = int(rng.uniform(20, 45) / STEP_M)
            j = np.arange(len(s["half"]))
            bump = np.clip(1 - ((j - i) / n_span) ** 2, 0, None) ** 1.5
            width = rng.uniform(7, 15)
            if not clear_of_others(k, x, y, width + 25):
                continue
            s["half"] = np.maximum(s["half"], s["half"] + width * bump)
            neg = dict(kind=kind, x=x, y=y, ux=t[0], uy=t[1], length=width + 6, width=-1.0)
        else:
            # An off-channel pond (oxbow or farm pond) beside the stream.
            side = rng.choice([-1, 1])
            off = rng.uniform(30, 55)
            r = rng.uniform(8, 16)
            px, py = x - t[1] * side * off, y + t[0] * side * off
            if not (0 <= px < S and 0 <= py < S) or len(stream_index.near(px, py, r + 12)) or not clear_of_others(-1, px, py, r + 12):
                continue
            neg = dict(kind=kind, x=px, y=py, ux=t[0], uy=t[1], length=r, width=1.0)
        negatives.append(neg)
        neg_pts.add(neg["x"], neg["y"])
        placed += 1
    neg_objects = tuple(
        HardNegative(id=f"neg-{j + 1:03d}", seed=int(rng.integers(0, 2**31)), **{k: (float(v) if k != "kind" else v) for k, v in n.items()})
        for j, n in enumerate(negatives)
    )

    # Farm buildings in clusters beside the roads.
    buildings = []
    for _ in range(max(1, round(km2 * 0.4))):
        road = roads[int(rng.integers(0, len(roads)))]
        i = int(rng.integers(5, len(road) - 5))
        t = _tangent(road, i, 3)
        side = rng.choice([-1, 1])
        for _b in range(int(rng.integers(2, 6))):
            along = rng.uniform(-40, 40)
            off = side * rng.uniform(14, 38)
            bx = road[i, 0] + t[0] * along - t[1] * off
            by = road[i, 1] + t[1] * along + t[0] * off
            hl, hw = rng.uniform(5, 12), rng.uniform(4, 8)
            if len(stream_index.near(bx, by, 40)) or len(road_index.near(bx, by, hl + 6)) or not (0 < bx < S and 0 < by < S):
                continue
            if any(math.hypot(bx - b.x, by - b.y) < hl + b.half_length + 4 for b in buildings):
                continue
            if near_lake(bx, by, 1.5):
                continue
            rot = rng.choice([0, 1])
            ux, uy = (t[0], t[1]) if rot == 0 else (-t[1], t[0])
            buildings.append(Building(float(bx), float(by), float(ux), float(uy), hl, hw, rng.uniform(3, 7), int(rng.integers(0, 4))))

    stream_objects = tuple(
        Stream(id=k, kind=s["kind"], points=s["points"], half=np.asarray(s["half"], float)) for k, s in enumerate(streams)
    )
    ang = rng.uniform(-0.5, 0.5)
    epsg = 32618  # WGS 84 / UTM zone 18N: beaver country (Adirondacks, Ontario)
    h = zlib.crc32(area.encode())
    origin = (float(440_000 + (h % 50) * 1000), float(4_900_000 + ((h >> 8) % 200) * 1000 + S))
    return Scene(
        area=area,
        seed=int(seed),
        size=int(size),
        pixel_size=float(pixel_size),
        epsg=epsg,
        origin=origin,
        conditions=_conditions(rng, dates, pixel_size),
        streams=stream_objects,
        water=Polylines.build([(s.points, s.half) for s in stream_objects]),
        roads=Polylines.build([(r, np.full(len(r), road_half)) for r in roads]),
        tracks=Polylines.build([(t, np.full(len(t), 2.0)) for t in tracks]),
        lakes=tuple(lakes),
        dams=tuple(dam_objects),
        negatives=neg_objects,
        buildings=tuple(buildings),
        field_angle=(math.cos(ang), math.sin(ang)),
        field_size=(float(rng.uniform(160, 260)), float(rng.uniform(90, 150))),
        seeds=seeds,
    )


# ---------------------------------------------------------------------------------------------
# Rendering one block: a pure function of the scene, the date and global pixel indices.

# Reflectance-like colours (red, green, blue, nir) at midsummer and late season; the date's
# greenness blends them. Values chosen against NAIP imagery of forest, fields and wetlands.
_PALETTE = {
    "forest": ((0.080, 0.125, 0.070, 0.42), (0.115, 0.120, 0.075, 0.33)),
    "conifer": ((0.055, 0.090, 0.062, 0.30), (0.060, 0.088, 0.062, 0.28)),
    "shrub": ((0.120, 0.175, 0.085, 0.46), (0.170, 0.165, 0.095, 0.36)),
    "meadow": ((0.200, 0.270, 0.130, 0.46), (0.330, 0.315, 0.210, 0.33)),
    "wet_meadow": ((0.140, 0.200, 0.100, 0.38), (0.210, 0.220, 0.140, 0.30)),
    "crop": ((0.150, 0.255, 0.095, 0.56), (0.380, 0.345, 0.215, 0.35)),
    "cereal": ((0.430, 0.415, 0.300, 0.40), (0.500, 0.450, 0.330, 0.36)),
    "soil": ((0.380, 0.325, 0.255, 0.28), (0.395, 0.340, 0.265, 0.30)),
    "young": ((0.260, 0.270, 0.170, 0.36), (0.300, 0.285, 0.200, 0.32)),
    "stream": ((0.070, 0.095, 0.080, 0.035), (0.080, 0.095, 0.080, 0.035)),
    "deep": ((0.030, 0.055, 0.065, 0.018), (0.035, 0.055, 0.060, 0.018)),
    "shallow": ((0.090, 0.125, 0.100, 0.050), (0.100, 0.120, 0.095, 0.050)),
    "pond": ((0.045, 0.060, 0.048, 0.025), (0.050, 0.060, 0.048, 0.025)),
    "reeds": ((0.120, 0.165, 0.075, 0.30), (0.220, 0.200, 0.120, 0.28)),
    "mud": ((0.200, 0.190, 0.150, 0.20), (0.220, 0.205, 0.160, 0.21)),
    "bank": ((0.150, 0.150, 0.110, 0.22), (0.170, 0.160, 0.120, 0.22)),
    "dam": ((0.285, 0.245, 0.190, 0.20), (0.290, 0.250, 0.195, 0.20)),
    "snag": ((0.420, 0.400, 0.370, 0.27), (0.420, 0.400, 0.370, 0.27)),
    "bark": ((0.300, 0.265, 0.215, 0.26), (0.300, 0.265, 0.215, 0.26)),
    "rock": ((0.330, 0.320, 0.295, 0.27), (0.330, 0.320, 0.295, 0.27)),
    "asphalt": ((0.300, 0.300, 0.305, 0.26), (0.300, 0.300, 0.305, 0.26)),
    "gravel": ((0.430, 0.400, 0.350, 0.33), (0.440, 0.410, 0.355, 0.33)),
}
_ROOFS = ((0.40, 0.40, 0.42, 0.36), (0.46, 0.22, 0.17, 0.30), (0.22, 0.22, 0.24, 0.20), (0.66, 0.66, 0.66, 0.58))
_HAZE = (0.036, 0.044, 0.078, 0.012)
_DN_SCALE = 1.55 * 255  # reflectance -> digital number, a typical provider stretch
# Field classes by crop hash: what a parcel grows this year.
_FIELD_CLASSES = ("crop", "cereal", "soil", "meadow", "crop", "young", "cereal", "meadow")


def _colour(name: str, green: float) -> np.ndarray:
    summer, late = _PALETTE[name]
    return (np.asarray(summer) * green + np.asarray(late) * (1 - green)).astype(_F32)


def _blend(C: np.ndarray, alpha: np.ndarray, colour, sl=(slice(None), slice(None))) -> None:
    """C[:, sl] <- C * (1 - alpha) + colour * alpha, band by band, in place.

    ``colour`` is (4,) or (4, h, w)."""
    for b in range(C.shape[0]):
        sub = C[b][sl]
        sub += (colour[b] - sub) * alpha


def _soft(e: np.ndarray, pixel_size: float) -> np.ndarray:
    """Coverage of a pixel by a shape, from the signed distance to its edge e (m, > 0 inside)."""
    return np.clip(e * _F32(1.0 / pixel_size) + _F32(0.5), _F32(0.0), _F32(1.0))


def _polyline_field(poly: Polylines, xs: np.ndarray, ys: np.ndarray, reach: float, qcap: float = 2.0):
    """Nearest-segment fields of polylines on the grid xs (W,) x ys (H,) (scene metres).

    Returns q (H, W) = min over segments of distance / half-width (capped at qcap) and d
    (H, W) = min distance in metres (capped at ``reach``). Each chunk of segments touches only
    pixels within its buffer, with the same arithmetic whatever block contains the pixel.
    """
    H, W = len(ys), len(xs)
    q = np.full((H, W), qcap, _F32)
    d = np.full((H, W), reach, _F32)
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
        px = (xs[c0:c1] - rx).astype(_F32)[None, None, :]
        py = (ys[r0:r1] - ry).astype(_F32)[None, :, None]
        ax = (poly.ax[s:e] - rx).astype(_F32)[:, None, None]
        ay = (poly.ay[s:e] - ry).astype(_F32)[:, None, None]
        dx = (poly.bx[s:e] - poly.ax[s:e]).astype(_F32)[:, None, None]
        dy = (poly.by[s:e] - poly.ay[s:e]).astype(_F32)[:, None, None]
        inv = _F32(1.0) / np.maximum(dx * dx + dy * dy, _F32(1e-6))
        ex = px - ax  # (K, 1, w)
        ey = py - ay  # (K, h, 1)
        t = np.clip((ex * dx + ey * dy) * inv, _F32(0.0), _F32(1.0))  # (K, h, w)
        ex = ex - t * dx
        ey = ey - t * dy
        dist = np.sqrt(ex * ex + ey * ey)
        ha = poly.ha[s:e].astype(_F32)[:, None, None]
        hb = poly.hb[s:e].astype(_F32)[:, None, None]
        half = ha + t * (hb - ha)
        np.minimum(q[r0:r1, c0:c1], (dist / half).min(axis=0), out=q[r0:r1, c0:c1])
        np.minimum(d[r0:r1, c0:c1], dist.min(axis=0), out=d[r0:r1, c0:c1])
    return q, d


def _window(xs, ys, bbox):
    """Index slices of the grid inside bbox (x0, y0, x1, y1), or None if it misses the grid."""
    c0 = int(np.searchsorted(xs, bbox[0], "left"))
    c1 = int(np.searchsorted(xs, bbox[2], "right"))
    r0 = int(np.searchsorted(ys, bbox[1], "left"))
    r1 = int(np.searchsorted(ys, bbox[3], "right"))
    if c1 <= c0 or r1 <= r0:
        return None
    return slice(r0, r1), slice(c0, c1)


def _frame(xs, ys, x0, y0, ux, uy):
    """Local coordinates (u along (ux, uy), v to its left) of the grid around (x0, y0), float32."""
    X = (xs - x0).astype(_F32)[None, :]
    Y = (ys - y0).astype(_F32)[:, None]
    u = X * _F32(ux) + Y * _F32(uy)
    v = Y * _F32(ux) - X * _F32(uy)
    return u, v


def _snags(xs, ys, seed: int, density: float, spacing: float = 5.0):
    """Standing trees on a jittered lattice: signed distance (m) to the cell's tree crown.

    One tree at most per ``spacing``-m cell, at a hashed position with a hashed crown radius
    (0.5-1.4 m), present with probability ``density``; negative inside the crown, inf where
    the cell has no tree.
    """
    fx = xs / spacing
    fy = ys / spacing
    ix = np.floor(fx).astype(np.int64)[None, :]
    iy = np.floor(fy).astype(np.int64)[:, None]
    h = _hash(ix, iy, seed)
    jx = _F32(0.25) + _F32(0.5) * _unit(h)
    jy = _F32(0.25) + _F32(0.5) * _unit(_mix(h))
    present = _unit(_mix(h ^ np.uint32(0x5BD1E995))) < _F32(density)
    dx = ((fx - np.floor(fx)).astype(_F32)[None, :] - jx) * _F32(spacing)
    dy = ((fy - np.floor(fy)).astype(_F32)[:, None] - jy) * _F32(spacing)
    radius = _F32(0.5) + _F32(0.9) * _unit(_mix(h ^ np.uint32(0x27D4EB2F)))
    dist = np.sqrt(dx * dx + dy * dy) - radius
    return np.where(present, dist, _F32(np.inf))


def _crowns(xs: np.ndarray, ys: np.ndarray, seed: int, to_sun: tuple[float, float], cell: float = 4.5):
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
    best = np.full((len(ys), len(xs)), _F32(-1.0), _F32)
    slope = np.zeros_like(best)
    tone = np.ones_like(best)
    sx, sy = _F32(to_sun[0]), _F32(to_sun[1])
    for ox in (0, 1):
        for oy in (0, 1):
            cx = bx + ox
            cy = by + oy
            h = _hash(cx[None, :], cy[:, None], seed)
            jx = _F32(0.2) + _F32(0.6 / 1024) * (h & np.uint32(1023)).astype(_F32)
            jy = _F32(0.2) + _F32(0.6 / 1024) * ((h >> np.uint32(10)) & np.uint32(1023)).astype(_F32)
            r = _F32(0.4) + _F32(0.25 / 1024) * ((h >> np.uint32(20)) & np.uint32(1023)).astype(_F32)
            dx = (fx - cx).astype(_F32)[None, :] - jx  # cells
            dy = (fy - cy).astype(_F32)[:, None] - jy
            height = _F32(1.0) - (dx * dx + dy * dy) / (r * r)  # 1 at the top, 0 at the rim
            win = height > best
            np.copyto(best, height, where=win)
            np.copyto(slope, (dx * sx + dy * sy) / r, where=win)
            np.copyto(tone, _F32(0.8) + _F32(0.4 / 3) * (h >> np.uint32(30)).astype(_F32), where=win)  # per tree
    lit = _F32(1.0) + _F32(0.4) * slope
    return np.where(best > _F32(0.0), (_F32(0.72) + _F32(0.45) * np.sqrt(np.maximum(best, _F32(0.0)))) * lit * tone, _F32(0.4))


STRIP = 256  # rows rendered at once: keeps the ~40 temporaries of a strip in cache


def render_block(scene: Scene, date_index: int, row0: int, col0: int, height: int, width: int, bands: int = 4) -> np.ndarray:
    """Pixels (bands, height, width) uint8 of date ``date_index`` at rows row0.., cols col0...

    Bands are red, green, blue (and nir if ``bands == 4``). A pure function of its arguments:
    any tiling of the image into blocks gives the same pixels (so the block is rendered in
    strips of STRIP rows, for memory and cache, without changing a byte).
    """
    out = np.empty((bands, height, width), np.uint8)
    for r in range(0, height, STRIP):
        h = min(STRIP, height - r)
        out[:, r : r + h] = _render(scene, date_index, row0 + r, col0, h, width, bands)
    return out


def _render(scene: Scene, date_index: int, row0: int, col0: int, height: int, width: int, bands: int) -> np.ndarray:
    cond = scene.conditions[date_index]
    p = scene.pixel_size
    shift_x, shift_y = cond.shift(p)
    cols = np.arange(col0, col0 + width)
    rows = np.arange(row0, row0 + height)
    xs = (cols + 0.5) * p + shift_x  # (W,) scene metres
    ys = (rows + 0.5) * p + shift_y  # (H,)
    sd = scene.seeds
    gr = cond.greenness
    H, W = height, width
    pal = {name: _colour(name, gr) for name in _PALETTE}
    sun_len = math.hypot(*cond.sun)
    to_sun = (-cond.sun[0] / sun_len, -cond.sun[1] / sun_len)

    # --- land cover: forest where the zone field is high, fields elsewhere, riparian strips.
    zone = _noise(xs, ys, 700.0, sd["zone"]) * _F32(0.65) + _noise(xs, ys, 230.0, sd["zone"] + 1) * _F32(0.35)
    coarse = _noise(xs, ys, 45.0, sd["texture"])  # (H, W) patchiness, field warp
    c1 = _noise(xs, ys, 3.0, sd["canopy"])  # grass and shrub texture
    c2 = _noise(xs, ys, 8.0, sd["canopy"] + 1)
    canopy = _crowns(xs, ys, sd["canopy"] + 2, to_sun) * (_F32(0.85) + _F32(0.3) * c2)

    # Riparian strips from the distance to channels on an 8 m lattice (smooth, cheap).
    L = 8.0
    lx0, ly0 = int(math.floor(xs[0] / L)), int(math.floor(ys[0] / L))
    lx = np.arange(lx0, int(math.floor(xs[-1] / L)) + 2) * L
    ly = np.arange(ly0, int(math.floor(ys[-1] / L)) + 2) * L
    _, dl = _polyline_field(scene.water, lx, ly, reach=80.0)
    dist_stream = _interp_lattice(dl, lx0, ly0, xs, ys, L)  # (H, W) m, capped at 80
    rip_noise = _noise(xs, ys, 60.0, sd["rip"])
    # The edge follows the crowns (canopy ~0.4 in gaps, ~1.2 on tops), not the noise lattice.
    forest = zone + _F32(0.05) * (c2 - _F32(0.5)) + _F32(0.02) * (canopy - _F32(0.9)) > _F32(0.52)
    # Forest edges cast shadows on open ground: is there forest ~18 m tall towards the sun?
    hx, hy = cond.sun[0] * 18.0, cond.sun[1] * 18.0
    zs = _noise(xs - hx, ys - hy, 700.0, sd["zone"]) * _F32(0.65) + _noise(xs - hx, ys - hy, 230.0, sd["zone"] + 1) * _F32(0.35)
    edge_shadow = (zs + _F32(0.05) * (_noise(xs - hx, ys - hy, 8.0, sd["canopy"] + 1) - _F32(0.5)) > _F32(0.52)) & ~forest
    old_field = zone > _F32(0.49)  # a meadow margin between forest and cropland
    conifer = zone > _F32(0.62) + _F32(0.1) * coarse
    shrub_w = _F32(10.0) + _F32(30.0) * rip_noise
    open_w = _F32(1.0) + _F32(10.0) * rip_noise * rip_noise
    riparian = dist_stream < shrub_w
    wet = dist_stream < open_w

    # Fields: a rotated grid of parcels with wavy edges; each parcel's crop changes by year.
    ca, sa = scene.field_angle
    PW, PH = scene.field_size
    X = xs.astype(_F32)[None, :]
    Y = ys.astype(_F32)[:, None]
    warp = (coarse - _F32(0.5)) * _F32(14.0)
    u = X * _F32(ca) + Y * _F32(sa) + warp
    v = Y * _F32(ca) - X * _F32(sa) - warp
    fu = u / _F32(PW)
    pu = np.floor(fu)
    fu -= pu
    pu = pu.astype(np.int64)
    # Per-strip and per-parcel values come from small tables over the block's parcel indices
    # (hashing the few indices once, then gathering), not from a hash per pixel.
    pu0 = int(pu.min())
    pu_range = np.arange(pu0, int(pu.max()) + 1)
    strip = _hash(pu_range, np.int64(7), sd["field"])
    jpu = pu - pu0
    off = (_unit(strip) * _F32(PH))[jpu]
    ph_strip = (_F32(PH) * (_F32(0.55) + _F32(0.9) * _unit(_mix(strip))))[jpu]  # parcel length varies by strip
    fv = (v + off) / ph_strip
    pv = np.floor(fv)
    fv -= pv
    pv = pv.astype(np.int64)
    pv0 = int(pv.min())
    pv_range = np.arange(pv0, int(pv.max()) + 1)
    n_pv = len(pv_range)
    split_tab = _hash(pu_range[:, None], pv_range[None, :], sd["field"] + 1)  # (n_pu, n_pv)
    cell = jpu * n_pv + (pv - pv0)
    split = split_tab.ravel()[cell]
    cut = _F32(0.3) + _F32(0.4) * _unit(split)
    is_split = (split & np.uint32(3)) != 0  # three parcels in four are split in two
    half = (fu > cut) & is_split
    sub = np.stack([pu_range * 2, pu_range * 2 + 1], axis=1).ravel()  # (2 n_pu,) sub-parcel ids
    ph_tab = _hash(sub[:, None], pv_range[None, :], cond.crop_seed ^ sd["field"]).ravel()
    parcel = (jpu * 2 + half) * n_pv + (pv - pv0)
    klass_tab = (ph_tab & np.uint32(7)).astype(np.uint8)
    klass = klass_tab[parcel]
    along = ((ph_tab >> np.uint32(3)) & np.uint32(1)).astype(bool)[parcel]
    inv_period = (_F32(1.0) / (_F32(3.0) + _F32(3.0) * _unit(_mix(ph_tab))))[parcel]
    amp_tab = np.where(np.isin(klass_tab, (2, 3, 7)), _F32(0.05), _F32(0.16)).astype(_F32)
    stripe_coord = np.where(along, u, v) * inv_period
    stripe = np.abs(stripe_coord - np.floor(stripe_coord) - _F32(0.5)) * _F32(2.0)  # triangle 0..1
    field_tex = (_F32(1.0) + amp_tab[parcel] * (stripe - _F32(0.5))) * (_F32(0.9) + _F32(0.2) * coarse)
    edge_u = np.minimum(np.minimum(fu, _F32(1.0) - fu), np.where(is_split, np.abs(fu - cut), _F32(1.0)))
    edge = np.minimum(edge_u * _F32(PW), np.minimum(fv, _F32(1.0) - fv) * ph_strip)
    margin = edge < _F32(2.5)

    # One land-cover class per pixel (a row of `cover`) and a brightness factor for texture.
    cover = np.stack([pal[name] for name in _FIELD_CLASSES + ("meadow", "meadow", "shrub", "forest", "conifer", "wet_meadow")])
    MARGIN, OLD_FIELD, SHRUB, FOREST, CONIFER, WET = range(8, 14)
    shrub_fac = _F32(0.5) + _F32(0.5) * canopy
    cls = np.where(margin, np.uint8(MARGIN), klass)
    fac = np.where(margin, _F32(0.8) + _F32(0.3) * c1, field_tex)
    np.copyto(cls, np.uint8(OLD_FIELD), where=old_field)
    np.copyto(fac, _F32(0.85) + _F32(0.15) * c1 + _F32(0.1) * coarse, where=old_field)
    np.copyto(cls, np.uint8(SHRUB), where=riparian)
    np.copyto(fac, shrub_fac, where=riparian)
    np.copyto(cls, np.where(conifer, np.uint8(CONIFER), np.uint8(FOREST)), where=forest)
    np.copyto(fac, canopy, where=forest)
    wooded = forest | riparian
    np.copyto(cls, np.where(wooded, np.uint8(WET), np.uint8(SHRUB)), where=wet)
    np.copyto(fac, np.where(wooded, _F32(0.85) + _F32(0.3) * c2, shrub_fac), where=wet)

    n_bands = 4
    C = np.empty((n_bands, H, W), _F32)
    for b in range(n_bands):
        np.multiply(np.take(cover[:, b], cls), fac, out=C[b])
        C[b][edge_shadow] *= _F32(0.55)

    shore_noise = None
    # --- lakes: noisy union of discs, shallow margin, rushes on the shore.
    for lake in scene.objects_in("lakes", xs, ys):
        win = _window(xs, ys, lake.bbox)
        if win is None:
            continue
        sy_, sx_ = win
        lxs, lys = xs[sx_], ys[sy_]
        qq = np.full((len(lys), len(lxs)), np.inf, _F32)
        for cx, cy, r in lake.circles:
            ddx = (lxs - cx).astype(_F32)[None, :]
            ddy = (lys - cy).astype(_F32)[:, None]
            np.minimum(qq, (ddx * ddx + ddy * ddy) * _F32(1.0 / (r * r)), out=qq)
        if shore_noise is None:
            shore_noise = _noise(xs, ys, 30.0, sd["shore"])
        shore = np.sqrt(qq) + _F32(0.3) * (shore_noise[win] - _F32(0.5))
        rmin = float(lake.circles[:, 2].min())
        depth = np.clip((_F32(1.0) - shore) * _F32(3.0), _F32(0.0), _F32(1.0))[None]
        water = pal["shallow"][:, None, None] * (_F32(1.0) - depth) + pal["deep"][:, None, None] * depth
        _blend(C, _soft((_F32(1.12) - shore) * _F32(rmin), p) * _F32(0.8), pal["reeds"], win)
        _blend(C, _soft((_F32(1.0) - shore) * _F32(rmin), p), water, win)

    # --- streams: water where distance < half-width (noisy banks), a darker wet bank beside.
    fine = _noise(xs, ys, 2.5, sd["texture"] + 3)
    q, dstr = _polyline_field(scene.water, xs, ys, reach=4.0)
    q_eff = q + _F32(0.18) * (fine - _F32(0.5))
    # Distance inside the bank (m): half - d = d (1 - q) / q, written to stay finite at q = 0.
    inside = np.where(q_eff < _F32(1.0), (_F32(1.0) - q_eff) * _F32(4.0), (_F32(1.0) - q_eff) * dstr / np.maximum(q_eff, _F32(1e-3)))
    bank = _soft(np.minimum(_F32(1.6) - q_eff, (_F32(2.5) - dstr)), p) * _F32(0.6)
    _blend(C, bank, pal["bank"])
    stream_alpha = _soft(inside, p)
    # Deeper, darker water away from the banks: wide pools look like ponds, riffles do not.
    depth = np.clip(inside * _F32(0.22), _F32(0.0), _F32(1.0))[None]
    stream_col = (pal["stream"][:, None, None] * (_F32(1.0) - depth) + pal["pond"][:, None, None] * depth) * (
        _F32(0.9) + _F32(0.25) * coarse
    )[None]
    _blend(C, stream_alpha, stream_col)

    # --- dams: pond (or drained pond) upstream, curved barrier across the channel.
    for dam in scene.objects_in("dams", xs, ys):
        win = _window(xs, ys, dam.bbox)
        if win is None:
            continue
        _draw_dam(C, win, xs, ys, dam, date_index, pal, p, stream_alpha, cond)

    for neg in scene.objects_in("negatives", xs, ys):
        win = _window(xs, ys, neg.bbox)
        if win is None:
            continue
        _draw_negative(C, win, xs, ys, neg, pal, p, cond)

    # --- roads and tracks over everything else (culverts carry streams under them).
    qr, _ = _polyline_field(scene.roads, xs, ys, reach=1.0)
    _blend(C, _soft((_F32(1.45) - qr) * _F32(3.4), p), pal["gravel"])
    asphalt = pal["asphalt"][:, None, None] * (_F32(0.94) + _F32(0.12) * fine)[None]
    _blend(C, _soft((_F32(1.0) - qr) * _F32(3.4), p), asphalt)
    qt, _ = _polyline_field(scene.tracks, xs, ys, reach=1.0)
    _blend(C, _soft((_F32(1.0) - qt) * _F32(2.0), p), pal["gravel"] * _F32(0.95))
    _blend(C, _soft((_F32(0.22) - qt) * _F32(2.0), p) * _F32(0.6), pal["meadow"])

    for bld in scene.objects_in("buildings", xs, ys):
        win = _window(xs, ys, bld.bbox)
        if win is None:
            continue
        _draw_building(C, win, xs, ys, bld, p, cond)

    # --- the sensor: haze, exposure, gradient, tint, noise hashed from pixel indices.
    S = scene.extent
    gx, gy = cond.gradient
    illum = (_F32(1.0) + _F32(gx) * ((xs / S) - 0.5).astype(_F32))[None, :] + (_F32(gy) * ((ys / S) - 0.5).astype(_F32))[:, None]
    noise = _hash(cols[None, :], rows[:, None], cond.noise_seed ^ date_index)
    out = np.empty((bands, H, W), np.uint8)
    for b in range(bands):
        scale = _F32(_DN_SCALE * cond.gain * cond.tint[b])
        dn = (C[b] + _F32(_HAZE[b])) * illum * scale
        byte = ((noise >> np.uint32(8 * b)) & np.uint32(255)).astype(_F32)
        dn += (byte - _F32(127.5)) * _F32(2.5 / 127.5)
        np.clip(dn, _F32(0.0), _F32(255.0), out=dn)
        out[b] = np.floor(dn + _F32(0.5)).astype(np.uint8)
    return out


def _draw_dam(C, win, xs, ys, dam: Dam, k: int, pal, p: float, stream_alpha, cond) -> None:
    sy_, sx_ = win
    lxs, lys = xs[sx_], ys[sy_]
    u, v = _frame(lxs, lys, dam.x, dam.y, dam.ux, dam.uy)  # (h, w) m
    standing = dam.exists[k]
    drained = not standing and dam.status == "gone"
    if not standing and not drained:
        return  # not built yet: the channel alone
    arc = _F32(dam.curve) * (v / _F32(dam.barrier_half)) ** 2
    shape_noise = _noise(lxs, lys, 9.0, dam.seed)
    qp, _ = _polyline_field(dam.pond, lxs, lys, reach=1.0)
    # Two octaves of shore noise: bays and points tens of metres apart, and a ragged margin.
    f = qp + _F32(0.5) * (shape_noise - _F32(0.5)) + _F32(0.25) * (_noise(lxs, lys, 3.5, dam.seed + 3) - _F32(0.5))
    half_t = _F32(dam.thickness / 2)
    inner = np.minimum((_F32(1.0) - f) * _F32(0.5 * dam.pond_half), arc - half_t - u + _F32(0.5))
    pond = _soft(inner, p)
    old = dam.status != "new"
    density = 0.3 if old else 0.25
    trees = _snags(lxs, lys, dam.seed, density, spacing=6.0)
    crown = _soft(-trees if old else _F32(0.6) - trees, p) * pond
    shadow_d = _snags(lxs + cond.sun[0] * 2.5, lys + cond.sun[1] * 2.5, dam.seed, density, spacing=6.0)
    if standing:
        # Ponded water, a muddy/reedy rim, drowned trees (grey snags; still green if new).
        rim = _soft(inner + _F32(2.0), p) * _F32(0.45)
        _blend(C, rim, pal["reeds"] if old else pal["wet_meadow"], win)
        tone = _F32(0.8) + _F32(0.4) * shape_noise
        water = pal["pond"][:, None, None] * tone[None]
        _blend(C, pond, water, win)
        snag_shadow = _soft(-shadow_d, p) * pond * _F32(0.5)
        for b in range(C.shape[0]):
            C[b][win] *= _F32(1.0) - snag_shadow * _F32(0.6)
        _blend(C, crown, pal["snag"] if old else pal["shrub"] * _F32(1.2), win)
        # The barrier spans the pond where it meets the arc, and keys a few metres into the banks.
        span = (_F32(1.0) - f) * _F32(0.5 * dam.pond_half) + _F32(3.0)
        barrier_e = np.minimum(np.minimum(half_t - np.abs(u - arc), _F32(dam.barrier_half) - np.abs(v)), span)
        barrier = _soft(barrier_e + _F32(0.6) * (shape_noise - _F32(0.5)), p)
    else:
        # Breached: the pond has drained to mud with regrowth; the channel runs through it.
        regrow = np.clip((_noise(lxs, lys, 5.0, dam.seed + 1) - _F32(0.35)) * _F32(3.0), _F32(0.0), _F32(1.0))
        mud = pal["mud"][:, None, None] * (_F32(1.0) - regrow[None]) + pal["wet_meadow"][:, None, None] * regrow[None]
        _blend(C, pond * _F32(0.95), mud, win)
        _blend(C, crown, pal["snag"], win)
        _blend(C, stream_alpha[win], pal["stream"], win)
        gap = _F32(dam.channel_half + 2.5)
        barrier_e = np.minimum(np.minimum(half_t * 0.8 - np.abs(u - arc), _F32(dam.barrier_half) - np.abs(v)), np.abs(v) - gap)
        barrier = _soft(barrier_e, p) * _F32(0.7)
    sticks = _F32(0.75) + _F32(0.5) * _noise(lxs, lys, 1.2, dam.seed + 2)
    # Downstream face in the dam's own shadow when the sun is upstream of it.
    face = np.clip((u - arc) / half_t, _F32(-1.0), _F32(1.0))
    toward = _F32(-(cond.sun[0] * dam.ux + cond.sun[1] * dam.uy))  # > 0: sun downstream
    shade = _F32(1.0) - _F32(0.25) * face * np.sign(toward) - _F32(0.1)
    col = pal["dam"][:, None, None] * (sticks * shade)[None]
    _blend(C, barrier, col, win)


def _draw_negative(C, win, xs, ys, neg: HardNegative, pal, p: float, cond) -> None:
    sy_, sx_ = win
    lxs, lys = xs[sx_], ys[sy_]
    if neg.kind == "fallen_tree":
        rng = np.random.default_rng(neg.seed)
        ang = math.atan2(neg.uy, neg.ux) + math.pi / 2 + rng.uniform(-0.6, 0.6)
        ux, uy = math.cos(ang), math.sin(ang)
        a, b = _frame(lxs, lys, neg.x, neg.y, ux, uy)
        half_len = _F32(neg.length / 2)
        taper = _F32(neg.width / 2) * (_F32(1.15) - _F32(0.3) * (a / half_len))
        sa, sb = _frame(lxs - cond.sun[0] * 0.8, lys - cond.sun[1] * 0.8, neg.x, neg.y, ux, uy)
        shadow = _soft(np.minimum(taper - np.abs(sb), half_len - np.abs(sa)), p) * _F32(0.5)
        for k in range(C.shape[0]):
            C[k][win] *= _F32(1.0) - shadow
        trunk = _soft(np.minimum(taper - np.abs(b), half_len - np.abs(a)), p)
        top = _noise(lxs, lys, 1.0, neg.seed)
        crown_r = _F32(2.6)
        da = a - half_len
        crown = _soft(crown_r - np.sqrt(da * da + b * b) - _F32(1.2) * (top - _F32(0.5)), p) * (top > _F32(0.45))
        _blend(C, np.maximum(trunk, crown * _F32(0.8)), pal["bark"] * _F32(1.1), win)
    elif neg.kind == "narrows":
        # Rock and gravel on both banks where the channel pinches.
        u, v = _frame(lxs, lys, neg.x, neg.y, neg.ux, neg.uy)
        rough = _noise(lxs, lys, 1.5, neg.seed)
        for side in (-1.0, 1.0):
            dv = v - _F32(side * (neg.length - 2.0))
            r = np.sqrt(u * u * _F32(0.35) + dv * dv)
            rock = pal["rock"][:, None, None] * (_F32(0.7) + _F32(0.6) * rough)[None]
            _blend(C, _soft(_F32(2.6) - r - _F32(2.0) * (rough - _F32(0.5)), p), rock, win)
    elif neg.kind == "pond_without_dam" and neg.width > 0:
        u, v = _frame(lxs, lys, neg.x, neg.y, neg.ux, neg.uy)
        n = _noise(lxs, lys, 7.0, neg.seed)
        r = np.sqrt(u * u * _F32(0.6) + v * v)
        e = _F32(neg.length) - r - _F32(0.35 * neg.length) * (n - _F32(0.5))
        _blend(C, _soft(e + _F32(2.5), p) * _F32(0.8), pal["reeds"], win)
        pond = _soft(e, p)
        _blend(C, pond, pal["pond"][:, None, None] * (_F32(0.85) + _F32(0.3) * n)[None], win)
        if neg.seed % 2:  # half of them drowned trees too, as beaver ponds have
            _blend(C, _soft(-_snags(lxs, lys, neg.seed, 0.25, spacing=6.0), p) * pond, pal["snag"], win)


def _draw_building(C, win, xs, ys, bld: Building, p: float, cond) -> None:
    sy_, sx_ = win
    lxs, lys = xs[sx_], ys[sy_]
    u, v = _frame(lxs, lys, bld.x, bld.y, bld.ux, bld.uy)
    L, Wd = _F32(bld.half_length), _F32(bld.half_width)
    su, sv = _frame(lxs - cond.sun[0] * bld.height, lys - cond.sun[1] * bld.height, bld.x, bld.y, bld.ux, bld.uy)
    shadow = _soft(np.minimum(L - np.abs(su), Wd - np.abs(sv)), p) * _F32(0.55)
    for k in range(C.shape[0]):
        C[k][win] *= _F32(1.0) - shadow
    roof = _soft(np.minimum(L - np.abs(u), Wd - np.abs(v)), p)
    lit = _F32(1.0) + _F32(0.12) * np.sign(v) * _F32(np.sign(-(cond.sun[0] * -bld.uy + cond.sun[1] * bld.ux)) or 1.0)
    colour = np.asarray(_ROOFS[bld.roof], _F32)[:, None, None] * lit[None]
    _blend(C, roof, colour, win)


# ---------------------------------------------------------------------------------------------
# Writing files: blocks in Morton order of tiles, truth GeoJSON, quicklooks, manifest.


def _morton(r: int, c: int) -> int:
    code = 0
    for i in range(max(r.bit_length(), c.bit_length())):
        code |= ((c >> i) & 1) << (2 * i) | ((r >> i) & 1) << (2 * i + 1)
    return code


def morton_blocks(size: int, block: int) -> list[tuple[int, int, int, int]]:
    """Blocks (row0, col0, height, width) of a size x size image in Morton (Z) order.

    With ``block`` = TILE * 2**k the blocks are aligned groups of 2**k x 2**k tiles, and a
    Z-order walk visits every such group as one contiguous run of the global tile walk: writing
    each block's tiles in Z order gives the same tile sequence -- hence the same file -- for
    every block size.
    """
    n = -(-size // block)
    cells = sorted(((r, c) for r in range(n) for c in range(n)), key=lambda rc: _morton(*rc))
    return [(r * block, c * block, min(block, size - r * block), min(block, size - c * block)) for r, c in cells]


def _check_block(block: int) -> None:
    ok = isinstance(block, (int, np.integer)) and block >= TILE and block % TILE == 0 and ((block // TILE) & (block // TILE - 1)) == 0
    if not ok or block > 8192:
        raise InputError(
            f"--block {block!r} is not one of 512, 1024, 2048, 4096, 8192: blocks must be whole "
            f"groups of the file's 512-px tiles in powers of two so that every block size writes "
            f"the same bytes"
        )


_WORKER_SCENE: Scene | None = None


def _init_worker(scene: Scene) -> None:
    global _WORKER_SCENE
    _WORKER_SCENE = scene


def _render_task(task):
    date_index, r0, c0, h, w, bands, factor = task
    pixels = render_block(_WORKER_SCENE, date_index, r0, c0, h, w, bands)
    return pixels, _shrink(pixels[:3], factor)


def _shrink(rgb: np.ndarray, f: int) -> np.ndarray:
    """Block means over f x f pixels (3, h // f, w // f) uint8, for the quicklook."""
    _, h, w = rgb.shape
    h2, w2 = h // f, w // f
    small = rgb[:, : h2 * f, : w2 * f].reshape(3, h2, f, w2, f).mean(axis=(2, 4))
    return np.floor(small + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class SynthResult:
    """What :func:`generate_area` wrote. Paths are inside ``out_dir``; keys are ISO dates."""

    out_dir: Path
    area: str
    surveys: dict[str, Path]
    truth: Path
    quicklooks: dict[str, Path]
    manifest: Path
    scene: Scene = dataclasses.field(repr=False)
    seconds: float = 0.0

    @property
    def survey_ids(self) -> list[str]:
        return [f"{self.area}-{d}" for d in self.surveys]


def truth_geojson(scene: Scene) -> dict:
    """The ground truth as an RFC 7946 FeatureCollection (WGS84 lon/lat, no ``crs`` member)."""
    from rasterio.crs import CRS
    from rasterio.warp import transform_geom

    src = CRS.from_epsg(scene.epsg)
    dates = [d.isoformat() for d in scene.dates]

    def point(x, y):
        e, n = scene.to_map(x, y)
        geom = transform_geom(src, "EPSG:4326", {"type": "Point", "coordinates": (float(e), float(n))})
        return {"type": "Point", "coordinates": [round(c, 8) for c in geom["coordinates"]]}

    features = []
    for dam in scene.dams:
        features.append(
            {
                "type": "Feature",
                "id": dam.id,
                "geometry": point(dam.x, dam.y),
                "properties": {
                    "class": "dam",
                    "id": dam.id,
                    "status": dam.status,
                    "context": dam.context,
                    "dates": [d for d, e in zip(dates, dam.exists) if e],
                    "barrier_length_m": round(2 * dam.barrier_half, 1),
                    "pond_length_m": round(dam.pond_length, 1),
                    "pond_width_m": round(2 * dam.pond_half, 1),
                },
            }
        )
    for neg in scene.negatives:
        features.append(
            {
                "type": "Feature",
                "id": neg.id,
                "geometry": point(neg.x, neg.y),
                "properties": {"class": "hard_negative", "id": neg.id, "kind": neg.kind, "dates": dates},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output directory {out_dir} is a file; give a new or empty directory with --out")
    if out_dir.is_dir():
        present = sorted(p.name for p in out_dir.iterdir())
        if present:
            ours = "synth.json" in present
            if overwrite and ours:
                return
            listing = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
            hint = (
                "it holds an earlier synth output: pass --overwrite to replace it, or give a new directory"
                if ours
                else "give a new or empty directory with --out (synth never deletes files it did not write)"
            )
            raise InputError(f"output directory {out_dir} is not empty ({len(present)} entries: {listing}); {hint}")


def generate_area(
    out_dir: str | os.PathLike,
    area: str = "creek",
    dates: Sequence[str | dt.date] = ("2023-06-01", "2024-06-01"),
    size: int = 4096,
    seed: int = 7,
    pixel_size: float = 1.0,
    nir: bool = True,
    block: int = 1024,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> SynthResult:
    """Write a synthetic area: one GeoTIFF per date, the truth GeoJSON, quicklooks, a manifest.

    ``size`` is the raster edge in pixels of ``pixel_size`` metres; ``block`` (512 * 2**k px)
    is the unit of work, rendered in ``workers`` processes (default: one per core; 1 renders in
    this process). Output bytes depend only on (area, dates, size, seed, pixel_size, nir).
    Memory is bounded by about 2 * workers blocks whatever the size. Everything is written to a
    temporary directory beside ``out_dir`` and renamed into place at the end, so a failed run
    leaves nothing. Raises :class:`InputError` for unusable arguments before writing anything.
    """
    import time

    import rasterio
    from rasterio.crs import CRS
    from rasterio.enums import ColorInterp
    from rasterio.windows import Window

    from pipeline.progress import progress_bar

    started = time.perf_counter()
    out_dir = Path(out_dir)
    _check_args(area, size, seed, pixel_size)
    parsed = _parse_dates(dates)
    _check_block(block)
    if workers is not None and (not isinstance(workers, (int, np.integer)) or workers < 1):
        raise InputError(f"--workers {workers!r} must be a whole number of at least 1")
    _prepare_out_dir(out_dir, overwrite)

    scene = build_scene(area, parsed, size, seed, pixel_size)
    n_bands = 4 if nir else 3
    factor = 1
    while size // factor > 1024:
        factor *= 2
    blocks = morton_blocks(size, block)
    n_workers = min(workers or os.cpu_count() or 1, len(blocks) * len(parsed))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.synth-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the output's mode
    pool = None
    try:
        if n_workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(
                n_workers, mp_context=multiprocessing.get_context("forkserver"), initializer=_init_worker, initargs=(scene,)
            )
        else:
            _init_worker(scene)
        surveys, quicklooks = {}, {}
        tiles_in = {}
        # A small GDAL block cache: written tiles go to disk in the order they were written
        # instead of piling up (the default cache is 5% of RAM), so memory is size-independent.
        with rasterio.Env(GDAL_CACHEMAX=64), progress_bar(
            len(blocks) * len(parsed), f"synth {area}", unit="block", disable=None if progress is None else not progress
        ) as bar:
            for k, date in enumerate(parsed):
                name = f"{area}-{date.isoformat()}"
                path = tmp / f"{name}.tif"
                profile = dict(
                    driver="GTiff", width=size, height=size, count=n_bands, dtype="uint8",
                    crs=CRS.from_epsg(scene.epsg), transform=scene.transform(k), tiled=True,
                    blockxsize=TILE, blockysize=TILE, compress="deflate", predictor=2, zlevel=6,
                    interleave="pixel", bigtiff="IF_SAFER",
                )
                small = np.zeros((3, size // factor, size // factor), np.uint8)
                tasks = [(k, r0, c0, h, w, n_bands, factor) for r0, c0, h, w in blocks]
                with rasterio.open(path, "w", **profile) as dst:
                    dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined][:n_bands]
                    for b, band_name in enumerate(BAND_NAMES[:n_bands], start=1):
                        dst.set_band_description(b, band_name)
                    for (r0, c0, h, w), (pixels, shrunk) in zip(blocks, _ordered(pool, tasks, 2 * n_workers)):
                        for tr, tc in tiles_in.setdefault((h, w), _tile_order(h, w)):
                            th, tw = min(TILE, h - tr), min(TILE, w - tc)
                            dst.write(pixels[:, tr : tr + th, tc : tc + tw], window=Window(c0 + tc, r0 + tr, tw, th))
                        small[:, r0 // factor : r0 // factor + shrunk.shape[1], c0 // factor : c0 // factor + shrunk.shape[2]] = shrunk
                        bar.update(1)
                surveys[date.isoformat()] = out_dir / path.name
                q = tmp / f"{name}-quicklook.png"
                _write_quicklook(q, small, scene, k, factor)
                quicklooks[date.isoformat()] = out_dir / q.name
        truth = tmp / f"{area}-truth.geojson"
        truth.write_text(json.dumps(truth_geojson(scene), indent=1) + "\n")
        manifest = tmp / "synth.json"
        manifest.write_text(json.dumps(_manifest(scene, n_bands, surveys, truth, quicklooks), indent=2) + "\n")
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return SynthResult(
        out_dir=out_dir, area=area, surveys=surveys, truth=out_dir / truth.name, quicklooks=quicklooks,
        manifest=out_dir / "synth.json", scene=scene, seconds=time.perf_counter() - started,
    )


def _tile_order(h: int, w: int) -> list[tuple[int, int]]:
    """Offsets (row, col) of the TILE x TILE tiles of a block, in Morton order."""
    tiles = [(r, c) for r in range(-(-h // TILE)) for c in range(-(-w // TILE))]
    return [(r * TILE, c * TILE) for r, c in sorted(tiles, key=lambda rc: _morton(*rc))]


def _ordered(pool, tasks, window: int):
    """Results of ``_render_task`` over tasks, in order, with at most ``window`` in flight."""
    if pool is None:
        for task in tasks:
            yield _render_task(task)
        return
    from collections import deque

    pending = deque()
    it = iter(tasks)
    for task in it:
        pending.append(pool.submit(_render_task, task))
        if len(pending) >= window:
            break
    while pending:
        result = pending.popleft().result()
        for task in it:
            pending.append(pool.submit(_render_task, task))
            break
        yield result


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    if out_dir.is_dir() and any(out_dir.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / "previous")
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if out_dir.is_dir():
            out_dir.rmdir()
        os.replace(tmp, out_dir)


def _manifest(scene: Scene, n_bands: int, surveys, truth: Path, quicklooks) -> dict:
    from pipeline import __version__

    return {
        "generator": "damwatch synth",
        "version": __version__,
        "area": scene.area,
        "seed": scene.seed,
        "size": scene.size,
        "pixel_size_m": scene.pixel_size,
        "crs": f"EPSG:{scene.epsg}",
        "bands": list(BAND_NAMES[:n_bands]),
        "truth": truth.name,
        "counts": {
            "dams": len(scene.dams),
            "hard_negatives": len(scene.negatives),
            "streams": len(scene.streams),
            "lakes": len(scene.lakes),
            "buildings": len(scene.buildings),
        },
        "surveys": [
            {
                "survey_id": f"{scene.area}-{c.date.isoformat()}",
                "date": c.date.isoformat(),
                "file": surveys[c.date.isoformat()].name,
                "quicklook": quicklooks[c.date.isoformat()].name,
                "transform": list(scene.transform(k))[:6],
                "footprint_offset_px": list(c.offset_px),
                "misregistration_m": {"east": c.misregistration[0], "north": -c.misregistration[1]},
                "greenness": round(c.greenness, 3),
                "gain": round(c.gain, 3),
            }
            for k, c in enumerate(scene.conditions)
        ],
    }


_STATUS_COLOURS = {"persisting": (255, 220, 0), "new": (60, 255, 60), "gone": (255, 60, 60)}


def _write_quicklook(path: Path, small: np.ndarray, scene: Scene, k: int, factor: int) -> None:
    """PNG of the date at 1/factor scale with the truth drawn where the geotransform puts it."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(np.moveaxis(small, 0, -1)), "RGB")
    draw = ImageDraw.Draw(img)
    ox, oy = scene.conditions[k].offset_px
    scale = 1.0 / (factor * scene.pixel_size)

    def pix(x, y):  # declared position (geotransform), as a GIS would draw the truth
        return (x / scene.pixel_size - ox) / factor, (y / scene.pixel_size - oy) / factor

    for neg in scene.negatives:
        cx, cy = pix(neg.x, neg.y)
        r = max(3.0, 12 * scale)
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], outline=(0, 220, 255), width=1)
    for dam in scene.dams:
        cx, cy = pix(dam.x, dam.y)
        r = max(5.0, (dam.pond_length + 10) * scale)
        colour = _STATUS_COLOURS[dam.status]
        if dam.exists[k]:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=2)
        else:  # absent on this date: a thin cross where it was or will be
            draw.line([cx - r, cy - r, cx + r, cy + r], fill=colour, width=1)
            draw.line([cx - r, cy + r, cx + r, cy - r], fill=colour, width=1)
    legend = (
        f"{scene.area} {scene.conditions[k].date.isoformat()}  {scene.size} px @ {scene.pixel_size:g} m  "
        f"dams: yellow persisting, green new, red gone (circle = standing, x = absent); cyan = hard negatives"
    )
    draw.rectangle([0, 0, min(img.width, 7 * len(legend) + 8), 14], fill=(0, 0, 0))
    draw.text((4, 2), legend, fill=(255, 255, 255))
    img.save(path, optimize=False)
