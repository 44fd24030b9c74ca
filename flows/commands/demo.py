"""Run damwatch end to end on built-in synthetic data: the place to start.

Generates a synthetic area with beaver dams at two dates (1 m pixels, a ground-truth GeoJSON),
then runs the whole pipeline as a Prefect flow:

  synth -> ingest x2 -> features -> labels (first date's truth) -> train (data-parallel on a
  Dask LocalCluster, eastern band held out) -> detect x2 -> change -> maps, GeoJSON, metrics

Everything lands in --out (default ./damwatch-demo, itself a damwatch store): the synthetic
GeoTIFFs and quicklooks in synth/, the model in models/, and runs/<run_id>/ with probability
COGs, detection GeoJSON, change maps, PNG quicklooks, metrics against the truth and
summary.json. It prints where to look. At the default size (6144 px, about 6 x 6 km with some
90 dams) it takes about two minutes on 2 cores; --size 4096 is quicker, --size 12288 shows four
times the area. Running it again with the same settings skips every stage whose inputs are
unchanged.

  damwatch demo
  damwatch demo --size 12288 --seed 3 --out /tmp/bigger-demo
"""

from __future__ import annotations

import argparse

NAME = "demo"
HELP = "run the whole pipeline on built-in synthetic data (start here)"
ORDER = 1


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=None, metavar="PX",
                        help="edge of the synthetic area in pixels of 1 m (default: 6144)")
    parser.add_argument("--seed", type=int, default=7, help="scene seed (default: 7)")
    parser.add_argument("--out", metavar="DIR", default="damwatch-demo",
                        help="where everything goes, a damwatch store (default: ./damwatch-demo)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="Dask worker processes (default: one per core)")
    parser.add_argument("--cluster", metavar="ADDRESS", default=None,
                        help="a running Dask scheduler to use instead of a local cluster (default: $DAMWATCH_CLUSTER)")


def run(args: argparse.Namespace) -> int:
    from flows.commands._common import prepare_flow_run, run_flow
    from pipeline.errors import InputError

    if args.size is not None and args.size < 1024:
        raise InputError(f"--size {args.size} is too small for a scene with streams and dams; give at least 1024 px")
    prepare_flow_run()
    from flows.demo import DEFAULT_SIZE, demo_flow

    run_flow(demo_flow, out=args.out, size=args.size or DEFAULT_SIZE, seed=args.seed, workers=args.workers, cluster=args.cluster)
    return 0
