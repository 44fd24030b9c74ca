"""Change between two surveys of one area: which objects are new, gone or persisting.

Two surveys of one place never share a pixel grid: real surveys are off by metres and a row
(the NAIP dates here move by up to 3 m and differ in height). So change is never decided by
array index, but on **objects in map coordinates** (:func:`compare_maps`):

1. each survey is scored on its own output grid (:func:`pipeline.detect.detect_survey`);
2. the *objects* are the detections of both dates — the peaks of each date's probability map at
   or above ``high`` (:func:`pipeline.detections.find_peaks`) — pooled strongest first, a peak
   within ``radius`` metres of a stronger one being the same object;
3. each object's probability *on each date* is the largest of that date's map within ``reach``
   metres of the object (a detection shifted by misregistration between flights still counts
   as the same place); where the date has no scored cell within reach, it is nodata;
4. each object is classified with hysteresis, so that noise around one threshold does not
   flicker (``high`` > ``low``, by default the model's decision threshold t and t / 2):

   ==============  =====================================================================
   ``new``         after ≥ high, before ≤ low, after − before ≥ min_difference
   ``gone``        before ≥ high, after ≤ low, before − after ≥ min_difference
   ``persisting``  both > low and at least one ≥ high (present on both dates)
   ``uncertain``   anything else: between the thresholds on one date (kept, not a change)
   ==============  =====================================================================

The rules are symmetric: swapping the dates swaps ``new`` and ``gone``. The **change raster**
is drawn from the objects, so the two agree by construction: on the before survey's output grid,
every cell within ``radius`` of an object takes its class code (the nearest object's), other
scored cells are ``none``, and cells unscored on either date are nodata.

Before comparing, :func:`check_comparable` refuses surveys of different areas, with disjoint
extents, or in different CRSs (unless ``reproject``: the after survey's objects are then
brought into the before survey's CRS); a BEFORE survey later than AFTER is allowed, with a
warning that says which is which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds

from pipeline.detect import ProbabilityMap, check_model_input, detect_survey, resolve_model
from pipeline.detections import find_peaks
from pipeline.errors import InputError, command

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.store import Store, Survey

__all__ = [
    "NONE",
    "NEW",
    "GONE",
    "PERSISTING",
    "UNCERTAIN",
    "NODATA",
    "CLASS_NAMES",
    "CLASS_COLOURS",
    "ChangeThresholds",
    "ChangeResult",
    "classify_change",
    "compare_maps",
    "check_comparable",
    "change_surveys",
]

# Class codes of the change raster (uint8).
NONE, NEW, GONE, PERSISTING, UNCERTAIN, NODATA = 0, 1, 2, 3, 4, 255
CLASS_NAMES = {NONE: "none", NEW: "new", GONE: "gone", PERSISTING: "persisting", UNCERTAIN: "uncertain"}
#: RGBA colour table of the change COG (QGIS shows it as is).
CLASS_COLOURS = {
    NONE: (235, 235, 235, 0),  # transparent: no change and nothing there
    NEW: (0, 170, 60, 255),  # green: appeared
    GONE: (220, 30, 30, 255),  # red: disappeared
    PERSISTING: (40, 110, 240, 255),  # blue: on both dates
    UNCERTAIN: (200, 200, 200, 160),  # grey: seen, but not sure enough on one date
    NODATA: (0, 0, 0, 0),
}


@dataclass(frozen=True)
class ChangeThresholds:
    """Hysteresis thresholds of the change classes (probabilities)."""

    high: float = 0.7  # a detection is asserted at or above this
    low: float = 0.3  # and its absence at or below this
    min_difference: float = 0.3  # new/gone also need this rise/fall between the dates

    def __post_init__(self) -> None:
        if not (0.0 <= self.low < self.high <= 1.0):
            raise InputError(
                f"change thresholds need 0 <= low < high <= 1, got low={self.low}, high={self.high}; "
                f"the gap between them is the hysteresis band"
            )
        if not 0.0 <= self.min_difference <= 1.0:
            raise InputError(f"--min-difference must be between 0 and 1, got {self.min_difference}")

    @classmethod
    def for_model(cls, threshold: float) -> "ChangeThresholds":
        """Relative to a model's decision threshold t: high t, low t / 2, min_difference t / 2."""
        t = float(threshold)
        return cls(high=t, low=t / 2, min_difference=t / 2)

    def to_dict(self) -> dict[str, float]:
        return {"high": self.high, "low": self.low, "min_difference": self.min_difference}


def classify_change(p_before: np.ndarray, p_after: np.ndarray, thresholds: ChangeThresholds) -> np.ndarray:
    """Class codes (uint8) of objects with probabilities before and after (NaN: nodata)."""
    b = np.asarray(p_before, dtype=np.float64)
    a = np.asarray(p_after, dtype=np.float64)
    hi, lo, md = thresholds.high, thresholds.low, thresholds.min_difference
    codes = np.full(np.broadcast_shapes(a.shape, b.shape), UNCERTAIN, dtype=np.uint8)
    with np.errstate(invalid="ignore"):
        codes[(a >= hi) & (b <= lo) & (a - b >= md)] = NEW
        codes[(b >= hi) & (a <= lo) & (b - a >= md)] = GONE
        codes[(a > lo) & (b > lo) & ((a >= hi) | (b >= hi))] = PERSISTING
    codes[~(np.isfinite(a) & np.isfinite(b))] = NODATA
    return codes


@dataclass(frozen=True)
class ChangeResult:
    """The change objects of two dates and the change raster drawn from them.

    Objects: ``x``, ``y`` (the before survey's CRS), ``p_before``, ``p_after``, ``classes``
    (codes), (N,) each, strongest first. Raster: ``classes_map`` (h, w) uint8 on the before
    map's grid (``transform``, ``crs``).
    """

    before: ProbabilityMap
    after: ProbabilityMap
    x: np.ndarray
    y: np.ndarray
    p_before: np.ndarray
    p_after: np.ndarray
    classes: np.ndarray
    classes_map: np.ndarray
    thresholds: ChangeThresholds
    radius_m: float
    reach_m: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def transform(self):
        return self.before.transform

    @property
    def crs(self):
        return self.before.crs

    def counts(self) -> dict[str, int]:
        return {CLASS_NAMES[c]: int((self.classes == c).sum()) for c in (NEW, GONE, PERSISTING, UNCERTAIN)}


def _max_within(pm: ProbabilityMap, x: np.ndarray, y: np.ndarray, reach: float, crs: Any) -> np.ndarray:
    """The largest probability of ``pm`` within ``reach`` map units of each point (NaN: none scored)."""
    if len(x) == 0:
        return np.zeros(0, np.float32)
    if crs != pm.crs:
        x, y = (np.asarray(v) for v in warp_transform(crs, pm.crs, list(x), list(y)))
    inv = ~pm.transform
    col, row = inv * (np.asarray(x), np.asarray(y))
    cell = abs(pm.transform.a)
    k = int(np.ceil(reach / cell))
    out = np.full(len(x), np.nan, np.float32)
    h, w = pm.values.shape
    for i, (c, r) in enumerate(zip(col, row)):
        ci, ri = int(np.floor(c)), int(np.floor(r))
        r0, r1, c0, c1 = max(ri - k, 0), min(ri + k + 1, h), max(ci - k, 0), min(ci + k + 1, w)
        if r0 >= r1 or c0 >= c1:
            continue
        rr, cc = np.mgrid[r0:r1, c0:c1]
        near = np.hypot((cc + 0.5 - c) * cell, (rr + 0.5 - r) * cell) <= reach
        v = pm.values[r0:r1, c0:c1][near]
        v = v[np.isfinite(v)]
        if v.size:
            out[i] = v.max()
    return out


def compare_maps(
    before: ProbabilityMap,
    after: ProbabilityMap,
    thresholds: ChangeThresholds,
    radius_m: float | None = None,
    reach_m: float | None = None,
) -> ChangeResult:
    """Change objects between two probability maps of one area (rules: the module docstring).

    ``radius_m`` (default: half the model's footprint) merges the detections of the two dates
    into objects and paints the raster; ``reach_m`` (default: one output cell and a half)
    is how far from an object each date's probability is looked for.
    """
    radius = float(radius_m if radius_m is not None else before.footprint_m / 2)
    reach = float(reach_m if reach_m is not None else 1.5 * max(before.cell_m, after.cell_m))
    crs = before.crs
    pb = find_peaks(before.values, before.transform, radius, thresholds.high)
    pa = find_peaks(after.values, after.transform, radius, thresholds.high)
    ax, ay = (pa.x, pa.y) if after.crs == crs or len(pa) == 0 else warp_transform(after.crs, crs, list(pa.x), list(pa.y))
    x = np.concatenate([pb.x, np.asarray(ax, float)])
    y = np.concatenate([pb.y, np.asarray(ay, float)])
    p = np.concatenate([pb.probability, pa.probability])
    order = np.argsort(-p, kind="stable")
    keep: list[int] = []
    for i in order:  # one object per place, the strongest detection's position
        if all(np.hypot(x[i] - x[j], y[i] - y[j]) > radius for j in keep):
            keep.append(int(i))
    x, y = x[keep], y[keep]
    p_before = _max_within(before, x, y, reach, crs)
    p_after = _max_within(after, x, y, reach, crs)
    classes = classify_change(p_before, p_after, thresholds)
    return ChangeResult(before, after, x, y, p_before, p_after, classes,
                        _paint(before, after, x, y, classes, radius), thresholds, radius, reach)


def _paint(before: ProbabilityMap, after: ProbabilityMap, x, y, classes, radius: float) -> np.ndarray:
    """The change raster on the before map's grid: object classes within ``radius``, else none;
    nodata where either date is unscored."""
    h, w = before.values.shape
    t = before.transform
    rows, cols = np.mgrid[0:h, 0:w]
    cx, cy = t * (cols + 0.5, rows + 0.5)
    scored_after = np.isfinite(_max_within(after, cx.ravel(), cy.ravel(), 0.75 * abs(after.transform.a), before.crs)).reshape(h, w) \
        if after.values.size else np.zeros((h, w), bool)
    out = np.where(np.isfinite(before.values) & scored_after, NONE, NODATA).astype(np.uint8)
    best = np.full((h, w), np.inf)
    cell = abs(t.a)
    k = int(np.ceil(radius / cell))
    inv = ~t
    for xi, yi, code in zip(x, y, classes):
        c, r = inv * (xi, yi)
        r0, r1 = max(int(r) - k, 0), min(int(r) + k + 1, h)
        c0, c1 = max(int(c) - k, 0), min(int(c) + k + 1, w)
        if r0 >= r1 or c0 >= c1:
            continue
        d = np.hypot(cx[r0:r1, c0:c1] - xi, cy[r0:r1, c0:c1] - yi)
        closer = (d <= radius) & (d < best[r0:r1, c0:c1]) & (out[r0:r1, c0:c1] != NODATA)
        best[r0:r1, c0:c1][closer] = d[closer]
        out[r0:r1, c0:c1][closer] = code
    return out


def _refuse_other_crs(before_id: str, before_crs: Any, after_id: str, after_crs: Any, reproject: bool) -> None:
    if before_crs != after_crs and not reproject:
        raise InputError(
            f"survey {before_id} has CRS {before_crs.to_string()} but {after_id} has {after_crs.to_string()}; "
            f"reproject one of them or pass --reproject to compare them in {before_id}'s CRS"
        )


def check_comparable(before: "Survey", after: "Survey", reproject: bool = False) -> None:
    """Refuse two surveys that cannot be compared, with the reason and the fix (a BEFORE dated
    later than AFTER is comparable: :func:`date_order_note` says what the classes then mean)."""
    if before.id == after.id:
        raise InputError(f"BEFORE and AFTER are both {before.id}; give two surveys of one area at two dates")
    if before.area != after.area:
        raise InputError(
            f"surveys {before.id} and {after.id} are of different areas ({before.area!r} and {after.area!r}); "
            f"change compares two dates of one area: pick two surveys of the same area "
            f"({command('surveys', '--area', before.area, store=before.zarr_path.parent)} lists them)"
        )
    _refuse_other_crs(before.id, before.crs, after.id, after.crs, reproject)
    b = before.bounds
    a = after.bounds if after.crs == before.crs else transform_bounds(after.crs, before.crs, *after.bounds, densify_pts=21)
    if max(a[0], b[0]) >= min(a[2], b[2]) or max(a[1], b[1]) >= min(a[3], b[3]):
        raise InputError(
            f"surveys {before.id} and {after.id} do not overlap: {before.id} covers "
            f"{tuple(round(v, 2) for v in b)} and {after.id} {tuple(round(v, 2) for v in a)} "
            f"(left, bottom, right, top in {before.crs.to_string()}); change compares two surveys of the same place"
        )


def date_order_note(before: "Survey", after: "Survey") -> str | None:
    """A warning when BEFORE is dated later than AFTER, saying what new and gone then mean.

    The comparison keeps the order given (it is not swapped behind the user's back), so its
    "new" are the objects of the earlier survey that the later one lacks.
    """
    if before.date <= after.date:
        return None
    return (
        f"BEFORE {before.id} is dated {before.date.isoformat()}, later than AFTER {after.id} "
        f"({after.date.isoformat()}); the comparison keeps this order, so 'new' means present in "
        f"{after.id} (the earlier survey) but not in {before.id}, and 'gone' the opposite; give the "
        f"earlier survey first to compare forward in time"
    )


def change_surveys(
    store: "Store",
    before_id: str,
    after_id: str,
    model: Any,
    stride: int | None = None,
    thresholds: ChangeThresholds | None = None,
    reproject: bool = False,
    client: Any = None,
) -> ChangeResult:
    """Score both surveys with ``model`` (a model id, model file path or Classifier) and compare them.

    Checks comparability first (no work is done on surveys that cannot be compared) and that
    the model can read both; reuses probability maps already stored. ``thresholds`` default to
    :meth:`ChangeThresholds.for_model` of the model's decision threshold.
    """
    before_s, after_s = store.survey(before_id), store.survey(after_id)
    warning = check_comparable(before_s, after_s, reproject)
    classifier = resolve_model(store, model)
    for s in (before_s, after_s):
        check_model_input(classifier, s)
    cut = thresholds or ChangeThresholds.for_model(classifier.threshold)
    before = detect_survey(store, before_id, classifier, stride=stride, client=client)
    after = detect_survey(store, after_id, classifier, stride=stride, client=client)
    result = compare_maps(before, after, cut)
    settings = {"reproject": reproject, "radius_m": result.radius_m, "reach_m": result.reach_m,
                "before_date": before_s.date.isoformat(), "after_date": after_s.date.isoformat(),
                "warning": warning}
    return ChangeResult(**{**result.__dict__, "settings": settings})

