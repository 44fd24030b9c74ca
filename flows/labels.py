"""The ``labels`` flow: label the tiles of surveys already in the store.

A *label set* gives each tile of a survey's grid 1 (positive), 0 (negative) or −1 (unknown),
stored under ``labels/<survey>/<name>/size<S>_stride<T>`` for training. The labels come from a
GeoJSON file of labelled objects (``truth``, with the selection ``where`` / ``on_date``) or from
a per-pixel band condition (``expr``, e.g. ``"ndwi > 0"``); the rules are those of
:mod:`pipeline.labels`. One labels stage per survey, skipped (with a log line) when the
survey, the file and the settings are unchanged and the stored label set is still the one that
stage wrote.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.headlines import labels_headline
from flows.runs import RunRecord
from flows.session import cluster_session, survey_bytes
from flows.tasks import labels_task
from pipeline.store import Store

__all__ = ["labels_flow"]


@flow(name="labels")
def labels_flow(
    surveys: list[str],
    store: str | None = None,
    truth: str | None = None,
    expr: str | None = None,
    where: dict[str, Any] | None = None,
    on_date: str | None = None,
    min_cover: float = 0.2,
    region: str | None = None,
    crs: str | None = None,
    min_fraction: float = 0.2,
    min_valid: float = 0.5,
    name: str = "default",
    stride: int = 128,
    size: int = 128,
    cluster: str | None = None,
    workers: int | None = None,
) -> dict:
    """Label the tiles of ``surveys`` (ids) from ``truth`` (a GeoJSON path) or ``expr`` (a band condition).

    ``where``: property filters (a value or a list of accepted values per key); ``on_date``: keep
    objects whose ``dates`` list this date (``"survey"``: each survey's own date); ``min_cover``,
    ``min_fraction``, ``min_valid``: fractions of a tile; ``region``: GeoJSON polygons of the
    labelled area; ``crs``: CRS of the file's coordinates; ``size``/``stride``: the tile grid in
    pixels; ``name``: the label set's name in the store.
    """
    params = dict(locals())
    st = Store(store)
    run = RunRecord(st, "labels", params)
    with run.failing(), cluster_session(cluster, workers, survey_bytes(st, surveys)):
        outcomes = [
            run.add(
                labels_task(
                    str(st.root), sid, truth, where=where, stride=stride, size=size, run_id=run.run_id,
                    expr=expr, name=name, on_date=on_date, min_cover=min_cover, region=region, crs=crs,
                    min_fraction=min_fraction, min_valid=min_valid,
                )
            )
            for sid in surveys
        ]
    return run.finish(
        {"labels": {o["outputs"]["survey_id"]: o["outputs"] for o in outcomes}},
        headline=[labels_headline(o) for o in outcomes],
    )
