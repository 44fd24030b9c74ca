"""The objects of a synthetic scene: frozen values that say what is where, before any pixel.

A :class:`Scene` is everything about an area that is decided before rendering: streams
(:class:`Stream`, and all of their channels as one :class:`Polylines` for rasterizing), lakes,
roads and tracks, beaver dams (:class:`Dam`), the things that look like dams
(:class:`HardNegative`), farm buildings, the field grid, and per date the light, season and
footprint (:class:`DateConditions`).

Geometry is in *scene coordinates*: metres east (``x``) and south (``y``) of the area's
north-west corner; :meth:`Scene.to_map` turns them into the area's UTM easting and northing,
and :meth:`Scene.to_pixel` into where a point appears in one date's image. Objects that draw
themselves in a local frame (dams, hard negatives, buildings) carry a centre (x, y) and a unit
direction (ux, uy); their frame is u along that direction and v to its left.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from affine import Affine

from pipeline.synthetic.noise import F32, value_noise_at

__all__ = [
    "Polylines",
    "Stream",
    "Lake",
    "Dam",
    "HardNegative",
    "Building",
    "DateConditions",
    "Scene",
]


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
    chunk_h: np.ndarray | None = None  # (n_chunks,) largest half-width of each chunk

    @staticmethod
    def build(lines: Sequence[tuple[np.ndarray, np.ndarray]], chunk: int = 8) -> Polylines:
        """Polylines from (vertices (n, 2), half-widths (n,)) pairs, ``chunk`` segments per chunk."""
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
    """A lake: the union of a few discs, with a shore made irregular by value noise."""

    circles: np.ndarray  # (k, 3): centre x, y and radius (m); the lake is their noisy union
    bbox: tuple[float, float, float, float]

    def shore_at(self, x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
        """Shore function at points (float32): < 1 inside the lake (the rendered shore's formula).

        It is the distance to the nearest disc's centre in units of its radius, plus +-0.15 of
        value noise with 30 m features (``seed``: the scene's shore seed).
        """
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        q = np.full(x.shape, np.inf)
        for cx, cy, r in self.circles:
            q = np.minimum(q, ((x - cx) ** 2 + (y - cy) ** 2) / (r * r))
        return np.sqrt(q).astype(F32) + F32(0.3) * (value_noise_at(x, y, 30.0, seed) - F32(0.5))


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
    context: str  # "main_stream", "side_channel", "lake_outlet"
    status: str  # "persisting", "new", "gone" (relative to the first date)
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
    """Something a careless model takes for a dam. Geometry in the dam-like frame at (x, y).

    ``kind``: "road_crossing", "culvert", "fallen_tree", "narrows" or "pond_without_dam" (an
    off-channel pond when ``width`` > 0, a natural pool in the channel when ``width`` < 0).
    """

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
    """A farm building: a rectangle (half-sizes in m) along (ux, uy), ``height`` m for its shadow."""

    x: float
    y: float
    ux: float
    uy: float
    half_length: float
    half_width: float
    height: float
    roof: int  # index into the roof colours

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
        """Where pixel (0, 0)'s corner sits in the scene (m, x and y)."""
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
        """Edge of the area in metres."""
        return self.size * self.pixel_size

    @property
    def dates(self) -> tuple[dt.date, ...]:
        return tuple(c.date for c in self.conditions)

    def transform(self, date_index: int) -> Affine:
        """The geotransform of date ``date_index`` (its footprint shift included)."""
        ox, oy = self.conditions[date_index].offset_px
        p = self.pixel_size
        return Affine(p, 0.0, self.origin[0] + ox * p, 0.0, -p, self.origin[1] - oy * p)

    def to_map(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Scene metres -> projected easting, northing."""
        return self.origin[0] + np.asarray(x), self.origin[1] - np.asarray(y)

    def to_pixel(self, date_index: int, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Scene metres -> fractional (row, col) where that point *appears* in date's image."""
        sx, sy = self.conditions[date_index].shift(self.pixel_size)
        return (np.asarray(y) - sy) / self.pixel_size, (np.asarray(x) - sx) / self.pixel_size
