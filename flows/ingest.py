"""The ``ingest`` flow: one GeoTIFF into the store as the survey ``<area>-<date>``.

Skipped (with a log line) when the store already holds the same bytes under that survey id.
Leaves ``runs/<run_id>/summary.json`` + ``provenance.json`` and a markdown summary artifact.
"""

from __future__ import annotations

from prefect import flow

from flows.runs import RunRecord
from flows.session import cluster_session, survey_bytes
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
    sha256: str | None = None,
) -> dict:
    """Ingest ``path`` as survey ``<area>-<date>`` (date YYYY-MM-DD) into ``store``.

    ``sha256``: the file's content hash when the caller has computed it (not computed again).
    """
    params = dict(locals())
    st = Store(store)
    run = RunRecord(st, "ingest", params)
    with run.failing(), cluster_session(cluster, workers, survey_bytes(st, paths=[str(path)])):
        outcome = run.add(
            ingest_task(str(st.root), str(path), area, str(date), sha256=sha256, bands=bands, overwrite=overwrite, run_id=run.run_id)
        )
    out = outcome["outputs"]
    return run.finish(
        {"survey_id": out["survey_id"], "ingest": out},
        headline=[
            f"survey **{out['survey_id']}**: {out['width']} x {out['height']} px, bands {', '.join(out['bands'])}",
            f"ingest: {outcome['status']} ({out.get('status', '')})",
        ],
    )
