"""The ``detect`` flow: score surveys in the store with a model and write their maps.

For each survey: probabilities of every tile stored under the model id, and in
``runs/<run_id>/detect/<survey_id>/`` the probability COG, detections GeoJSON, quicklook PNG,
provenance and (given ``truth``) metrics — or in ``out`` when given (the maps of one survey
straight into it, of several into ``out/<survey_id>/``), all or nothing: an output directory
that already holds results is refused before any work unless ``overwrite``. Skipped per survey
when survey, model and settings are unchanged since the last completed run (whose maps the
summary then points to), except that maps asked for in ``out`` are always written there (the
stored tile probabilities are reused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.headlines import detection_headline
from flows.runs import RunRecord, top_detections
from flows.session import cluster_session, survey_bytes
from flows.tasks import detect_task, model_reference, resolve_model_id
from pipeline.store import Store

__all__ = ["detect_flow"]


@flow(name="detect")
def detect_flow(
    surveys: list[str],
    model: str,
    store: str | None = None,
    stride: int | None = None,
    threshold: float | None = None,
    truth: str | None = None,
    cluster: str | None = None,
    workers: int | None = None,
    out: str | None = None,
    overwrite: bool = False,
    where: dict[str, Any] | None = None,
) -> dict:
    """Detect on ``surveys`` (ids) with ``model`` (id, model file, or ``"latest"``); ``stride`` in px.

    ``out``: the output directory (default: the run's own ``detect/<survey_id>``); ``overwrite``:
    replace results already there.
    """
    params = dict(locals())
    st = Store(store)
    outs = {sid: Path(out) / sid if len(surveys) > 1 else Path(out) for sid in surveys} if out else {}
    run = RunRecord(st, "detect", params)
    with run.failing(), cluster_session(cluster, workers, survey_bytes(st, surveys)):
        model_id = resolve_model_id(st, model)
        ref = model_reference(st, model)
        outcomes = [
            run.add(
                detect_task(
                    str(st.root), sid, ref, str(outs.get(sid, run.dir / "detect" / sid)),
                    stride=stride, threshold=threshold, truth=truth, run_id=run.run_id, where=where,
                    overwrite=overwrite, rerun=sid in outs,
                )
            )
            for sid in surveys
        ]
    return run.finish(
        {"model_id": model_id, "detect": {o["outputs"]["survey_id"]: o["outputs"] for o in outcomes}},
        headline=[detection_headline(o) for o in outcomes],
        detections=top_detections([o["outputs"]["files"]["detections"] for o in outcomes]),
        maps={f"{o['outputs']['survey_id']} {k}": v for o in outcomes for k, v in o["outputs"]["files"].items()},
    )
