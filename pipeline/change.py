"""Change between two surveys of one area: which detections are new, gone or persisting.

Two surveys of one place never share a pixel grid: real surveys are off by metres and a row
(the NAIP dates here move by up to 3 m and differ in height). So change is never decided by
array index. Each survey is scored on its own tile grid (:func:`pipeline.detect.detect_survey`),
and both are then read on **one change grid in map coordinates**: square cells of
``cell_size`` map units (the detection stride times the coarser pixel size of the two
surveys), aligned on multiples of the cell size from the CRS origin, over the intersection of
the two extents. A survey's probability in a cell is the mean of its scored tiles containing
the cell's centre, the same rule as the detection maps (:func:`pipeline.maps.sample_tiles`), so
the change map agrees with what the two probability maps show. The grid depends on the two
surveys symmetrically, so swapping the dates gives the same grid and swaps ``new`` and ``gone``.

A cell's class, with hysteresis so that noise around one threshold does not flicker
(``high`` > ``low``; defaults in :data:`DEFAULT_THRESHOLDS`):

==============  ===========================================================================
``new``         after ≥ high, before ≤ low, after − before ≥ min_difference
``gone``        before ≥ high, after ≤ low, before − after ≥ min_difference
``persisting``  both > low and at least one ≥ high (present on both dates)
``none``        anything else, including values between the thresholds on both dates
nodata          either date unscored in the cell
==============  ===========================================================================

Before comparing, :func:`check_comparable` refuses surveys of different areas, with disjoint
extents, or in different CRSs (unless ``reproject``: the change grid is then on the *before*
survey's CRS and the after survey is sampled at reprojected cell centres); the bands the
model needs are checked by detection itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds

from pipeline.detect import DETECTION_STRIDE, Predictions, check_model_bands, detect_survey, resolve_model
from pipeline.errors import InputError, command
from pipeline.maps import TileEdges, sample_tiles, tile_edges

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.store import Store, Survey

__all__ = [
    "NONE",
    "NEW",
    "GONE",
    "PERSISTING",
    "NODATA",
    "CLASS_NAMES",
    "CLASS_COLOURS",
    "DEFAULT_THRESHOLDS",
    "ChangeThresholds",
    "ChangeGrid",
    "ChangeResult",
    "classify_change",
    "change_grid",
    "compare_predictions",
    "check_comparable",
    "change_surveys",
]

# Class codes of the change raster (uint8).
NONE, NEW, GONE, PERSISTING, NODATA = 0, 1, 2, 3, 255
CLASS_NAMES = {NONE: "none", NEW: "new", GONE: "gone", PERSISTING: "persisting"}
#: RGBA colour table of the change COG (QGIS shows it as is).
CLASS_COLOURS = {
    NONE: (235, 235, 235, 0),  # transparent: no change and nothing there
    NEW: (0, 170, 60, 255),  # green: appeared
    GONE: (220, 30, 30, 255),  # red: disappeared
    PERSISTING: (40, 110, 240, 255),  # blue: on both dates
    NODATA: (0, 0, 0, 0),
}

CHANGE_FILES = {
    "change": "change.tif",
    "geojson": "change.geojson",
    "quicklook": "change.png",
    "provenance": "provenance.json",
    "metrics": "metrics.json",
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

    def to_dict(self) -> dict[str, float]:
        return {"high": self.high, "low": self.low, "min_difference": self.min_difference}


DEFAULT_THRESHOLDS = ChangeThresholds()


def classify_change(
    p_before: np.ndarray, p_after: np.ndarray, thresholds: ChangeThresholds = DEFAULT_THRESHOLDS
) -> np.ndarray:
    """Class codes (uint8, same shape) of cells with probabilities before and after (NaN = unscored).

    The rules are in the module docstring; they are symmetric: swapping the dates swaps
    ``NEW`` and ``GONE`` and leaves the rest.
    """
    b = np.asarray(p_before, dtype=np.float64)
    a = np.asarray(p_after, dtype=np.float64)
    hi, lo, md = thresholds.high, thresholds.low, thresholds.min_difference
    codes = np.full(np.broadcast_shapes(a.shape, b.shape), NONE, dtype=np.uint8)
    with np.errstate(invalid="ignore"):
        codes[(a >= hi) & (b <= lo) & (a - b >= md)] = NEW
        codes[(b >= hi) & (a <= lo) & (b - a >= md)] = GONE
        codes[(a > lo) & (b > lo) & ((a >= hi) | (b >= hi))] = PERSISTING
    codes[~(np.isfinite(a) & np.isfinite(b))] = NODATA
    return codes


@dataclass(frozen=True)
class ChangeGrid:
    """The one grid both dates are read on: ``shape`` square cells of ``cell_size`` map units.

    ``transform`` maps cell (col, row) to map coordinates in ``crs``; ``extent`` is the
    (left, bottom, right, top) intersection of the two surveys that the cells cover.
    """

    crs: Any
    transform: Affine
    shape: tuple[int, int]
    cell_size: float
    extent: tuple[float, float, float, float]

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates (xs, ys), each ``shape``, where each cell is sampled.

        The centre of the part of each cell inside ``extent`` (border cells are cut by it).
        """
        left, bottom, right, top = self.extent
        x0, y0, cs = self.transform.c, self.transform.f, self.cell_size
        n_rows, n_cols = self.shape
        x_start = x0 + np.arange(n_cols) * cs
        xs = 0.5 * (np.maximum(x_start, left) + np.minimum(x_start + cs, right))
        y_top = y0 - np.arange(n_rows) * cs  # rows go down from the grid's top edge
        ys = 0.5 * (np.minimum(y_top, top) + np.maximum(y_top - cs, bottom))
        xx, yy = np.meshgrid(xs, ys)
        return xx, yy

    def edges(self):
        """The cells as :class:`pipeline.maps.TileEdges` in cell units (for GeoJSON footprints)."""
        r = np.arange(self.shape[0], dtype=np.float64)
        c = np.arange(self.shape[1], dtype=np.float64)
        return TileEdges(r, r + 1, c, c + 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "crs_wkt": self.crs.to_wkt(),
            "epsg": self.crs.to_epsg(),
            "transform": [float(v) for v in self.transform[:6]],
            "shape": list(self.shape),
            "cell_size": self.cell_size,
            "extent": list(self.extent),
            "rule": "cells aligned on multiples of cell_size from the CRS origin, over the "
            "intersection of the two extents; a survey's value in a cell = mean of its scored "
            "tiles containing the centre of the cell's part inside the intersection",
        }


def _grid_bounds(grid: Any, crs: Any = None) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a tile grid's raster, in ``crs`` (default: its own)."""
    t = grid.transform
    xs, ys = zip(*(t * (c, r) for c, r in ((0, 0), (grid.width, 0), (0, grid.height), (grid.width, grid.height))))
    bounds = (min(xs), min(ys), max(xs), max(ys))
    if crs is not None and crs != grid.crs:
        bounds = transform_bounds(grid.crs, crs, *bounds, densify_pts=21)
    return tuple(float(v) for v in bounds)  # type: ignore[return-value]


def _check_north_up(grid: Any, name: str) -> None:
    t = grid.transform
    if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
        raise InputError(
            f"survey {name} has a rotated or flipped geotransform {tuple(t)[:6]}; change needs "
            f"north-up surveys, so warp it to a north-up grid (gdalwarp) and ingest it again"
        )


def change_grid(before: Any, after: Any, cell_size: float | None = None, crs: Any = None) -> ChangeGrid:
    """The change grid of two tile grids (see the module docstring); symmetric in its arguments.

    ``cell_size`` defaults to the larger stride times the coarser pixel size. ``crs`` defaults
    to the grids' common CRS (they must share it unless given).
    """
    crs = crs if crs is not None else before.crs
    b = _grid_bounds(before, crs)
    a = _grid_bounds(after, crs)
    extent = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    if extent[0] >= extent[2] or extent[1] >= extent[3]:
        raise InputError(
            f"the two surveys do not overlap: before covers {tuple(round(v, 2) for v in b)} and after "
            f"{tuple(round(v, 2) for v in a)} (left, bottom, right, top in {crs.to_string()}); change "
            f"compares two surveys of the same place"
        )
    if cell_size is None:
        res = max(abs(before.transform.a), abs(before.transform.e), abs(after.transform.a), abs(after.transform.e))
        if crs != before.crs or crs != after.crs:  # pixel sizes in other units: measure in crs
            res = max((b[2] - b[0]) / before.width, (a[2] - a[0]) / after.width)
        cell_size = max(before.stride, after.stride) * res
    cs = float(cell_size)
    if not cs > 0:
        raise InputError(f"change cell size must be positive, got {cell_size}")
    left = math.floor(extent[0] / cs) * cs
    top = math.ceil(extent[3] / cs) * cs
    n_cols = math.ceil((extent[2] - left) / cs - 1e-9)
    n_rows = math.ceil((top - extent[1]) / cs - 1e-9)
    return ChangeGrid(crs, Affine(cs, 0.0, left, 0.0, -cs, top), (n_rows, n_cols), cs, extent)


def _sample_on(predictions: "Predictions", grid: ChangeGrid) -> np.ndarray:
    """A survey's probability in each change cell: mean of its scored tiles holding the sample point."""
    xs, ys = grid.centres()
    if predictions.grid.crs != grid.crs:
        tx, ty = warp_transform(grid.crs, predictions.grid.crs, xs.ravel().tolist(), ys.ravel().tolist())
        xs, ys = np.asarray(tx).reshape(xs.shape), np.asarray(ty).reshape(ys.shape)
    cols, rows = ~predictions.grid.transform * (xs, ys)
    return sample_tiles(predictions.probabilities, tile_edges(predictions.grid), rows, cols).astype(np.float32)


@dataclass(frozen=True)
class ChangeResult:
    """Both dates read on one :class:`ChangeGrid`, and the class of each cell.

    ``p_before``/``p_after`` (float32, NaN = unscored) and ``classes`` (uint8 codes) all have
    the change grid's shape.
    """

    before: "Predictions"
    after: "Predictions"
    grid: ChangeGrid
    p_before: np.ndarray
    p_after: np.ndarray
    classes: np.ndarray
    thresholds: ChangeThresholds
    settings: dict = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Cells per class name (and ``nodata``)."""
        out = {name: int(np.sum(self.classes == code)) for code, name in CLASS_NAMES.items()}
        out["nodata"] = int(np.sum(self.classes == NODATA))
        return out


def compare_predictions(
    before: "Predictions",
    after: "Predictions",
    thresholds: ChangeThresholds = DEFAULT_THRESHOLDS,
    cell_size: float | None = None,
    reproject: bool = False,
) -> ChangeResult:
    """Read two scored surveys on their change grid and classify each cell (no I/O).

    The surveys' CRSs must be equal unless ``reproject`` (the grid is then on the before
    survey's CRS).
    """
    _refuse_other_crs(before.survey_id, before.grid.crs, after.survey_id, after.grid.crs, reproject)
    for p in (before, after):
        _check_north_up(p.grid, p.survey_id)
    grid = change_grid(before.grid, after.grid, cell_size, crs=before.grid.crs)
    pb = _sample_on(before, grid)
    pa = _sample_on(after, grid)
    return ChangeResult(before, after, grid, pb, pa, classify_change(pb, pa, thresholds), thresholds)


def _refuse_other_crs(before_id: str, before_crs: Any, after_id: str, after_crs: Any, reproject: bool) -> None:
    if before_crs != after_crs and not reproject:
        raise InputError(
            f"survey {before_id} has CRS {before_crs.to_string()} but {after_id} has {after_crs.to_string()}; "
            f"reproject one of them or pass --reproject to compare them on a grid in {before_id}'s CRS"
        )


def check_comparable(before: "Survey", after: "Survey", reproject: bool = False) -> None:
    """Refuse two surveys that cannot be compared, with the reason and the fix."""
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
    a = after.bounds
    if after.crs != before.crs:
        a = transform_bounds(after.crs, before.crs, *a, densify_pts=21)
    if max(a[0], b[0]) >= min(a[2], b[2]) or max(a[1], b[1]) >= min(a[3], b[3]):
        raise InputError(
            f"surveys {before.id} and {after.id} do not overlap: {before.id} covers "
            f"{tuple(round(v, 2) for v in b)} and {after.id} {tuple(round(v, 2) for v in a)} "
            f"(left, bottom, right, top in {before.crs.to_string()}); change compares two surveys of the same place"
        )


def change_surveys(
    store: "Store",
    before_id: str,
    after_id: str,
    model: Any,
    stride: int | None = None,
    thresholds: ChangeThresholds = DEFAULT_THRESHOLDS,
    reproject: bool = False,
    cell_size: float | None = None,
    client: Any = None,
) -> ChangeResult:
    """Score both surveys with ``model`` (a model id, model file path or Classifier) and compare them.

    Checks comparability first (no work is done on surveys that cannot be compared); the
    bands the model needs are checked by :func:`pipeline.detect.detect_survey`, which also
    reuses predictions already stored for this model, survey and grid.
    """
    before_s, after_s = store.survey(before_id), store.survey(after_id)
    check_comparable(before_s, after_s, reproject)
    classifier = resolve_model(store, model)
    for s in (before_s, after_s):
        check_model_bands(classifier, s)
    stride = int(stride or DETECTION_STRIDE)
    before = detect_survey(store, before_id, classifier, stride=stride, client=client)
    after = detect_survey(store, after_id, classifier, stride=stride, client=client)
    result = compare_predictions(before, after, thresholds, cell_size, reproject)
    return ChangeResult(
        before, after, result.grid, result.p_before, result.p_after, result.classes, thresholds,
        {"stride": stride, "reproject": reproject, "cell_size": result.grid.cell_size},
    )
