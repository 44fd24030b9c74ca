"""Run the whole pipeline on one new survey: ingest -> detect -> change.

Runs the Prefect flow `survey_pipeline`, so the run appears in Prefect's run history (on the
server PREFECT_API_URL names, else on Prefect's temporary local server). The survey is
compared with the latest earlier survey of the same area in the store, when there is one. Every
stage whose inputs (file hashes, model id, settings) are unchanged since it last completed is
skipped and says so, so re-running after a crash redoes only what did not finish.

Outputs go to <store>/runs/<run_id>/: detect/<survey>/ (probability COG, detections GeoJSON,
quicklook PNG, provenance, metrics with --truth), change/<before>..<after>/ (change COG,
GeoJSON, PNG), summary.json and provenance.json.

  damwatch run creek_2024-06-01.tif --area creek --date 2024-06-01 --model latest
  damwatch run new.tif --area creek --date 2025-06-01 --model 3f9a2c1d0b7e --truth truth.geojson

Without --model the run stops after ingest (useful to prepare a survey for training).
Defaults: the model's own output grid and decision threshold (--stride: a classic model's tile stride).
"""

from __future__ import annotations

import argparse

from flows.commands._common import add_cluster_arguments, add_store_argument, prepare_flow_run, run_flow

NAME = "run"
HELP = "run the pipeline on a new survey: ingest, detect, change (a Prefect flow)"
ORDER = 50


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="the survey GeoTIFF")
    parser.add_argument("--area", required=True, help="area name: lower-case letters, digits, '-', '_'")
    parser.add_argument("--date", required=True, help="survey date, YYYY-MM-DD")
    parser.add_argument("--model", default=None, help="model id, model .json file, or 'latest' (default: none)")
    parser.add_argument("--truth", metavar="FILE", default=None, help="ground-truth GeoJSON: adds metrics")
    parser.add_argument("--stride", type=int, default=None, help="a classic model's tile stride in pixels (default: 64)")
    parser.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the model's)")
    parser.add_argument("--bands", metavar="NAMES", default=None, help="band names in file order, e.g. red,green,blue,nir")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing survey from another file")
    add_store_argument(parser)
    add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.files import file_sha256, survey_id_for
    from pipeline.ingest import check_input, check_replacing
    from pipeline.store import Store

    # Everything a user can get wrong is checked before Prefect or a cluster starts.
    store = Store(args.store)
    survey_id = survey_id_for(args.area, args.date)
    bands = args.bands.split(",") if args.bands else None
    check_input(Path(args.path), bands)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        from pipeline.errors import InputError

        raise InputError(f"--threshold must be a probability between 0 and 1, got {args.threshold}")
    if args.model is not None:
        from pipeline.detect import resolve_model

        resolve_model(store, args.model)
    if args.truth:
        from pipeline.evaluate import read_truth

        read_truth(args.truth)
    sha256 = file_sha256(args.path)
    check_replacing(store, survey_id, args.path, sha256, bands, args.overwrite)
    prepare_flow_run()
    from flows.survey_pipeline import survey_pipeline

    summary = run_flow(
        survey_pipeline,
        path=args.path,
        area=args.area,
        date=args.date,
        store=args.store,
        model=args.model,
        truth=args.truth,
        stride=args.stride,
        threshold=args.threshold,
        bands=bands,
        overwrite=args.overwrite,
        sha256=sha256,
        cluster=args.cluster,
        workers=args.workers,
    )
    print(f"survey {summary['survey_id']}: " + ", ".join(f"{s['stage']} {s['status']}" for s in summary["stages"]))
    for label, path in summary["maps"].items():
        print(f"  {label}: {path}")
    print(f"run record: {summary['run_dir']}")
    return 0
