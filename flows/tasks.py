"""Prefect tasks: one task per pipeline stage over a whole survey.

A task is coarse (DESIGN decision 1): ingest one GeoTIFF, compute one survey's features, label
one survey, train one model, score one survey, compare two surveys, generate a synthetic area.
Inside it, the stage submits its Dask graph through the flow's cluster session
(:mod:`flows.session`). Tasks take store paths, ids and settings, never arrays (Prefect would
pickle and hash them), and return a stage *outcome* (:class:`flows.resume.Stage`).

Each task reads the same way: fingerprint the inputs; skip to an earlier run's outputs when
they are unchanged and still there; else do the work and record it. Each is retried (twice,
after 2 s then 10 s) only for transient faults (:mod:`flows.failures`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.failures import retry_transient
from flows.resume import Stage
from flows.session import in_process, stage_client
from pipeline.change import ChangeThresholds, change_surveys, date_order_note
from pipeline.detect import detect_survey, resolve_model
from pipeline.drift import check_drift
from pipeline.errors import DamwatchError, InputError
from pipeline.features import compute_features, features_path, get_spec, open_features
from pipeline.files import file_sha256, jsonable, survey_id_for
from pipeline.ingest import ingest
from pipeline.labels import labels_from_expression, labels_from_vector, labels_path, open_labels
from pipeline.pixels import InputSpec
from pipeline.results import write_change_maps, write_detection_maps
from pipeline.store import Store
from pipeline.synthetic import generate_area
from pipeline.tiling import TileGrid
from pipeline.training import TrainingSettings, train_model
from pipeline.truth import read_truth

__all__ = [
    "resolve_model_id",
    "model_reference",
    "ingest_task",
    "features_task",
    "labels_task",
    "train_task",
    "detect_task",
    "change_task",
    "synth_task",
]


def _files_exist(outputs: Mapping[str, Any]) -> bool:
    return all(Path(p).exists() for p in outputs.get("files", {}).values())


def _paths(result: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in result.items() if isinstance(v, Path)}


def _truth_sha(truth: str | None) -> str | None:
    return file_sha256(truth) if truth else None


# ---------------------------------------------------------------------------------------------
# Models


def resolve_model_id(store: Store, model: str) -> str:
    """The id of ``model``: a model id in the store, a model file, or ``"latest"``.

    ``"latest"`` is the most recently saved model in ``<store>/models`` (by file time).
    """
    return str(resolve_model(store, model).model_id)


def model_reference(store: Store, model: str) -> str:
    """What a flow hands its stage tasks for ``model``: its id, or the model file when given one.

    A model file outside ``<store>/models`` has no id the store could resolve, so the tasks
    load it by path; ``"latest"`` becomes an id once, so every stage of a run uses one model.
    """
    return str(model) if str(model).endswith((".json", ".npz")) else resolve_model_id(store, model)


def _loadable(model: str, model_id: str) -> str:
    """The model file when ``model`` names one (it may lie outside the store), else the id."""
    return str(model) if str(model).endswith((".json", ".npz")) else model_id


# ---------------------------------------------------------------------------------------------
# Stage tasks


@task(name="ingest", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
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
    store = Store(store_root)
    survey_id = survey_id_for(area, date)
    if not Path(path).is_file():
        raise InputError(
            f"survey file {path} does not exist (or is not a file); check the path, or whether it was "
            f"moved out of the inbox before its run started"
        )
    sha = sha256 or file_sha256(path)
    stage = Stage(store, "ingest", survey_id, {"sha256": sha, "area": area, "date": str(date),
                                                "bands": list(bands) if bands else None}, run_id, get_run_logger())

    def in_store(outputs: Mapping[str, Any] | None = None) -> bool:
        # The store's own completion marker, and the same source bytes.
        if survey_id not in store.survey_ids():
            return False
        survey = store.survey(survey_id)
        return survey.source_sha256 == sha and (not bands or tuple(bands) == survey.bands)

    def facts(survey, status: str) -> dict:
        return {"survey_id": survey.id, "height": survey.height, "width": survey.width, "bands": list(survey.bands),
                "status": status}

    if (skipped := stage.previous(in_store)) is not None:
        return skipped
    if in_store():
        return stage.adopt(facts(store.survey(survey_id), "unchanged"))
    with stage_client() as client:
        result = ingest(path, area, date, store, bands=bands, overwrite=overwrite, client=client, sha256=sha)
    return stage.done(facts(result.survey, result.status))


@task(name="features", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
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
    store = Store(store_root)
    survey = store.survey(survey_id)
    spec_id = get_spec(spec).id
    stage = Stage(store, "features", f"{survey_id}/{spec_id}/size{size}_stride{stride}",
                  {"source_sha256": survey.source_sha256, "spec": spec_id, "stride": stride, "size": size},
                  run_id, get_run_logger())

    def facts(tf) -> dict:
        return {
            "survey_id": survey_id,
            "path": features_path(survey_id, spec_id, stride, size),
            "grid": list(tf.grid.shape),
            "tiles": int(tf.valid_fraction.size),
            "valid_tiles": int((tf.valid_fraction > 0).sum()),
        }

    def stored() -> dict | None:
        """The facts of features stored from this survey's current content, or None."""
        try:
            tf = open_features(store, survey_id, spec_id, stride, size)
        except DamwatchError:
            return None
        same_source = store.open_group(tf.path).attrs.get("source_sha256") == survey.source_sha256
        return facts(tf) if same_source else None

    if not overwrite:
        if (skipped := stage.previous(lambda _: stored() is not None)) is not None:
            return skipped
        if (found := stored()) is not None:
            return stage.adopt(found)
    with stage_client() as client:
        tf = compute_features(store, survey_id, spec_id, stride=stride, size=size, client=client, overwrite=overwrite)
    return stage.done(facts(tf))


def labels_digest(store: Store, survey_id: str, labels: str, stride: int, size: int) -> str:
    """SHA-256 of a stored label set's values: training is redone when any label changes."""
    values = np.ascontiguousarray(open_labels(store, survey_id, labels, stride, size).values)
    return hashlib.sha256(values.tobytes() + str(values.shape).encode()).hexdigest()


@task(name="labels", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
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
    stage = Stage(store, "labels", f"{survey_id}/{name}/size{size}_stride{stride}", inputs, run_id, get_run_logger())

    def unchanged(outputs: Mapping[str, Any]) -> bool:
        # The label set may since have been replaced under the same name by other settings.
        try:
            return labels_digest(store, survey_id, name, stride, size) == outputs.get("digest")
        except DamwatchError:
            return False

    if (skipped := stage.previous(unchanged)) is not None:
        return skipped
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
    return stage.done({
        "survey_id": survey_id,
        "name": name,
        "path": labels_path(survey_id, name, stride=stride, size=size),
        "grid": list(grid.shape),
        "positive": labels.n_positive,
        "negative": labels.n_negative,
        "unknown": labels.n_unknown,
        "source": labels.source,
        "report": jsonable(labels.report),
        "digest": labels_digest(store, survey_id, name, stride, size),
    })


@task(name="train", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def train_task(
    store_root: str,
    survey_ids: list[str],
    settings: dict[str, Any] | None = None,
    run_id: str | None = None,
    truth: str | None = None,
    where: dict[str, Any] | None = None,
) -> dict:
    """Train a model data-parallel on ``survey_ids``.

    ``settings``: :class:`pipeline.training.TrainingSettings` as plain data (unknown keys are
    refused; what is not given keeps its default). A cnn model learns from ``truth`` (a GeoJSON
    path; targets chosen by ``where``) or, without it, from the stored label set the settings
    name; a classic model from stored features and labels. The weights do not depend on the
    number of workers, so it is not an input. In a cluster session of one local worker
    (``--workers 1`` and no cluster configured) it trains in this process, without Dask.
    """
    store = Store(store_root)
    chosen = TrainingSettings.from_dict(settings)
    inputs: dict[str, Any] = {"surveys": {s: store.survey(s).source_sha256 for s in survey_ids}, "settings": chosen.to_dict()}
    if chosen.model_type == "cnn" and truth is not None:
        inputs.update(truth_sha256=file_sha256(truth), where=where)
    else:
        inputs["labels"] = {s: labels_digest(store, s, chosen.labels, chosen.stride, chosen.size) for s in survey_ids}
    if chosen.model_type == "classic":
        inputs["features"] = get_spec(chosen.spec).id
    stage = Stage(store, "train", f"{chosen.model_type}:{'+'.join(survey_ids)}", inputs, run_id, get_run_logger())
    if (skipped := stage.previous(lambda o: (store.models_dir / f"{o['model_id']}.json").is_file())) is not None:
        return skipped
    truth_data = read_truth(truth) if truth is not None and chosen.model_type == "cnn" else None
    if in_process():
        _, model_id, report = train_model(store, survey_ids, chosen, truth_data, where, workers=1)
    else:
        with stage_client() as client:
            _, model_id, report = train_model(store, survey_ids, chosen, truth_data, where, client=client)
    return stage.done({"model_id": model_id, "report": report.to_dict()})


def drift_of(store: Store, survey_id: str, model: str) -> dict | None:
    """The drift check of a survey against a cnn model's training imagery (None for classic models)."""
    clf = resolve_model(store, model)
    stats = ((clf.metadata or {}).get("training") or {}).get("band_statistics")
    if clf.model_type != "cnn" or not stats:
        return None
    return check_drift(store.survey(survey_id), stats, InputSpec.from_dict(clf.feature_spec).bands)


@task(name="detect", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def detect_task(
    store_root: str,
    survey_id: str,
    model: str,
    out_dir: str,
    stride: int | None = None,
    threshold: float | None = None,
    truth: str | None = None,
    run_id: str | None = None,
    overwrite: bool = False,
    rerun: bool = False,
    where: dict[str, Any] | None = None,
) -> dict:
    """Score ``survey_id`` with ``model`` and write its maps into ``out_dir``.

    Outputs: the probability map in the store and, in ``out_dir``, the files of
    :func:`pipeline.results.write_detection_maps`. ``stride``: a classic model's tile stride.
    ``overwrite`` lets the maps replace results already in ``out_dir`` (else refused);
    ``rerun`` writes the maps even when a completed record matches (an ``out_dir`` the user
    chose must get them; the stored probability map is still reused). A survey unlike the
    model's training imagery is scored with a warning (``outputs["drift"]``).
    """
    store = Store(store_root)
    survey = store.survey(survey_id)
    model_id = resolve_model_id(store, model)
    stage = Stage(store, "detect", f"{model_id}/{survey_id}", {
        "source_sha256": survey.source_sha256,
        "model_id": model_id,
        "stride": stride,
        "threshold": threshold,
        "truth_sha256": _truth_sha(truth),
        "where": where,
    }, run_id, get_run_logger())

    if not rerun and (skipped := stage.previous(_files_exist)) is not None:
        return skipped
    drift = drift_of(store, survey_id, _loadable(model, model_id))
    if drift and drift.get("warning"):
        get_run_logger().warning("%s", drift["warning"])
    with stage_client() as client:
        pm = detect_survey(store, survey_id, _loadable(model, model_id), stride=stride, client=client)
        written = write_detection_maps(
            store, pm, out_dir, threshold=threshold, truth=truth, overwrite=overwrite, client=client, where=where,
            drift=drift,
        )
    return stage.done({
        "survey_id": survey_id,
        "model_id": model_id,
        "model_type": pm.model_type,
        "predictions": pm.path,
        "scored_cells": int(np.isfinite(pm.values).sum()),
        "threshold": float(pm.threshold if threshold is None else threshold),
        "n_detections": int(written["n_detections"]),
        "metrics": written.get("metrics"),
        "drift": drift,
        "files": _paths(written),
    })


@task(name="change", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def change_task(
    store_root: str,
    before_id: str,
    after_id: str,
    model: str,
    out_dir: str,
    stride: int | None = None,
    truth: str | None = None,
    thresholds: dict[str, float] | None = None,
    run_id: str | None = None,
    reproject: bool = False,
    overwrite: bool = False,
    rerun: bool = False,
    where: dict[str, Any] | None = None,
) -> dict:
    """Compare ``before_id`` and ``after_id`` under ``model``; write the change maps into ``out_dir``.

    ``thresholds``: ``high``, ``low``, ``min_difference`` probabilities of the change hysteresis
    (:class:`pipeline.change.ChangeThresholds`; default: relative to the model's threshold).
    ``reproject``: compare surveys in different CRSs in the before survey's CRS. ``overwrite``
    and ``rerun`` as for :func:`detect_task`.
    """
    store = Store(store_root)
    before, after = store.survey(before_id), store.survey(after_id)
    model_id = resolve_model_id(store, model)
    model_threshold = resolve_model(store, _loadable(model, model_id)).threshold
    cut = ChangeThresholds(**thresholds) if thresholds else ChangeThresholds.for_model(model_threshold)
    inputs = {
        "before_sha256": before.source_sha256,
        "after_sha256": after.source_sha256,
        "model_id": model_id,
        "stride": stride,
        "thresholds": cut.to_dict(),
        "truth_sha256": _truth_sha(truth),
        "where": where,
    }
    if reproject:  # only when set, so records made before the option existed still match
        inputs["reproject"] = True
    stage = Stage(store, "change", f"{model_id}/{before_id}..{after_id}", inputs, run_id, get_run_logger())
    if note := date_order_note(before, after):
        get_run_logger().warning(note)
    if not rerun and (skipped := stage.previous(_files_exist)) is not None:
        return skipped
    with stage_client() as client:
        result = change_surveys(
            store, before_id, after_id, _loadable(model, model_id), stride=stride, thresholds=cut,
            reproject=reproject, client=client,
        )
        written = write_change_maps(store, result, out_dir, truth=truth, overwrite=overwrite, client=client, where=where)
    return stage.done({
        "before": before_id,
        "after": after_id,
        "model_id": model_id,
        "radius_m": result.radius_m,
        "counts": written["counts"],
        "metrics": written.get("metrics"),
        "files": _paths(written),
    })


@task(name="synth", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def synth_task(
    out_dir: str,
    store_root: str,
    area: str = "creek",
    dates: list[str] | None = None,
    size: int = 4096,
    seed: int = 7,
    workers: int | None = None,
    run_id: str | None = None,
    pixel_size: float = 1.0,
    layout: str = "natural",
) -> dict:
    """Generate a synthetic area (one GeoTIFF per date + truth GeoJSON) into ``out_dir``.

    ``size`` is the raster edge in pixels of ``pixel_size`` metres; the same settings always
    give the same bytes, so an existing output for those settings is reused.
    """
    dates = list(dates or ["2023-06-01", "2024-06-01"])
    store = Store(store_root)
    inputs: dict[str, Any] = {"area": area, "dates": dates, "size": size, "seed": seed}
    if (pixel_size, layout) != (1.0, "natural"):  # only when set, so records made before still match
        inputs.update(pixel_size=pixel_size, layout=layout)
    stage = Stage(store, "synth", f"{area}-{size}-{seed}", inputs, run_id, get_run_logger())

    def still_there(outputs: Mapping[str, Any]) -> bool:
        return all(Path(p).is_file() for p in [*outputs["surveys"].values(), outputs["truth"]])

    if (skipped := stage.previous(still_there)) is not None:
        return skipped
    # Replace only an earlier synthetic area (it has a manifest), never a directory of other files.
    ours = (Path(out_dir) / "synth.json").is_file()
    result = generate_area(out_dir, area, dates, size=size, seed=seed, workers=workers, overwrite=ours,
                           pixel_size=pixel_size, layout=layout)
    return stage.done({
        "area": area,
        "surveys": {d: str(p) for d, p in result.surveys.items()},
        "truth": str(result.truth),
        "shapes": str(result.shapes),
        "quicklooks": {d: str(p) for d, p in result.quicklooks.items()},
    })
