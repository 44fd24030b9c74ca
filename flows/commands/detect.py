"""Score a survey with a trained model and write detection maps.

A cnn model (the default detector) reads the survey at its own ground resolution — a finer
survey averaged over whole pixel blocks (0.5 m for a 1 m model: 2 x 2 blocks), another one
resampled by GDAL, a survey more than twice coarser refused — and scores it fully
convolutionally: one probability per output cell (8 model pixels, 16 m at 2 m) for the window
centred there. A classic model scores tiles of its size every --stride pixels. The probability
map is kept in the store under predictions/<MODEL>/<SURVEY>/<GRID>. Before scoring, the
survey's band statistics are compared with the model's training imagery: a survey unlike it
gets a warning here, in the run summary and in the provenance.

Runs the Prefect flow `detect`; its record (parameters, stages, provenance) goes to
<store>/runs/<run_id>/. Written into --out (default: the run's <store>/runs/<run_id>/detect/<SURVEY>),
all or nothing:

  probability.tif     Cloud-Optimized GeoTIFF, float32, NaN nodata, on the survey's CRS: one
                      cell per output cell, the probability of a target in the window there
  detections.geojson  RFC 7946 (WGS84 lon/lat): one point per detection (the peaks of the map
                      at or above the threshold, weaker peaks within half the model's window
                      suppressed), with probability and confidence (high >= 0.9, medium >= 0.7)
  footprints.geojson  each detection's footprint polygon (same ids)
  quicklook.png       the probabilities and detections over the imagery
  provenance.json     input hashes, model id, how the survey was read, drift check, settings
  metrics.json        with --truth: object-level precision, recall, F1, average precision, per
                      context and per look-alike (see `damwatch evaluate --help`)

--model takes a model id, a model .json file, or `latest` (the most recently trained model in
the store). --threshold is a probability (default: the model's, chosen on validation data).
An --out directory that already holds results is refused unless --overwrite. Without --out, a
run whose survey, model and settings are unchanged since an earlier run is skipped and points
to that run's maps.

  damwatch detect creek-2024-06-01 --model latest
  damwatch detect creek-2024-06-01 --model 3f9a2c1d --truth synth/creek-truth.geojson --out maps/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.commands._common import (
    add_cluster_arguments,
    add_store_argument,
    open_store,
    prepare_flow_run,
    run_flow,
    stage_status,
)

NAME = "detect"
HELP = "score a survey with a model; write probability COG, detections GeoJSON, quicklook"
ORDER = 40


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("survey", metavar="SURVEY", help="survey id in the store, e.g. creek-2024-06-01")
    parser.add_argument("--model", required=True, metavar="MODEL",
                        help="model id in the store, 'latest' (the model saved last), or a model .json/.npz path")
    parser.add_argument("--model-type", choices=("cnn", "classic"), default=None,
                        help="refuse a model of the other family (default: accept either)")
    parser.add_argument("--stride", type=int, default=None, metavar="N",
                        help="a classic model's tile stride in pixels (default: 64; a cnn has its own grid)")
    parser.add_argument("--threshold", type=float, default=None, metavar="T",
                        help="probability at which a peak of the map is reported as a detection (default: the model's threshold)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output directory (default: <store>/runs/<RUN_ID>/detect/<SURVEY>)")
    parser.add_argument("--truth", metavar="FILE", default=None,
                        help="ground-truth GeoJSON: adds metrics.json")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="with --truth: choose the targets by property (repeatable; default: class=dam)")
    parser.add_argument("--overwrite", action="store_true", help="replace the results in an existing --out")
    add_store_argument(parser)
    add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.detect import check_model_input, check_model_type, resolve_model
    from pipeline.errors import InputError
    from pipeline.outputs import refuse_existing_results
    from pipeline.truth import read_truth

    store = open_store(args)
    # Everything a user can get wrong is checked before Prefect, a cluster or any work starts.
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise InputError(f"--threshold must be a probability between 0 and 1, got {args.threshold}")
    survey = store.survey(args.survey)
    classifier = resolve_model(store, args.model)
    check_model_type(classifier, args.model_type)
    check_model_input(classifier, survey)
    if args.out:
        refuse_existing_results(args.out, args.overwrite)
    if args.truth:
        read_truth(args.truth)
    prepare_flow_run()
    from flows.detect import detect_flow

    summary = run_flow(
        detect_flow,
        surveys=[survey.id], model=str(args.model), store=str(store.root), stride=args.stride,
        threshold=args.threshold, truth=args.truth, cluster=args.cluster, workers=args.workers,
        out=args.out, overwrite=args.overwrite, where=_where(args),
    )
    result = summary["detect"][survey.id]
    out = Path(result["files"]["probability"]).parent
    status = stage_status(summary, "detect", f"{result['model_id']}/{survey.id}")
    if (result.get("drift") or {}).get("warning"):
        print(f"warning: {result['drift']['warning']}")
    print(f"scored {result['scored_cells']} cells of {survey.id} with model {result['model_id']}: "
          f"{result['n_detections']} detection(s); maps in {out}"
          + ("" if status == "done" else f" ({status}: the maps of an earlier run)"))
    if result["metrics"] is not None:
        m = result["metrics"]["object"]
        print(f"objects within {result['metrics']['radius_m']:g} m of the truth: " + ", ".join(
            f"{k} {m[k]:.3f}" if isinstance(m.get(k), (int, float)) else f"{k} n/a"
            for k in ("precision", "recall", "f1", "average_precision")))
    print(f"run record: {summary['run_dir']}")
    return 0


def _where(args: argparse.Namespace) -> dict | None:
    from flows.commands.labels import parse_where

    return parse_where(args.where) or None
