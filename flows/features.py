"""The ``features`` flow: per-tile features of surveys already in the store.

One features stage per survey, each skipped (with a log line) when the survey's content, the
feature spec and the grid are unchanged since it last completed, unless ``overwrite``.
"""

from __future__ import annotations

from prefect import flow

from flows.runs import RunRecord
from flows.session import cluster_session, survey_bytes
from flows.tasks import features_task
from pipeline.store import Store

__all__ = ["features_flow"]


@flow(name="features")
def features_flow(
    surveys: list[str],
    store: str | None = None,
    spec: str = "default",
    stride: int = 128,
    size: int = 128,
    cluster: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Compute features of ``surveys`` (ids) with feature ``spec`` on ``size``/``stride`` px tiles.

    ``overwrite`` recomputes features the store already holds for these inputs.
    """
    params = dict(locals())
    st = Store(store)
    run = RunRecord(st, "features", params)
    with run.failing(), cluster_session(cluster, workers, survey_bytes(st, surveys)):
        outcomes = [
            run.add(
                features_task(
                    str(st.root), sid, spec=spec, stride=stride, size=size, run_id=run.run_id, overwrite=overwrite
                )
            )
            for sid in surveys
        ]
    return run.finish(
        {"features": [o["outputs"] for o in outcomes]},
        headline=[
            f"{o['subject']}: {o['outputs']['valid_tiles']} tiles with data of {o['outputs']['tiles']} ({o['status']})"
            for o in outcomes
        ],
    )
