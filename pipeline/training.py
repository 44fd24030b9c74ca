"""Training a tile classifier from the features and labels in the store.

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

The training itself is data-parallel (:mod:`ann.parallel`): the training tiles are cut into
the shards of a seed-fixed :class:`ann.shards.ShardPlan`; each shard is read from the store by
a task on a Dask worker (:class:`StoreShardLoader`), standardized with statistics computed
over all shards, and kept there for the whole training. With one worker and no cluster the
same shards are computed in this process, with no Dask at all, to the same weights.

*Symmetry augmentation*: a tile seen from above has no preferred orientation, so by default
each training tile also enters training as its 7 mirrored and rotated versions (the tile
symmetries, :meth:`pipeline.features.FeatureSpec.symmetry_permutations`): the same features
permuted, with no pixel read again. The shard plan then indexes ``8 × N`` examples, example
``j`` being symmetry ``j // N`` of training tile ``j % N``, so the plan stays fixed by the seed
and the weights still do not depend on the worker count. Validation and test tiles are never
augmented: they are scored as they are.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ann import metrics
from ann.errors import ConfigError
from ann.io import Classifier, save_model
from ann.network import MLP
from ann.shards import ShardedSource, ShardPlan
from ann.train import History, TrainConfig, class_sample_weights, fit
from pipeline.errors import InputError
from pipeline.tiling import DEFAULT_TILE_SIZE, TRAINING_STRIDE

__all__ = [
    "HoldOut",
    "TRAIN",
    "VALIDATION",
    "TEST",
    "GAP",
    "column_regions",
    "ExampleTable",
    "example_table",
    "StoreShardLoader",
    "choose_threshold",
    "TrainingReport",
    "train_model",
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


def _open(store, survey_id: str, spec, labels: str, stride: int, size: int):
    from pipeline.features import open_features
    from pipeline.labels import open_labels

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
    store, survey_ids: Sequence[str], spec, labels: str, holdout: HoldOut, stride: int, size: int
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


def read_examples(store, survey_ids: Sequence[str], spec, stride: int, size: int, table: ExampleTable) -> np.ndarray:
    """Raw features (N, F) float32 of the tiles of ``table``, in its order."""
    from pipeline.features import open_features

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
        from pipeline.features import get_spec
        from pipeline.store import Store

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


def choose_threshold(y: np.ndarray, p: np.ndarray, precision: float | None = None, recall: float | None = None) -> float:
    """Decision threshold picked on validation data (y (N,) in {0,1}, p (N,) probabilities).

    With a target ``precision`` (or ``recall``): the threshold of :func:`ann.metrics.threshold_for_precision`
    (``threshold_for_recall``). Otherwise the threshold with the highest F1 (ties: the higher
    threshold, fewer detections); 0.5 when the validation data has no positive.
    """
    y = np.asarray(y).astype(bool).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if precision is not None and recall is not None:
        raise InputError("give a target precision or a target recall for the threshold, not both")
    if precision is not None:
        return metrics.threshold_for_precision(y, p, precision)
    if recall is not None:
        return metrics.threshold_for_recall(y, p, recall)
    if not y.any():
        return 0.5
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    tp = np.cumsum(ys)  # predicting positive for the first k+1 examples
    fp = np.cumsum(~ys)
    last = np.r_[ps[1:] != ps[:-1], True]  # only cut between distinct probabilities
    f1 = 2 * tp / (tp + fp + y.sum())
    f1 = np.where(last, f1, -1.0)
    best = np.flatnonzero(f1 == f1.max())[0]  # first = highest threshold among ties
    return float(ps[best])


@dataclass
class TrainingReport:
    """What a training did: the model id, the data used, the history and the held-out metrics.

    ``counts``: labelled tiles per region and their positives. ``columns``: the column range of
    each region per survey. ``validation`` and ``test``: :func:`ann.metrics.binary_report` at the
    chosen ``threshold`` (``test`` None when no test tile is labelled). ``workers``: worker
    threads that trained (1 = in-process). ``seconds``: wall time of the whole training.
    """

    model_id: str
    survey_ids: list[str]
    counts: dict[str, dict[str, int]]
    columns: dict[str, dict[str, list[int]]]
    threshold: float
    history: History
    validation: dict[str, Any]
    test: dict[str, Any] | None
    plan: dict[str, int]
    workers: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (undefined metrics, NaN, become None)."""
        d = asdict(self)
        d["history"] = self.history.to_dict()
        return _json_ready(d)


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


class _EpochBars:
    """``on_step`` hook: one progress bar per epoch, showing the epoch's mean training loss so far."""

    def __init__(self, steps: int, disable: bool | None = None) -> None:
        self.steps, self.disable = steps, disable
        self.bar = None
        self.loss = self.count = 0.0

    def __call__(self, epoch: int, step: int, loss_sum: float, count: int) -> None:
        from pipeline.progress import progress_bar

        if step == 0:
            self.close()
            self.bar = progress_bar(self.steps, f"epoch {epoch + 1}", unit="step", disable=self.disable)
            self.bar.leave = False  # one live bar at a time, not a line per epoch
            self.loss = self.count = 0.0
        self.loss += loss_sum
        self.count += count
        self.bar.set_postfix(loss=f"{self.loss / max(self.count, 1):.4f}", refresh=False)
        self.bar.update(1)
        if step == self.steps - 1:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _region_columns(store, survey_ids, spec, labels, holdout, stride, size) -> dict[str, dict[str, list[int]]]:
    from pipeline.features import open_features

    out = {}
    for survey_id in survey_ids:
        n_cols = open_features(store, survey_id, spec, stride, size).valid_fraction.shape[1]
        regions = column_regions(n_cols, holdout, size, stride, survey_id)
        out[survey_id] = {
            name: [int(np.flatnonzero(regions == r)[0]), int(np.flatnonzero(regions == r)[-1]) + 1]
            for r, name in REGION_NAMES.items()
        }
    return out


def train_model(
    store,
    survey_ids: Sequence[str],
    spec: Any = "default",
    labels: str = "default",
    *,
    workers: int | None = None,
    cluster: str | None = None,
    client=None,
    config: TrainConfig = TrainConfig(),
    holdout: HoldOut = HoldOut(),
    hidden: Sequence[int] = (64, 32),
    activation: str = "relu",
    n_shards: int = ShardPlan.n_shards,
    batch_size: int = ShardPlan.batch_size,
    micro_batch: int = ShardPlan.micro_batch,
    target_precision: float | None = None,
    target_recall: float | None = None,
    stride: int = TRAINING_STRIDE,
    size: int = DEFAULT_TILE_SIZE,
    symmetries: bool = True,
    progress: bool | None = None,
) -> tuple[Classifier, str, TrainingReport]:
    """Train a classifier on the labelled tiles of ``survey_ids``, evaluate it on the held-out region, save it.

    ``spec``: feature spec name (features must be in the store: ``damwatch features``).
    ``labels``: name of the stored labels (``damwatch labels``). Where it runs: on ``client``
    if given; else in this process when ``workers == 1`` and no cluster is configured; else on
    ``cluster`` / ``$DAMWATCH_CLUSTER`` or a local cluster of ``workers`` processes (default:
    one per core). The weights do not depend on that choice. ``config``: optimizer, epochs,
    early stopping (``config.seed`` fixes the initial weights and the shard plan;
    ``config.batch_size`` is not used: the plan's ``batch_size`` is the global batch).
    ``n_shards``, ``batch_size``, ``micro_batch``: the shard plan (defaults measured in
    benchmarks/parallel.py). ``target_precision`` / ``target_recall``: choose the decision
    threshold for that target on the validation band (default: best F1 there). ``symmetries``:
    train on each training tile's 8 mirrored and rotated versions (see the module docstring);
    turn off for targets with a preferred orientation in the image.

    Returns the classifier, its model id (saved under ``store.models_dir``) and a report.
    """
    from pipeline.cluster import cluster_address
    from pipeline.features import get_spec

    started = time.perf_counter()
    survey_ids = list(dict.fromkeys(survey_ids))
    if not survey_ids:
        raise InputError("no survey to train on; give at least one survey id (see `damwatch surveys`)")
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be an ann.train.TrainConfig, got {type(config).__name__}")
    for survey_id in survey_ids:
        store.survey(survey_id)  # StoreError listing the known surveys if absent
    spec_obj = get_spec(spec)
    spec_dict = spec_obj.to_dict()
    tables = example_table(store, survey_ids, spec_dict, labels, holdout, stride, size)
    train, val, test = tables[TRAIN], tables[VALIDATION], tables[TEST]
    counts = {REGION_NAMES[r]: {"tiles": len(t), "positive": int((t.label == 1).sum())} for r, t in tables.items()}
    for name, minimum in (("train", 2), ("validation", 1)):
        c = counts[name]
        if c["tiles"] < minimum or c["positive"] == 0 or c["positive"] == c["tiles"]:
            raise InputError(
                f"the {name} region of {', '.join(survey_ids)} has {c['tiles']} labelled tiles, "
                f"{c['positive']} of them positive; training needs both classes there. Label more of "
                f"the surveys (`damwatch labels`), add surveys, or change the hold-out fractions"
            )
    notes = []
    if len(test) == 0:
        notes.append("no labelled tile in the test region: no held-out metrics")

    weights = class_sample_weights(train.label, config.class_weight, np.float64)
    class_weights = None if weights is None else (
        float(weights[train.label == 0][0]), float(weights[train.label == 1][0]))
    n_examples = len(train) * (len(spec_obj.symmetry_permutations()) if symmetries else 1)
    plan = ShardPlan(n_examples=n_examples, n_shards=min(n_shards, n_examples), batch_size=batch_size,
                     micro_batch=micro_batch, seed=config.seed)
    if plan.n_shards < n_shards:
        notes.append(f"only {n_examples} training examples: {plan.n_shards} shards instead of {n_shards}")
    loader = StoreShardLoader(str(store.root), tuple(survey_ids), spec_dict, labels, holdout, stride, size,
                              plan, class_weights, symmetries)
    net = MLP(spec_obj.n_features, hidden, activation, seed=config.seed)
    bars = _EpochBars(plan.steps_per_epoch(), disable=None if progress is None else not progress)

    X_val_raw = read_examples(store, survey_ids, spec_dict, stride, size, val)

    def run(source) -> History:
        return fit(net, source, source.standardizer.transform(X_val_raw, net.dtype), val.label, config)

    address = cluster_address(cluster) if client is None else None
    try:
        if client is not None or address is not None or (workers or os.cpu_count() or 1) > 1:
            from ann.parallel import DaskGradientSource
            from pipeline.cluster import dask_client

            def on_cluster(c) -> tuple[History, Any, int]:
                with DaskGradientSource(c, loader, plan, net, on_step=bars) as source:
                    return run(source), source.standardizer, sum(c.nthreads().values())

            if client is not None:
                history, standardizer, n_workers = on_cluster(client)
            else:
                with dask_client(address=address, n_workers=workers) as c:
                    history, standardizer, n_workers = on_cluster(c)
        else:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1):  # one worker = one core, and the same BLAS path as a Dask worker
                source = ShardedSource(loader, plan, net, on_step=bars)
                history, standardizer, n_workers = run(source), source.standardizer, 1
    finally:
        bars.close()

    p_val = net.predict_proba(standardizer.transform(X_val_raw, net.dtype))
    threshold = choose_threshold(val.label, p_val, target_precision, target_recall)
    validation = metrics.binary_report(val.label, p_val, threshold)
    test_report = None
    if len(test):
        X_test = standardizer.transform(read_examples(store, survey_ids, spec_dict, stride, size, test), net.dtype)
        test_report = metrics.binary_report(test.label, net.predict_proba(X_test), threshold)
    columns = _region_columns(store, survey_ids, spec_dict, labels, holdout, stride, size)
    surveys = [store.survey(s) for s in survey_ids]
    metadata = {
        "training": {
            "surveys": [{"id": s.id, "source_sha256": s.source_sha256} for s in surveys],
            "labels": labels,
            "tile_size": size,
            "stride": stride,
            "holdout": asdict(holdout) | {"columns": columns},
            "counts": counts,
            "plan": plan.to_dict(),
            "config": config.to_dict(),
            "hidden": list(hidden),
            "activation": activation,
            "symmetries": bool(symmetries),
            "workers": n_workers,
        },
        "history": history.summary(),
        "threshold_rule": ("precision", target_precision) if target_precision is not None
        else ("recall", target_recall) if target_recall is not None else ("best_f1", None),
        "metrics": {"validation": validation, "test": test_report},
    }
    clf = Classifier(net, standardizer, spec_dict, threshold, metadata)
    model_id = save_model(clf, store.models_dir)
    report = TrainingReport(
        model_id=model_id, survey_ids=survey_ids, counts=counts, columns=columns, threshold=threshold,
        history=history, validation=validation, test=test_report, plan=plan.to_dict(), workers=n_workers,
        seconds=time.perf_counter() - started, notes=notes,
    )
    return clf, model_id, report
