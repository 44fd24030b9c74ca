"""Score every tile of a survey with a trained model and write detection maps.

Features are computed with the model's own feature spec and tile size (reused when the store
already has them), standardized with the model's training statistics, and scored on a Dask
cluster; the tile probabilities are kept in the store under predictions/<MODEL>/<SURVEY>.
Written into --out (default: <store>/runs/detect-<SURVEY>-<MODEL>), all or nothing:

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
refused unless --overwrite.

  damwatch detect creek-2024-06-01 --model 3f9a2c1d
  damwatch detect creek-2024-06-01 --model 3f9a2c1d --truth synth/creek-truth.geojson --out maps/
"""

from __future__ import annotations

import argparse

from flows.commands._common import add_cluster_arguments, add_store_argument, open_store

NAME = "detect"
HELP = "score a survey's tiles with a model; write probability COG, detections GeoJSON, quicklook"
ORDER = 40


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("survey", metavar="SURVEY", help="survey id in the store, e.g. creek-2024-06-01")
    parser.add_argument("--model", required=True, help="model id in the store (or a model .json/.npz path)")
    parser.add_argument("--stride", type=int, default=64, metavar="N", help="tile stride in pixels (default: 64)")
    parser.add_argument("--threshold", type=float, default=None, metavar="T",
                        help="probability at which a tile is flagged (default: the model's threshold)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output directory (default: <store>/runs/detect-<SURVEY>-<MODEL>)")
    parser.add_argument("--truth", metavar="FILE", default=None,
                        help="ground-truth GeoJSON: adds metrics.json")
    parser.add_argument("--overwrite", action="store_true", help="replace the results in an existing --out")
    add_store_argument(parser)
    add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.cluster import dask_client
    from pipeline.detect import check_model_bands, detect_survey, resolve_model
    from pipeline.errors import InputError
    from pipeline.maps import read_truth, refuse_existing_results, write_detection_maps

    store = open_store(args)
    # Everything a user can get wrong is checked before any work is done.
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise InputError(f"--threshold must be a probability between 0 and 1, got {args.threshold}")
    survey = store.survey(args.survey)
    classifier = resolve_model(store, args.model)
    check_model_bands(classifier, survey)
    out = Path(args.out) if args.out else store.runs_dir / f"detect-{survey.id}-{classifier.model_id}"
    refuse_existing_results(out, args.overwrite)
    if args.truth:
        read_truth(args.truth)
    with dask_client(args.cluster, n_workers=args.workers) as client:
        predictions = detect_survey(store, survey.id, classifier, stride=args.stride, client=client)
        written = write_detection_maps(
            store, predictions, out, threshold=args.threshold, truth=args.truth,
            overwrite=args.overwrite, client=client,
        )
    scored = int((predictions.probabilities == predictions.probabilities).sum())
    print(f"scored {scored} tiles of {survey.id} with model {predictions.model_id}: "
          f"{written['n_detections']} detection(s); maps in {out}")
    if written["metrics"] is not None:
        m = written["metrics"]["overall"]
        print("tile metrics: " + ", ".join(
            f"{k} {m[k]:.3f}" if m[k] is not None else f"{k} n/a"
            for k in ("precision", "recall", "f1", "roc_auc", "average_precision")))
    return 0
