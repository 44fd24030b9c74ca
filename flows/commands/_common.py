"""Options shared by several subcommands, so they read the same everywhere."""

from __future__ import annotations

import argparse


__all__ = ["add_store_argument", "add_cluster_arguments", "open_store"]


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
