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
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine

from pipeline.errors import InputError
from pipeline.maps import (
    atomic_output_dir,
    base_provenance,
    file_sha256,
    model_provenance,
    read_truth,
    render_quicklook,
    sample_tiles,
    survey_provenance,
    survey_thumbnail,
    tile_edges,
    truth_points,
    write_cog,
    write_json,
)

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.detect import Predictions
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
    "change_metrics",
    "write_change_maps",
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
        from pipeline.maps import TileEdges

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
        from rasterio.warp import transform_bounds

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
        from rasterio.warp import transform as warp_transform

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
    if before.grid.crs != after.grid.crs and not reproject:
        raise InputError(
            f"survey {before.survey_id} has CRS {before.grid.crs.to_string()} but {after.survey_id} has "
            f"{after.grid.crs.to_string()}; reproject one of them or pass --reproject to compare them "
            f"on a grid in {before.survey_id}'s CRS"
        )
    for p in (before, after):
        _check_north_up(p.grid, p.survey_id)
    grid = change_grid(before.grid, after.grid, cell_size, crs=before.grid.crs)
    pb = _sample_on(before, grid)
    pa = _sample_on(after, grid)
    return ChangeResult(before, after, grid, pb, pa, classify_change(pb, pa, thresholds), thresholds)


def check_comparable(before: "Survey", after: "Survey", reproject: bool = False) -> None:
    """Refuse two surveys that cannot be compared, with the reason and the fix."""
    if before.id == after.id:
        raise InputError(f"BEFORE and AFTER are both {before.id}; give two surveys of one area at two dates")
    if before.area != after.area:
        raise InputError(
            f"surveys {before.id} and {after.id} are of different areas ({before.area!r} and {after.area!r}); "
            f"change compares two dates of one area: pick two surveys of the same area "
            f"(`damwatch surveys` lists them)"
        )
    if before.crs != after.crs and not reproject:
        raise InputError(
            f"survey {before.id} has CRS {before.crs.to_string()} but {after.id} has {after.crs.to_string()}; "
            f"reproject one of them or pass --reproject to compare on a grid in {before.id}'s CRS"
        )
    b = before.bounds
    a = after.bounds
    if after.crs != before.crs:
        from rasterio.warp import transform_bounds

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
    from pipeline.detect import DETECTION_STRIDE, check_model_bands, detect_survey, resolve_model

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


def _truth_classes(truth: dict, before: "Survey", after: "Survey", crs: Any):
    """Truth objects' map coordinates (in ``crs``) and their change class name.

    From each object's ``dates`` list when it has one (present before only: gone; after only:
    new; both: persisting), else from its ``status`` (relative to the truth's first date, so
    swapped when ``before`` is the later survey).
    """
    xs, ys, props = truth_points(truth, crs)
    swap = {"new": "gone", "gone": "new"}
    classes = []
    for p in props:
        dates = p.get("dates")
        if dates is not None:
            days = {str(d)[:10] for d in dates}
            b, a = before.date.isoformat() in days, after.date.isoformat() in days
            classes.append("persisting" if a and b else "new" if a else "gone" if b else "absent")
        else:
            status = str(p.get("status", "persisting"))
            classes.append(swap.get(status, status) if before.date > after.date else status)
    return xs, ys, classes


def change_metrics(result: ChangeResult, truth: dict, before: "Survey", after: "Survey", tile_size_map: float) -> dict:
    """Cell-level precision, recall, F1 and IoU of each change class against a ground truth.

    A cell truly holds class *c* when an object of class *c* lies within the square of one
    model tile (``tile_size_map`` map units) centred on the cell's centre: the area whose
    tiles see the object. Cells without data on either date are left out. IoU = TP / (TP +
    FP + FN); a class with no true and no predicted cell has no scores (null).
    """
    xs, ys, classes = _truth_classes(truth, before, after, result.grid.crs)
    cx, cy = result.grid.centres()
    half = tile_size_map / 2.0
    scored = result.classes != NODATA
    report: dict[str, Any] = {
        "rule": "cell positive for class c when an object of class c lies in the tile-sized square "
        "centred on the cell centre; nodata cells left out",
        "tile_size_map_units": tile_size_map,
        "thresholds": result.thresholds.to_dict(),
        "classes": {},
    }
    for code in (NEW, GONE, PERSISTING):
        name = CLASS_NAMES[code]
        true = np.zeros(result.grid.shape, dtype=bool)
        for x, y, c in zip(xs, ys, classes):
            if c == name:
                true |= (np.abs(cx - x) <= half) & (np.abs(cy - y) <= half)
        pred = result.classes == code
        tp = int(np.sum(true & pred & scored))
        fp = int(np.sum(~true & pred & scored))
        fn = int(np.sum(true & ~pred & scored))
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / (tp + fn) if tp + fn else None
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
        iou = tp / (tp + fp + fn) if tp + fp + fn else None
        report["classes"][name] = {
            "precision": precision, "recall": recall, "f1": f1, "iou": iou,
            "tp": tp, "fp": fp, "fn": fn, "n_objects": classes.count(name),
        }
    return report


def _cell_properties(result: ChangeResult) -> tuple[np.ndarray, list[dict]]:
    select = np.isin(result.classes, (NEW, GONE, PERSISTING))
    props = []
    for r, c in zip(*np.nonzero(select)):
        props.append({
            "class": CLASS_NAMES[int(result.classes[r, c])],
            "p_before": round(float(result.p_before[r, c]), 6),
            "p_after": round(float(result.p_after[r, c]), 6),
            "before": result.before.survey_id,
            "after": result.after.survey_id,
            "model_id": result.before.model_id,
            "cell_row": int(r),
            "cell_col": int(c),
        })
    return select, props


def write_change_maps(
    store: "Store",
    result: ChangeResult,
    out_dir: str | os.PathLike,
    truth: str | os.PathLike | None = None,
    overwrite: bool = False,
    client: Any = None,
) -> dict[str, Any]:
    """Write the change outputs into ``out_dir``, all or nothing.

    ``change.tif`` (uint8 class codes 0 none, 1 new, 2 gone, 3 persisting, 255 nodata, with a
    colour table), ``change.geojson`` (one RFC 7946 feature per new/gone/persisting cell, with
    both probabilities), ``change.png`` (before, after, change), ``provenance.json`` and, with
    ``truth``, ``metrics.json``. Returns the output files (Paths) by name: ``change``,
    ``geojson``, ``quicklook``, ``provenance`` and, with truth, ``metrics_file``; plus
    ``counts`` (cells per class) and ``metrics`` (the report dict, or None).
    """
    from pipeline.maps import footprints_geojson

    truth_data = read_truth(truth) if truth is not None else None
    before_s = store.survey(result.before.survey_id)
    after_s = store.survey(result.after.survey_id)
    grid = result.grid
    out_dir = Path(out_dir)
    out: dict[str, Any] = {"metrics": None}
    with atomic_output_dir(out_dir, overwrite) as tmp:
        write_cog(
            tmp / CHANGE_FILES["change"], result.classes, grid.transform, grid.crs, NODATA,
            colormap=CLASS_COLOURS, resampling="nearest",
            tags={"classes": "0 none, 1 new, 2 gone, 3 persisting, 255 nodata",
                  "before": before_s.id, "after": after_s.id, "model_id": result.before.model_id},
        )
        select, props = _cell_properties(result)
        geojson = footprints_geojson(select, grid.edges(), grid.transform, grid.crs, props)
        write_json(tmp / CHANGE_FILES["geojson"], geojson)
        _render_change(tmp / CHANGE_FILES["quicklook"], result, before_s, after_s, client)
        provenance = base_provenance("change", {
            **result.settings, **result.thresholds.to_dict(),
            "classes": {str(k): v for k, v in CLASS_NAMES.items()} | {"255": "nodata"},
            "truth": str(truth) if truth is not None else None,
        })
        provenance["inputs"] = {
            "before": survey_provenance(before_s),
            "after": survey_provenance(after_s),
            "model": model_provenance(store, result.before.model_id),
            "feature_spec": result.before.spec,
            "truth_sha256": file_sha256(truth) if truth is not None else None,
        }
        provenance["tile_grids"] = {"before": result.before.grid.to_dict(), "after": result.after.grid.to_dict()}
        provenance["change_grid"] = grid.to_dict()
        provenance["counts"] = result.counts()
        if truth_data is not None:
            tile_map = result.before.grid.size * max(abs(result.before.grid.transform.a), abs(result.after.grid.transform.a))
            metrics = change_metrics(result, truth_data, before_s, after_s, tile_map)
            write_json(tmp / CHANGE_FILES["metrics"], metrics)
            out["metrics"] = metrics
        provenance["outputs"] = {
            name: {"file": fn, "sha256": file_sha256(tmp / fn)}
            for name, fn in CHANGE_FILES.items() if name != "provenance" and (tmp / fn).exists()
        }
        write_json(tmp / CHANGE_FILES["provenance"], provenance)
        written = [n for n, fn in CHANGE_FILES.items() if (tmp / fn).exists()]
    for name in written:  # the metrics *file* is "metrics_file": "metrics" is the report
        out["metrics_file" if name == "metrics" else name] = out_dir / CHANGE_FILES[name]
    out["counts"] = result.counts()
    return out


def _render_change(path: Path, result: ChangeResult, before: "Survey", after: "Survey", client: Any) -> None:
    from matplotlib.colors import BoundaryNorm, ListedColormap

    panels = []
    for survey, values in ((before, result.p_before), (after, result.p_after)):
        thumb, thumb_transform = survey_thumbnail(survey, client=client)
        panels.append({
            "title": f"{survey.id}: probability",
            "image": thumb,
            "image_transform": thumb_transform,
            "overlay": values, "overlay_transform": result.grid.transform, "cmap": "magma",
            "vmin": 0.0, "vmax": 1.0, "alpha": 0.55, "mask_below": result.thresholds.low,
            "colorbar": "probability",
        })
    codes = result.classes.astype(np.float64)
    codes[result.classes == NODATA] = np.nan
    colours = [np.array(CLASS_COLOURS[c][:3]) / 255 for c in (NONE, NEW, GONE, PERSISTING)]
    counts = result.counts()
    panels.append({
        "title": "change: " + ", ".join(f"{n} {counts[n]}" for n in ("new", "gone", "persisting")),
        "image": panels[1]["image"], "image_transform": panels[1]["image_transform"],
        "overlay": codes, "overlay_transform": result.grid.transform,
        "cmap": ListedColormap(colours), "norm": BoundaryNorm([-0.5, 0.5, 1.5, 2.5, 3.5], 4),
        "alpha": 0.7, "mask_below": 0.5, "colorbar": "class",
        "ticks": [0, 1, 2, 3], "ticklabels": ["none", "new", "gone", "persisting"],
    })
    render_quicklook(path, panels, title=f"change {before.id} → {after.id}, model {result.before.model_id}")
