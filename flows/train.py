"""The ``train`` flow: train a detector on surveys in the store.

    cnn (default):   survey pixels + truth GeoJSON (or stored labels) ─▶ windows ─▶ train
    classic:         features ──┐
                     labels ────┴─▶ train (data-parallel on Dask, region hold-out) ──▶ model

A cnn model learns from windows cut around the truth's objects (``truth``: targets chosen by
``where``, e.g. ``{"class": "dam"}``, look-alikes by their ``kind``) or, without ``truth``,
from the label set the settings name (``damwatch labels``). A classic model trains on stored
features and tile labels (made from ``truth`` first when given). The model is saved in
``<store>/models/<model_id>.{npz,json}``; the run summary holds the epochs, the validation and
held-out test metrics and the seconds, and ``runs/<run_id>/train-report.json`` the full training
report (history per epoch, metrics, tile counts, region columns). Skipped when surveys, labels
and settings are unchanged.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.headlines import train_headline, train_summary
from flows.runs import RunRecord
from flows.session import cluster_session, survey_bytes
from flows.tasks import features_task, labels_task, train_task
from pipeline.files import write_json
from pipeline.results import training_footprints
from pipeline.stac import write_model_item
from pipeline.store import Store
from pipeline.training import TrainingSettings

__all__ = ["train_flow"]


@flow(name="train")
def train_flow(
    surveys: list[str],
    store: str | None = None,
    truth: str | None = None,
    where: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    cluster: str | None = None,
    workers: int | None = None,
    make_features: bool = True,
) -> dict:
    """Train on ``surveys`` (ids) with ``settings`` (:class:`pipeline.training.TrainingSettings`
    as plain data: feature spec, tile size and stride, label set, architecture, hold-out,
    optimizer and stopping rules, shard plan, threshold rule; what is not given keeps its
    default).

    ``truth``: label each survey from this GeoJSON first (objects standing on its date, filtered
    by ``where``, e.g. ``{"class": "dam"}``), as the label set ``settings["labels"]``.
    ``make_features``: compute missing features first (else they must be in the store).
    ``workers=1`` without a cluster trains in this process.
    """
    params = dict(locals())
    chosen = TrainingSettings.from_dict(settings)  # refuse unknown settings before any work
    st = Store(store)
    run = RunRecord(st, "train", params)
    root = str(st.root)
    with run.failing(), cluster_session(cluster, workers, survey_bytes(st, surveys)):
        if chosen.model_type == "classic":  # the cnn reads its windows from the survey and the truth itself
            for sid in surveys:
                if make_features:
                    run.add(features_task(root, sid, spec=chosen.spec, stride=chosen.stride, size=chosen.size,
                                          run_id=run.run_id))
                if truth is not None:
                    run.add(labels_task(root, sid, truth, where=where, stride=chosen.stride, size=chosen.size,
                                        run_id=run.run_id, name=chosen.labels))
        trained = run.add(train_task(root, surveys, settings=chosen.to_dict(), run_id=run.run_id,
                                     truth=truth if chosen.model_type == "cnn" else None, where=where))
    report = write_json(run.dir / "train-report.json", trained["outputs"]["report"])
    summary = train_summary(trained["outputs"]["report"])
    # The model described for STAC browsers (machine-learning-model extension), linked from the run's catalog.
    write_model_item(st.models_dir, summary["model_id"], training_footprints(st, summary["model_id"]))
    return run.finish(
        {"model_id": summary["model_id"], "train": summary},
        headline=[train_headline(trained)],
        maps={"model": str(st.models_dir / f"{summary['model_id']}.json"), "report": str(report)},
    )
