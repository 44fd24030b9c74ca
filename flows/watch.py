"""The ``watch`` flow: process the GeoTIFFs that arrived in an inbox since the last run.

Each run lists the inbox (see :mod:`flows.inbox` for how a file's area and date are found and
how content hashes, claims and done records work), and runs :func:`flows.survey_pipeline.survey_pipeline`
as a subflow on each file whose content has not been processed yet and that no other run is
processing now. A run with nothing new does nothing (no cluster is started) and says so.

A file that is bad input (:class:`DamwatchError` / :class:`AnnError`) is recorded as failed
and not retried until its record is removed; any other failure, and a fault of the machine
(:class:`ResourceError`: an unreachable cluster, a full disk), releases the claim so that the
next run tries again, and marks this run as failed (in Prefect and in its ``provenance.json``)
once the other files are done.

Served on a schedule by ``damwatch serve`` (``flows/deployments.py``) or a work pool
(``deploy/prefect.yaml``).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from ann.errors import AnnError
from flows.inbox import Ledger, scan_inbox
from flows.runs import RunRecord, top_detections
from flows.session import cluster_session, connect
from flows.survey_pipeline import survey_pipeline
from flows.tasks import resolve_model_id
from pipeline.cluster import cluster_address
from pipeline.errors import DamwatchError, ResourceError
from pipeline.store import Store

__all__ = ["watch_flow"]


@flow(name="watch")
def watch_flow(
    inbox: str,
    store: str | None = None,
    model: str | None = None,
    stride: int | None = None,
    settle_seconds: float = 10.0,
    cluster: str | None = None,
    workers: int | None = None,
    bands: list[str] | None = None,
) -> dict:
    """Run the survey pipeline on every new GeoTIFF in ``inbox``.

    ``settle_seconds``: files modified more recently than this are left for the next run (they
    may still be being copied). ``model``: model id, or ``"latest"``, or None (ingest only).
    ``bands``: band names in file order for files whose sidecar names none (a deployment's
    default for its inbox, e.g. ``["red", "green", "blue", "nir"]`` for NAIP). Other parameters
    as for ``survey_pipeline``.
    """
    params = dict(locals())
    logger = get_run_logger()
    st = Store(store)
    run = RunRecord(st, "watch", params)
    ledger = Ledger(st.root / "state" / "watch")
    processed, skipped, failed, errors, unknown = [], [], [], [], []
    model_id = None
    connected = False
    # One cluster session for every file of the run (each subflow reuses it).
    with run.failing(), cluster_session(cluster, workers):
        files = scan_inbox(Path(inbox), settle_seconds)
        for item in files:
            name = item.path.name
            if not item.understood:
                logger.warning("%s: area and date unknown (%s); left alone", name, item.source)
                unknown.append({"file": name, "reason": item.source})
                continue
            sha = ledger.content_hash(item.path)
            if (seen := ledger.status(sha)) is not None:
                logger.info("%s: already %s (sha256 %s…), skipped", name, seen["state"], sha[:12])
                skipped.append({"file": name, "sha256": sha, "reason": seen["state"]})
                continue
            if model is not None and model_id is None:
                # Before claiming anything: a missing model is this deployment's fault, not the
                # file's, so it fails the run and leaves the files for a run that has one.
                model_id = resolve_model_id(st, model)
            if not connected and cluster_address(cluster) is not None:
                # Likewise an unreachable scheduler: fail the run before claiming any file, so
                # nothing is recorded against the files and the next run takes them.
                connect()
                connected = True
            if not ledger.claim(sha, item.path, run.run_id):
                holder = ledger.holder(sha) or {}
                logger.info("%s: being processed by run %s, skipped", name, holder.get("run"))
                skipped.append({"file": name, "sha256": sha, "reason": f"claimed by {holder.get('run')}"})
                continue
            if (seen := ledger.status(sha)) is not None:  # finished by another run meanwhile
                ledger.release(sha)
                skipped.append({"file": name, "sha256": sha, "reason": seen["state"]})
                continue
            record = {"file": name, "sha256": sha, "area": item.area, "date": item.date.isoformat(), "run": run.run_id}
            try:
                with ledger.hold(sha):  # renews the claim's lease while the pipeline works
                    result = survey_pipeline(
                        path=str(item.path),
                        area=item.area,
                        date=item.date.isoformat(),
                        store=str(st.root),
                        model=model_id,
                        stride=stride,
                        sha256=sha,
                        cluster=cluster,
                        workers=workers,
                        bands=list(item.bands or bands or []) or None,
                    )
            except ResourceError as exc:  # the machine's fault, not the file's: try again later
                logger.error("%s: %s; released for the next run", name, exc)
                ledger.release(sha)
                errors.append({**record, "error": str(exc)})
                if not exc.transient:
                    break  # a full disk fails every other file too
            except (DamwatchError, AnnError) as exc:
                logger.error("%s: bad input, not retried until %s is removed: %s", name, ledger.failed, exc)
                ledger.mark_failed(sha, {**record, "error": str(exc)})
                failed.append({**record, "error": str(exc)})
            except Exception as exc:  # transient or a bug: let the next run try again
                logger.error("%s: failed (%s: %s); released for the next run", name, type(exc).__name__, exc)
                ledger.release(sha)
                errors.append({**record, "error": f"{type(exc).__name__}: {exc}"})
            else:
                done = {**record, "survey_id": result["survey_id"], "pipeline_run": result["run_id"]}
                ledger.mark_done(sha, {**done, "pipeline_run_dir": result["run_dir"]})
                processed.append({**done, "summary": result})
        if not processed and not failed and not errors:
            logger.info("inbox %s: nothing new (%d file(s) seen)", inbox, len(files))

    detections = top_detections(
        [p for item in processed for key, p in item["summary"].get("maps", {}).items() if key.endswith("detections")]
    )
    error = None
    if errors:
        error = (
            f"{len(errors)} inbox file(s) failed and were released for the next run: "
            + "; ".join(f"{e['file']}: {e['error']}" for e in errors)
        )
    summary = run.finish(
        {
            "inbox": str(inbox),
            "processed": [{k: v for k, v in p.items() if k != "summary"} for p in processed],
            "skipped": skipped,
            "failed": failed,
            "errors": errors,
            "unknown": unknown,
        },
        headline=[
            f"inbox `{inbox}`: {len(files)} GeoTIFF(s)",
            f"processed: {', '.join(p['survey_id'] for p in processed) or 'none'}",
            f"skipped (already done or claimed): {len(skipped)}; bad input: {len(failed)}; "
            f"errors: {len(errors)}; area/date unknown: {len(unknown)}",
        ],
        detections=detections,
        maps={f"{p['survey_id']} run": p["summary"]["run_dir"] for p in processed},
        error=error,
    )
    if error:
        raise RuntimeError(error)
    return summary
