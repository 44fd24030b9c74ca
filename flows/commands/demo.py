"""Run damwatch end to end on built-in synthetic data: the place to start.

Generates two synthetic areas with beaver dams at two dates (2 m pixels, ground-truth GeoJSON):
a training area and an evaluation area the models never see. Then, as one Prefect flow:

  synth x2 -> ingest x4 -> train the convolutional detector on the training area (data-parallel
  on a Dask LocalCluster) and the classic model beside it -> detect x2 and change on the
  evaluation area -> object-level evaluation against its truth

Everything lands in --out (default ./damwatch-demo, itself a damwatch store): the synthetic
GeoTIFFs and quicklooks in synth/, the models in models/, and runs/<run_id>/ with probability
COGs, detections (points) and footprints (GeoJSON), change maps, PNG quicklooks, metrics
against the truth and summary.json. It prints the evaluation figures and where to look. It takes
about three minutes on 2 cores; --no-classic skips the classic model (quicker). Running it again
with the same settings skips every stage whose inputs are unchanged.

  damwatch demo
  damwatch demo --seed 3 --eval-seed 12 --out /tmp/another-demo
"""

from __future__ import annotations

import argparse

NAME = "demo"
HELP = "run the whole pipeline on built-in synthetic data (start here)"
ORDER = 1


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=None, metavar="PX",
                        help="edge of each synthetic area in pixels (default: 3072, i.e. 6 km at 2 m)")
    parser.add_argument("--pixel-size", type=float, default=2.0, metavar="M",
                        help="pixel size of the synthetic surveys in metres (default: 2)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the training area (default: 7)")
    parser.add_argument("--eval-seed", type=int, default=11, help="seed of the evaluation area (default: 11)")
    parser.add_argument("--no-classic", action="store_true", help="skip the classic model (quicker)")
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
        raise InputError(f"--size {args.size} is too small for two areas with enough dams to score; give at least 1024 px")
    if args.seed == args.eval_seed:
        raise InputError(f"--seed and --eval-seed are both {args.seed}: the evaluation area must be another landscape; "
                         f"give another --eval-seed, e.g. --eval-seed {args.seed + 1}")
    prepare_flow_run()
    from flows.demo import DEFAULT_SIZE, demo_flow

    run_flow(demo_flow, out=args.out, size=args.size or DEFAULT_SIZE, seed=args.seed, eval_seed=args.eval_seed,
             pixel_size=args.pixel_size, workers=args.workers, cluster=args.cluster, classic=not args.no_classic)
    return 0
