"""Shards: the fixed partition of a training set that data-parallel training works on.

A *shard* is a fixed subset of the training examples. Which example belongs to which shard is
decided once, by a seeded permutation, and never by the number of workers: shard ``s`` holds
the examples ``sort(perm[s::n_shards])`` of ``perm = permutation(n_examples)``, so shard sizes
differ by at most one.

Every optimizer step takes the same slice from every shard: in epoch ``e`` shard ``s`` shuffles
its own rows with a generator seeded by ``(seed, e, s)`` and contributes rows
``[t * b, (t + 1) * b)`` of that order to step ``t``, where ``b = ceil(batch_size / n_shards)``.
The global batch of a step is therefore the same set of examples whether the shards live in
one process or on any number of Dask workers, and every example is seen once per epoch.

A shard computes the *sum* of its examples' losses and gradients (in micro-batches of at most
``micro_batch`` rows, accumulated in order, so memory stays bounded and one exchange carries
several micro-batches of work) and its example count. The shard sums are added along a fixed
pairwise tree over the shard indices (:func:`reduce_tree`), and divided by the total count: that
is exactly the gradient of the global batch, and since each node of the tree is the same
addition wherever it happens (a worker adds the shards it holds, the driver the rest), the
floating-point result, hence training, does not depend on the worker count (DESIGN decision 5).

Normalization statistics are exact too: each shard returns its count, mean and sum of squared
deviations (float64), and :func:`combine_moments` merges them on the driver in shard order
with Chan's formula. For pixel windows (n, H, W, C) the statistics are per channel, over every
pixel (the count is then the number of pixels).

A shard's examples are feature rows (n, F) for the classic network or pixel windows
(n, H, W, C) for the :class:`ann.convnet.ConvNet`. Two options of the plan shape each step's
rows inside the shard, so they are the same wherever the shard is computed:

- ``sampling="balanced"``: the step takes half its rows from the shard's positives and half
  from its negatives, each class drawn in turn from its own reshuffled cycle
  (:func:`balanced_rows`), so rare positives appear in every step instead of a few per epoch.
  A shard holding one class only draws from it alone.
- ``augment="d4"``: each window is shown under one of the 8 symmetries of the square, chosen by
  a hash of (seed, epoch, the example's global index) (:mod:`ann.augment`).

This module is pure NumPy; :mod:`ann.parallel` runs the same functions on Dask workers, and
:class:`ShardedSource` runs them in this process (one worker, no Dask).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ann.augment import augment_windows
from ann.errors import ConfigError
from ann.standardize import Standardizer

__all__ = [
    "ShardPlan",
    "Shard",
    "ShardLoader",
    "StepResult",
    "shard_moments",
    "combine_moments",
    "prepare_shard",
    "shard_gradient",
    "reduce_tree",
    "covering_nodes",
    "reduce_held",
    "network_for",
    "ShardedSource",
    "NpyShardLoader",
    "balanced_rows",
    "AUGMENTATIONS",
    "SAMPLINGS",
]

# (X (n, F) features or (n, H, W, C) windows, float; y (n,) {0, 1}; w (n,) sample weights or None)
ShardData = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]
ShardLoader = Callable[[int], ShardData]
# (sum of example losses, per-parameter sums of example gradients, number of examples)
StepResult = tuple[float, list[np.ndarray], int]

_PARTITION_STREAM = 0x5A4D  # separates the partition's random stream from the per-epoch ones
AUGMENTATIONS = (None, "d4", "d4+photometric")
SAMPLINGS = ("uniform", "balanced")


def balanced_rows(labels: np.ndarray, batch: int, seed: int, epoch: int, step: int, stream: int = 0) -> np.ndarray:
    """Rows (batch,) for one step: ``ceil(batch / 2)`` positives and the rest negatives.

    Each class is an endless sequence of reshuffles of its rows (cycle ``c`` ordered by
    ``default_rng([seed, epoch, stream, class, c])``); step ``t`` takes the next slice of each,
    so positives repeat (oversampled) while negatives are visited in turn. With one class only,
    the batch is drawn from it alone. A pure function of its arguments: the same rows wherever
    it runs.
    """
    labels = np.asarray(labels).reshape(-1)
    pos = np.flatnonzero(labels > 0.5)
    neg = np.flatnonzero(labels <= 0.5)
    if pos.size == 0 or neg.size == 0:
        parts = [(np.arange(labels.size), batch, 2)]
    else:
        b_pos = (batch + 1) // 2
        parts = [(pos, b_pos, 1), (neg, batch - b_pos, 0)]
    rows = []
    for members, b, cls in parts:
        n = members.size
        start, stop = step * b, (step + 1) * b
        for c in range(start // n, (stop - 1) // n + 1 if b else start // n):
            order = members[np.random.default_rng([seed, epoch, stream, cls, c]).permutation(n)]
            rows.append(order[max(start - c * n, 0) : min(stop - c * n, n)])
    return np.concatenate(rows) if rows else np.empty(0, np.int64)


@dataclass(frozen=True)
class ShardPlan:
    """Which examples each shard holds and which of its rows each step uses.

    ``n_examples``: size of the training set. ``n_shards``: number of shards (choose a multiple
    of the worker threads you expect; the default 8 fits 1, 2, 4 and 8). ``batch_size``: global
    examples per optimizer step, summed over shards. ``micro_batch``: rows per gradient call
    inside a shard (bounds the work buffers; several micro-batches are accumulated before one
    exchange). ``seed``: fixes the partition and every epoch's order. ``augment``: None or
    ``"d4"`` (pixel windows only). ``sampling``: ``"uniform"`` or ``"balanced"`` (see the module
    docstring). Build it from a :class:`ann.train.TrainConfig` with :meth:`from_config`, so that
    the config's ``batch_size`` (the global mini-batch), seed, augment and sampling are the plan's.
    """

    n_examples: int
    n_shards: int = 8  # divides evenly over 1, 2, 4 and 8 worker threads
    batch_size: int = 131072  # 16384 per shard: keeps the exchange <= ~10 % of a step (benchmarks/README.md)
    micro_batch: int = 512  # fastest rows per gradient call on one core (work buffers stay in cache)
    seed: int = 0
    augment: str | None = None  # "d4": each window under a seeded one of the 8 square symmetries
    sampling: str = "uniform"  # "balanced": half of each step's rows positive (rare targets)

    def __post_init__(self) -> None:
        for name in ("n_examples", "n_shards", "batch_size", "micro_batch"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"shard plan setting {name}={value!r} must be a positive integer")
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"shard plan augment={self.augment!r} is unknown; choose one of {AUGMENTATIONS}")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(f"shard plan sampling={self.sampling!r} is unknown; choose one of {SAMPLINGS}")
        if self.n_shards > self.n_examples:
            raise ConfigError(
                f"shard plan asks for {self.n_shards} shards of {self.n_examples} examples; "
                f"use at most one shard per example (fewer shards, or more training data)"
            )

    @classmethod
    def from_config(cls, n_examples: int, config, n_shards: int = 8, micro_batch: int = 512) -> "ShardPlan":
        """The plan of ``config`` (a :class:`ann.train.TrainConfig`): its batch_size is the global
        mini-batch, its seed, augment and sampling are the plan's. ``n_shards`` is capped at
        ``n_examples``. For a ConvNet keep ``micro_batch`` small (~32-64 windows: its patch
        matrices grow with it)."""
        return cls(n_examples=n_examples, n_shards=min(n_shards, n_examples), batch_size=config.batch_size,
                   micro_batch=micro_batch, seed=config.seed, augment=config.augment, sampling=config.sampling)

    @property
    def shard_batch(self) -> int:
        """Examples each shard contributes to a step: ceil(batch_size / n_shards)."""
        return -(-self.batch_size // self.n_shards)

    @property
    def micro_batches_per_step(self) -> int:
        """Micro-batches a shard accumulates before one exchange."""
        return -(-min(self.shard_batch, max(self.shard_sizes())) // self.micro_batch)

    def shard_sizes(self) -> list[int]:
        q, r = divmod(self.n_examples, self.n_shards)
        return [q + (s < r) for s in range(self.n_shards)]

    def steps_per_epoch(self) -> int:
        """Steps that visit every example once: ceil(largest shard / shard_batch)."""
        return max(1, math.ceil(max(self.shard_sizes()) / self.shard_batch))

    def shard_indices(self, shard: int) -> np.ndarray:
        """Example indices (into the training set, ascending) held by ``shard``, shape (n_s,)."""
        self._check_shard(shard)
        perm = np.random.default_rng([self.seed, _PARTITION_STREAM]).permutation(self.n_examples)
        return np.sort(perm[shard :: self.n_shards])

    def step_rows(self, shard: int, epoch: int, step: int) -> np.ndarray:
        """Rows of ``shard`` (positions in its own arrays) that step ``step`` of ``epoch`` uses."""
        self._check_shard(shard)
        n = self.shard_sizes()[shard]
        order = np.random.default_rng([self.seed, epoch, shard]).permutation(n)
        b = self.shard_batch
        return order[step * b : (step + 1) * b]

    def shard_step_rows(self, shard: int, labels: np.ndarray, epoch: int, step: int) -> np.ndarray:
        """The rows step ``step`` uses under the plan's sampling (labels (n_s,) of the shard)."""
        if self.sampling == "balanced":
            self._check_shard(shard)
            return balanced_rows(labels, self.shard_batch, self.seed, epoch, step, stream=shard)
        return self.step_rows(shard, epoch, step)

    def _check_shard(self, shard: int) -> None:
        if not 0 <= shard < self.n_shards:
            raise ConfigError(f"shard {shard} does not exist; the plan has shards 0..{self.n_shards - 1}")

    def to_dict(self) -> dict:
        return {
            "n_examples": int(self.n_examples),
            "n_shards": int(self.n_shards),
            "batch_size": int(self.batch_size),
            "micro_batch": int(self.micro_batch),
            "seed": int(self.seed),
            "augment": self.augment,
            "sampling": self.sampling,
        }


@dataclass(frozen=True)
class Shard:
    """One shard's examples, ready for gradients: X (n, F) or (n, H, W, C) in the network dtype,
    y (n,), w (n,) or None; ``ids`` (n,) their global indices (seed D4 augmentation)."""

    index: int
    X: np.ndarray
    y: np.ndarray
    w: np.ndarray | None
    ids: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return self.X.nbytes + self.y.nbytes + (0 if self.w is None else self.w.nbytes)


def _checked(index: int, data: ShardData, expected_rows: int) -> ShardData:
    if not (isinstance(data, tuple) and len(data) == 3):
        raise ConfigError(f"load_shard({index}) must return a tuple (X, y, w); got {type(data).__name__}")
    X, y, w = data
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim not in (2, 4) or y.shape != (X.shape[0],) or (w is not None and np.shape(w) != y.shape):
        raise ConfigError(
            f"load_shard({index}) returned X {X.shape}, y {y.shape}, w {None if w is None else np.shape(w)}; "
            f"expected X (n, F) or (n, H, W, C), y (n,) and w (n,) or None"
        )
    if X.shape[0] != expected_rows:
        raise ConfigError(
            f"load_shard({index}) returned {X.shape[0]} examples but the shard plan gives shard "
            f"{index} {expected_rows}; the loader must return exactly plan.shard_indices({index})"
        )
    return X, y, w


def shard_moments(index: int, data: ShardData, plan: ShardPlan) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean (F,), sum of squared deviations (F,)) of a shard's raw features, in float64.

    For windows (n, H, W, C): per channel over the n H W pixels (count = n H W).
    """
    X, _, _ = _checked(index, data, plan.shard_sizes()[index])
    X64 = X.reshape(-1, X.shape[-1]).astype(np.float64)  # (n [H W], F)
    mean = X64.mean(axis=0)
    m2 = ((X64 - mean) ** 2).sum(axis=0)
    return X64.shape[0], mean, m2


def combine_moments(moments: Sequence[tuple[int, np.ndarray, np.ndarray]]) -> tuple[int, np.ndarray, np.ndarray]:
    """Merge per-shard moments in the given (shard) order: (count, mean (F,), population variance (F,)).

    Chan et al.'s pairwise update, so the result is the exact moments of the union, and the same
    bits whichever process computed each shard's part.
    """
    n, mean, m2 = moments[0][0], moments[0][1].copy(), moments[0][2].copy()
    for n_b, mean_b, m2_b in moments[1:]:
        total = n + n_b
        delta = mean_b - mean
        mean += delta * (n_b / total)
        m2 += m2_b + delta**2 * (n * n_b / total)
        n = total
    return n, mean, m2 / n


def prepare_shard(
    index: int,
    data: ShardData,
    plan: ShardPlan,
    dtype: str,
    mean: np.ndarray | None,
    scale: np.ndarray | None,
) -> Shard:
    """Turn a loaded shard into a :class:`Shard`: standardized ``(X - mean) / scale`` (over the
    last axis, computed in float64 a block of examples at a time), in ``dtype``."""
    X, y, w = _checked(index, data, plan.shard_sizes()[index])
    dt = np.dtype(dtype)
    if mean is None:
        X = np.ascontiguousarray(X, dtype=dt)
    else:
        out = np.empty(X.shape, dt)
        block = max(1, (1 << 22) // max(1, int(np.prod(X.shape[1:]))))  # ~32 MB of float64 at a time
        for start in range(0, X.shape[0], block):
            out[start : start + block] = (X[start : start + block].astype(np.float64) - mean) / scale
        X = out
    return Shard(index, X, np.asarray(y, dtype=dt), None if w is None else np.asarray(w, dtype=dt),
                 plan.shard_indices(index))


_NETWORKS: dict[str, object] = {}


def network_for(architecture: dict, params: Sequence[np.ndarray]):
    """A network of ``architecture`` holding a copy of ``params``, reused across steps in this process.

    Building a network allocates its work buffers; a worker computes thousands of steps with
    the same architecture, so it keeps one network per architecture and copies the new
    weights into it.
    """
    from ann.convnet import network_from_architecture

    key = json.dumps(architecture, sort_keys=True, default=str)
    net = _NETWORKS.get(key)
    if net is None:
        net = network_from_architecture(architecture, [np.array(p, copy=True) for p in params])
        _NETWORKS[key] = net
    else:
        for mine, new in zip(net.params, params, strict=True):
            np.copyto(mine, new)
    return net


def _gather(a: np.ndarray, rows: np.ndarray, slot: str) -> np.ndarray:
    """``a[rows]`` written into a buffer reused across steps (fresh large arrays cost page faults)."""
    shape = (len(rows),) + a.shape[1:]
    buf = _BUFFERS.get(slot)
    if buf is None or buf.dtype != a.dtype or buf.shape[1:] != a.shape[1:] or buf.shape[0] < len(rows):
        buf = _BUFFERS[slot] = np.empty(shape, a.dtype)
    out = buf[: len(rows)]
    np.take(a, rows, axis=0, out=out, mode="clip")  # "raise" would copy through a temporary
    return out


_BUFFERS: dict[str, np.ndarray] = {}


def _like(a: np.ndarray, slot: str) -> np.ndarray:
    """A buffer of a's shape and dtype reused across steps."""
    buf = _BUFFERS.get(slot)
    if buf is None or buf.dtype != a.dtype or buf.shape[1:] != a.shape[1:] or buf.shape[0] < a.shape[0]:
        buf = _BUFFERS[slot] = np.empty(a.shape, a.dtype)
    return buf[: a.shape[0]]


def shard_gradient(net, shard: Shard, plan: ShardPlan, epoch: int, step: int) -> StepResult:
    """Sum of losses and gradients over this shard's rows of the step, micro-batch by micro-batch.

    Returns fresh gradient arrays (float sums in the network dtype); the micro-batches are
    added in row order, so the result is the same bits wherever the shard is computed. The
    plan's sampling chooses the rows, its augmentation transforms the gathered windows.
    """
    rows = plan.shard_step_rows(shard.index, shard.y, epoch, step)
    loss_sum = 0.0
    total: list[np.ndarray] | None = None
    for start in range(0, len(rows), plan.micro_batch):
        r = rows[start : start + plan.micro_batch]
        w = None if shard.w is None else _gather(shard.w, r, "w")
        X = _gather(shard.X, r, "X")
        if plan.augment is not None:
            ids = shard.ids if shard.ids is not None else plan.shard_indices(shard.index)
            X = augment_windows(X, plan.augment, plan.seed, epoch, ids[r], out=_like(X, "X_d4"))
        loss, grads = net.loss_and_grad(X, _gather(shard.y, r, "y"), w, reuse_buffers=True)
        loss_sum += float(loss)
        if total is None:
            total = [np.array(g, copy=True) for g in grads]  # grads are the network's work buffers
        else:
            for acc, g in zip(total, grads):
                acc += g
    if total is None:  # this shard has no rows left in this step
        total = [np.zeros_like(p) for p in net.params]
    return loss_sum, total, len(rows)


def _add(a: StepResult, b: StepResult) -> StepResult:
    return a[0] + b[0], [np.add(x, y) for x, y in zip(a[1], b[1])], a[2] + b[2]


def reduce_tree(results: Mapping[tuple[int, int], StepResult], lo: int, hi: int) -> StepResult:
    """Sum of shards ``lo..hi-1`` by the fixed pairwise tree: node (lo, hi) = (lo, mid) + (mid, hi).

    ``mid = (lo + hi) // 2``; leaves are ``(s, s + 1)``. ``results`` may hold any nodes already
    summed elsewhere (a worker adds the shards it holds before sending): since every node is
    defined as the same addition of the same two children, the total is the same bits whichever
    process added which node, and the worker count cannot change it.
    """
    node = results.get((lo, hi))
    if node is not None:
        return node
    if hi - lo <= 1:
        raise KeyError(f"no result for shard {lo}")
    mid = (lo + hi) // 2
    return _add(reduce_tree(results, lo, mid), reduce_tree(results, mid, hi))


def covering_nodes(shards: Iterable[int], lo: int, hi: int) -> list[tuple[int, int]]:
    """The largest nodes of the reduction tree over ``lo..hi-1`` whose shards are all in ``shards``."""
    shards = set(shards)
    if all(s in shards for s in range(lo, hi)):
        return [(lo, hi)]
    if hi - lo <= 1:
        return []
    mid = (lo + hi) // 2
    return covering_nodes(shards, lo, mid) + covering_nodes(shards, mid, hi)


def reduce_held(leaves: Mapping[int, StepResult], n_shards: int) -> dict[tuple[int, int], StepResult]:
    """Per-shard results summed up to the largest complete nodes: {(lo, hi): result}."""
    as_nodes = {(s, s + 1): r for s, r in leaves.items()}
    return {node: reduce_tree(as_nodes, *node) for node in covering_nodes(leaves, 0, n_shards)}


class ShardedSource:
    """A gradient source over the shards of ``plan``, all held in this process.

    The one-worker path of data-parallel training: the same shards, the same per-shard sums,
    the same reduction tree as :class:`ann.parallel.DaskGradientSource`, hence the same
    weights, with no Dask at all. ``standardize=True`` computes the normalization statistics
    from the shards (exact, reduced in shard order) and trains on standardized features;
    :attr:`standardizer` then holds them for the model file.
    """

    def __init__(
        self,
        load_shard: ShardLoader,
        plan: ShardPlan,
        net,
        standardize: bool = True,
        on_step: Callable[[int, int, float, int], None] | None = None,
    ) -> None:
        self.plan = plan
        self.n_examples = plan.n_examples
        self.on_step = on_step
        self._architecture = net.architecture()
        dtype = str(net.params[0].dtype)
        raw = [load_shard(s) for s in range(plan.n_shards)]
        self.standardizer = None
        mean = scale = None
        if standardize:
            _, mean, var = combine_moments([shard_moments(s, raw[s], plan) for s in range(plan.n_shards)])
            self.standardizer = Standardizer.from_moments(mean, var)
            mean, scale = self.standardizer.mean, self.standardizer.scale
        self.shards = [prepare_shard(s, raw[s], plan, dtype, mean, scale) for s in range(plan.n_shards)]

    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch()

    def batch_gradient(self, params: list[np.ndarray], epoch: int, step: int) -> tuple[float, list[np.ndarray], float]:
        net = network_for(self._architecture, params)
        leaves = {s: shard_gradient(net, shard, self.plan, epoch, step) for s, shard in enumerate(self.shards)}
        loss, grads, count = reduce_tree(reduce_held(leaves, self.plan.n_shards), 0, self.plan.n_shards)
        if self.on_step is not None:
            self.on_step(epoch, step, loss, count)
        return loss, grads, float(count)


class NpyShardLoader:
    """``load_shard`` for a training set saved as ``.npy`` files: X (N, F) or (N, H, W, C), y (N,), w (N,) optional.

    The files are memory-mapped, so each worker reads only its shard's rows. The loader holds
    paths, not arrays, so sending it to a worker costs nothing (DESIGN decision 4).
    """

    def __init__(self, plan: ShardPlan, X_path, y_path, w_path=None) -> None:
        self.plan = plan
        self.paths = (str(X_path), str(y_path), None if w_path is None else str(w_path))

    def __call__(self, i: int) -> ShardData:
        idx = self.plan.shard_indices(i)
        X_path, y_path, w_path = self.paths
        X = np.load(X_path, mmap_mode="r")[idx]
        y = np.load(y_path, mmap_mode="r")[idx]
        w = None if w_path is None else np.load(w_path, mmap_mode="r")[idx]
        return X, y, w
