"""The ``train`` flow: train a tile classifier on surveys in the store.

    features (stride 128) ──┐
    labels (truth GeoJSON) ─┴─▶ train (data-parallel on Dask, region hold-out) ──▶ model

Labels come from a ground-truth GeoJSON (``truth``: the objects standing on each survey's date,
filtered by ``where``, e.g. ``{"class": "dam"}``) or, without ``truth``, from the label set
``labels`` already in the store (``damwatch labels``). The model is saved in
``<store>/models/<model_id>.{npz,json}``; the run summary holds the epochs, the validation and
held-out test metrics and the seconds, and ``runs/<run_id>/train-report.json`` the full training
report (history per epoch, metrics, tile counts, region columns). Skipped when surveys, labels
and settings are unchanged.
"""

from __future__ import annotations

import json
import os
from typing import Any

from prefect import flow

from flows.runs import RunRecord
from flows.tasks import cluster_session, features_task, labels_task, train_summary, train_task
from pipeline.store import Store

__all__ = ["train_flow", "train_headline"]


def train_headline(train: dict) -> str:
    s = train_summary(train["outputs"]["report"])
    v = s["validation"]
    line = (
        f"model **{s['model_id']}**: {s['epochs']} epochs ({s['stop_reason']}), {s['seconds']:.0f} s on "
        f"{s['workers']} worker(s); validation F1 {v['f1']:.2f}"
    )
    if s["test"]:
        t = s["test"]
        line += f"; held-out test precision {t['precision']:.2f}, recall {t['recall']:.2f}, F1 {t['f1']:.2f}"
    return line


@flow(name="train")
def train_flow(
    surveys: list[str],
    store: str | None = None,
    truth: str | None = None,
    where: dict[str, Any] | None = None,
    labels: str = "default",
    spec: str = "default",
    settings: dict[str, Any] | None = None,
    holdout: dict[str, Any] | None = None,
    hidden: list[int] | None = None,
    stride: int = 128,
    cluster: str | None = None,
    workers: int | None = None,
    size: int = 128,
    n_shards: int | None = None,
    batch_size: int | None = None,
    micro_batch: int | None = None,
    target_precision: float | None = None,
    target_recall: float | None = None,
    make_features: bool = True,
) -> dict:
    """Train on ``surveys`` (ids); ``settings``: TrainConfig fields; ``holdout``: HoldOut fields.

    ``stride``: pixels between training tiles of ``size`` px (64 doubles the examples of
    128-px tiles). ``n_shards``, ``batch_size``, ``micro_batch``: the shard plan;
    ``target_precision`` / ``target_recall``: choose the decision threshold for that
    validation precision / recall (defaults: :func:`pipeline.training.train_model`'s).
    ``make_features``: compute missing features first (else they must be in the store).
    ``workers=1`` without a cluster trains in this process.
    """
    params = dict(locals())
    st = Store(store)
    run = RunRecord(st, "train", params)
    root = str(st.root)
    with run.failing(), cluster_session(cluster, workers):
        for sid in surveys:
            if make_features:
                run.add(features_task(root, sid, spec=spec, stride=stride, size=size, run_id=run.run_id))
            if truth is not None:
                run.add(labels_task(root, sid, truth, where=where, stride=stride, size=size, run_id=run.run_id))
        trained = run.add(
            train_task(root, surveys, spec=spec, labels="default" if truth else labels, settings=settings,
                       holdout=holdout, hidden=hidden, stride=stride, size=size, run_id=run.run_id,
                       n_shards=n_shards, batch_size=batch_size, micro_batch=micro_batch,
                       target_precision=target_precision, target_recall=target_recall)
        )
    report = run.dir / "train-report.json"
    tmp = report.with_name(f".{report.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(trained["outputs"]["report"], indent=2, allow_nan=False) + "\n")
    tmp.replace(report)
    summary = train_summary(trained["outputs"]["report"])
    return run.finish(
        {"model_id": summary["model_id"], "train": summary},
        headline=[train_headline(trained)],
        maps={"model": str(st.models_dir / f"{summary['model_id']}.json"), "report": str(report)},
    )
