"""The ``ingest`` flow: one GeoTIFF into the store as the survey ``<area>-<date>``.

Skipped (with a log line) when the store already holds the same bytes under that survey id.
Leaves ``runs/<run_id>/summary.json`` + ``provenance.json`` and a markdown summary artifact.
"""

from __future__ import annotations

from prefect import flow

from flows.runs import RunRecord
from flows.session import cluster_session
from flows.tasks import ingest_task
from pipeline.store import Store

__all__ = ["ingest_flow"]


@flow(name="ingest")
def ingest_flow(
    path: str,
    area: str,
    date: str,
    store: str | None = None,
    bands: list[str] | None = None,
    overwrite: bool = False,
    cluster: str | None = None,
    workers: int | None = None,
) -> dict:
    """Ingest ``path`` as survey ``<area>-<date>`` (date YYYY-MM-DD) into ``store``."""
    params = dict(locals())
    st = Store(store)
    run = RunRecord(st, "ingest", params)
    with run.failing(), cluster_session(cluster, workers):
        outcome = run.add(
            ingest_task(str(st.root), str(path), area, str(date), bands=bands, overwrite=overwrite, run_id=run.run_id)
        )
    out = outcome["outputs"]
    return run.finish(
        {"survey_id": out["survey_id"], "ingest": out},
        headline=[
            f"survey **{out['survey_id']}**: {out['width']} x {out['height']} px, bands {', '.join(out['bands'])}",
            f"ingest: {outcome['status']} ({out.get('status', '')})",
        ],
    )
