"""The ``change`` flow: compare two surveys of one area under a model.

Writes ``runs/<run_id>/change/<before>..<after>/``: the change COG (new / gone / persisting
classes), change GeoJSON, side-by-side PNG, provenance and (given ``truth``) metrics. Skipped
when both surveys, the model and the settings are unchanged since the last completed run.
"""

from __future__ import annotations

from prefect import flow

from flows.runs import RunRecord
from flows.survey_pipeline import change_headline
from flows.tasks import change_task, cluster_session, resolve_model_id
from pipeline.store import Store

__all__ = ["change_flow"]


@flow(name="change")
def change_flow(
    before: str,
    after: str,
    model: str,
    store: str | None = None,
    stride: int = 64,
    truth: str | None = None,
    thresholds: dict[str, float] | None = None,
    cluster: str | None = None,
    workers: int | None = None,
) -> dict:
    """Flag tiles that are ``new``, ``gone`` or ``persisting`` from survey ``before`` to ``after`` (ids).

    ``thresholds``: ``high``/``low``/``min_difference`` of the hysteresis (default: pipeline.change's).
    """
    params = dict(locals())
    st = Store(store)
    run = RunRecord(st, "change", params)
    with run.failing(), cluster_session(cluster, workers):
        model_id = resolve_model_id(st, model)
        outcome = run.add(
            change_task(
                str(st.root), before, after, model_id, str(run.dir / "change" / f"{before}..{after}"),
                stride=stride, truth=truth, thresholds=thresholds, run_id=run.run_id,
            )
        )
    return run.finish(
        {"model_id": model_id, "change": outcome["outputs"]},
        headline=[change_headline(outcome)],
        maps={f"change {k}": v for k, v in outcome["outputs"]["files"].items()},
    )
