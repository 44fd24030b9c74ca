"""The ``train`` flow: train a tile classifier on surveys in the store.

    features (stride 128) ──┐
    labels (truth GeoJSON) ─┴─▶ train (data-parallel on Dask, region hold-out) ──▶ model

Labels come from a ground-truth GeoJSON (``truth``: the objects standing on each survey's date,
filtered by ``where``, e.g. ``{"class": "dam"}``) or, without ``truth``, from the label set
``labels`` already in the store (``damwatch labels``). The model is saved in
``<store>/models/<model_id>.{npz,json}``; the run summary holds the epochs, the validation and
held-out test metrics and the seconds. Skipped when surveys, labels and settings are unchanged.
"""

from __future__ import annotations

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
) -> dict:
    """Train on ``surveys`` (ids); ``settings``: TrainConfig fields; ``holdout``: HoldOut fields.

    ``stride``: pixels between training tiles (128-px tiles; 64 doubles the examples).
    """
    params = dict(locals())
    st = Store(store)
    run = RunRecord(st, "train", params)
    root = str(st.root)
    with run.failing(), cluster_session(cluster, workers):
        for sid in surveys:
            run.add(features_task(root, sid, spec=spec, stride=stride, run_id=run.run_id))
            if truth is not None:
                run.add(labels_task(root, sid, truth, where=where, stride=stride, run_id=run.run_id))
        trained = run.add(
            train_task(root, surveys, spec=spec, labels="default" if truth else labels, settings=settings,
                       holdout=holdout, hidden=hidden, stride=stride, run_id=run.run_id)
        )
    summary = train_summary(trained["outputs"]["report"])
    return run.finish(
        {"model_id": summary["model_id"], "train": summary},
        headline=[train_headline(trained)],
        maps={"model": str(st.models_dir / f"{summary['model_id']}.json")},
    )
