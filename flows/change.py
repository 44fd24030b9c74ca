"""The ``change`` flow: compare two surveys of one area under a model.

Writes ``runs/<run_id>/change/<before>..<after>/`` — or ``out`` when given, all or nothing: an
output directory that already holds results is refused before any work unless ``overwrite`` —
the change COG (new / gone / persisting classes), change GeoJSON, side-by-side PNG, provenance
and (given ``truth``) metrics. Skipped when both surveys, the model and the settings are
unchanged since the last completed run, except that maps asked for in ``out`` are always
written there (stored tile probabilities are reused).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.headlines import change_headline
from flows.runs import RunRecord
from flows.session import cluster_session, survey_bytes
from flows.tasks import change_task, model_reference, resolve_model_id
from pipeline.store import Store

__all__ = ["change_flow"]


@flow(name="change")
def change_flow(
    before: str,
    after: str,
    model: str,
    store: str | None = None,
    stride: int | None = None,
    truth: str | None = None,
    thresholds: dict[str, float] | None = None,
    cluster: str | None = None,
    workers: int | None = None,
    reproject: bool = False,
    out: str | None = None,
    overwrite: bool = False,
    where: dict[str, Any] | None = None,
) -> dict:
    """Flag tiles that are ``new``, ``gone`` or ``persisting`` from survey ``before`` to ``after`` (ids).

    ``thresholds``: ``high``/``low``/``min_difference`` of the hysteresis (default: pipeline.change's).
    ``reproject``: compare surveys in different CRSs on a grid in ``before``'s CRS. ``out``: the
    output directory (default: the run's own); ``overwrite``: replace results already there.
    """
    params = dict(locals())
    st = Store(store)
    run = RunRecord(st, "change", params)
    with run.failing(), cluster_session(cluster, workers, survey_bytes(st, [before, after])):
        model_id = resolve_model_id(st, model)
        ref = model_reference(st, model)
        outcome = run.add(
            change_task(
                str(st.root), before, after, ref, out or str(run.dir / "change" / f"{before}..{after}"),
                stride=stride, truth=truth, thresholds=thresholds, run_id=run.run_id, where=where,
                reproject=reproject, overwrite=overwrite, rerun=bool(out),
            )
        )
    return run.finish(
        {"model_id": model_id, "change": outcome["outputs"]},
        headline=[change_headline(outcome)],
        maps={f"change {k}": v for k, v in outcome["outputs"]["files"].items()},
    )
