"""Building a scene: the vector landscape of a synthetic area, drawn from a seed and a layout.

A *scene* (:class:`~pipeline.synthetic.objects.Scene`) is every object of the area as vector
geometry, and per date how the light, season and footprint look. :func:`build_scene` draws it
once per area, cheaply (about 25 s and 50 MB for a 40 km square with ~4000 dams), one kind of
object after another, each keeping its distance from what is already placed:

1. main streams cross the area west to east, one per ~3 km of height; tributaries run from
   sources anywhere to a junction on the nearest main stream (or, branching, the nearest
   channel); side channels (anabranches) leave a channel and rejoin it downstream;
2. lakes sit on tributaries, which flow through them (or start in them) and leave at an outlet;
3. roads cross the area; where one passes over a channel is a *road crossing*;
4. farm tracks cross small channels on *culverts*;
5. dams: one below most lake outlets, then on side channels and main channels (tributaries
   count as ``main_stream``: the main channel of their stream), with status over the dates;
6. the other look-alikes on channels: fallen trees, narrows, natural pools and off-channel
   ponds (both ``pond_without_dam``);
7. farm buildings in clusters beside the roads; the field grid; each date's conditions.

How many of each, and how far apart, is the *layout* (:mod:`pipeline.synthetic.layout`). The
default, ``natural``: about 2.4 dams and 2 hard negatives per km^2 (at least 3 dams and 4
negatives), so a dam with its pond spans tens of pixels of a 128-px tile at 1 m, and dams sit
at least 140 m apart (at most one per tile, mostly). ``balanced`` has as many dams in each
context, more look-alikes, and 100 m between dams.

Dates differ as real surveys do: dams are built (``new``: absent on the first date), breached
(``gone``: the pond drains to a muddy meadow and a broken barrier) or ``persisting``; fields
change crop; vegetation colour follows the season; sun direction, exposure and a colour tint
change; and each later date is shifted by a few pixels (footprint) and *misregistered* by a few
metres: its content sits that far from where its geotransform says it is.

The draws come from one random generator seeded with (seed, CRC-32 of the area name), in a
fixed order, so a scene depends on (area, dates, size, seed, pixel_size, layout) only.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.errors import InputError
from pipeline.files import check_area, parse_date
from pipeline.synthetic.geometry import (
    STEP_M,
    PointIndex,
    meander,
    respace,
    smooth_series,
    tangent,
    tangents,
)
from pipeline.synthetic.layout import DAM_CONTEXTS, Layout, get_layout
from pipeline.synthetic.objects import (
    Building,
    Dam,
    DateConditions,
    HardNegative,
    Lake,
    Polylines,
    Scene,
    Stream,
)

__all__ = [
    "MIN_SIZE",
    "MAX_SIZE",
    "MIN_EXTENT_M",
    "MARGIN_M",
    "build_scene",
    "check_scene_args",
    "parse_dates",
]

MIN_SIZE = 512  # px: below this a scene has no room for a stream with a dam and its pond
MAX_SIZE = 200_000
MIN_EXTENT_M = 400.0  # a scene narrower than this cannot hold a pond, a dam and spacing
MARGIN_M = 80.0  # objects are generated this far outside the area: shifted dates stay covered
ROAD_HALF_M = 3.4  # half-width of a road (m)
TRACK_HALF_M = 2.0  # half-width of a farm track (m)


# ---------------------------------------------------------------------------------------------
# Arguments


def check_scene_args(area: str, size: int, seed: int, pixel_size: float) -> None:
    """Raise :class:`InputError` naming the first unusable argument of a scene."""
    check_area(area)
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


def parse_dates(dates: Sequence[str | dt.date] | str | dt.date) -> tuple[dt.date, ...]:
    """Survey dates, oldest first and distinct (dam status is relative to the first date)."""
    if isinstance(dates, (str, dt.date)):
        dates = [dates]
    parsed = [parse_date(d, "date", "--dates 2023-06-01 2024-06-01") for d in dates]
    if not parsed:
        raise InputError("no dates given: give at least one survey date, e.g. --dates 2023-06-01 2024-06-01")
    listed = " ".join(x.isoformat() for x in parsed)
    for a, b in itertools.pairwise(parsed):
        if b == a:
            raise InputError(
                f"date {a.isoformat()} is given twice in --dates {listed}: each survey date must be distinct; drop the repeat"
            )
        if b < a:
            raise InputError(
                f"dates are out of order: {b.isoformat()} is listed after the later {a.isoformat()} in --dates "
                f"{listed}; list them oldest first, since dam status (new/gone/persisting) is relative to the first date"
            )
    return tuple(parsed)


# ---------------------------------------------------------------------------------------------
# The scene, one kind of object after another


def build_scene(
    area: str,
    dates: Sequence[str | dt.date],
    size: int,
    seed: int,
    pixel_size: float = 1.0,
    layout: str | Layout = "natural",
) -> Scene:
    """Draw the vector scene of ``area`` (``size`` x ``size`` px of ``pixel_size`` m) from ``seed``.

    ``layout`` (:mod:`pipeline.synthetic.layout`) sets how many objects of each kind there are.
    Cost grows with the number of objects (about area in km^2 x 20), not with pixels. Raises
    :class:`InputError` for unusable arguments.
    """
    check_scene_args(area, size, seed, pixel_size)
    dates = parse_dates(dates)
    layout = get_layout(layout)
    rng = np.random.default_rng([int(seed), zlib.crc32(area.encode())])
    S = size * pixel_size
    km2 = S * S / 1e6
    seeds = {name: int(rng.integers(0, 2**31)) for name in ("zone", "canopy", "field", "shore", "texture", "rip")}

    L = layout
    clearance = L.channel_clearance_m
    channels = _main_streams(rng, S)
    channels += _tributaries(rng, channels, S, max(2, round(km2 * L.tributaries_per_km2)), clearance, L.branching)
    n_side, n_lakes = max(1, round(km2 * L.side_channels_per_km2)), max(1, round(km2 * L.lakes_per_km2))
    if L.lakes_before_side_channels:
        lakes, outlets = _lakes(rng, _Network(channels), S, seeds["shore"], n_lakes, L)
        _add_side_channels(rng, channels, S, n_side, L, lakes, seeds["shore"])
    else:
        _add_side_channels(rng, channels, S, n_side, L)
        lakes, outlets = _lakes(rng, _Network(channels), S, seeds["shore"], n_lakes, L)
    network = _Network(channels)
    roads = _roads(rng, S, L.road_spacing_m)
    place = _Placement(rng, network, lakes, roads, S, seeds["shore"], L)

    negatives = _road_crossings(place, roads)
    tracks, culverts = _tracks(rng, place, n=max(1, round(km2 * L.tracks_per_km2)))
    negatives += culverts
    if L.dams_per_context_per_km2 is None:
        targets = {"all": max(3, round(km2 * L.dams_per_km2))}
    else:
        targets = dict.fromkeys(DAM_CONTEXTS, max(1, round(km2 * L.dams_per_context_per_km2)))
    dam_drafts = _dams(rng, place, outlets, targets)
    dams = _dam_statuses(rng, dam_drafts, len(dates), by_context=L.dams_per_context_per_km2 is not None)
    negatives += _channel_negatives(rng, place, max(4, round(km2 * L.negatives_per_km2)), L.channel_negative_kinds)
    hard_negatives = tuple(
        HardNegative(id=f"neg-{j + 1:03d}", seed=int(rng.integers(0, 2**31)), **{k: (float(v) if k != "kind" else v) for k, v in n.items()})
        for j, n in enumerate(negatives)
    )
    buildings = _buildings(rng, place, roads, n=max(1, round(km2 * 0.4)))

    streams = tuple(Stream(id=k, kind=c.kind, points=c.points, half=np.asarray(c.half, float)) for k, c in enumerate(channels))
    ang = rng.uniform(-0.5, 0.5)
    epsg = 32618  # WGS 84 / UTM zone 18N: beaver country (Adirondacks, Ontario)
    h = zlib.crc32(area.encode())
    origin = (float(440_000 + (h % 50) * 1000), float(4_900_000 + ((h >> 8) % 200) * 1000 + S))
    conditions = _conditions(rng, dates)
    field_size = (float(rng.uniform(160, 260)), float(rng.uniform(90, 150)))
    return Scene(
        area=area,
        seed=int(seed),
        size=int(size),
        pixel_size=float(pixel_size),
        epsg=epsg,
        origin=origin,
        conditions=conditions,
        streams=streams,
        water=Polylines.build([(s.points, s.half) for s in streams]),
        roads=Polylines.build([(r, np.full(len(r), ROAD_HALF_M)) for r in roads]),
        tracks=Polylines.build([(t, np.full(len(t), TRACK_HALF_M)) for t in tracks]),
        lakes=tuple(lakes),
        dams=dams,
        negatives=hard_negatives,
        buildings=tuple(buildings),
        field_angle=(math.cos(ang), math.sin(ang)),
        field_size=field_size,
        seeds=seeds,
    )


@dataclass
class _Channel:
    """A stream while the scene is drawn: its half-widths still change (narrows, pools)."""

    kind: str  # "main", "tributary", "side"
    points: np.ndarray  # (n, 2) m, upstream to downstream
    half: np.ndarray  # (n,) m
    parent: int | None = None  # a side channel's parent channel


class _Network:
    """All channels' vertices in one array, to find the channel and vertex near a point."""

    def __init__(self, channels: list[_Channel]):
        self.channels = channels
        self.points = np.vstack([c.points for c in channels])  # (N, 2)
        self.owner = np.concatenate([np.full(len(c.points), k) for k, c in enumerate(channels)])  # (N,) channel
        self.first = np.concatenate([[0], np.cumsum([len(c.points) for c in channels])])  # channel k's first row
        self.index = PointIndex(self.points, cell=120.0)


class _ChannelIndex:
    """The vertices of the channels drawn so far, to keep a new channel clear of them."""

    def __init__(self, channels: list[_Channel]):
        self.index = PointIndex(np.zeros((0, 2)), cell=200.0)
        self.owner: list[int] = []
        for k, c in enumerate(channels):
            self.add(k, c.points)

    def add(self, k: int, points: np.ndarray) -> None:
        for x, y in points.tolist():
            self.index.add(x, y)
        self.owner += [k] * len(points)

    def clear(self, points: np.ndarray, r: float, allow: int | None = None) -> bool:
        """Is every one of ``points`` (every other one, STEP_M apart) at least ``r`` m from
        every channel but ``allow``?"""
        for x, y in points[::2].tolist():
            if any(self.owner[j] != allow for j in self.index.near(x, y, r)):
                return False
        return True


class _Placement:
    """What is already placed where, so that the next object keeps its distance.

    Dams keep ``dam_spacing`` m from each other and ``neg_spacing`` m from hard negatives, which
    keep ``neg_spacing`` m from everything: one object per 128-px tile, most of the time.
    """

    def __init__(self, rng, network: _Network, lakes: list[Lake], roads: list[np.ndarray], S: float, shore_seed: int, layout: Layout):
        self.rng = rng
        self.network = network
        self.lakes = lakes
        self.road_index = PointIndex(np.vstack(roads), cell=120.0)
        self.S = S
        self.shore_seed = shore_seed
        self.dams = PointIndex(np.zeros((0, 2)), cell=200.0)
        self.ponds = PointIndex(np.zeros((0, 2)), cell=200.0)  # the middle of each dam's pond
        self.negatives = PointIndex(np.zeros((0, 2)), cell=200.0)
        self.dam_spacing = min(layout.dam_spacing_m, S / 5)
        self.neg_spacing = min(layout.negative_spacing_m, S / 8)
        self.layout = layout
        self.clear_of_ponds = layout.clear_of_ponds

    def stream_vertex(self, kinds: tuple[str, ...] = ("main", "tributary", "side"), inner: float = 0.0) -> tuple[int, int] | None:
        """A random vertex (uniform along channels) inside the area, ``inner`` m from its edge."""
        net, S = self.network, self.S
        for _ in range(50):
            j = int(self.rng.integers(0, len(net.points)))
            k = int(net.owner[j])
            i = j - int(net.first[k])
            c = net.channels[k]
            n = len(c.points)
            if c.kind not in kinds or not 10 <= i < n - 10:
                continue
            x, y = c.points[i]
            if inner <= x < S - inner and inner <= y < S - inner:
                return k, i
        return None

    def clear(self, k: int, x: float, y: float, r: float, dam: bool = False, allow: tuple[int, ...] = ()) -> bool:
        """No other channel (but ``allow``; k = -1: none), road, lake, dam or hard negative too near (x, y)."""
        owner = self.network.owner
        if any(owner[j] != k and owner[j] not in allow for j in self.network.index.near(x, y, min(r, 119))):
            return False
        return self.clear_of_placed(x, y, r, dam) and not self.near_lake(x, y, 1.6)

    def clear_of_placed(self, x: float, y: float, r: float, dam: bool) -> bool:
        """No road within r + 10 m, no dam or hard negative (or, if the layout says so and this is
        not a dam, the middle of a pond) within the spacing of (x, y)."""
        if len(self.road_index.near(x, y, min(r + 10, 119))):
            return False
        if len(self.dams.near(x, y, self.dam_spacing if dam else self.neg_spacing)) or len(self.negatives.near(x, y, self.neg_spacing)):
            return False
        return dam or not self.clear_of_ponds or not len(self.ponds.near(x, y, self.neg_spacing))

    def near_lake(self, x: float, y: float, level: float) -> bool:
        """Is (x, y) inside ``level`` times some lake's shore function? (bbox test first)"""
        for lake in self.lakes:
            b = lake.bbox
            near_box = b[0] - 200 < x < b[2] + 200 and b[1] - 200 < y < b[3] + 200
            if near_box and lake.shore_at([x], [y], self.shore_seed)[0] < level:
                return True
        return False


# --- streams ------------------------------------------------------------------------------


def _main_streams(rng, S: float) -> list[_Channel]:
    """Main streams west to east across the area, one per ~3 km of height, 6-9 m wide."""
    lo, hi = -MARGIN_M, S + MARGIN_M
    out = []
    n_main = max(1, round(S / 3000))
    for i in range(n_main):
        band = S / n_main
        y0 = (i + 0.5) * band + rng.uniform(-0.2, 0.2) * band
        y1 = (i + 0.5) * band + rng.uniform(-0.2, 0.2) * band
        pts = meander(rng, (lo - 20, y0), (hi + 20, y1), rng.uniform(0.75, 1.0), rng.uniform(220, 340))
        half = rng.uniform(3.2, 4.6) * smooth_series(rng, len(pts), 40, 0.15)
        out.append(_Channel("main", pts, half))
    return out


def _tributaries(rng, mains: list[_Channel], S: float, n: int, clearance: float | None, branching: bool = False) -> list[_Channel]:
    """``n`` tributaries from sources 350-1800 m from a main stream to a junction on it, widening downstream.

    ``branching``: a tributary joins the nearest channel drawn so far, main stream or
    tributary, so that the network branches. With a ``clearance`` (m), a tributary keeps that
    far from every channel drawn before it except over its last 3 x ``clearance`` m, where it
    joins (otherwise it may cross them).
    """
    lo, hi = -MARGIN_M, S + MARGIN_M
    points = np.vstack([c.points for c in mains])  # the candidate junctions
    owner = np.concatenate([np.full(len(c.points), k) for k, c in enumerate(mains)])
    pos_of = np.concatenate([np.arange(len(c.points)) for c in mains])
    drawn = _ChannelIndex(mains) if clearance is not None else None
    out: list[_Channel] = []
    for _ in range(n * 4):
        if len(out) >= n:
            break
        src = rng.uniform(lo, hi, 2)
        d2 = ((points - src) ** 2).sum(axis=1)
        j = int(np.argmin(d2))
        dist = math.sqrt(d2[j])
        if not 350 < dist < 1800:
            continue
        parent = (mains + out)[int(owner[j])].points
        pos = min(int(pos_of[j]) + int(rng.integers(10, 60)), len(parent) - 2)  # join a little downstream
        target = parent[pos]
        pts = meander(rng, src, target, rng.uniform(0.5, 0.85), rng.uniform(110, 200))
        ramp = np.linspace(0.0, 1.0, len(pts))
        half = (1.4 + 1.3 * ramp * rng.uniform(0.7, 1.2)) * smooth_series(rng, len(pts), 30, 0.12)
        k = len(mains) + len(out)
        if drawn is not None:
            if not drawn.clear(pts[: -int(3 * clearance / STEP_M)], clearance):
                continue
            drawn.add(k, pts)
        if branching:
            points = np.vstack([points, pts])
            owner = np.concatenate([owner, np.full(len(pts), k)])
            pos_of = np.concatenate([pos_of, np.arange(len(pts))])
        out.append(_Channel("tributary", pts, half))
    return out


def _add_side_channels(
    rng,
    channels: list[_Channel],
    S: float,
    n: int,
    layout: Layout,
    lakes: Sequence[Lake] = (),
    shore_seed: int = 0,
) -> None:
    """Append ``n`` side channels: anabranches that leave a channel and rejoin it 200-480 m on.

    A side channel swings 28-45 m away from its parent; its parent may be any channel drawn so
    far except another side channel (the candidates include those appended here), each as
    likely as the others, or as likely as its length (``layout.side_parent_by_length``). With
    ``layout.channel_clearance_m``, it keeps that far from every channel but its parent, never
    folds back on itself, and has its vertices re-spaced STEP_M apart. It stays out of
    ``lakes`` (and their margin: 1.6 x the shore function, as dams do).
    """
    clearance = layout.channel_clearance_m
    drawn = _ChannelIndex(channels) if clearance is not None else None
    lengths = np.array([len(c.points) for c in channels if c.kind != "side"])  # side channels come last
    n_side = 0
    for _ in range(n * 6):
        if n_side >= n:
            break
        if layout.side_parent_by_length:
            parent_k = int(np.searchsorted(np.cumsum(lengths), rng.integers(0, lengths.sum()), side="right"))
        else:
            parent_k = int(rng.integers(0, len(channels)))
        parent = channels[parent_k]
        if parent.kind == "side":
            continue
        n_pts = len(parent.points)
        length = int(rng.uniform(200, 480) / STEP_M)
        if n_pts < length + 60:
            continue
        i0 = int(rng.integers(20, n_pts - length - 20))
        seg = parent.points[i0 : i0 + length + 1]
        centre = seg[len(seg) // 2]
        if not (0 < centre[0] < S and 0 < centre[1] < S):
            continue
        tang = tangents(seg, 6)
        normal = np.stack([-tang[:, 1], tang[:, 0]], axis=1)
        s = np.linspace(0, 1, len(seg))
        off = rng.choice([-1, 1]) * rng.uniform(28, 45) * np.sin(np.pi * s) ** 0.7 * smooth_series(rng, len(seg), 25, 0.15)
        pts = seg + normal * off[:, None]
        if drawn is not None:
            # Offset to the inside of a bend tighter than the offset, the course folds back on
            # itself; offset to the inside of a gentler one, its vertices crowd: re-space them.
            steps = np.diff(pts, axis=0)
            if ((steps * np.diff(seg, axis=0)).sum(axis=1) <= 0).any():
                continue
            pts = respace(pts, STEP_M)
        half = rng.uniform(1.2, 1.9) * smooth_series(rng, len(pts), 20, 0.15)
        half[:4] = half[-4:] = 0.8  # they narrow where they leave and rejoin
        if any(_crosses_lake(lake, pts, shore_seed) for lake in lakes):
            continue
        if drawn is not None:
            if not drawn.clear(pts, clearance, allow=parent_k):
                continue
            drawn.add(len(channels), pts)
        channels.append(_Channel("side", pts, half, parent=parent_k))
        n_side += 1


def _crosses_lake(lake: Lake, pts: np.ndarray, shore_seed: int, level: float = 1.6) -> bool:
    """Does the path come within ``level`` x the shore function of ``lake``? (bbox test first)"""
    b = lake.bbox
    m = 0.6 * (b[2] - b[0])  # level 1.6 reaches at most 0.6 of the lake's size beyond its box
    box = (pts[:, 0] > b[0] - m) & (pts[:, 0] < b[2] + m) & (pts[:, 1] > b[1] - m) & (pts[:, 1] < b[3] + m)
    return bool(box.any() and (lake.shore_at(pts[box, 0], pts[box, 1], shore_seed) < level).any())


# --- lakes --------------------------------------------------------------------------------


def _lakes(rng, network: _Network, S: float, shore_seed: int, n: int, layout: Layout) -> tuple[list[Lake], list[tuple[int, int]]]:
    """Up to ``n`` lakes on tributaries, and the (channel, vertex) of each one's outlet.

    A lake is a disc (radius: ``layout.lake_radius_m``) on a tributary long enough, plus 2-4
    smaller discs, apart from the other lakes (``layout.lake_gap``) and clear of other
    channels; the tributary must enter it once (or start in it) and leave it once.
    """
    lakes: list[Lake] = []
    outlets: list[tuple[int, int]] = []
    channels = network.channels
    tribs = [k for k, c in enumerate(channels) if c.kind == "tributary" and len(c.points) > layout.lake_min_vertices]
    gap_a, gap_b = layout.lake_gap
    for _ in range(n * 8):
        if len(lakes) >= n or not tribs:
            break
        k = tribs[int(rng.integers(0, len(tribs)))]
        pts = channels[k].points
        i = int(len(pts) * rng.uniform(*layout.lake_along))
        cx, cy = pts[i]
        R = rng.uniform(*layout.lake_radius_m) * min(1.0, S / 1500)
        if not (R < cx < S - R and R < cy < S - R):
            continue
        near = network.index.near(cx, cy, min(R * 2.2 + 40, 119))
        if any(network.owner[j] != k for j in near) or any(math.hypot(cx - l.circles[0, 0], cy - l.circles[0, 1]) < gap_a * R + gap_b for l in lakes):
            continue
        tang = tangent(pts, i, 8)
        circles = [(cx, cy, R)]
        for _c in range(int(rng.integers(2, 5))):
            a = rng.uniform(0, 2 * math.pi)
            d = rng.uniform(0.3, 0.6) * R
            circles.append((cx + d * math.cos(a) - tang[0] * d * 0.3, cy + d * math.sin(a) - tang[1] * d * 0.3, rng.uniform(0.4, 0.75) * R))
        circles = np.asarray(circles)
        r_max = float((np.hypot(circles[:, 0] - cx, circles[:, 1] - cy) + circles[:, 2]).max()) * 1.35 + 4
        lake = Lake(circles=circles, bbox=(cx - r_max, cy - r_max, cx + r_max, cy + r_max))
        inside = lake.shore_at(pts[:, 0], pts[:, 1], shore_seed) < 1.0
        out = np.nonzero(~inside[i:])[0]
        if len(out) == 0 or inside[: max(i - int(r_max / STEP_M) - 2, 0)].any() or inside[i + out[0] :].any():
            continue  # the stream must enter once and leave once
        lakes.append(lake)
        outlets.append((k, i + int(out[0])))
    return lakes, outlets


# --- roads, tracks and their crossings ----------------------------------------------------


def _roads(rng, S: float, spacing: float) -> list[np.ndarray]:
    """Gently curving roads right across the area, north-south or east-west, one per ``spacing`` m of its edge."""
    lo, hi = -MARGIN_M, S + MARGIN_M
    roads = []
    for _ in range(max(1, round(S / spacing))):
        if rng.random() < 0.5:
            a, b = (rng.uniform(0, S), lo - 20), (rng.uniform(0, S), hi + 20)
        else:
            a, b = (lo - 20, rng.uniform(0, S)), (hi + 20, rng.uniform(0, S))
        roads.append(meander(rng, a, b, rng.uniform(0.08, 0.2), rng.uniform(900, 1600), wander=0.005))
    return roads


def _road_crossings(place: _Placement, roads: list[np.ndarray]) -> list[dict]:
    """A ``road_crossing`` wherever a road passes within 5 m of a channel (at most one per 40 m of road)."""
    net, S = place.network, place.S
    negatives = []
    for road in roads:
        last = None
        for x, y in road[::2]:
            hit = net.index.near(x, y, 5.0)
            if len(hit) == 0 or not (0 <= x < S and 0 <= y < S):
                continue
            if last is not None and math.hypot(x - last[0], y - last[1]) < 40:
                continue
            last = (x, y)
            j = int(hit[0])
            k = int(net.owner[j])
            tang = tangent(net.channels[k].points, j - int(net.first[k]), 3)
            negatives.append(dict(kind="road_crossing", x=x, y=y, ux=tang[0], uy=tang[1], length=ROAD_HALF_M, width=0.0))
            place.negatives.add(x, y)
    return negatives


def _tracks(rng, place: _Placement, n: int) -> tuple[list[np.ndarray], list[dict]]:
    """Up to ``n`` farm tracks, each crossing a tributary or side channel on a ``culvert``,
    nearly square to it, reaching ``layout.track_half_length_m`` either side."""
    tracks, negatives = [], []
    channels = place.network.channels
    for _ in range(n * 10):
        if len(tracks) >= n:
            break
        pick = place.stream_vertex(("tributary", "side"), inner=60)
        if pick is None:
            continue
        k, i = pick
        x, y = channels[k].points[i]
        if not place.clear(k, x, y, 40):
            continue
        t = tangent(channels[k].points, i, 3)
        ang = math.atan2(t[1], t[0]) + math.pi / 2 + rng.uniform(-0.4, 0.4)
        half_len = rng.uniform(*place.layout.track_half_length_m)
        d = np.array([math.cos(ang), math.sin(ang)])
        tracks.append(meander(rng, (x, y) - d * half_len, (x, y) + d * half_len, 0.1, 600, wander=0.0))
        negatives.append(dict(kind="culvert", x=x, y=y, ux=t[0], uy=t[1], length=2.2, width=0.0))
        place.negatives.add(x, y)
    return tracks, negatives


# --- dams ---------------------------------------------------------------------------------


def _dam_draft(rng, place: _Placement, k: int, i: int, context: str, pond_length: float, pond_half: float) -> dict:
    """The geometry of a dam on vertex ``i`` of channel ``k`` (everything but its status)."""
    c = place.network.channels[k]
    x, y = c.points[i]
    t = tangent(c.points, i, 4)
    ch = float(c.half[i])
    # The pond floods the channel upstream: widest at the barrier, narrowing to the channel.
    n_up = min(i, int(pond_length * 1.15 / STEP_M) + 2)
    line = c.points[i - n_up : i + 1][::-1]
    dist = np.arange(len(line)) * STEP_M
    prof = np.clip(1 - (dist / pond_length) ** 2, 0, 1) ** 0.6
    pond = Polylines.build([(line, np.maximum(c.half[i - n_up : i + 1][::-1] * 1.3, pond_half * prof))], chunk=8)
    place.dams.add(x, y)
    place.ponds.add(x - t[0] * pond_length * 0.5, y - t[1] * pond_length * 0.5)
    return dict(
        x=float(x), y=float(y), ux=float(t[0]), uy=float(t[1]), context=context,
        pond_length=float(pond_length), pond_half=float(pond_half),
        barrier_half=float(pond_half + rng.uniform(1.5, 4.0)),
        curve=float(rng.uniform(0.12, 0.3) * pond_half), thickness=float(rng.uniform(2.0, 3.2)),
        channel_half=ch, seed=int(rng.integers(0, 2**31)), stream_id=k, vertex=i, pond=pond,
    )  # fmt: skip


def _dams(rng, place: _Placement, outlets: list[tuple[int, int]], targets: dict[str, int]) -> list[dict]:
    """Dams: below a share of lake outlets, then on side channels and main channels, where the
    pond fits clear of everything else.

    ``targets`` is either {"all": n}: n dams in all, a fixed share of tries on side channels
    (natural), or the number of each context (balanced): lakes beyond the lake_outlet target
    keep their outlets free.
    """
    check_outlets = place.clear_of_ponds
    channels = place.network.channels
    dams = []
    for k, i in outlets:
        if len(dams) >= targets.get("lake_outlet", len(outlets)):
            break
        if rng.random() < place.layout.outlet_dam_chance:
            i2 = min(i + int(rng.integers(2, 6)), len(channels[k].points) - 2)
            pond_length, pond_half = rng.uniform(14, 24), rng.uniform(9, 16)
            if check_outlets and not place.clear_of_placed(*channels[k].points[i2], pond_half + 12, dam=True):
                continue
            dams.append(_dam_draft(rng, place, k, i2, "lake_outlet", pond_length, pond_half))
    limit = sum(targets.values()) * 60
    attempts = 0
    while attempts < limit:
        share = _side_share(place.layout, dams, targets)
        if share is None:
            break
        attempts += 1
        side = rng.random() < share
        pick = place.stream_vertex(("side",) if side else ("main", "tributary"), inner=45)
        if pick is None:
            continue
        k, i = pick
        c = channels[k]
        ch = c.half[i]
        pond_half = float(np.clip(ch * rng.uniform(3.0, 6.0) + rng.uniform(4, 10), 9, 34))
        allow = ()
        if c.kind == "side":
            # A side channel runs 28-45 m from its parent: a smaller pond that stays clear of it.
            pond_half = float(rng.uniform(8, 13))
            allow = (c.parent,)
            parent_near = place.network.index.near(*c.points[i], pond_half + 10)
            if any(place.network.owner[j] == allow[0] for j in parent_near):
                continue
        pond_length = float(min(pond_half * rng.uniform(1.6, 2.8), 80.0))
        if i < pond_length / STEP_M + 8 or i > len(c.points) - 10:
            continue
        x, y = c.points[i]
        t = tangent(c.points, i, 4)
        cx, cy = x - t[0] * pond_length * 0.5, y - t[1] * pond_length * 0.5
        if not place.clear(k, x, y, pond_half + 12, dam=True, allow=allow):
            continue
        if not place.clear(k, cx, cy, pond_length * 0.6 + pond_half, dam=True, allow=allow):
            continue
        context = "side_channel" if c.kind == "side" else "main_stream"
        dams.append(_dam_draft(rng, place, k, i, context, pond_length, pond_half))
    return dams


def _side_share(layout: Layout, dams: list[dict], targets: dict[str, int]) -> float | None:
    """The chance that the next try is on a side channel, or None when the targets are met."""
    if "all" in targets:
        return layout.side_dam_share if len(dams) < targets["all"] else None
    short = {c for c in ("main_stream", "side_channel") if sum(d["context"] == c for d in dams) < targets[c]}
    if not short:
        return None
    return 0.5 if len(short) == 2 else float("side_channel" in short)


def _dam_statuses(rng, drafts: list[dict], n_dates: int, by_context: bool = False) -> tuple[Dam, ...]:
    """Status over the dates: half persist, a quarter are new, a quarter are gone (shuffled).

    A new dam appears on a random later date and stands from then on; a gone dam stands until
    a random later date. With one date every dam persists. ``by_context``: the same mix within
    each context (else over all dams, so a context's mix varies by chance).
    """
    pattern = ["persisting", "new", "gone", "persisting"]
    groups = [list(range(len(drafts)))]
    if by_context:
        groups = [[j for j, d in enumerate(drafts) if d["context"] == c] for c in DAM_CONTEXTS]
    statuses = [""] * len(drafts)
    for group in groups:
        mix = [pattern[j % 4] if n_dates > 1 else "persisting" for j in range(len(group))]
        rng.shuffle(mix)
        for j, status in zip(group, mix):
            statuses[j] = status
    dams = []
    for j, (d, status) in enumerate(zip(drafts, statuses)):
        if status == "persisting":
            exists = (True,) * n_dates
        else:
            change = int(rng.integers(1, n_dates))  # first date on which the change is seen
            exists = tuple((k >= change) == (status == "new") for k in range(n_dates))
        dams.append(Dam(id=f"dam-{j + 1:03d}", status=status, exists=exists, **d))
    return tuple(dams)


# --- look-alikes on channels --------------------------------------------------------------


def _channel_negatives(rng, place: _Placement, n: int, kinds: Sequence[str]) -> list[dict]:
    """Up to ``n`` look-alikes on channels, ``kinds`` in turn (fallen_tree, narrows,
    pond_without_dam). Narrows and natural pools change the channel's width."""
    negatives = []
    attempts = 0
    while len(negatives) < n and attempts < n * 60:
        attempts += 1
        kind = kinds[len(negatives) % len(kinds)]
        pick = place.stream_vertex(inner=40)
        if pick is None:
            continue
        k, i = pick
        c = place.network.channels[k]
        x, y = c.points[i]
        t = tangent(c.points, i, 4)
        ch = float(c.half[i])
        if not 12 < i < len(c.points) - 12 or not place.clear(k, x, y, 30):
            continue
        if kind == "fallen_tree":
            neg = dict(kind=kind, x=x, y=y, ux=t[0], uy=t[1], length=2 * ch + rng.uniform(7, 15), width=rng.uniform(1.0, 1.5))
        elif kind == "narrows":
            neg = _narrows(rng, c, i, x, y, t, ch)
        elif rng.random() < 0.5:
            neg = _natural_pool(rng, place, k, c, i, x, y, t)
        else:
            neg = _off_channel_pond(rng, place, x, y, t)
        if neg is None:
            continue
        negatives.append(neg)
        place.negatives.add(neg["x"], neg["y"])
    return negatives


def _narrows(rng, c: _Channel, i: int, x: float, y: float, t: np.ndarray, ch: float) -> dict:
    """The channel pinches to 50-60 % of its width over 2-3 vertices either side of ``i``."""
    n_span = int(rng.integers(2, 4))
    prof = np.ones(len(c.half))
    j = np.arange(len(prof))
    prof -= rng.uniform(0.4, 0.5) * np.clip(1 - np.abs(j - i) / (n_span + 1), 0, 1)
    c.half = c.half * prof
    return dict(kind="narrows", x=x, y=y, ux=t[0], uy=t[1], length=ch + 4, width=0.0)


def _natural_pool(rng, place: _Placement, k: int, c: _Channel, i: int, x: float, y: float, t: np.ndarray) -> dict | None:
    """A natural pool: the channel widens smoothly by 7-15 m and narrows again, with no barrier."""
    n_span = int(rng.uniform(20, 45) / STEP_M)
    j = np.arange(len(c.half))
    bump = np.clip(1 - ((j - i) / n_span) ** 2, 0, None) ** 1.5
    width = rng.uniform(7, 15)
    if not place.clear(k, x, y, width + 25):
        return None
    c.half = np.maximum(c.half, c.half + width * bump)
    return dict(kind="pond_without_dam", x=x, y=y, ux=t[0], uy=t[1], length=width + 6, width=-1.0)


def _off_channel_pond(rng, place: _Placement, x: float, y: float, t: np.ndarray) -> dict | None:
    """An off-channel pond (oxbow or farm pond) of 8-16 m radius, 30-55 m beside the stream."""
    side = rng.choice([-1, 1])
    off = rng.uniform(30, 55)
    r = rng.uniform(8, 16)
    px, py = x - t[1] * side * off, y + t[0] * side * off
    S = place.S
    if not (0 <= px < S and 0 <= py < S) or len(place.network.index.near(px, py, r + 12)) or not place.clear(-1, px, py, r + 12):
        return None
    return dict(kind="pond_without_dam", x=px, y=py, ux=t[0], uy=t[1], length=r, width=1.0)


# --- buildings and dates ------------------------------------------------------------------


def _buildings(rng, place: _Placement, roads: list[np.ndarray], n: int) -> list[Building]:
    """``n`` farms of 2-5 buildings 14-38 m beside a road, away from water and each other."""
    S = place.S
    buildings: list[Building] = []
    for _ in range(n):
        road = roads[int(rng.integers(0, len(roads)))]
        i = int(rng.integers(5, len(road) - 5))
        t = tangent(road, i, 3)
        side = rng.choice([-1, 1])
        for _b in range(int(rng.integers(2, 6))):
            along = rng.uniform(-40, 40)
            off = side * rng.uniform(14, 38)
            bx = road[i, 0] + t[0] * along - t[1] * off
            by = road[i, 1] + t[1] * along + t[0] * off
            hl, hw = rng.uniform(5, 12), rng.uniform(4, 8)
            if len(place.network.index.near(bx, by, 40)) or len(place.road_index.near(bx, by, hl + 6)) or not (0 < bx < S and 0 < by < S):
                continue
            if any(math.hypot(bx - b.x, by - b.y) < hl + b.half_length + 4 for b in buildings):
                continue
            if place.near_lake(bx, by, 1.5):
                continue
            rot = rng.choice([0, 1])
            ux, uy = (t[0], t[1]) if rot == 0 else (-t[1], t[0])
            buildings.append(Building(float(bx), float(by), float(ux), float(uy), hl, hw, rng.uniform(3, 7), int(rng.integers(0, 4))))
    return buildings


def _conditions(rng, dates: tuple[dt.date, ...]) -> tuple[DateConditions, ...]:
    """Each date's light, season and footprint; the first date defines the footprint.

    Greenness follows the day of the year (peak mid-July); later dates are shifted by up to
    6 px and misregistered by 1.5-4 m; crops rotate only when the year changes.
    """
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
