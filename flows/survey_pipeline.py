"""The ``survey_pipeline`` flow: a new survey from GeoTIFF to detections and change.

    GeoTIFF ──ingest──▶ survey ──features──▶ features ──detect──▶ maps
                                                  └──change against the previous survey of the area

The previous survey is the latest survey of the same area in the store dated before this one;
its predictions under the same model are computed too when missing. Without a model
(``model=None``) the flow stops after features; ``model="latest"`` takes the model saved last in
the store. Each stage is skipped, with a log line, when its inputs have not changed since it
last completed; its outputs then stay where that earlier run wrote them (the summary points
there).
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.headlines import change_headline, detection_headline
from flows.runs import RunRecord, top_detections
from flows.session import cluster_session, survey_bytes
from flows.tasks import change_task, detect_task, features_task, ingest_task, resolve_model_id
from pipeline.detect import model_spec, model_tile_size, resolve_model
from pipeline.files import parse_date, survey_id_for
from pipeline.store import Store
from pipeline.tiling import DETECTION_STRIDE

__all__ = ["survey_pipeline"]


@flow(name="survey_pipeline")
def survey_pipeline(
    path: str,
    area: str,
    date: str,
    store: str | None = None,
    model: str | None = None,
    truth: str | None = None,
    stride: int | None = None,
    threshold: float | None = None,
    bands: list[str] | None = None,
    overwrite: bool = False,
    sha256: str | None = None,
    cluster: str | None = None,
    workers: int | None = None,
) -> dict:
    """Ingest ``path`` as ``<area>-<date>``, compute features, and (given a model) detect and compare.

    ``stride`` is a classic model's tile stride in pixels (a cnn model has its own output grid); ``truth`` an optional ground-truth GeoJSON for metrics;
    ``threshold`` overrides the model's decision threshold; ``sha256`` is the file's hash when
    the caller already knows it (the watch flow).
    """
    params = dict(locals())
    logger = get_run_logger()
    st = Store(store)
    run = RunRecord(st, "survey_pipeline", params)
    survey_id = survey_id_for(area, parse_date(date))
    root = str(st.root)
    detect = change = None
    with run.failing(), cluster_session(cluster, workers, survey_bytes(st, paths=[str(path)])):
        classifier = None
        if model is not None:
            model = resolve_model_id(st, model)
            classifier = resolve_model(st, model)
        ingested = run.add(
            ingest_task(root, str(path), area, str(date), sha256=sha256, bands=bands, overwrite=overwrite, run_id=run.run_id)
        )
        feats = None
        if classifier is not None and classifier.model_type == "classic":  # a cnn reads the pixels themselves
            feats = run.add(features_task(root, survey_id, spec=model_spec(classifier).id, stride=stride or DETECTION_STRIDE,
                                          size=model_tile_size(classifier), run_id=run.run_id))
        if model is None:
            logger.info("no model given: %s stops after ingest (pass model=ID or 'latest' to detect)", survey_id)
        else:
            detect = run.add(
                detect_task(
                    root, survey_id, model, str(run.dir / "detect" / survey_id),
                    stride=stride, threshold=threshold, truth=truth, run_id=run.run_id,
                )
            )
            this = st.survey(survey_id)
            earlier = [s for s in st.surveys(area) if s.date < this.date]
            if not earlier:
                logger.info("%s is the first survey of area %s in the store: no change to compute", survey_id, area)
            else:
                before = earlier[-1].id
                change = run.add(
                    change_task(
                        root, before, survey_id, model, str(run.dir / "change" / f"{before}..{survey_id}"),
                        stride=stride, truth=truth, run_id=run.run_id,
                    )
                )

    out = ingested["outputs"]
    headline = [
        f"survey **{survey_id}**: {out['width']} x {out['height']} px",
        *([f"tiles: {feats['outputs']['valid_tiles']} with data of {feats['outputs']['tiles']} (stride {stride or DETECTION_STRIDE} px)"]
          if feats else []),
    ]
    maps: dict[str, str] = {}
    if detect is not None:
        headline.append(detection_headline(detect))
        maps.update({f"{survey_id} {k}": v for k, v in detect["outputs"]["files"].items()})
    else:
        headline.append("detections: no model given")
    if change is not None:
        headline.append(change_headline(change))
        maps.update({f"change {k}": v for k, v in change["outputs"]["files"].items()})
    return run.finish(
        {
            "survey_id": survey_id,
            "model_id": model,
            "ingest": out,
            "features": feats["outputs"] if feats else None,
            "detect": detect["outputs"] if detect else None,
            "change": change["outputs"] if change else None,
        },
        headline=headline,
        detections=top_detections([detect["outputs"]["files"]["detections"]]) if detect else (),
        maps=maps,
    )
