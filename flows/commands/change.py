"""Compare two surveys of one area: which detections are new, gone or persisting.

Both surveys are scored with the model (stored predictions are reused) and read on one grid in
map coordinates, never by array index, because real surveys are off by metres and a row:
square cells of stride x pixel size (e.g. 64 px x 0.5 m = 32 m), aligned on the CRS, over the
intersection of the two extents. A survey's probability in a cell is the mean of its tiles
containing the cell's centre. Each cell is then classed, with hysteresis so that noise around
one threshold does not flicker (defaults --high 0.7, --low 0.3, --min-difference 0.3):

  new         after >= high, before <= low, and a rise of at least min-difference
  gone        before >= high, after <= low, and a fall of at least min-difference
  persisting  above low on both dates and >= high on at least one
  none        anything else

The surveys must be of the same area, overlap, share a CRS (or pass --reproject: the grid is
then on BEFORE's CRS) and have the bands the model needs.

Runs the Prefect flow `change`, so the run appears in Prefect's run history (on the server
PREFECT_API_URL names, else on Prefect's temporary local server); its record goes to
<store>/runs/<run_id>/. Without --out, a run whose surveys, model and settings are unchanged
since an earlier run is skipped and points to that run's maps. An --out that already holds
results is refused unless --overwrite. Written into --out (default: the run's
<store>/runs/<run_id>/change/<BEFORE>..<AFTER>), all or nothing:

  change.tif        COG of class codes (0 none, 1 new, 2 gone, 3 persisting, 255 nodata)
                    with a colour table; change.tif.aux.xml names the classes for QGIS/GDAL
  change.geojson    RFC 7946: one polygon per patch of adjacent new/gone/persisting cells,
                    with its cells, area and mean/max probability before and after
  change.png        before, after and change side by side
  provenance.json   input hashes, model id, thresholds, grids, damwatch version
  metrics.json      with --truth: precision, recall, f1 and iou for each change class

  damwatch change creek-2023-06-01 creek-2024-06-01 --model latest
  damwatch change creek-2023-06-01 creek-2024-06-01 --model 3f9a2c1d
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
    parser.add_argument("--stride", type=int, default=64, metavar="N", help="tile stride in pixels (default: 64)")
    parser.add_argument("--high", type=float, default=0.7, help="probability asserting a detection (default: 0.7)")
    parser.add_argument("--low", type=float, default=0.3, help="probability asserting absence (default: 0.3)")
    parser.add_argument("--min-difference", type=float, default=0.3, dest="min_difference",
                        help="smallest rise/fall for new/gone (default: 0.3)")
    parser.add_argument("--reproject", action="store_true",
                        help="compare surveys in different CRSs on a grid in BEFORE's CRS")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output directory (default: <store>/runs/<RUN_ID>/change/<BEFORE>..<AFTER>)")
    parser.add_argument("--truth", metavar="FILE", default=None, help="ground-truth GeoJSON: adds metrics.json")
    parser.add_argument("--overwrite", action="store_true", help="replace the results in an existing --out")
    add_store_argument(parser)
    add_cluster_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.change import ChangeThresholds, check_comparable
    from pipeline.detect import check_model_bands, resolve_model
    from pipeline.evaluate import read_truth
    from pipeline.outputs import refuse_existing_results

    store = open_store(args)
    # Everything a user can get wrong is checked before Prefect, a cluster or any work starts.
    thresholds = ChangeThresholds(args.high, args.low, args.min_difference)
    before, after = store.survey(args.before), store.survey(args.after)
    check_comparable(before, after, args.reproject)
    classifier = resolve_model(store, args.model)
    for survey in (before, after):
        check_model_bands(classifier, survey)
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
        reproject=args.reproject, out=args.out, overwrite=args.overwrite,
    )
    result = summary["change"]
    out = Path(result["files"]["change"]).parent
    counts = result["counts"]
    grid = result.get("grid")  # absent from records made before it was recorded
    cells = ""
    if grid:
        from pipeline.units import describe_size

        w, s, e, n = before.bounds
        size = describe_size(before.crs, grid["cell_size"], centre=((w + e) / 2, (s + n) / 2), where="the surveys' centre")
        cells = f" on {grid['shape'][0]} x {grid['shape'][1]} cells of {size}"
    status = stage_status(summary, "change", f"{result['model_id']}/{before.id}..{after.id}")
    print(f"change {before.id} -> {after.id}{cells}: {counts['new']} new, {counts['gone']} gone, "
          f"{counts['persisting']} persisting; maps in {out}"
          + ("" if status == "done" else f" ({status}: the maps of an earlier run)"))
    if result["metrics"] is not None:
        for name, m in result["metrics"]["classes"].items():
            print(f"  {name}: " + ", ".join(
                f"{k} {m[k]:.3f}" if m[k] is not None else f"{k} n/a" for k in ("precision", "recall", "f1", "iou")))
    print(f"run record: {summary['run_dir']}")
    return 0
