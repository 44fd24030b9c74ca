"""Options shared by several subcommands, so they read the same everywhere."""

from __future__ import annotations

import argparse

__all__ = [
    "add_store_argument", "add_cluster_arguments", "open_store", "prepare_flow_run", "run_flow", "stage_status",
]


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

    Call it once every input check has passed, before importing the flow: Prefect reads its
    settings when first imported. Without ``PREFECT_API_URL`` in the environment the flow runs
    on the damwatch server when one answers (:mod:`flows.server`), else on Prefect's temporary
    local server, which would otherwise log telemetry errors offline; that temporary server is
    started here, tied to this process, so that killing the command never leaves it running
    (:mod:`flows.prefect_server`). Bad input found inside the flow (a DamwatchError) reaches the
    user as the CLI's one paragraph, not as Prefect's ERROR lines and traceback.
    """
    import os

    from flows.server import use_running_server

    # Prefect's default of 20 s for its temporary server is too short on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    use_running_server()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.failures import hide_user_error_tracebacks
    from flows.prefect_server import tie_to_this_process

    hide_user_error_tracebacks()
    tie_to_this_process()


def run_flow(flow, **parameters):
    """Call a Prefect ``flow`` from the command line; its return value.

    Without flow-run heartbeats: the command's process is in the foreground, so a crash is seen
    and reported by the command itself, and the heartbeat thread's shutdown would add up to a
    second to every command (measured in benchmarks/overhead.py).
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return flow(**parameters)


def stage_status(summary: dict, stage: str, subject_prefix: str) -> str:
    """``"done"`` or ``"skipped (inputs unchanged)"`` for the flow run's first ``stage`` whose subject starts so."""
    for s in summary.get("stages", []):
        if s["stage"] == stage and str(s.get("subject", "")).startswith(subject_prefix):
            return "skipped: inputs unchanged" if s["status"] == "skipped" else s["status"]
    return "?"
