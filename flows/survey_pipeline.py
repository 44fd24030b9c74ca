"""The ``survey_pipeline`` flow: a new survey from GeoTIFF to detections and change.

    GeoTIFF ──ingest──▶ survey ──features──▶ features ──detect──▶ maps
                                                  └──change against the previous survey of the area

The previous survey is the latest survey of the same area in the store dated before this one;
its predictions with the same model are computed too if missing. Without a model (``model=None``)
the flow stops after features; ``model="latest"`` takes the newest model in the store.
Each stage is skipped, with a log line, when its inputs have not changed since it last ran.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.runs import RunRecord
from flows.tasks import cluster_session, features_task, ingest_task
from pipeline.store import Store, parse_date, survey_id_for

__all__ = ["survey_pipeline"]


@flow(name="survey_pipeline")
def survey_pipeline(
    path: str,
    area: str,
    date: str,
    store: str | None = None,
    model: str | None = None,
    truth: str | None = None,
    spec: str = "default",
    stride: int = 64,
    threshold: float | None = None,
    bands: list[str] | None = None,
    overwrite: bool = False,
    sha256: str | None = None,
    cluster: str | None = None,
    workers: int | None = None,
) -> dict:
    """Ingest ``path`` as ``<area>-<date>``, compute features, and (given a model) detect and compare.

    ``stride`` is the detection tile stride in pixels (tiles are 128 px); ``truth`` an optional
    ground-truth GeoJSON for metrics; ``threshold`` overrides the model's decision threshold;
    ``sha256`` is the file's hash when the caller already knows it (the watch flow).
    """
    params = dict(locals())
    logger = get_run_logger()
    st = Store(store)
    run = RunRecord(st, "survey_pipeline", params)
    survey_id = survey_id_for(area, parse_date(date))
    root = str(st.root)
    with run.failing(), cluster_session(cluster, workers):
        ingested = run.add(
            ingest_task(root, str(path), area, str(date), sha256=sha256, bands=bands, overwrite=overwrite, run_id=run.run_id)
        )
        feats = run.add(features_task(root, survey_id, spec=spec, stride=stride, run_id=run.run_id))
        if model is None:
            logger.info("no model given: %s stops after features (pass model=ID or 'latest' to detect)", survey_id)
    out = ingested["outputs"]
    return run.finish(
        {
            "survey_id": survey_id,
            "ingest": out,
            "features": feats["outputs"],
            "model_id": None,
        },
        headline=[
            f"survey **{survey_id}**: {out['width']} x {out['height']} px",
            f"tiles: {feats['outputs']['valid_tiles']} with data of {feats['outputs']['tiles']} "
            f"(stride {stride} px)",
            "detections: no model given" if model is None else "",
        ],
    )
