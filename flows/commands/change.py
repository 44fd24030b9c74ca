"""Compare two surveys of one area: which detected objects are new, gone or persisting.

Both surveys are scored with the model (stored probability maps are reused), and change is
decided on objects in map coordinates, never by array index, because real surveys are off by
metres and a row. The objects are the detections of either date (peaks at or above --high),
one per place (within half the model's window); each object's probability on each date is the
largest of that date's map within a cell and a half of it (so misregistration between flights
does not matter). Each object is then classed with hysteresis, so that noise around one
threshold does not flicker (defaults relative to the model's decision threshold t: --high t,
--low t/2, --min-difference t/2):

  new         after >= high, before <= low, and a rise of at least min-difference
  gone        before >= high, after <= low, and a fall of at least min-difference
  persisting  above low on both dates and >= high on at least one
  uncertain   anything else (seen, but not sure enough on one date)

The surveys must be of the same area, overlap, share a CRS (or pass --reproject: BEFORE's CRS
is used) and have the bands the model needs. A BEFORE later than AFTER is compared with a
warning saying which is which.

Runs the Prefect flow `change`; its record goes to <store>/runs/<run_id>/. Without --out, a run
whose surveys, model and settings are unchanged since an earlier run is skipped and points to
that run's maps. An --out that already holds results is refused unless --overwrite. Written
into --out (default: the run's <store>/runs/<run_id>/change/<BEFORE>..<AFTER>), all or nothing:

  change.tif        COG of class codes (0 none, 1 new, 2 gone, 3 persisting, 4 uncertain,
                    255 nodata) drawn from the objects, with a colour table;
                    change.tif.aux.xml names the classes for QGIS/GDAL
  change.geojson    RFC 7946: one point per object with its class and both probabilities
  change.png        before, after and change side by side
  provenance.json   input hashes, model id, thresholds, damwatch version
  metrics.json      with --truth: per class precision, recall, F1 and a confusion table

  damwatch change creek-2023-06-01 creek-2024-06-01 --model latest
  damwatch change creek-2023-06-01 creek-2024-06-01 --model 3f9a2c1d --truth synth/creek-truth.geojson
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

NAME = "change"
HELP = "compare two dates of one area: new, gone and persisting detections"
ORDER = 41


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("before", metavar="BEFORE", help="survey id of the earlier date")
    parser.add_argument("after", metavar="AFTER", help="survey id of the later date")
    parser.add_argument("--model", required=True, metavar="MODEL",
                        help="model id in the store, 'latest' (the model saved last), or a model .json/.npz path")
    parser.add_argument("--stride", type=int, default=None, metavar="N",
                        help="a classic model's tile stride in pixels (default: 64; a cnn has its own grid)")
    parser.add_argument("--high", type=float, default=None, help="probability asserting a detection (default: the model's threshold t)")
    parser.add_argument("--low", type=float, default=None, help="probability asserting absence (default: t/2)")
    parser.add_argument("--min-difference", type=float, default=None, dest="min_difference",
                        help="smallest rise/fall for new/gone (default: t/2)")
    parser.add_argument("--reproject", action="store_true",
                        help="compare surveys in different CRSs on a grid in BEFORE's CRS")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output directory (default: <store>/runs/<RUN_ID>/change/<BEFORE>..<AFTER>)")
    parser.add_argument("--truth", metavar="FILE", default=None, help="ground-truth GeoJSON: adds metrics.json")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="with --truth: choose the targets by property (repeatable; default: class=dam)")
    parser.add_argument("--overwrite", action="store_true", help="replace the results in an existing --out")
    add_store_argument(parser)
    add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import sys

    from pipeline.change import ChangeThresholds, check_comparable, date_order_note
    from pipeline.detect import check_model_input, resolve_model
    from pipeline.outputs import refuse_existing_results
    from pipeline.truth import read_truth

    store = open_store(args)
    # Everything a user can get wrong is checked before Prefect, a cluster or any work starts.
    before, after = store.survey(args.before), store.survey(args.after)
    check_comparable(before, after, args.reproject)
    if note := date_order_note(before, after):
        print(f"damwatch change: warning: {note}", file=sys.stderr)
    classifier = resolve_model(store, args.model)
    for survey in (before, after):
        check_model_input(classifier, survey)
    relative = ChangeThresholds.for_model(classifier.threshold)
    thresholds = ChangeThresholds(args.high if args.high is not None else relative.high,
                                  args.low if args.low is not None else relative.low,
                                  args.min_difference if args.min_difference is not None else relative.min_difference)
    if args.out:
        refuse_existing_results(args.out, args.overwrite)
    if args.truth:
        read_truth(args.truth)
    prepare_flow_run()
    from flows.change import change_flow

    summary = run_flow(
        change_flow,
        before=before.id, after=after.id, model=str(args.model), store=str(store.root), stride=args.stride,
        truth=args.truth, thresholds=thresholds.to_dict(), cluster=args.cluster, workers=args.workers,
        reproject=args.reproject, out=args.out, overwrite=args.overwrite, where=_where(args),
    )
    result = summary["change"]
    out = Path(result["files"]["change"]).parent
    counts = result["counts"]
    status = stage_status(summary, "change", f"{result['model_id']}/{before.id}..{after.id}")
    print(f"change {before.id} -> {after.id}: {counts['new']} new, {counts['gone']} gone, "
          f"{counts['persisting']} persisting, {counts.get('uncertain', 0)} uncertain objects; maps in {out}"
          + ("" if status == "done" else f" ({status}: the maps of an earlier run)"))
    if result["metrics"] is not None:
        for name in ("new", "gone", "persisting"):
            m = result["metrics"][name]
            print(f"  {name}: " + ", ".join(
                f"{k} {m[k]:.3f}" if m.get(k) is not None else f"{k} n/a" for k in ("precision", "recall", "f1"))
                + f" ({m['n_truth']} in the truth)")
    print(f"run record: {summary['run_dir']}")
    return 0


def _where(args: argparse.Namespace) -> dict | None:
    from flows.commands.labels import parse_where

    return parse_where(args.where) or None
