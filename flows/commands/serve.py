"""Serve scheduled detection: watch an inbox and run the survey pipeline on each new GeoTIFF.

Registers the deployment `watch/scheduled-detection` with the Prefect server and keeps running,
executing its scheduled runs until Ctrl-C (the schedule is paused on exit). Each run looks in
--inbox for GeoTIFFs whose content was not processed yet, and runs the survey pipeline on each
(ingest -> features -> detect -> change against the previous survey of the same area). A run
with nothing new does nothing. Two overlapping runs never process the same file.

Area and date of each file come from a sidecar JSON (creek_0601.json beside creek_0601.tif:
{"area": "creek", "date": "2024-06-01"}) or from the file name <area>_<YYYY-MM-DD>.tif
(creek_2024-06-01.tif, creek-20240601-rgb.tif). Files modified less than --settle seconds ago
are left for the next run (they may still be being copied).

Schedules need a running Prefect server (the temporary local one never fires them): a
`damwatch server start` one, used automatically, or the one PREFECT_API_URL names:

  damwatch server start
  damwatch serve --inbox /data/inbox --cron "0 6 * * *" --model latest
  damwatch serve --inbox /data/inbox --interval 600 --store /data/damwatch

Defaults: --cron "0 6 * * *" (daily at 06:00 UTC) unless --interval SECONDS is given; no model
(ingest and features only) unless --model ID or --model latest. The train flow is served too, as
`train/train-on-demand` (no schedule; run it from the UI). See deploy/README.md for workers,
work pools and a Dask cluster.
"""

from __future__ import annotations

import argparse

from flows.commands._common import add_cluster_arguments, add_store_argument

NAME = "serve"
HELP = "serve scheduled detection on an inbox directory (needs a Prefect server)"
ORDER = 60


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inbox", required=True, metavar="DIR", help="directory where new GeoTIFFs arrive")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--cron", default=None, help='cron schedule (default "0 6 * * *": daily 06:00 UTC)')
    when.add_argument("--interval", type=float, default=None, metavar="SECONDS", help="run every SECONDS instead")
    parser.add_argument("--model", default=None, help="model id for detection, or 'latest' (default: none)")
    parser.add_argument("--stride", type=int, default=64, help="detection tile stride in pixels (default: 64)")
    parser.add_argument(
        "--settle", type=float, default=10.0, metavar="SECONDS",
        help="leave files modified less than SECONDS ago for the next run (default: 10)",
    )
    parser.add_argument(
        "--bands", metavar="NAMES", default=None,
        help="band names in file order for inbox files whose sidecar JSON names none, e.g. red,green,blue,nir",
    )
    parser.add_argument("--name", default=None, help="deployment name (default: scheduled-detection)")
    parser.add_argument("--limit", type=int, default=None, help="most runs executing at once (default: Prefect's, 5)")
    add_store_argument(parser)
    add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from flows.server import use_running_server

    use_running_server()  # before Prefect is imported: a running damwatch server is the one to serve on
    from flows.deployments import (
        WATCH_DEPLOYMENT,
        require_server,
        serve_deployments,
        train_deployment,
        watch_deployment,
    )

    require_server()  # before anything else: the clearest error first
    watch = watch_deployment(
        args.inbox,
        store=args.store,
        cron=args.cron,
        interval=args.interval,
        parameters={
            "model": args.model,
            "stride": args.stride,
            "settle_seconds": args.settle,
            "cluster": args.cluster,
            "workers": args.workers,
            "bands": args.bands.split(",") if args.bands else None,
        },
        name=args.name or WATCH_DEPLOYMENT,
    )
    serve_deployments(watch, train_deployment(args.store), limit=args.limit)
    return 0
