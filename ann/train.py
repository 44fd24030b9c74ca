"""The training loop: epochs of gradient steps, validation after each, early stopping.

An *epoch* is one pass over the training examples in mini-batches. Where the gradients come from
is a :class:`GradientSource`: :class:`InMemorySource` computes them from arrays in this process
(shuffled by a seeded generator each epoch); ``ann.parallel`` computes them on Dask workers.
Either way a source returns, per step, the *sums* of the example losses and gradients and the
number of examples, and :func:`fit` does the rest::

    mean gradient = sum / n  (+ l2 * W for weight matrices and conv kernels: weight decay, not on biases)
    optimizer.step(params, mean gradient)

After every epoch the network scores the validation set. Training stops at the first of:
the validation metric reaching ``target`` (the predetermined accuracy, say), ``patience`` epochs
without improvement, or ``max_epochs``; the weights of the best epoch are then restored. A
training that diverges (a non-finite loss, or validation probabilities that are NaN) stops at
once with a :class:`ConfigError` naming the step and the learning rate, rather than saving a
model of NaNs.

The network is an :class:`ann.network.MLP` over feature rows (N, F) or an
:class:`ann.convnet.ConvNet` over pixel windows (N, H, W, C); the loop does not care which.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ann import metrics
from ann.augment import augment_windows
from ann.errors import ConfigError
from ann.functions import binary_cross_entropy
from ann.network import MLP
from ann.optim import SGD, Adam, tiled_base
from ann.shards import AUGMENTATIONS, SAMPLINGS, balanced_rows

__all__ = [
    "VALIDATION_METRICS",
    "GradientSource",
    "History",
    "InMemorySource",
    "TrainConfig",
    "class_sample_weights",
    "fit",
    "make_optimizer",
]

# Validation metrics fit can stop on; True when higher is better.
VALIDATION_METRICS: dict[str, bool] = {
    "accuracy": True,
    "precision": True,
    "recall": True,
    "f1": True,
    "roc_auc": True,
    "average_precision": True,
    "loss": False,
}


@dataclass(frozen=True)
class TrainConfig:
    """Training settings. Unknown names are rejected (``from_dict``), bad values raise ConfigError."""

    optimizer: str = "adam"  # "adam" or "sgd" (with momentum)
    learning_rate: float = 1e-3  # Adam's usual step; SGD wants ~0.01-0.1
    momentum: float = 0.9  # SGD only; 0 = plain SGD
    beta1: float = 0.9  # Adam: decay of the gradient mean
    beta2: float = 0.999  # Adam: decay of the squared-gradient mean
    eps: float = 1e-8  # Adam: keeps the step finite where the gradient is ~0
    l2: float = 1e-4  # weight decay: adds l2 * W to each weight matrix's mean gradient
    # The next five describe the data side; fit itself never reads them, the gradient source's
    # builder does (InMemorySource.from_config, ShardPlan.from_config).
    batch_size: int = 256  # the global mini-batch: examples per optimizer step, summed over all shards/workers
    seed: int = 0  # shuffling seed (and the D4 choices, and the shard partition)
    class_weight: str | tuple[float, float] | None = None  # None, "balanced" or (w0, w1); see class_sample_weights
    augment: str | None = None  # "d4": each pixel window under a seeded one of the 8 square symmetries; "d4+photometric": and a per-channel contrast/brightness jitter; None: as is
    sampling: str = "uniform"  # "balanced": each step half positives (rare targets oversampled); "uniform": shuffled
    max_epochs: int = 200  # hard stop
    patience: int = 10  # epochs without improvement of `metric` before stopping
    metric: str = "accuracy"  # validation metric watched for target, patience and best weights
    target: float | None = None  # stop once `metric` reaches this (<= for "loss"); None: never
    min_delta: float = 0.0  # an improvement smaller than this does not count
    threshold: float = 0.5  # decision threshold for the validation accuracy/precision/recall/f1

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"training setting {name}={getattr(self, name)!r} {why}")

        if self.optimizer not in ("adam", "sgd"):
            raise bad("optimizer", "is unknown; choose 'adam' or 'sgd'")
        if not self.learning_rate > 0:
            raise bad("learning_rate", "must be > 0")
        if not 0 <= self.momentum < 1:
            raise bad("momentum", "must be in [0, 1)")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise bad("beta1", f"and beta2={self.beta2} must be in [0, 1)")
        if not self.eps > 0:
            raise bad("eps", "must be > 0")
        if not self.l2 >= 0:
            raise bad("l2", "must be >= 0 (0 turns weight decay off)")
        for name in ("batch_size", "max_epochs", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise bad(name, "must be a positive integer")
        if self.augment not in AUGMENTATIONS:
            raise bad("augment", f"is unknown; choose one of {list(AUGMENTATIONS)}")
        if self.sampling not in SAMPLINGS:
            raise bad("sampling", f"is unknown; choose one of {list(SAMPLINGS)}")
        if self.metric not in VALIDATION_METRICS:
            raise bad("metric", f"is unknown; choose one of {sorted(VALIDATION_METRICS)}")
        if self.target is not None and not math.isfinite(self.target):
            raise bad("target", "must be a finite number or None")
        if not self.min_delta >= 0:
            raise bad("min_delta", "must be >= 0")
        if not 0 <= self.threshold <= 1:
            raise bad("threshold", "must be in [0, 1]")
        cw = self.class_weight
        if not (cw is None or cw == "balanced" or (isinstance(cw, (tuple, list)) and len(cw) == 2 and all(w > 0 for w in cw))):
            raise bad("class_weight", "must be None, 'balanced' or (weight of class 0, weight of class 1), both > 0")
        if isinstance(cw, list):
            object.__setattr__(self, "class_weight", tuple(cw))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(d["class_weight"], tuple):
            d["class_weight"] = list(d["class_weight"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown training settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


def make_optimizer(config: TrainConfig) -> SGD | Adam:
    """The optimizer the config names, with its settings."""
    if config.optimizer == "sgd":
        return SGD(config.learning_rate, config.momentum)
    return Adam(config.learning_rate, config.beta1, config.beta2, config.eps)


def class_sample_weights(y: np.ndarray, class_weight: str | Sequence[float] | None, dtype: Any = np.float32) -> np.ndarray | None:
    """Per-example weights (N,) from per-class weights; None when ``class_weight`` is None.

    ``"balanced"`` weighs class c by ``N / (2 N_c)`` so each class contributes half the loss and
    the weights still average 1 over the set (the mean gradient keeps its scale). Rare targets
    such as dams would otherwise be ignored by a network that scores ~99 % by saying "no".
    ``(w0, w1)`` gives the weights explicitly.
    """
    if class_weight is None:
        return None
    y = np.asarray(y).reshape(-1)
    pos = y.astype(bool)
    if class_weight == "balanced":
        n, n1 = y.size, int(pos.sum())
        if n1 == 0 or n1 == n:
            raise ConfigError(
                f"class_weight='balanced' needs both classes in the training labels; got {n1} positive "
                f"of {n}. Add examples of the missing class or pass class_weight=None"
            )
        w0, w1 = n / (2.0 * (n - n1)), n / (2.0 * n1)
    else:
        w0, w1 = (float(w) for w in class_weight)  # type: ignore[union-attr]
    return np.where(pos, w1, w0).astype(dtype)


@runtime_checkable
class GradientSource(Protocol):
    """Where the gradients come from: this process, or Dask workers (``ann.parallel``)."""

    n_examples: int

    def steps_per_epoch(self) -> int: ...

    def batch_gradient(self, params: list[np.ndarray], epoch: int, step: int) -> tuple[float, list[np.ndarray], float]:
        """(sum of example losses, per-parameter sums of example gradients, number of examples in the step)"""
        ...


class InMemorySource:
    """Mini-batches of in-memory arrays, reshuffled each epoch by ``default_rng((seed, epoch))``.

    X (N, F) features or (N, H, W, C) windows, y (N,) (and sample_weight (N,)) are converted to
    the network's dtype once. ``augment="d4"`` shows each window under the symmetry
    :func:`ann.augment.d4_codes` picks for (seed, epoch, its index); ``sampling="balanced"``
    draws half of each batch from the positives (:func:`ann.shards.balanced_rows`). Each
    step gathers its rows into preallocated batch arrays and calls the network's allocation-free
    ``loss_and_grad(..., reuse_buffers=True)``: the gradients it returns are the network's work
    buffers, valid until the next step (:func:`fit` consumes them before asking again).
    The order of each epoch depends only on (seed, epoch), not on what ran before.
    """

    def __init__(
        self,
        net: MLP,
        X: np.ndarray,
        y: np.ndarray,
        batch_size: int = 256,
        seed: int = 0,
        sample_weight: np.ndarray | None = None,
        augment: str | None = None,
        sampling: str = "uniform",
    ) -> None:
        X = net._check_X(X)
        if augment not in AUGMENTATIONS or sampling not in SAMPLINGS:
            raise ConfigError(f"augment={augment!r} / sampling={sampling!r} unknown; choose from {AUGMENTATIONS} / {SAMPLINGS}")
        if augment is not None and X.ndim != 4:
            raise ConfigError(f"augment={augment!r} transforms pixel windows (N, H, W, C); these inputs are {X.shape}")
        self.augment, self.sampling = augment, sampling
        y = np.asarray(y).reshape(-1)
        if y.shape[0] != X.shape[0] or X.shape[0] == 0:
            raise ConfigError(f"training set has {X.shape[0]} examples but {y.shape[0]} labels (need the same, > 0)")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be a positive integer")
        self.net = net
        self.X = np.ascontiguousarray(X, dtype=net.dtype)
        self.y = np.ascontiguousarray(y, dtype=net.dtype)
        self.w = None if sample_weight is None else np.ascontiguousarray(sample_weight, dtype=net.dtype).reshape(-1)
        if self.w is not None and self.w.shape != self.y.shape:
            raise ConfigError(f"sample_weight has {self.w.shape[0]} values for {self.y.shape[0]} examples")
        self.n_examples = int(X.shape[0])
        self.batch_size = int(min(batch_size, self.n_examples))
        self.seed = seed
        self._epoch: int | None = None
        self._order = np.arange(self.n_examples)
        self._xb = np.empty((self.batch_size, *X.shape[1:]), net.dtype)  # (B, F) or (B, H, W, C)
        self._xa = np.empty_like(self._xb) if augment else None  # the batch under its symmetries
        self._yb = np.empty(self.batch_size, net.dtype)  # (B,)
        self._wb = None if self.w is None else np.empty(self.batch_size, net.dtype)

    @classmethod
    def from_config(
        cls,
        net: MLP,
        X: np.ndarray,
        y: np.ndarray,
        config: TrainConfig,
        sample_weight: np.ndarray | None = None,
    ) -> "InMemorySource":
        """The source ``config`` describes: its batch_size, seed, augment, sampling and
        class_weight (multiplied into ``sample_weight`` when both are given)."""
        w = class_sample_weights(y, config.class_weight, dtype=np.float64)
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
            w = sample_weight if w is None else w * sample_weight
        return cls(net, X, y, batch_size=config.batch_size, seed=config.seed, sample_weight=w,
                   augment=config.augment, sampling=config.sampling)

    def steps_per_epoch(self) -> int:
        return -(-self.n_examples // self.batch_size)

    def batch_gradient(self, params: list[np.ndarray], epoch: int, step: int) -> tuple[float, list[np.ndarray], float]:
        own = self.net.params
        for mine, given in zip(own, params):
            if mine is not given:  # someone else's copy of the weights: compute at those
                np.copyto(mine, given)
        if self.sampling == "balanced":
            idx = balanced_rows(self.y, self.batch_size, self.seed, epoch, step)
        else:
            if epoch != self._epoch:
                self._order = np.random.default_rng((self.seed, epoch)).permutation(self.n_examples)
                self._epoch = epoch
            idx = self._order[step * self.batch_size : (step + 1) * self.batch_size]
        B = idx.size
        # mode="clip": the indices are valid anyway, and the default mode="raise" copies
        # through an extra buffer when given out= (3x slower).
        xb = np.take(self.X, idx, axis=0, out=self._xb[:B], mode="clip")  # (B, F) or (B, H, W, C)
        if self.augment == "d4":
            xb = augment_windows(xb, self.augment, self.seed, epoch, idx, out=self._xa[:B])
        yb = np.take(self.y, idx, out=self._yb[:B], mode="clip")  # (B,)
        wb = None if self._wb is None else np.take(self.w, idx, out=self._wb[:B], mode="clip")
        loss, grads = self.net.loss_and_grad(xb, yb, wb, reuse_buffers=True)
        return loss, grads, float(B)


@dataclass
class History:
    """What happened in training, epoch by epoch, for plots and the model file.

    ``epochs``: one dict per epoch with epoch (0-based), train_loss (mean weighted cross-entropy
    over the epoch's steps, nats, weight decay excluded), val_loss (unweighted, nats),
    val_accuracy, val_precision, val_recall, val_f1, val_roc_auc, val_average_precision,
    seconds (wall time of the epoch, validation included).
    """

    metric: str = "accuracy"
    epochs: list[dict[str, float]] = dataclasses.field(default_factory=list)
    best_epoch: int | None = None
    stop_reason: str | None = None  # "target", "patience" or "max_epochs"

    def series(self, key: str) -> np.ndarray:
        """One column over the epochs, e.g. ``history.series("val_loss")``, for plotting."""
        return np.array([e[key] for e in self.epochs], dtype=np.float64)

    @property
    def best(self) -> dict[str, float] | None:
        return None if self.best_epoch is None else self.epochs[self.best_epoch]

    def summary(self) -> dict[str, Any]:
        """Short JSON-ready summary for model files: epochs run, best epoch and its figures."""
        return {
            "metric": self.metric,
            "n_epochs": len(self.epochs),
            "best_epoch": self.best_epoch,
            "stop_reason": self.stop_reason,
            "best": self.best,
            "seconds": float(sum(e["seconds"] for e in self.epochs)),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "epochs": list(self.epochs),
            "best_epoch": self.best_epoch,
            "stop_reason": self.stop_reason,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "History":
        return cls(d["metric"], list(d["epochs"]), d["best_epoch"], d["stop_reason"])


def _validate(net: MLP, X_val: np.ndarray, y_val: np.ndarray, threshold: float, epoch: int, config: TrainConfig) -> dict[str, float]:
    p = net.predict_proba(X_val)
    if not np.isfinite(p).all():
        raise ConfigError(
            f"training diverged: {int(np.isnan(p).sum())} of {p.size} validation probabilities are NaN after "
            f"epoch {epoch}; lower learning_rate (now {config.learning_rate:g}) and check the training inputs "
            "for NaN or infinity"
        )
    pred = p >= threshold
    return {
        "val_loss": binary_cross_entropy(y_val, p),
        "val_accuracy": metrics.accuracy(y_val, pred),
        "val_precision": metrics.precision(y_val, pred),
        "val_recall": metrics.recall(y_val, pred),
        "val_f1": metrics.f1(y_val, pred),
        "val_roc_auc": metrics.roc_auc(y_val, p),
        "val_average_precision": metrics.average_precision(y_val, p),
    }


def fit(
    net: MLP,
    source: GradientSource,
    X_val: np.ndarray,
    y_val: np.ndarray,
    config: TrainConfig = TrainConfig(),
    callback: Callable[[dict[str, float]], None] | None = None,
) -> History:
    """Train ``net`` in place on ``source``; validate on X_val (M, F) or (M, H, W, C), y_val (M,)
    after each epoch.

    ``callback(record)`` is called after each epoch with that epoch's History record: at least
    ``epoch`` (0-based, of at most ``config.max_epochs``), ``steps`` (optimizer steps so far),
    ``train_loss`` and ``val_<metric>`` for every validation metric — what a progress bar over
    the epochs and training curves need. Returns the :class:`History`; ``net`` ends with the
    best epoch's weights. Raises :class:`ConfigError` when training diverges (non-finite loss).
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}")
    X_val = net._check_X(X_val)
    y_val = metrics._labels(y_val, "y_val")
    if y_val.size != X_val.shape[0] or y_val.size == 0:
        raise ConfigError(f"validation set has {X_val.shape[0]} examples and {y_val.size} labels (need the same, > 0)")
    params = net.params
    optimizer = make_optimizer(config)
    higher_better = VALIDATION_METRICS[config.metric]
    key = "val_" + config.metric
    best_params = [p.copy() for p in params]
    best_score = -math.inf if higher_better else math.inf
    # weight decay on weight matrices and kernels (ndim >= 2), never on biases
    decay = [(i, np.empty_like(p)) for i, p in enumerate(params) if p.ndim >= 2 and config.l2 > 0]
    history = History(metric=config.metric)
    since_best = 0
    steps_done = 0

    for epoch in range(config.max_epochs):
        t0 = time.perf_counter()
        loss_total = 0.0
        n_total = 0.0
        for step in range(source.steps_per_epoch()):
            loss_sum, grads, n = source.batch_gradient(params, epoch, step)
            if n <= 0:
                raise ConfigError(f"gradient source returned a step with {n} examples (epoch {epoch}, step {step})")
            if not math.isfinite(loss_sum):
                raise ConfigError(
                    f"training diverged: the training loss is {loss_sum} at epoch {epoch}, step {step}; lower "
                    f"learning_rate (now {config.learning_rate:g}) and check the training inputs for NaN or infinity"
                )
            grads = [g if g.flags.writeable else g.copy() for g in grads]
            flat = tiled_base(grads)  # the network's gradients fill one buffer: one call
            for g in grads if flat is None else (flat,):
                g *= 1.0 / n
            for i, scratch in decay:
                np.multiply(params[i], config.l2, out=scratch)
                grads[i] += scratch
            optimizer.step(params, grads)
            loss_total += loss_sum
            n_total += n
            steps_done += 1
        record: dict[str, float] = {"epoch": epoch, "steps": steps_done, "train_loss": loss_total / n_total}
        record.update(_validate(net, X_val, y_val, config.threshold, epoch, config))
        record["seconds"] = time.perf_counter() - t0
        history.epochs.append(record)
        if callback is not None:
            callback(record)

        score = record[key]
        reached = config.target is not None and (score >= config.target if higher_better else score <= config.target)
        improved = not math.isnan(score) and (
            score > best_score + config.min_delta if higher_better else score < best_score - config.min_delta
        )
        if improved or reached or history.best_epoch is None:
            best_score = score if not math.isnan(score) else best_score
            history.best_epoch = epoch
            for b, p in zip(best_params, params):
                np.copyto(b, p)
            since_best = 0
        else:
            since_best += 1
        if reached:
            history.stop_reason = "target"
            break
        if since_best >= config.patience:
            history.stop_reason = "patience"
            break
    else:
        history.stop_reason = "max_epochs"

    for b, p in zip(best_params, params):
        np.copyto(p, b)
    return history
