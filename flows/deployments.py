"""Deployments of damwatch's flows, for ``damwatch serve`` (a process serving them itself).

A *deployment* is a flow plus default parameters plus (optionally) a schedule, registered with a
Prefect server so that runs appear, can be triggered from the UI or ``prefect deployment run``,
and fire on schedule. Two deployments exist, the same as in ``deploy/prefect.yaml`` (which
declares them for a work pool and workers instead):

- ``watch/scheduled-detection``: the watch flow on a cron or interval schedule;
- ``train/train-on-demand``: the train flow, no schedule, run when asked.

Schedules need a real Prefect server (DESIGN decision 10): Prefect's temporary local server runs
one-off flows but never fires schedules, so :func:`serve_deployments` refuses to start without
``PREFECT_API_URL``.

The deployments use module-path entrypoints (``flows.watch.watch_flow``), so any process with
damwatch installed can run them, whatever its working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.errors import InputError

__all__ = [
    "WATCH_DEPLOYMENT",
    "TRAIN_DEPLOYMENT",
    "DEFAULT_CRON",
    "require_server",
    "watch_deployment",
    "train_deployment",
    "serve_deployments",
]

WATCH_DEPLOYMENT = "scheduled-detection"
TRAIN_DEPLOYMENT = "train-on-demand"
DEFAULT_CRON = "0 6 * * *"  # every day at 06:00 (server time zone: UTC unless configured)


def require_server() -> str:
    """The configured Prefect API URL; InputError when schedules could never fire."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise InputError(
            "no Prefect server is configured (PREFECT_API_URL is unset and no damwatch server is "
            "running), and Prefect's temporary local server never fires schedules. Start one with "
            "`damwatch server start` (damwatch commands then use it while it runs), or export "
            "PREFECT_API_URL naming a Prefect server you run (deploy/README.md), then run damwatch "
            "serve again"
        )
    return url


def watch_deployment(
    inbox: str | os.PathLike,
    store: str | os.PathLike | None = None,
    cron: str | None = None,
    interval: float | None = None,
    parameters: dict[str, Any] | None = None,
    name: str = WATCH_DEPLOYMENT,
):
    """The watch flow as a deployment on ``cron`` or every ``interval`` seconds (not both)."""
    from prefect.types.entrypoint import EntrypointType

    from flows.watch import watch_flow
    from pipeline.store import default_store_path

    if cron and interval:
        raise InputError("give either --cron or --interval, not both")
    if interval is not None and interval <= 0:
        raise InputError(f"--interval must be a positive number of seconds, got {interval}")
    inbox = Path(inbox).resolve()
    if not inbox.is_dir():
        raise InputError(f"inbox {inbox} is not a directory; create it first (mkdir -p {inbox})")
    if cron is not None:
        _check_cron(cron)
    params = {
        "inbox": str(inbox),
        # Absolute: the served runs may start in another working directory.
        "store": str(Path(store or default_store_path()).resolve()),
        **(parameters or {}),
    }
    return watch_flow.to_deployment(
        name=name,
        cron=None if interval else (cron or DEFAULT_CRON),
        interval=interval,
        parameters=params,
        description=f"Scheduled detection: process new GeoTIFFs in {inbox}",
        tags=["damwatch", "watch"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def train_deployment(store: str | os.PathLike | None = None, name: str = TRAIN_DEPLOYMENT):
    """The train flow as an unscheduled deployment: run it from the UI or ``prefect deployment run``."""
    from prefect.types.entrypoint import EntrypointType

    from flows.train import train_flow
    from pipeline.store import default_store_path

    return train_flow.to_deployment(
        name=name,
        parameters={"store": str(Path(store or default_store_path()).resolve())},
        description="Train a model on surveys and labels in the store (on demand)",
        tags=["damwatch", "train"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def _check_cron(cron: str) -> None:
    try:
        from prefect.client.schemas.schedules import CronSchedule

        CronSchedule(cron=cron)
    except Exception as exc:  # pydantic ValidationError carries the reason
        raise InputError(
            f"--cron {cron!r} is not a cron expression ({str(exc).splitlines()[-1].strip()}); "
            f"use five fields: minute hour day-of-month month day-of-week, e.g. \"0 6 * * *\""
        ) from None


def serve_deployments(*deployments, limit: int | None = None) -> None:
    """Register ``deployments`` with the configured server and run their flow runs until Ctrl-C."""
    from prefect import serve

    require_server()
    serve(*deployments, limit=limit, print_starting_message=True)
