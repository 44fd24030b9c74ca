"""Prefect tasks: one task per pipeline stage over a whole survey.

A task is coarse (DESIGN decision 1): ingest one GeoTIFF, compute one survey's features, train
one model, score one survey, compare two surveys. Inside it, the stage submits its Dask graph
through the flow's *cluster session*: a Dask client opened lazily on the first stage that needs
one and closed when the flow ends — a LocalCluster by default, or the scheduler given by
``--cluster`` / ``$DAMWATCH_CLUSTER``. A flow run in which every stage is skipped starts no
cluster at all.

Tasks take store paths, ids and settings, never arrays (Prefect would pickle and hash them), and
return a small *outcome* dict: ``stage``, ``subject``, ``status`` (``"done"`` or ``"skipped"``),
``seconds``, ``fingerprint`` and ``outputs``.

Retries: a task is retried (twice, after 2 s then 10 s) only for transient failures — I/O errors
(``OSError``), a lost Dask worker or connection, a timeout. A :class:`DamwatchError` or an
:class:`AnnError` is bad input: retrying cannot fix it, so the task fails at once.

Skipping: each task fingerprints its inputs and skips when the stage ledger
(:mod:`flows.resume`) holds a record with the same fingerprint whose outputs still exist, with a
log line saying so.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ann.errors import AnnError
from flows.resume import StageLedger, fingerprint
from pipeline.errors import DamwatchError
from pipeline.store import Store, file_sha256, survey_id_for

__all__ = [
    "RETRY",
    "cluster_session",
    "stage_client",
    "is_transient",
    "retry_transient",
    "hide_user_error_tracebacks",
    "run_stage",
    "resolve_model_id",
    "model_reference",
    "train_summary",
    "ingest_task",
    "features_task",
    "labels_task",
    "train_task",
    "detect_task",
    "change_task",
    "synth_task",
]


# ---------------------------------------------------------------------------------------------
# Retries


def is_transient(exc: BaseException) -> bool:
    """True for failures that may succeed on a second try; never for bad input."""
    if isinstance(exc, (DamwatchError, AnnError)):
        return False
    transient: tuple[type[BaseException], ...] = (OSError, TimeoutError, ConnectionError)
    try:
        from distributed.client import FutureCancelledError
        from distributed.scheduler import KilledWorker

        transient += (KilledWorker, FutureCancelledError)
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, transient)


def retry_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry only when the task failed with a transient error."""
    try:
        state.result(raise_on_failure=True)
    except BaseException as exc:  # noqa: BLE001 - we classify, not handle
        return is_transient(exc)
    return False


class _UserErrorTracebacks(logging.Filter):
    """Drop the traceback from console log records of user errors (the message stays)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (DamwatchError, AnnError)):
            record.exc_info, record.exc_text = None, None
        return True


def hide_user_error_tracebacks() -> None:
    """Keep Prefect's console from printing tracebacks for bad input (the CLI's contract).

    Prefect logs every exception that fails a task or flow with its traceback; for a
    :class:`DamwatchError` / :class:`AnnError` the one-paragraph message says everything, and
    the command line prints it once more itself. Applies to the console handlers only.
    """
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, _UserErrorTracebacks) for f in handler.filters
        ):
            handler.addFilter(_UserErrorTracebacks())


#: The retry policy every stage task carries in its decorator.
RETRY = dict(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient, cache_policy=NO_CACHE)


# ---------------------------------------------------------------------------------------------
# The cluster session


class _Session:
    def __init__(self, address: str | None, workers: int | None):
        self.address = address
        self.workers = workers
        self._stack = contextlib.ExitStack()
        self._client = None

    def client(self):
        if self._client is None:
            import distributed  # noqa: F401 - configures its loggers on import; quiet them after

            from pipeline.cluster import dask_client

            # The scheduler's and nannies' start/stop chatter (INFO) would drown the stage logs.
            quiet = logging.getLogger("distributed")
            level = quiet.level
            quiet.setLevel(logging.WARNING)
            self._stack.callback(quiet.setLevel, level)
            self._client = self._stack.enter_context(dask_client(self.address, n_workers=self.workers))
        return self._client

    def close(self) -> None:
        self._client = None
        self._stack.close()


_SESSION: contextvars.ContextVar[_Session | None] = contextvars.ContextVar("damwatch_cluster", default=None)


@contextlib.contextmanager
def cluster_session(address: str | None = None, workers: int | None = None) -> Iterator[None]:
    """Give the stage tasks inside this block one shared Dask client, started on first use.

    Nested sessions (a subflow inside a flow) reuse the outer one.
    """
    if _SESSION.get() is not None:
        yield
        return
    session = _Session(address, workers)
    token = _SESSION.set(session)
    try:
        yield
    finally:
        _SESSION.reset(token)
        session.close()


def _in_process() -> bool:
    """True in a cluster session asked for one local worker: work that can, runs in this process."""
    from pipeline.cluster import cluster_address

    session = _SESSION.get()
    return session is not None and session.workers == 1 and cluster_address(session.address) is None


@contextlib.contextmanager
def stage_client() -> Iterator[Any]:
    """The session's Dask client; outside a session, a client opened for this call only."""
    session = _SESSION.get()
    if session is not None:
        yield session.client()
        return
    from pipeline.cluster import dask_client

    with dask_client() as client:
        yield client


# ---------------------------------------------------------------------------------------------
# Skipping stages whose inputs have not changed


def run_stage(
    store: Store,
    stage: str,
    subject: str,
    inputs: Mapping[str, Any],
    outputs_exist: Callable[[Mapping[str, Any]], bool],
    work: Callable[[], Mapping[str, Any]],
    run_id: str | None = None,
    existing: Callable[[], Mapping[str, Any] | None] | None = None,
    force: bool = False,
) -> dict:
    """Run ``work()`` unless a record with the same input fingerprint has outputs that still exist.

    ``force`` runs it regardless (the caller asked to recompute, or wants the outputs written to
    a place of its choosing); the record is still written afterwards.

    ``work`` returns the stage's outputs (JSON-able: ids, paths, counts, metrics); they are
    recorded after it returns, so a crash inside it leaves nothing that looks finished.
    ``existing``, when given, returns the outputs the store already holds for exactly these
    inputs although no record says so (made by a command outside the flows), or None.
    """
    logger = get_run_logger()
    ledger = StageLedger(store.root / "state" / "stages")
    fp = fingerprint(inputs)
    record = None if force else ledger.lookup(stage, subject, fp)
    if not force and record is None and existing is not None and (found := existing()) is not None:
        record = ledger.record(stage, subject, fp, inputs, found, run_id)
        logger.info("%s %s: already in the store with these inputs (fingerprint %s), skipped", stage, subject, fp)
    elif record is not None and outputs_exist(record["outputs"]):
        logger.info(
            "%s %s: inputs unchanged since run %s (fingerprint %s), skipped",
            stage,
            subject,
            record.get("run_id"),
            fp,
        )
    else:
        record = None
    if record is not None:
        return {
            "stage": stage,
            "subject": subject,
            "status": "skipped",
            "seconds": 0.0,
            "fingerprint": fp,
            "outputs": record["outputs"],
            "inputs": dict(inputs),
            "from_run": record.get("run_id"),
        }
    t0 = time.perf_counter()
    outputs = dict(work())
    seconds = round(time.perf_counter() - t0, 3)
    ledger.record(stage, subject, fp, inputs, outputs, run_id)
    logger.info("%s %s: done in %.1f s", stage, subject, seconds)
    return {
        "stage": stage,
        "subject": subject,
        "status": "done",
        "seconds": seconds,
        "fingerprint": fp,
        "outputs": outputs,
        "inputs": dict(inputs),
    }


# ---------------------------------------------------------------------------------------------
# Stage tasks


@task(name="ingest", **RETRY)
def ingest_task(
    store_root: str,
    path: str,
    area: str,
    date: str,
    sha256: str | None = None,
    bands: list[str] | None = None,
    overwrite: bool = False,
    run_id: str | None = None,
) -> dict:
    """Ingest the GeoTIFF at ``path`` as survey ``<area>-<date>`` (skipped when already there)."""
    from pipeline.store import ingest

    store = Store(store_root)
    survey_id = survey_id_for(area, date)
    if not Path(path).is_file():
        from pipeline.errors import InputError

        raise InputError(
            f"survey file {path} does not exist (or is not a file); check the path, or whether it was "
            f"moved out of the inbox before its run started"
        )
    sha = sha256 or file_sha256(path)
    inputs = {"sha256": sha, "area": area, "date": str(date), "bands": list(bands) if bands else None}

    def facts(survey) -> dict:
        return {"survey_id": survey.id, "height": survey.height, "width": survey.width, "bands": list(survey.bands)}

    def in_store(outputs: Mapping[str, Any] | None = None) -> bool:
        # The store's own completion marker, and the same source bytes.
        if survey_id not in store.survey_ids():
            return False
        survey = store.survey(survey_id)
        return survey.source_sha256 == sha and (not bands or tuple(bands) == survey.bands)

    def work() -> dict:
        with stage_client() as client:
            result = ingest(path, area, date, store, bands=bands, overwrite=overwrite, client=client, sha256=sha)
        return {**facts(result.survey), "status": result.status}

    def existing() -> dict | None:
        return {**facts(store.survey(survey_id)), "status": "unchanged"} if in_store() else None

    return run_stage(store, "ingest", survey_id, inputs, in_store, work, run_id, existing)


@task(name="features", **RETRY)
def features_task(
    store_root: str,
    survey_id: str,
    spec: str = "default",
    stride: int = 128,
    size: int = 128,
    run_id: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Compute the per-tile features of ``survey_id`` on a ``size``/``stride`` grid (pixels).

    ``overwrite`` recomputes them even when the store already holds them for these inputs.
    """
    from pipeline.features import compute_features, features_path, get_spec, open_features

    store = Store(store_root)
    survey = store.survey(survey_id)
    spec_id = get_spec(spec).id
    inputs = {"source_sha256": survey.source_sha256, "spec": spec_id, "stride": stride, "size": size}
    subject = f"{survey_id}/{spec_id}/size{size}_stride{stride}"

    def facts(tf) -> dict:
        return {
            "survey_id": survey_id,
            "path": features_path(survey_id, spec_id, stride, size),
            "grid": list(tf.grid.shape),
            "tiles": int(tf.valid_fraction.size),
            "valid_tiles": int((tf.valid_fraction > 0).sum()),
        }

    def stored() -> dict | None:
        try:
            tf = open_features(store, survey_id, spec_id, stride, size)
        except DamwatchError:
            return None
        same_source = store.open_group(tf.path).attrs.get("source_sha256") == survey.source_sha256
        return facts(tf) if same_source else None

    def work() -> dict:
        with stage_client() as client:
            return facts(
                compute_features(
                    store, survey_id, spec_id, stride=stride, size=size, client=client, overwrite=overwrite
                )
            )

    return run_stage(
        store, "features", subject, inputs, lambda _: stored() is not None, work, run_id, stored, force=overwrite
    )


def _truth_sha(truth: str | None) -> str | None:
    return file_sha256(truth) if truth else None


def _paths(result: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in result.items() if isinstance(v, Path)}


def _files_exist(outputs: Mapping[str, Any]) -> bool:
    return all(Path(p).exists() for p in outputs.get("files", {}).values())


def model_reference(store: Store, model: str) -> str:
    """What a flow hands its stage tasks for ``model``: its id, or the model file when given one.

    A model file outside ``<store>/models`` has no id the store could resolve, so the tasks
    load it by path; ``"latest"`` becomes an id once, so every stage of a run uses one model.
    """
    return str(model) if str(model).endswith((".json", ".npz")) else resolve_model_id(store, model)


def _loadable(model: str, model_id: str) -> str:
    """The model file when ``model`` names one (it may lie outside the store), else the id."""
    return str(model) if str(model).endswith((".json", ".npz")) else model_id


def resolve_model_id(store: Store, model: str) -> str:
    """The id of ``model``: a model id in the store, a model file, or ``"latest"``.

    ``"latest"`` is the most recently saved model in ``<store>/models`` (by file time).
    """
    from pipeline.detect import resolve_model

    return str(resolve_model(store, model).model_id)


@task(name="detect", **RETRY)
def detect_task(
    store_root: str,
    survey_id: str,
    model: str,
    out_dir: str,
    stride: int = 64,
    threshold: float | None = None,
    truth: str | None = None,
    run_id: str | None = None,
    overwrite: bool = False,
    rerun: bool = False,
) -> dict:
    """Score every tile of ``survey_id`` with ``model`` and write its maps into ``out_dir``.

    Outputs: the prediction grid in the store and, in ``out_dir``, the probability COG, the
    detections GeoJSON, the quicklook PNG, provenance and (given ``truth``) metrics.
    ``overwrite`` lets the maps replace results already in ``out_dir`` (else refused);
    ``rerun`` writes the maps even when a completed record matches (an ``out_dir`` the user
    chose must get them; stored tile probabilities are still reused).
    """
    from pipeline.detect import detect_survey, open_predictions
    from pipeline.maps import write_detection_maps

    store = Store(store_root)
    survey = store.survey(survey_id)
    model_id = resolve_model_id(store, model)
    inputs = {
        "source_sha256": survey.source_sha256,
        "model_id": model_id,
        "stride": stride,
        "threshold": threshold,
        "truth_sha256": _truth_sha(truth),
    }

    def outputs_exist(outputs: Mapping[str, Any]) -> bool:
        try:
            open_predictions(store, model_id, survey_id)
        except DamwatchError:
            return False
        return _files_exist(outputs)

    def work() -> dict:
        with stage_client() as client:
            predictions = detect_survey(store, survey_id, _loadable(model, model_id), stride=stride, client=client)
            written = write_detection_maps(
                store, predictions, out_dir, threshold=threshold, truth=truth, overwrite=overwrite, client=client
            )
        import numpy as np

        return {
            "survey_id": survey_id,
            "model_id": model_id,
            "predictions": predictions.path,
            "scored_tiles": int(np.isfinite(predictions.probabilities).sum()),
            "threshold": float(predictions.threshold if threshold is None else threshold),
            "n_detections": int(written["n_detections"]),
            "metrics": written.get("metrics"),
            "files": _paths(written),
        }

    return run_stage(store, "detect", f"{model_id}/{survey_id}", inputs, outputs_exist, work, run_id, force=rerun)


@task(name="change", **RETRY)
def change_task(
    store_root: str,
    before_id: str,
    after_id: str,
    model: str,
    out_dir: str,
    stride: int = 64,
    truth: str | None = None,
    thresholds: dict[str, float] | None = None,
    run_id: str | None = None,
    reproject: bool = False,
    overwrite: bool = False,
    rerun: bool = False,
) -> dict:
    """Compare ``before_id`` and ``after_id`` under ``model``; write the change maps into ``out_dir``.

    ``thresholds``: ``high``, ``low``, ``min_difference`` probabilities of the change hysteresis
    (:class:`pipeline.change.ChangeThresholds`; default: its defaults). ``reproject``: compare
    surveys in different CRSs on a grid in the before survey's CRS. ``overwrite`` and ``rerun``
    as for :func:`detect_task`.
    """
    from pipeline.change import ChangeThresholds, change_surveys, write_change_maps

    store = Store(store_root)
    before, after = store.survey(before_id), store.survey(after_id)
    model_id = resolve_model_id(store, model)
    cut = ChangeThresholds(**dict(thresholds or {}))
    inputs = {
        "before_sha256": before.source_sha256,
        "after_sha256": after.source_sha256,
        "model_id": model_id,
        "stride": stride,
        "thresholds": cut.to_dict(),
        "truth_sha256": _truth_sha(truth),
    }
    if reproject:  # only when set, so records made before the option existed still match
        inputs["reproject"] = True

    def work() -> dict:
        with stage_client() as client:
            result = change_surveys(
                store, before_id, after_id, _loadable(model, model_id), stride=stride, thresholds=cut, reproject=reproject, client=client
            )
            written = write_change_maps(store, result, out_dir, truth=truth, overwrite=overwrite, client=client)
        return {
            "before": before_id,
            "after": after_id,
            "model_id": model_id,
            "grid": {"shape": list(result.grid.shape), "cell_size": float(result.grid.cell_size)},
            "counts": written["counts"],
            "metrics": written.get("metrics"),
            "files": _paths(written),
        }

    return run_stage(
        store, "change", f"{model_id}/{before_id}..{after_id}", inputs, _files_exist, work, run_id, force=rerun
    )


@task(name="synth", **RETRY)
def synth_task(
    out_dir: str,
    store_root: str,
    area: str = "creek",
    dates: list[str] | None = None,
    size: int = 4096,
    seed: int = 7,
    workers: int | None = None,
    run_id: str | None = None,
) -> dict:
    """Generate a synthetic area (one GeoTIFF per date + truth GeoJSON) into ``out_dir``.

    ``size`` is the raster edge in pixels (1 m); the same (area, dates, size, seed) always gives
    the same bytes, so an existing output for those settings is reused.
    """
    from pipeline.synthetic import generate_area

    dates = list(dates or ["2023-06-01", "2024-06-01"])
    store = Store(store_root)
    inputs = {"area": area, "dates": dates, "size": size, "seed": seed}

    def outputs_exist(outputs: Mapping[str, Any]) -> bool:
        return all(Path(p).is_file() for p in [*outputs["surveys"].values(), outputs["truth"]])

    def work() -> dict:
        # Replace only an earlier synthetic area (it has a manifest), never a directory of other files.
        ours = (Path(out_dir) / "synth.json").is_file()
        result = generate_area(out_dir, area, dates, size=size, seed=seed, workers=workers, overwrite=ours)
        return {
            "area": area,
            "surveys": {d: str(p) for d, p in result.surveys.items()},
            "truth": str(result.truth),
            "quicklooks": {d: str(p) for d, p in result.quicklooks.items()},
        }

    return run_stage(store, "synth", f"{area}-{size}-{seed}", inputs, outputs_exist, work, run_id)


@task(name="labels", **RETRY)
def labels_task(
    store_root: str,
    survey_id: str,
    truth: str | None = None,
    where: dict[str, Any] | None = None,
    stride: int = 128,
    size: int = 128,
    run_id: str | None = None,
    *,
    expr: str | None = None,
    name: str = "default",
    on_date: str | None = "survey",
    min_cover: float = 0.2,
    region: str | None = None,
    crs: str | None = None,
    min_fraction: float = 0.2,
    min_valid: float = 0.5,
) -> dict:
    """Label the tiles of ``survey_id`` and store them as label set ``name``.

    From the GeoJSON file ``truth`` (objects selected by ``where`` and ``on_date``, by default
    those standing on the survey's date; ``min_cover``, ``region``, ``crs`` as in
    :func:`pipeline.labels.labels_from_vector`), or from the band condition ``expr``
    (``min_fraction`` of a tile's valid pixels; :func:`pipeline.labels.labels_from_expression`).
    Tiles with a valid fraction below ``min_valid`` are unknown.
    """
    from pipeline.errors import InputError
    from pipeline.labels import labels_from_expression, labels_from_vector, labels_path
    from pipeline.tiling import TileGrid

    if (truth is None) == (expr is None):
        raise InputError(
            f"labels for survey {survey_id}: give either a GeoJSON file of labelled objects or a band "
            f"expression, not {'both' if truth else 'neither'}"
        )
    store = Store(store_root)
    survey = store.survey(survey_id)
    inputs: dict[str, Any] = {"source_sha256": survey.source_sha256, "stride": stride, "size": size, "name": name,
                              "min_valid": min_valid}
    if truth is not None:
        inputs.update(truth_sha256=file_sha256(truth), where=where, on_date=on_date, min_cover=min_cover,
                      region_sha256=_truth_sha(region), crs=crs)
    else:
        inputs.update(expr=expr, min_fraction=min_fraction)

    def outputs_exist(outputs: Mapping[str, Any]) -> bool:
        # The label set may since have been replaced under the same name by other settings.
        try:
            return _labels_digest(store, survey_id, name, stride, size) == outputs.get("digest")
        except DamwatchError:
            return False

    def work() -> dict:
        grid = TileGrid.for_survey(survey, size=size, stride=stride)
        if truth is not None:
            labels = labels_from_vector(
                store, survey_id, truth, grid, where=where, on_date=on_date, min_cover=min_cover,
                region=region, crs=crs, min_valid=min_valid, name=name,
            )
        else:
            with stage_client() as client:
                labels = labels_from_expression(
                    store, survey_id, expr, grid, min_fraction=min_fraction, min_valid=min_valid, name=name,
                    client=client,
                )
        return {
            "survey_id": survey_id,
            "name": name,
            "path": labels_path(survey_id, name, stride=stride, size=size),
            "grid": list(grid.shape),
            "positive": labels.n_positive,
            "negative": labels.n_negative,
            "unknown": labels.n_unknown,
            "source": labels.source,
            "report": _json_safe(labels.report),
            "digest": _labels_digest(store, survey_id, name, stride, size),
        }

    return run_stage(store, "labels", f"{survey_id}/{name}/size{size}_stride{stride}", inputs, outputs_exist, work,
                     run_id)


def _json_safe(value: Any) -> Any:
    """``value`` as plain JSON types (NumPy scalars and arrays become numbers and lists)."""
    import json

    import numpy as np

    def default(v: Any) -> Any:
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
        return str(v)

    return json.loads(json.dumps(value, default=default))


def _labels_digest(store: Store, survey_id: str, labels: str, stride: int, size: int) -> str:
    """SHA-256 of a stored label set's values: training is redone when any label changes."""
    import hashlib

    import numpy as np

    from pipeline.labels import open_labels

    values = np.ascontiguousarray(open_labels(store, survey_id, labels, stride, size).values)
    return hashlib.sha256(values.tobytes() + str(values.shape).encode()).hexdigest()


def train_summary(report: Mapping[str, Any]) -> dict:
    """The figures of a training report a run summary shows: epochs, final validation metrics, seconds."""
    history = report["history"]
    return {
        "model_id": report["model_id"],
        "epochs": len(history["epochs"]),
        "best_epoch": history["best_epoch"],
        "stop_reason": history["stop_reason"],
        "threshold": report["threshold"],
        "validation": report["validation"],
        "test": report["test"],
        "counts": report["counts"],
        "columns": report["columns"],
        "workers": report["workers"],
        "seconds": report["seconds"],
    }


@task(name="train", **RETRY)
def train_task(
    store_root: str,
    survey_ids: list[str],
    spec: str = "default",
    labels: str = "default",
    settings: dict[str, Any] | None = None,
    holdout: dict[str, Any] | None = None,
    hidden: list[int] | None = None,
    stride: int = 128,
    size: int = 128,
    run_id: str | None = None,
    n_shards: int | None = None,
    batch_size: int | None = None,
    micro_batch: int | None = None,
    target_precision: float | None = None,
    target_recall: float | None = None,
) -> dict:
    """Train a classifier data-parallel on the labelled tiles of ``survey_ids`` (see pipeline.training).

    ``settings``: :class:`ann.train.TrainConfig` fields (optimizer, learning_rate, max_epochs,
    patience, seed, ...); ``holdout``: :class:`pipeline.training.HoldOut` fields; ``hidden``:
    hidden layer sizes; ``n_shards``, ``batch_size``, ``micro_batch``: the shard plan and
    ``target_precision`` / ``target_recall``: how the decision threshold is chosen (default:
    :func:`pipeline.training.train_model`'s). The weights do not depend on the number of
    workers, so it is not an input. In a cluster session of one local worker (``--workers 1``
    and no cluster configured) it trains in this process, without Dask.
    """
    from ann.train import TrainConfig
    from pipeline.features import get_spec
    from pipeline.training import HoldOut, train_model

    store = Store(store_root)
    config = TrainConfig.from_dict(dict(settings or {}))
    cut = HoldOut(**dict(holdout or {}))
    hidden = list(hidden or [64, 32])
    inputs = {
        "surveys": {s: store.survey(s).source_sha256 for s in survey_ids},
        "labels": {s: _labels_digest(store, s, labels, stride, size) for s in survey_ids},
        "spec": get_spec(spec).id,
        "config": config.to_dict(),
        "holdout": dict(cut.__dict__),
        "hidden": hidden,
        "stride": stride,
        "size": size,
        # Training tiles augmented by the 8 symmetries of the square (train_model's default):
        # a model trained before augmentation existed is not reused for it.
        "symmetries": True,
    }
    chosen = {
        "n_shards": n_shards,
        "batch_size": batch_size,
        "micro_batch": micro_batch,
        "target_precision": target_precision,
        "target_recall": target_recall,
    }
    chosen = {k: v for k, v in chosen.items() if v is not None}
    inputs.update(chosen)  # only when set, so records made before these options existed still match

    def outputs_exist(outputs: Mapping[str, Any]) -> bool:
        return (store.models_dir / f"{outputs['model_id']}.json").is_file()

    def work() -> dict:
        kwargs = dict(config=config, holdout=cut, hidden=hidden, stride=stride, size=size, **chosen)
        if _in_process():
            _, model_id, report = train_model(store, survey_ids, spec, labels, workers=1, **kwargs)
        else:
            with stage_client() as client:
                _, model_id, report = train_model(store, survey_ids, spec, labels, client=client, **kwargs)
        return {"model_id": model_id, "report": report.to_dict()}

    return run_stage(store, "train", "+".join(survey_ids), inputs, outputs_exist, work, run_id)
