"""Layouts: how many objects of each kind a synthetic area holds, and the rules that place them.

A *layout* is the set of densities and spacing rules that :func:`~pipeline.synthetic.scene.build_scene`
follows: the seed decides where things go, the layout how many of them there are. Two exist:

- ``natural`` (the default): the landscape as first designed, about 2.4 dams per km^2 where
  they fall -- mostly on main channels (6144 px at 1 m: ~54 main-stream, ~9 side-channel and
  ~5 lake-outlet dams). Its scenes, and so its files, are kept byte for byte.
- ``balanced``: the same kind of landscape, richer in small lakes and anabranches, for
  evaluating a detector per context and per look-alike. It places as many dams at lake
  outlets and on side channels as on main channels (1.55 per km^2 each, 4.65 in all) with
  the same status mix in each, and a third of the channel look-alikes of each kind. 3072 px
  at 2 m (6.1 km, 37.7 km^2) holds 59 dams of each context -- 44 standing on each of two dates
  -- and 30 or more look-alikes of each kind.

How ``balanced`` stays a landscape rather than a grid of stamps:

- every object is still placed at random along the channels by rejection, under *minimum*
  distances only (dams 100 m apart, look-alikes 50 m from dams, from ponds and from each
  other), so spacing varies (dam to nearest dam: 100 m to 250 m and more) and a look-alike may
  share a 128 m window with a dam (about one in eight does) or lie far from any;
- the stream network branches (a tributary joins the nearest channel, main or tributary), and
  tributaries and side channels keep 25 m from the other channels instead of crossing them;
- lakes are small (30-80 m radius, like the ponds and kettle lakes of beaver country), on
  tributaries anywhere from the source (a headwater lake) to the middle; they are drawn before
  side channels, which then go around them; about one lake in four keeps its outlet free;
- no object is drawn differently: a dam, a lake or a fallen tree looks as in ``natural``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import InputError

__all__ = ["DAM_CONTEXTS", "LOOK_ALIKE_KINDS", "Layout", "LAYOUTS", "get_layout"]

DAM_CONTEXTS = ("main_stream", "side_channel", "lake_outlet")
LOOK_ALIKE_KINDS = ("road_crossing", "culvert", "fallen_tree", "narrows", "pond_without_dam")


@dataclass(frozen=True)
class Layout:
    """Densities (per km^2 of the area unless stated) and spacing rules of a scene."""

    name: str
    # Streams. Counts per km^2 are targets: as many as fit in a fixed number of tries.
    tributaries_per_km2: float = 0.55
    branching: bool = False  # tributaries join the nearest channel drawn so far (else the nearest main stream)
    side_channels_per_km2: float = 0.3
    side_parent_by_length: bool = False  # a side channel's parent is picked by its length (else any channel alike)
    channel_clearance_m: float | None = None  # tributaries and side channels keep this far from others; None: unchecked
    # Lakes, each on a tributary that flows out of it.
    lakes_per_km2: float = 0.15
    lake_radius_m: tuple[float, float] = (55.0, 140.0)  # main disc's radius, uniform in this range
    lake_along: tuple[float, float] = (0.3, 0.55)  # where on its tributary (fraction of its length from the source)
    lake_min_vertices: int = 200  # the tributary must be longer than this many vertices (x STEP_M)
    lake_gap: tuple[float, float] = (3.0, 200.0)  # (a, b): lake centres at least a * radius + b m apart
    lakes_before_side_channels: bool = False  # draw lakes first, side channels around them (else the reverse)
    # Roads and farm tracks.
    road_spacing_m: float = 2200.0  # one road across the area per this much of its edge
    tracks_per_km2: float = 0.35
    track_half_length_m: tuple[float, float] = (120.0, 300.0)  # a track reaches this far either side of its culvert
    # Dams.
    dams_per_km2: float = 2.4  # all contexts together, where they fall (used when the next is None)
    dams_per_context_per_km2: float | None = None  # this many of each context, each with the same status mix
    side_dam_share: float = 0.35  # with dams_per_km2: share of placement tries on side channels
    outlet_dam_chance: float = 0.85  # chance that a lake gets a dam below its outlet
    dam_spacing_m: float = 140.0  # dams at least this far apart
    # Look-alikes on channels (road crossings and culverts come with roads and tracks).
    negatives_per_km2: float = 2.0
    negative_spacing_m: float = 70.0  # from dams, and from each other
    channel_negative_kinds: tuple[str, ...] = ("fallen_tree", "narrows", "pond_without_dam", "fallen_tree", "pond_without_dam")
    clear_of_ponds: bool = False  # look-alikes keep negative_spacing_m from ponds too; outlet dams keep every spacing


NATURAL = Layout("natural")

BALANCED = Layout(
    "balanced",
    tributaries_per_km2=1.5,
    branching=True,
    side_channels_per_km2=3.0,
    side_parent_by_length=True,
    channel_clearance_m=25.0,
    lakes_per_km2=2.2,
    lake_radius_m=(30.0, 80.0),
    lake_along=(0.0, 0.6),
    lake_min_vertices=60,
    lake_gap=(2.0, 120.0),
    lakes_before_side_channels=True,
    road_spacing_m=1100.0,
    tracks_per_km2=0.9,
    track_half_length_m=(60.0, 160.0),
    dams_per_context_per_km2=1.55,
    outlet_dam_chance=1.0,
    dam_spacing_m=100.0,
    negatives_per_km2=2.4,
    negative_spacing_m=50.0,
    channel_negative_kinds=("fallen_tree", "narrows", "pond_without_dam"),
    clear_of_ponds=True,
)

LAYOUTS = {layout.name: layout for layout in (NATURAL, BALANCED)}


def get_layout(layout: str | Layout) -> Layout:
    """The layout named ``layout`` (or ``layout`` itself); InputError for an unknown name."""
    if isinstance(layout, Layout):
        return layout
    if layout not in LAYOUTS:
        raise InputError(f"--layout {layout!r} is not a layout; choose one of {', '.join(LAYOUTS)}")
    return LAYOUTS[layout]
