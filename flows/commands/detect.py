"""Score every tile of a survey with a trained model and write detection maps.

Features are computed with the model's own feature spec and tile size (reused when the store
already has them), standardized with the model's training statistics, and scored on a Dask
cluster; the tile probabilities are kept in the store under predictions/<MODEL>/<SURVEY>.

Runs the Prefect flow `detect`, so the run appears in Prefect's run history (on the server
PREFECT_API_URL names, else on Prefect's temporary local server); its record (parameters,
stages, provenance) goes to <store>/runs/<run_id>/. Written into --out (default: the run's
<store>/runs/<run_id>/detect/<SURVEY>), all or nothing:

  probability.tif     Cloud-Optimized GeoTIFF, float32, NaN nodata, on the survey's CRS; one
                      pixel per stride x stride cell = the mean probability of the tiles
                      containing the cell's centre (overlapping tiles blend smoothly)
  detections.geojson  RFC 7946 (WGS84 lon/lat): touching tiles with probability >= threshold
                      merged into one detection, with peak/mean probability, tile count and
                      confidence (high: peak >= 0.9, medium: >= 0.7, else low)
  quicklook.png       the probabilities and detections over the imagery
  provenance.json     input hashes, model id, settings, damwatch version, tile grid
  metrics.json        with --truth: tile-level precision, recall, f1, roc_auc,
                      average_precision, overall and per truth `context`

--stride is in pixels (default 64, half the 128-px tile); --threshold a probability
(default: the model's decision threshold). An --out directory that already holds results is
refused unless --overwrite. Without --out, a run whose survey, model and settings are unchanged
since an earlier run is skipped and points to that run's maps.

  damwatch detect creek-2024-06-01 --model latest
  damwatch detect creek-2024-06-01 --model 3f9a2c1d
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
HELP = "score a survey's tiles with a model; write probability COG, detections GeoJSON, quicklook"
ORDER = 40


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("survey", metavar="SURVEY", help="survey id in the store, e.g. creek-2024-06-01")
    parser.add_argument("--model", required=True, metavar="MODEL",
                        help="model id in the store, 'latest' (the model saved last), or a model .json/.npz path")
    parser.add_argument("--stride", type=int, default=64, metavar="N", help="tile stride in pixels (default: 64)")
    parser.add_argument("--threshold", type=float, default=None, metavar="T",
                        help="probability at which a tile is flagged (default: the model's threshold)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output directory (default: <store>/runs/<RUN_ID>/detect/<SURVEY>)")
    parser.add_argument("--truth", metavar="FILE", default=None,
                        help="ground-truth GeoJSON: adds metrics.json")
    parser.add_argument("--overwrite", action="store_true", help="replace the results in an existing --out")
    add_store_argument(parser)
    add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.detect import check_model_bands, resolve_model
    from pipeline.errors import InputError
    from pipeline.evaluate import read_truth
    from pipeline.outputs import refuse_existing_results

    store = open_store(args)
    # Everything a user can get wrong is checked before Prefect, a cluster or any work starts.
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise InputError(f"--threshold must be a probability between 0 and 1, got {args.threshold}")
    survey = store.survey(args.survey)
    classifier = resolve_model(store, args.model)
    check_model_bands(classifier, survey)
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
        out=args.out, overwrite=args.overwrite,
    )
    result = summary["detect"][survey.id]
    out = Path(result["files"]["probability"]).parent
    status = stage_status(summary, "detect", f"{result['model_id']}/{survey.id}")
    print(f"scored {result['scored_tiles']} tiles of {survey.id} with model {result['model_id']}: "
          f"{result['n_detections']} detection(s); maps in {out}"
          + ("" if status == "done" else f" ({status}: the maps of an earlier run)"))
    if result["metrics"] is not None:
        m = result["metrics"]["overall"]
        print("tile metrics: " + ", ".join(
            f"{k} {m[k]:.3f}" if m[k] is not None else f"{k} n/a"
            for k in ("precision", "recall", "f1", "roc_auc", "average_precision")))
    print(f"run record: {summary['run_dir']}")
    return 0
