"""Training examples: the labelled tiles of surveys, cut into training, validation and test regions.

A *training set* here is every labelled tile (label 1 or 0, at least ``min_valid`` of its pixels
valid) of one or more surveys. Tiles are not split at random into training and evaluation sets:
neighbouring tiles look alike (the same pond spans two tiles; the same field fills ten), so a
random split lets the evaluation see near-copies of training tiles and flatters the model.
Instead each survey is cut into *regions*, bands of whole tile columns, west to east::

    | training ..................... | gap | validation | gap | test |

- the **test** band (the eastmost ``test_fraction`` of the columns) is never seen in training;
  its metrics are the held-out figures reported and stored with the model;
- the **validation** band drives early stopping and the choice of the decision threshold;
- a **gap** of ``gap`` columns between bands is dropped; by default the number of columns
  whose tiles overlap the next band's first column (0 at the training stride 128 = tile size).

Surveys of one area share their grid, so the same columns are held out at every date.

An :class:`ExampleTable` lists a region's tiles (survey, row, column, label) in a fixed order
(by survey, then row-major), which the shard plan of data-parallel training indexes.
:class:`StoreShardLoader` reads one shard's features on a Dask worker, applying the tile
symmetries (each training tile also seen as its 7 mirrored and rotated versions) when asked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ann.shards import ShardPlan
from pipeline.errors import InputError
from pipeline.features import get_spec, open_features
from pipeline.labels import open_labels
from pipeline.store import Store

__all__ = [
    "HoldOut",
    "TRAIN",
    "VALIDATION",
    "TEST",
    "GAP",
    "REGION_NAMES",
    "column_regions",
    "region_columns",
    "ExampleTable",
    "example_table",
    "read_examples",
    "StoreShardLoader",
]

TRAIN, VALIDATION, TEST, GAP = 0, 1, 2, -1
REGION_NAMES = {TRAIN: "train", VALIDATION: "validation", TEST: "test"}


@dataclass(frozen=True)
class HoldOut:
    """How each survey is cut into regions (see the module docstring).

    ``test_fraction`` and ``val_fraction``: shares of the tile columns in the test and
    validation bands (each at least one column). ``gap``: columns dropped between bands;
    None = as many as overlap (``ceil(size / stride) - 1``). ``min_valid``: least valid-pixel
    fraction of a tile used at all.
    """

    test_fraction: float = 0.2
    val_fraction: float = 0.2
    gap: int | None = None
    min_valid: float = 0.5

    def __post_init__(self) -> None:
        for name in ("test_fraction", "val_fraction"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise InputError(f"hold-out {name}={value!r} must be a fraction between 0 and 1, e.g. 0.2")
        if self.test_fraction + self.val_fraction >= 1:
            raise InputError(
                f"hold-out fractions test {self.test_fraction} + validation {self.val_fraction} leave no "
                f"columns for training; keep their sum well below 1 (default 0.2 + 0.2)"
            )
        if self.gap is not None and self.gap < 0:
            raise InputError(f"hold-out gap={self.gap} must be a number of tile columns >= 0")
        if not 0 <= self.min_valid <= 1:
            raise InputError(f"min_valid={self.min_valid} must be a fraction in [0, 1]")


def column_regions(n_cols: int, holdout: HoldOut, size: int, stride: int, survey_id: str = "the survey") -> np.ndarray:
    """Region of each tile column, west to east: (n_cols,) int8 of TRAIN, VALIDATION, TEST or GAP.

    The test band is the last ``ceil(test_fraction * n_cols)`` columns, the validation band the
    ``ceil(val_fraction * n_cols)`` before it, each preceded by ``gap`` dropped columns.
    """
    gap = holdout.gap if holdout.gap is not None else math.ceil(size / stride) - 1
    n_test = max(1, math.ceil(holdout.test_fraction * n_cols))
    n_val = max(1, math.ceil(holdout.val_fraction * n_cols))
    n_train = n_cols - n_test - n_val - 2 * gap
    if n_train < 1:
        raise InputError(
            f"{survey_id} is {n_cols} tile columns wide: too narrow to hold out {n_test} test and {n_val} "
            f"validation columns with gaps of {gap} and keep any for training; lower the hold-out "
            f"fractions or the gap, or train on a wider survey"
        )
    regions = np.full(n_cols, GAP, np.int8)
    regions[:n_train] = TRAIN
    regions[n_train + gap : n_train + gap + n_val] = VALIDATION
    regions[n_cols - n_test :] = TEST
    return regions


@dataclass(frozen=True)
class ExampleTable:
    """Labelled tiles of one region: survey index (N,), tile row (N,), tile col (N,), label (N,) int8.

    Ordered by survey, then row-major: the order the shard plan's indices refer to.
    """

    survey: np.ndarray
    row: np.ndarray
    col: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return int(self.label.size)

    def take(self, idx: np.ndarray) -> "ExampleTable":
        return ExampleTable(self.survey[idx], self.row[idx], self.col[idx], self.label[idx])


def _open(store: Store, survey_id: str, spec, labels: str, stride: int, size: int):
    features = open_features(store, survey_id, spec, stride, size)
    tile_labels = open_labels(store, survey_id, labels, stride, size)
    if tuple(tile_labels.values.shape) != tuple(features.valid_fraction.shape):
        raise InputError(
            f"labels {labels!r} of {survey_id} cover {tile_labels.values.shape} tiles but its features "
            f"{features.valid_fraction.shape}; remake the labels on the features' grid (tile size {size}, "
            f"stride {stride})"
        )
    return features, tile_labels


def example_table(
    store: Store, survey_ids: Sequence[str], spec: Any, labels: str, holdout: HoldOut, stride: int, size: int
) -> dict[int, ExampleTable]:
    """The labelled, valid tiles of every region: {TRAIN: table, VALIDATION: table, TEST: table}."""
    parts: dict[int, list[tuple]] = {TRAIN: [], VALIDATION: [], TEST: []}
    for k, survey_id in enumerate(survey_ids):
        features, tile_labels = _open(store, survey_id, spec, labels, stride, size)
        usable = (tile_labels.values >= 0) & (features.valid_fraction >= holdout.min_valid)
        regions = column_regions(usable.shape[1], holdout, size, stride, survey_id)
        for region in parts:
            rows, cols = np.nonzero(usable & (regions == region)[None, :])  # row-major order
            parts[region].append((np.full(rows.size, k, np.int32), rows.astype(np.int32), cols.astype(np.int32),
                                  tile_labels.values[rows, cols].astype(np.int8)))
    return {region: ExampleTable(*(np.concatenate(a) for a in zip(*p))) for region, p in parts.items()}


def _read_tiles(values, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Feature rows (N, F) float32 of tiles (rows[i], cols[i]) of a (n_rows, n_cols, F) Zarr array.

    Read one band of chunk rows at a time, so memory holds one band, never the whole array.
    """
    out = np.empty((rows.size, values.shape[2]), np.float32)
    band = values.chunks[0] if hasattr(values, "chunks") and isinstance(values.chunks[0], int) else values.shape[0]
    for start in range(0, values.shape[0], band):
        inside = np.flatnonzero((rows >= start) & (rows < start + band))
        if inside.size:
            block = np.asarray(values[start : start + band])  # (band, n_cols, F)
            out[inside] = block[rows[inside] - start, cols[inside]]
    return out


def read_examples(store: Store, survey_ids: Sequence[str], spec: Any, stride: int, size: int, table: ExampleTable) -> np.ndarray:
    """Raw features (N, F) float32 of the tiles of ``table``, in its order."""
    X = None
    for k, survey_id in enumerate(survey_ids):
        mine = np.flatnonzero(table.survey == k)
        if not mine.size:
            continue
        values = open_features(store, survey_id, spec, stride, size).values
        Xk = _read_tiles(values, table.row[mine], table.col[mine])
        if X is None:
            X = np.empty((len(table), Xk.shape[1]), np.float32)
        X[mine] = Xk
    if X is None:
        raise InputError("no labelled tiles to read")
    return X


@dataclass(frozen=True)
class StoreShardLoader:
    """``load_shard(i)`` for :mod:`ann.parallel`: shard ``i``'s training tiles read from the store.

    Holds only paths and settings (cheap to send to a worker): the worker rebuilds the
    training table from the labels, takes the plan's indices for shard ``i`` and reads their
    features, so a lost shard is simply read again.
    """

    store_root: str
    survey_ids: tuple[str, ...]
    spec: dict
    labels: str
    holdout: HoldOut
    stride: int
    size: int
    plan: ShardPlan
    class_weights: tuple[float, float] | None
    symmetries: bool = False  # plan indexes 8 × N examples: tile j % N under symmetry j // N

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        store = Store(self.store_root)
        table = example_table(store, self.survey_ids, self.spec, self.labels, self.holdout, self.stride, self.size)[TRAIN]
        perms = get_spec(self.spec).symmetry_permutations() if self.symmetries else None
        n_views = len(perms) if perms else 1
        if len(table) * n_views != self.plan.n_examples:
            raise InputError(
                f"the training tiles of {', '.join(self.survey_ids)} changed while training "
                f"({len(table)} now, {self.plan.n_examples // n_views} at the start); rerun the training"
            )
        index = self.plan.shard_indices(i)  # (n,) into the n_views × N examples
        view, tile = np.divmod(index, len(table))
        mine = table.take(tile)
        X = read_examples(store, self.survey_ids, self.spec, self.stride, self.size, mine)  # (n, F)
        if perms:
            for k in np.unique(view):
                rows = np.flatnonzero(view == k)
                X[rows] = X[rows][:, perms[k]]
        y = mine.label.astype(np.float32)
        if self.class_weights is None:
            return X, y, None
        w0, w1 = self.class_weights
        return X, y, np.where(mine.label == 1, w1, w0).astype(np.float32)


def region_columns(store: Store, survey_ids: Sequence[str], spec: Any, labels: str, holdout: HoldOut, stride: int, size: int) -> dict[str, dict[str, list[int]]]:
    out = {}
    for survey_id in survey_ids:
        n_cols = open_features(store, survey_id, spec, stride, size).valid_fraction.shape[1]
        regions = column_regions(n_cols, holdout, size, stride, survey_id)
        out[survey_id] = {
            name: [int(np.flatnonzero(regions == r)[0]), int(np.flatnonzero(regions == r)[-1]) + 1]
            for r, name in REGION_NAMES.items()
        }
    return out
