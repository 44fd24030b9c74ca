"""Training a tile classifier: settings in, a saved model and its report out.

A training is defined by its data (surveys, their features and labels) and one frozen
:class:`TrainingSettings` value: the model's inputs and architecture, how the surveys are cut
into regions (:class:`pipeline.examples.HoldOut`), the optimizer and stopping rules
(:class:`ann.train.TrainConfig`, whose ``batch_size`` is the global batch of every step) and
how the decision threshold is chosen. Nothing else changes the weights: not the number of
workers, nor where they run.

:func:`train_model` trains data-parallel (:mod:`ann.parallel`): the training tiles are cut into
the shards of a seed-fixed :class:`ann.shards.ShardPlan`; each shard is read from the store by
a task on a Dask worker (:class:`pipeline.examples.StoreShardLoader`), standardized with
statistics computed over all shards, and kept there for the whole training. With one worker
and no cluster the same shards are computed in this process, with no Dask at all, to the same
weights.

*Symmetry augmentation*: a tile seen from above has no preferred orientation, so by default
each training tile also enters training as its 7 mirrored and rotated versions (the tile
symmetries, :meth:`pipeline.features.FeatureSpec.symmetry_permutations`): the same features
permuted, with no pixel read again. The shard plan then indexes ``8 × N`` examples, example
``j`` being symmetry ``j // N`` of training tile ``j % N``, so the plan stays fixed by the seed
and the weights still do not depend on the worker count. Validation and test tiles are never
augmented: they are scored as they are.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ann import metrics
from ann.convnet import DEFAULT_BATCH_SIZE as CNN_BATCH_SIZE
from ann.convnet import DEFAULT_MICRO_BATCH as CNN_MICRO_BATCH
from ann.errors import ConfigError
from ann.io import Classifier, save_model
from ann.network import MLP
from ann.shards import ShardedSource, ShardPlan
from ann.train import History, TrainConfig, class_sample_weights, fit
from pipeline.cluster import cluster_address, dask_client
from pipeline.errors import InputError, command
from pipeline.examples import (
    REGION_NAMES,
    TEST,
    TRAIN,
    VALIDATION,
    HoldOut,
    StoreShardLoader,
    example_table,
    read_examples,
    region_columns,
)
from pipeline.features import get_spec
from pipeline.files import jsonable
from pipeline.pixels import ground_resolution_m
from pipeline.progress import EpochBar
from pipeline.store import Store
from pipeline.tiling import DEFAULT_TILE_SIZE, TRAINING_STRIDE
from pipeline.train_cnn import train_cnn
from pipeline.windows import WindowSettings

__all__ = ["TrainingSettings", "choose_threshold", "TrainingReport", "train_model"]

MODEL_TYPES = ("cnn", "classic")
#: The optimizer and stopping rules of each model family unless told otherwise (the command
#: line's defaults too).
DEFAULT_CONFIGS = {
    "classic": TrainConfig(
        learning_rate=0.01,  # Adam's step: 0.01 suits the large default batches (1e-3 crawls)
        batch_size=131072,  # global batch: the whole training set of most surveys, so each step is
        # one full-batch step and Dask's exchange stays ~0.1 of a step (benchmarks/README.md)
        class_weight="balanced",  # dams are rare: weigh them up so both classes count equally
        patience=20,  # epochs without a better validation metric before stopping
        max_epochs=200,  # hard stop
    ),
    "cnn": TrainConfig(
        learning_rate=2e-3,  # Adam; measured on the demo's validation band (see DEFAULT_TRAINING of flows.demo)
        batch_size=CNN_BATCH_SIZE,  # windows per step over all workers: the exchange <= ~10 % of a step on 2
        augment="d4",  # each window under a seeded one of the 8 symmetries of the square
        sampling="balanced",  # half of each step's windows positive: targets are rare
        class_weight=None,  # balanced sampling already weighs the classes
        l2=1e-4,
        metric="average_precision",  # of the validation windows: the ranking is what detection uses
        max_epochs=30,
        patience=6,
    ),
}
DEFAULT_CONFIG = DEFAULT_CONFIGS["classic"]
_FAMILY_MICRO_BATCH = {"classic": 512, "cnn": CNN_MICRO_BATCH}


@dataclass(frozen=True)
class TrainingSettings:
    """Everything that defines a training besides its data (nanoGPT-style: one frozen value).

    Build it from plain data with :meth:`from_dict` (unknown keys are refused, nested
    ``holdout``, ``windows`` and ``config`` dicts fill in the defaults they do not name);
    :meth:`to_dict` gives it back, e.g. for a run's fingerprint. Fields marked *classic* or
    *cnn* apply to that model family only.
    """

    model_type: str = "cnn"  # "cnn" (the detector over pixels) or "classic" (dense net over tile features)
    config: TrainConfig | None = None  # optimizer, global batch, stopping rules, seed (None: the family's default)
    labels: str = "default"  # the stored label set trained on when no truth file is given
    size: int = DEFAULT_TILE_SIZE  # tile edge, pixels (classic; cnn: of the stored label set)
    stride: int = TRAINING_STRIDE  # pixels between tiles (classic; cnn: of the stored label set)
    n_shards: int = 8  # fixed shards of the training set (a multiple of the worker counts used)
    micro_batch: int | None = None  # examples per gradient call inside a shard (None: 512 classic, 64 cnn)
    target_precision: float | None = None  # choose the threshold for this validation precision
    target_recall: float | None = None  # ... or this validation recall (default: best F1)
    # classic
    spec: str = "default"  # feature spec of the inputs (pipeline.features.SPECS)
    hidden: tuple[int, ...] = (64, 32)  # hidden layer sizes of the dense network
    activation: str = "relu"  # activation of the hidden layers
    symmetries: bool = True  # train on each tile's 8 mirrored and rotated versions
    holdout: HoldOut = HoldOut()  # the training | validation | test regions
    # cnn
    bands: tuple[str, ...] | None = None  # input bands by name (None: all the survey's); gray added with RGB
    gsd_m: float = 2.0  # ground sample distance the model works at, metres per pixel
    window: int = 48  # window edge, pixels at gsd_m (96 m at 2 m): the receptive field (38 px) and two output cells
    layers: tuple[dict, ...] | None = None  # the network (None: ann.convnet.DEFAULT_LAYERS)
    normalization: str = "survey"  # each channel standardized by its survey's own statistics first
    windows: WindowSettings = WindowSettings()  # how training windows are placed
    mining_rounds: int = 1  # rounds of hard negatives (false peaks of the training band) and more training
    mining_epochs: int = 8  # most epochs of each hard-negative round
    mining_per_positive: float = 1.0  # hard negatives per positive window, per round
    calibrate: bool = True  # Platt scaling of the probabilities on the validation band

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise InputError(f"model type {self.model_type!r} is unknown; choose --model-type cnn or --model-type classic")
        if self.config is None:
            object.__setattr__(self, "config", DEFAULT_CONFIGS[self.model_type])
        if self.micro_batch is None:
            object.__setattr__(self, "micro_batch", _FAMILY_MICRO_BATCH[self.model_type])
        for name in ("size", "stride", "n_shards", "micro_batch", "window", "mining_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"training setting {name}={value!r} must be a positive whole number")
        if self.mining_rounds < 0 or not self.mining_per_positive >= 0:
            raise InputError("mining_rounds and mining_per_positive must be >= 0")
        if self.stride > self.size:
            raise InputError(f"training stride {self.stride} is larger than the tile size {self.size}; use a stride <= {self.size}")
        if not self.hidden or any(isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1 for h in self.hidden):
            raise InputError(f"hidden layer sizes {list(self.hidden)!r} must be positive whole numbers, e.g. 64,32")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.bands is not None:
            object.__setattr__(self, "bands", tuple(self.bands))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(dict(layer) for layer in self.layers))
        if not (isinstance(self.gsd_m, (int, float)) and 0 < self.gsd_m < 1e4):
            raise InputError(f"ground sample distance {self.gsd_m!r} must be a positive number of metres per pixel, e.g. --gsd 2")
        if self.target_precision is not None and self.target_recall is not None:
            raise InputError("give a target precision or a target recall for the threshold, not both")
        for name in ("target_precision", "target_recall"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise InputError(f"training setting {name}={value!r} must be a fraction in (0, 1]")
        if not isinstance(self.holdout, HoldOut) or not isinstance(self.config, TrainConfig) or not isinstance(self.windows, WindowSettings):
            raise ConfigError("TrainingSettings.holdout, .windows and .config must be a HoldOut, WindowSettings and TrainConfig (use from_dict)")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["hidden"] = list(self.hidden)
        d["holdout"] = asdict(self.holdout)
        d["windows"] = asdict(self.windows)
        d["config"] = self.config.to_dict()
        d["bands"] = None if self.bands is None else list(self.bands)
        d["layers"] = None if self.layers is None else [dict(layer) for layer in self.layers]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None = None) -> "TrainingSettings":
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown training settings {unknown}; known: {sorted(known)}")
        family = d.get("model_type", "cnn")
        if family not in MODEL_TYPES:
            raise InputError(f"model type {family!r} is unknown; choose --model-type cnn or --model-type classic")
        if isinstance(d.get("holdout"), Mapping):
            d["holdout"] = HoldOut(**{**asdict(HoldOut()), **d["holdout"]})
        if isinstance(d.get("windows"), Mapping):
            d["windows"] = WindowSettings(**{**asdict(WindowSettings()), **d["windows"]})
        if isinstance(d.get("config"), Mapping):
            d["config"] = TrainConfig.from_dict({**DEFAULT_CONFIGS[family].to_dict(), **d["config"]})
        if "hidden" in d:
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)

    def plan(self, n_examples: int) -> ShardPlan:
        """The shard plan of ``n_examples`` training examples under these settings."""
        return ShardPlan(n_examples=n_examples, n_shards=min(self.n_shards, n_examples),
                         batch_size=self.config.batch_size, micro_batch=self.micro_batch, seed=self.config.seed)


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
    counts: dict[str, Any]
    columns: dict[str, dict[str, list[int]]]
    threshold: float
    history: dict[str, Any]  # the last round's History.to_dict(); cnn: every round under "rounds"
    validation: dict[str, Any]
    test: dict[str, Any] | None
    plan: dict[str, int]
    workers: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    model_type: str = "classic"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (undefined metrics, NaN, become None)."""
        return jsonable(asdict(self))


def train_model(
    store: Store,
    survey_ids: Sequence[str],
    settings: TrainingSettings = TrainingSettings(),
    truth: Mapping[str, Any] | None = None,
    where: Mapping[str, Any] | None = None,
    *,
    workers: int | None = None,
    cluster: str | None = None,
    client: Any = None,
    progress: bool | None = None,
) -> tuple[Classifier, str, TrainingReport]:
    """Train a model on ``survey_ids`` with ``settings``, evaluate it on held-out data, save it.

    A cnn model (:mod:`pipeline.train_cnn`) learns from ``truth`` (a truth GeoJSON dict read by
    :func:`pipeline.truth.read_truth`, targets chosen by ``where``) or, without one, from the
    stored label set ``settings.labels``. A classic model needs the surveys' features
    (``settings.spec``) and labels in the store (``damwatch features``, ``damwatch labels``).
    Where it runs: on ``client`` if given; else
    in this process when ``workers == 1`` and no cluster is configured; else on ``cluster`` /
    ``$DAMWATCH_CLUSTER`` or a local cluster of ``workers`` processes (default: one per core).
    The weights do not depend on that choice. ``progress``: one bar over the epochs (None:
    unless ``DAMWATCH_NO_PROGRESS`` is set).

    Returns the classifier, its model id (saved under ``store.models_dir``) and a report.
    """
    started = time.perf_counter()
    survey_ids = list(dict.fromkeys(survey_ids))
    if not survey_ids:
        raise InputError(f"no survey to train on; give at least one survey id ({command('surveys', store=store)} lists them)")
    if not isinstance(settings, TrainingSettings):
        raise ConfigError(f"settings must be a pipeline.training.TrainingSettings, got {type(settings).__name__}")
    for survey_id in survey_ids:
        store.survey(survey_id)  # StoreError listing the known surveys if absent
    if settings.model_type == "cnn":
        return _train_cnn_model(store, survey_ids, settings, truth, where, started,
                                workers=workers, cluster=cluster, client=client, progress=progress)
    s = settings
    config = s.config
    spec_obj = get_spec(s.spec)
    spec_dict = spec_obj.to_dict()
    tables = example_table(store, survey_ids, spec_dict, s.labels, s.holdout, s.stride, s.size)
    train, val, test = tables[TRAIN], tables[VALIDATION], tables[TEST]
    counts = {REGION_NAMES[r]: {"tiles": len(t), "positive": int((t.label == 1).sum())} for r, t in tables.items()}
    for name, minimum in (("train", 2), ("validation", 1)):
        c = counts[name]
        if c["tiles"] < minimum or c["positive"] == 0 or c["positive"] == c["tiles"]:
            raise InputError(
                f"the {name} region of {', '.join(survey_ids)} has {c['tiles']} labelled tiles, "
                f"{c['positive']} of them positive; training needs both classes there. Label more of "
                f"the surveys ({command('labels', '--help')} shows how), add surveys, or change the "
                f"hold-out fractions"
            )
    notes = []
    if len(test) == 0:
        notes.append("no labelled tile in the test region: no held-out metrics")

    weights = class_sample_weights(train.label, config.class_weight, np.float64)
    class_weights = None if weights is None else (
        float(weights[train.label == 0][0]), float(weights[train.label == 1][0]))
    n_examples = len(train) * (len(spec_obj.symmetry_permutations()) if s.symmetries else 1)
    plan = s.plan(n_examples)
    if plan.n_shards < s.n_shards:
        notes.append(f"only {n_examples} training examples: {plan.n_shards} shards instead of {s.n_shards}")
    loader = StoreShardLoader(str(store.root), tuple(survey_ids), spec_dict, s.labels, s.holdout, s.stride, s.size,
                              plan, class_weights, s.symmetries)
    net = MLP(spec_obj.n_features, s.hidden, s.activation, seed=config.seed)
    bar = EpochBar(config.max_epochs, "train classic", config.metric, disable=None if progress is None else not progress)

    X_val_raw = read_examples(store, survey_ids, spec_dict, s.stride, s.size, val)

    def run(source) -> History:
        return fit(net, source, source.standardizer.transform(X_val_raw, net.dtype), val.label, config, callback=bar)

    address = cluster_address(cluster) if client is None else None
    try:
        if client is not None or address is not None or (workers or os.cpu_count() or 1) > 1:
            from ann.parallel import DaskGradientSource  # dask and distributed: ~1.3 s, only here

            def on_cluster(c) -> tuple[History, Any, int]:
                with DaskGradientSource(c, loader, plan, net) as source:
                    return run(source), source.standardizer, sum(c.nthreads().values())

            if client is not None:
                history, standardizer, n_workers = on_cluster(client)
            else:
                with dask_client(address=address, n_workers=workers) as c:
                    history, standardizer, n_workers = on_cluster(c)
        else:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1):  # one worker = one core, and the same BLAS path as a Dask worker
                source = ShardedSource(loader, plan, net)
                history, standardizer, n_workers = run(source), source.standardizer, 1
    finally:
        bar.close()

    p_val = net.predict_proba(standardizer.transform(X_val_raw, net.dtype))
    threshold = choose_threshold(val.label, p_val, s.target_precision, s.target_recall)
    validation = metrics.binary_report(val.label, p_val, threshold)
    test_report = None
    if len(test):
        X_test = standardizer.transform(read_examples(store, survey_ids, spec_dict, s.stride, s.size, test), net.dtype)
        test_report = metrics.binary_report(test.label, net.predict_proba(X_test), threshold)
    columns = region_columns(store, survey_ids, spec_dict, s.labels, s.holdout, s.stride, s.size)
    surveys = [store.survey(sid) for sid in survey_ids]
    metadata = {
        "training": {
            "surveys": [{"id": sv.id, "source_sha256": sv.source_sha256} for sv in surveys],
            "labels": s.labels,
            "tile_size": s.size,
            "stride": s.stride,
            "holdout": asdict(s.holdout) | {"columns": columns},
            "counts": counts,
            "plan": plan.to_dict(),
            "config": config.to_dict(),
            "hidden": list(s.hidden),
            "activation": s.activation,
            "symmetries": bool(s.symmetries),
            "workers": n_workers,
            "gsd_m": ground_resolution_m(surveys[0]),
        },
        "history": history.summary(),
        "threshold_rule": ("precision", s.target_precision) if s.target_precision is not None
        else ("recall", s.target_recall) if s.target_recall is not None else ("best_f1", None),
        "metrics": {"validation": validation, "test": test_report},
    }
    clf = Classifier(net, standardizer, spec_dict, threshold, metadata)
    model_id = save_model(clf, store.models_dir)
    report = TrainingReport(
        model_id=model_id, survey_ids=survey_ids, counts=counts, columns=columns, threshold=threshold,
        history=history.to_dict(), validation=validation, test=test_report, plan=plan.to_dict(), workers=n_workers,
        seconds=time.perf_counter() - started, notes=notes,
    )
    return clf, model_id, report


def _train_cnn_model(store, survey_ids, settings, truth, where, started, **where_to_run) -> tuple[Classifier, str, TrainingReport]:
    clf, r = train_cnn(store, survey_ids, settings, truth, where, **where_to_run)
    model_id = save_model(clf, store.models_dir)
    last = r["rounds"][-1]
    history = {k: v for k, v in last.items() if k in ("metric", "epochs", "best_epoch", "stop_reason")}
    history["rounds"] = r["rounds"]
    report = TrainingReport(
        model_id=model_id, survey_ids=list(survey_ids), counts=r["counts"], columns={}, threshold=r["threshold"],
        history=history, validation=r["validation"], test=None, plan=last["plan"], workers=last["workers"],
        seconds=time.perf_counter() - started, model_type="cnn",
        notes=[f"calibration: {r['calibration']}" if r["calibration"] else "no calibration (validation band lacked both outcomes)"],
    )
    return clf, model_id, report
