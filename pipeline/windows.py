"""Training windows: what the detector learns from, cut from surveys around the truth's objects.

A *window* is a square of ``window`` model pixels (:mod:`pipeline.pixels`: the model's bands,
at its ground resolution). Its label follows one rule, shared by training and evaluation:

- **positive** when a target's point lies well inside it: in the central square that leaves
  ``margin`` pixels on every side (a quarter of the window by default), so a dam cut by the
  window's edge is never called present;
- **negative** when no target lies anywhere in it;
- anything between (a target in the margin) is *ambiguous* and never used.

Examples per survey (:func:`window_table`), all placed by a seeded generator:

- *positives*: ``jitter`` windows around each target standing on the survey's date, its point
  at a random place of the central square;
- *look-alikes*: ``jitter`` windows around each look-alike of the truth (a road crossing, a
  fallen tree, a pond without a dam), always included, so the network sees what fools it;
- *absent targets*: ``jitter`` windows around each target that does not stand on the survey's
  date (a dam not yet built, or breached: its remains), placed as positives are, labelled
  negative: the closest look-alike there is, and the one change detection depends on;
- *background*: random windows over the survey's valid area, ``background`` per positive.

Windows that are less than half valid, or ambiguous, are dropped. Surveys are cut into
regions like the classic model's (:class:`pipeline.examples.HoldOut`): training | gap |
validation bands of the model pixel grid, west to east; a window belongs to a region only if it
lies wholly inside it. Several surveys (dates) of one area share the bands by map position.

:class:`WindowShardLoader` reads one shard's windows from the store on a Dask worker, as
channels (N, window, window, C), so training shards are produced by tasks, never scattered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ann.standardize import Standardizer
from pipeline.errors import InputError
from pipeline.pixels import InputSpec, channel_statistics, read_channels, reading_for
from pipeline.store import Store
from pipeline.truth import truth_objects

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.store import Survey

__all__ = ["KINDS", "WindowSettings", "WindowTable", "window_table", "band_of", "read_windows", "WindowShardLoader"]

TRAIN, VALIDATION, GAP = 0, 1, -1
REGIONS = {TRAIN: "train", VALIDATION: "validation"}
KINDS = ("target", "lookalike", "absent", "background", "mined")


@dataclass(frozen=True)
class WindowSettings:
    """How training windows are placed (the module docstring); a frozen part of the settings."""

    margin: int | None = None  # pixels left around the central square (None: a quarter of the window)
    jitter: int = 8  # windows per target and per look-alike, at random offsets
    background: float = 2.0  # random background windows per positive window
    val_fraction: float = 0.2  # share of the model pixel grid's columns (east) for validation
    min_valid: float = 0.5  # least valid share of a window's pixels

    def __post_init__(self) -> None:
        if self.margin is not None and self.margin < 0:
            raise InputError(f"window margin {self.margin} must be >= 0 pixels")
        if self.jitter < 1:
            raise InputError(f"window jitter {self.jitter} must be >= 1 window per object")
        if not self.background >= 0:
            raise InputError(f"background {self.background} must be >= 0 windows per positive")
        if not 0 < self.val_fraction < 1:
            raise InputError(f"validation fraction {self.val_fraction} must lie in (0, 1), e.g. 0.2")
        if not 0 < self.min_valid <= 1:
            raise InputError(f"min_valid {self.min_valid} must lie in (0, 1]")

    def margin_for(self, window: int) -> int:
        return window // 4 if self.margin is None else int(self.margin)


@dataclass(frozen=True)
class WindowTable:
    """Windows of one region: survey index, top-left row and column (model pixels), label,
    kind (:data:`KINDS`) and the object's id ('' for background), (N,) each, in a fixed order."""

    survey: np.ndarray
    row: np.ndarray
    col: np.ndarray
    label: np.ndarray
    kind: np.ndarray
    object_id: np.ndarray

    def __len__(self) -> int:
        return int(self.label.size)

    def take(self, idx: np.ndarray) -> "WindowTable":
        return WindowTable(*(a[idx] for a in (self.survey, self.row, self.col, self.label, self.kind, self.object_id)))

    @classmethod
    def concat(cls, tables: Sequence["WindowTable"]) -> "WindowTable":
        if not tables:
            return cls(*(np.zeros(0, dt) for dt in (np.int32, np.int32, np.int32, np.int8, object, object)))
        return cls(*(np.concatenate([getattr(t, f) for t in tables]) for f in
                     ("survey", "row", "col", "label", "kind", "object_id")))

    def counts(self) -> dict[str, int]:
        return {"windows": len(self), "positive": int((self.label == 1).sum()),
                **{k: int((self.kind == k).sum()) for k in KINDS}}

    def to_dict(self) -> dict[str, list]:
        return {f: getattr(self, f).tolist() for f in ("survey", "row", "col", "label", "kind", "object_id")}

    @classmethod
    def from_dict(cls, d: Mapping[str, list]) -> "WindowTable":
        dtypes = {"survey": np.int32, "row": np.int32, "col": np.int32, "label": np.int8, "kind": object, "object_id": object}
        return cls(*(np.asarray(d[f], dtype=dt) for f, dt in dtypes.items()))


def band_of(x: np.ndarray, west: float, east: float, val_fraction: float) -> np.ndarray:
    """Region of map x coordinates in an area spanning [west, east]: TRAIN, GAP or VALIDATION.

    The validation band is the eastmost ``val_fraction`` of the span. Callers test both edges of
    a window, so a window straddling the boundary falls in neither region.
    """
    cut = east - val_fraction * (east - west)
    return np.where(np.asarray(x) < cut, TRAIN, VALIDATION)


def _coarse_valid(survey: "Survey", reading, step: int) -> np.ndarray:
    """Valid share of each step × step block of model pixels, from the survey's valid mask."""
    valid = survey.valid()
    k = max(1, int(round(step * reading.factor)))
    mask = np.asarray(valid[::k, ::k], dtype=np.float32)
    return mask


def window_table(
    store: "Store",
    survey_ids: Sequence[str],
    truth: Mapping[str, Any],
    spec: InputSpec,
    settings: WindowSettings = WindowSettings(),
    where: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> dict[int, WindowTable]:
    """The training and validation windows of ``survey_ids`` (rules: the module docstring).

    Returns ``{TRAIN: table, VALIDATION: table}``; the order of each table is fixed by the seed.
    """
    W = spec.window
    margin = settings.margin_for(W)
    if 2 * margin >= W:
        raise InputError(f"window margin {margin} px leaves no central square in {W}-px windows; use a margin < {W // 2}")
    rng = np.random.default_rng(seed)
    surveys = [store.survey(s) for s in survey_ids]
    # One west-east span over all surveys, by map position (dates of one area share the bands).
    lefts = [s.bounds[0] for s in surveys]
    rights = [s.bounds[2] for s in surveys]
    west, east = min(lefts), max(rights)
    parts: dict[int, list[WindowTable]] = {TRAIN: [], VALIDATION: []}
    for k, survey in enumerate(surveys):
        reading = reading_for(survey, spec.gsd_m)
        inv = ~reading.transform
        targets = truth_objects(truth, survey.crs, survey.date, where, "targets")
        looks = truth_objects(truth, survey.crs, survey.date, where, "lookalikes")
        tcol, trow = (np.asarray(v) for v in inv * (targets.x, targets.y)) if len(targets) else (np.zeros(0), np.zeros(0))
        step = 8
        coarse = _coarse_valid(survey, reading, step)

        def candidates(px: float, py: float, n: int, centred: bool) -> tuple[np.ndarray, np.ndarray]:
            lo, hi = (margin, W - margin) if centred else (W // 4, 3 * W // 4)
            off_r = rng.integers(lo, hi, n)
            off_c = rng.integers(lo, hi, n)
            return np.floor(py).astype(int) - off_r, np.floor(px).astype(int) - off_c

        rows, cols, labels, kinds, ids = [], [], [], [], []
        for x, y, props in zip(*(inv * (targets.x, targets.y)), targets.props):
            r, c = candidates(x, y, settings.jitter, centred=True)
            rows += list(r); cols += list(c); labels += [1] * len(r); kinds += ["target"] * len(r)
            ids += [str(props.get("id", ""))] * len(r)
        n_pos = len(rows)
        standing = {id(p) for p in targets.props}
        every = truth_objects(truth, survey.crs, None, where, "targets")
        absent = every.take([id(p) not in standing for p in every.props]) if len(every) else every
        for x, y, props in zip(*(inv * (absent.x, absent.y)), absent.props):
            r, c = candidates(x, y, settings.jitter, centred=True)
            rows += list(r); cols += list(c); labels += [0] * len(r); kinds += ["absent"] * len(r)
            ids += [f"absent:{props.get('id', '')}"] * len(r)
        for x, y, props in zip(*(inv * (looks.x, looks.y)), looks.props):
            r, c = candidates(x, y, settings.jitter, centred=False)
            rows += list(r); cols += list(c); labels += [0] * len(r); kinds += ["lookalike"] * len(r)
            ids += [f"{props.get('kind')}:{props.get('id', '')}"] * len(r)
        n_bg = int(round(settings.background * max(n_pos, 1)))
        r = rng.integers(0, max(1, reading.height - W), n_bg)
        c = rng.integers(0, max(1, reading.width - W), n_bg)
        rows += list(r); cols += list(c); labels += [0] * n_bg; kinds += ["background"] * n_bg; ids += [""] * n_bg
        table = WindowTable(np.full(len(rows), k, np.int32), np.asarray(rows, np.int32), np.asarray(cols, np.int32),
                            np.asarray(labels, np.int8), np.asarray(kinds, object), np.asarray(ids, object))
        keep = _usable(table, trow, tcol, W, margin, reading, coarse, step, settings.min_valid)
        table = table.take(np.flatnonzero(keep))
        # Regions by the map x of both window edges.
        x0, _ = reading.transform * (table.col.astype(float), table.row.astype(float))
        x1, _ = reading.transform * ((table.col + W).astype(float), table.row.astype(float))
        b0 = band_of(np.minimum(x0, x1), west, east, settings.val_fraction)
        b1 = band_of(np.maximum(x0, x1), west, east, settings.val_fraction)
        for region in parts:
            parts[region].append(table.take(np.flatnonzero((b0 == region) & (b1 == region))))
    return {region: WindowTable.concat(t) for region, t in parts.items()}


def _usable(table: WindowTable, trow: np.ndarray, tcol: np.ndarray, W: int, margin: int, reading, coarse: np.ndarray,
            step: int, min_valid: float) -> np.ndarray:
    """Windows inside the grid, valid enough, and not ambiguous (label rule: module docstring)."""
    r, c = table.row.astype(np.int64), table.col.astype(np.int64)
    inside = (r >= 0) & (c >= 0) & (r + W <= reading.height) & (c + W <= reading.width)
    # Valid share from the coarse mask (step × step model pixels per coarse cell).
    cr0, cc0 = np.clip(r // step, 0, coarse.shape[0]), np.clip(c // step, 0, coarse.shape[1])
    cr1, cc1 = np.clip((r + W) // step, 0, coarse.shape[0]), np.clip((c + W) // step, 0, coarse.shape[1])
    sat = np.zeros((coarse.shape[0] + 1, coarse.shape[1] + 1))
    sat[1:, 1:] = coarse.cumsum(0).cumsum(1)
    area = np.maximum((cr1 - cr0) * (cc1 - cc0), 1)
    share = (sat[cr1, cc1] - sat[cr0, cc1] - sat[cr1, cc0] + sat[cr0, cc0]) / area
    ok = inside & (share >= min_valid)
    # Targets inside each window: in the central square -> positive; in the margin -> ambiguous.
    if trow.size:
        dr = trow[None, :] - r[:, None]  # (N, T) target row inside the window
        dc = tcol[None, :] - c[:, None]
        anywhere = ((dr >= 0) & (dr < W) & (dc >= 0) & (dc < W)).any(axis=1)
        central = ((dr >= margin) & (dr < W - margin) & (dc >= margin) & (dc < W - margin)).any(axis=1)
        positive = table.label == 1
        ok &= np.where(positive, central, ~anywhere)
    return ok


#: Model pixels along a block read at once to cut windows from (plus one window of halo): one
#: read per block instead of one per window, which would decompress a Zarr chunk per window.
READ_BLOCK = 1024


def read_windows(
    store: "Store", survey_ids: Sequence[str], spec: InputSpec, table: WindowTable
) -> np.ndarray:
    """The channels (N, window, window, C) float32 of the windows of ``table``, in its order.

    Windows are grouped by the :data:`READ_BLOCK` block of the model pixel grid their corner
    falls in; each block (and a window's width of halo) is read once and the windows are cut
    from it, so memory holds one block at a time.
    """
    W = spec.window
    X = np.empty((len(table), W, W, len(spec.channels)), np.float32)
    for k, survey_id in enumerate(survey_ids):
        mine = np.flatnonzero(table.survey == k)
        if not mine.size:
            continue
        survey = store.survey(survey_id)
        reading = reading_for(survey, spec.gsd_m)
        stats = channel_statistics(survey, spec)
        image, valid = survey.image(), survey.valid()
        rows, cols = table.row[mine].astype(np.int64), table.col[mine].astype(np.int64)
        br, bc = np.floor_divide(rows, READ_BLOCK), np.floor_divide(cols, READ_BLOCK)
        for key in sorted(set(zip(br.tolist(), bc.tolist()))):
            here = np.flatnonzero((br == key[0]) & (bc == key[1]))
            r0, c0 = int(rows[here].min()), int(cols[here].min())
            h, w = int(rows[here].max()) - r0 + W, int(cols[here].max()) - c0 + W
            block, _ = read_channels(survey, reading, spec, r0, c0, h, w, stats, image, valid)
            for i in here:
                rr, cc = int(rows[i]) - r0, int(cols[i]) - c0
                X[mine[i]] = block[rr : rr + W, cc : cc + W]
    return X


@dataclass(frozen=True)
class WindowShardLoader:
    """``load_shard(i)`` for :mod:`ann.parallel`: shard ``i``'s training windows read from the store.

    Holds only paths, the window table and settings (cheap to send to a worker), so a shard lost
    with its worker is read again elsewhere.
    """

    store_root: str
    survey_ids: tuple[str, ...]
    spec: dict
    table: dict = field(repr=False)
    plan: Any = field(repr=False)
    class_weights: tuple[float, float] | None = None
    standardize: dict | None = None  # a fixed Standardizer (to_dict) applied to the channels, if given

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        table = WindowTable.from_dict(self.table).take(self.plan.shard_indices(i))
        X = read_windows(Store(self.store_root), self.survey_ids, InputSpec.from_dict(self.spec), table)
        if self.standardize is not None:
            X = Standardizer.from_dict(self.standardize).transform(X, np.float32)
        y = table.label.astype(np.float32)
        if self.class_weights is None:
            return X, y, None
        w0, w1 = self.class_weights
        return X, y, np.where(table.label == 1, w1, w0).astype(np.float32)

