"""Options shared by several subcommands, so they read the same everywhere."""

from __future__ import annotations

import argparse

__all__ = ["add_store_argument", "add_cluster_arguments", "open_store", "prepare_flow_run", "stage_status"]


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="DIR",
        default=None,
        help="the damwatch store directory (default: $DAMWATCH_STORE if set, else ./damwatch-data)",
    )


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster",
        metavar="ADDRESS",
        default=None,
        help="address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786 "
        "(default: $DAMWATCH_CLUSTER, else a local cluster on this machine)",
    )
    parser.add_argument(
        "--workers",
        metavar="N",
        type=int,
        default=None,
        help="worker processes of the local cluster (default: one per core; ignored with --cluster)",
    )


def open_store(args: argparse.Namespace):
    from pipeline.store import Store

    return Store(args.store)


def prepare_flow_run() -> None:
    """Set up this process to run a Prefect flow from the command line.

    Without ``PREFECT_API_URL`` the flow runs on Prefect's temporary local server, which would
    otherwise log telemetry errors offline; and bad input (a DamwatchError) reaches the user as
    the CLI's one paragraph, not as a traceback in Prefect's log. Call it after importing the
    flow (which configures Prefect's logging) and before calling it. The temporary server is
    started here, tied to this process, so that killing the command never leaves it running
    (:mod:`flows.prefect_server`).
    """
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.failures import hide_user_error_tracebacks
    from flows.prefect_server import tie_to_this_process

    hide_user_error_tracebacks()
    tie_to_this_process()


def stage_status(summary: dict, stage: str, subject_prefix: str) -> str:
    """``"done"`` or ``"skipped (inputs unchanged)"`` for the flow run's first ``stage`` whose subject starts so."""
    for s in summary.get("stages", []):
        if s["stage"] == stage and str(s.get("subject", "")).startswith(subject_prefix):
            return "skipped: inputs unchanged" if s["status"] == "skipped" else s["status"]
    return "?"
