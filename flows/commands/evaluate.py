"""Score detections against a ground truth, object by object, the way a scientist counts.

What is scored (--detections PATH):
  a detect output folder     its probability map: every peak is a candidate detection, those at
                             or above the folder's threshold are reported (curve over all
                             thresholds); truth objects standing on the survey's date
  a change output folder     its change objects (new / gone / persisting) against the truth's
                             change class of each dam between the two dates
  a run folder               every detect/<survey>/ and change/<pair>/ folder in it
  a detections GeoJSON       its features (points, or polygons with peak_lon/peak_lat), each
                             with a `probability` (or `peak_probability`); needs --radius

Detections and truth objects are matched one to one within --radius metres (default: half the
model's tile or window footprint), strongest detection first. metrics.json (--out) holds, per
survey: precision, recall, F1 at the threshold and average precision over all thresholds
(object level); recall per truth `context` with 95 % intervals (null where a context has no
object); per look-alike `kind`, how many drew a detection and the false positives per km²;
calibration (reliability table, ECE, Brier); and per change class precision, recall, F1 with
the confusion table. A precision-recall plot is written beside it (<out stem>-pr.png).

Targets are chosen with --where KEY=VALUE (repeatable; default: features with class "dam");
the other features that name a `kind` are look-alikes. --date D scores against the objects
standing on D instead of the survey's date.

Stored predictions against stored tile labels (e.g. `damwatch labels SURVEY --expr "ndwi > 0"`
on another date) are scored at tile level, matched in map coordinates, so a prediction grid at
one stride is scored against labels at another:

  damwatch evaluate --detections damwatch-demo/runs/<run> --truth damwatch-demo/synth/creek-truth.geojson --out m.json
  damwatch evaluate --detections detections.geojson --truth truth.geojson --radius 60 --date 2024-06-01 --out m.json
  damwatch evaluate --survey pothole-2015-09-26 --model latest --labels water --size 32 --stride 32 --out m.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.commands._common import add_store_argument, open_store
from flows.commands.labels import parse_where

NAME = "evaluate"
HELP = "score detections or change against a ground truth, object by object (or predictions against labels)"
ORDER = 45


def configure(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--detections", metavar="PATH",
                        help="a detections GeoJSON, a detect or change output folder, or a run folder")
    source.add_argument("--survey", metavar="ID", help="score this survey's stored predictions against stored labels")
    parser.add_argument("--truth", metavar="FILE", help="ground-truth GeoJSON (with --detections)")
    parser.add_argument("--radius", type=float, default=None, metavar="M",
                        help="matching distance in metres (default: half the model's footprint)")
    parser.add_argument("--date", default=None, metavar="YYYY-MM-DD",
                        help="score against the truth objects standing on this date (default: the survey's)")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="choose the targets by property (repeatable; default: class=dam)")
    parser.add_argument("--model", default=None, help="with --survey: the model whose predictions to score (id or 'latest')")
    parser.add_argument("--labels", default=None, metavar="NAME", help="with --survey: the stored label set")
    parser.add_argument("--grid", default=None, metavar="KEY",
                        help="with --survey: which stored probability map, when the model has several for the survey "
                        "(e.g. size128_stride64; the error lists them)")
    parser.add_argument("--size", type=int, default=128, metavar="PX", help="with --survey: tile edge of the labels (default: 128)")
    parser.add_argument("--stride", type=int, default=128, metavar="PX", help="with --survey: tile stride of the labels (default: 128)")
    parser.add_argument("--threshold", type=float, default=None, metavar="T",
                        help="with --survey: decision threshold (default: the model's)")
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write metrics.json (a PR plot goes beside it)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_store_argument(parser)


def _check_out(out: Path, overwrite: bool) -> Path:
    from pipeline.errors import InputError

    if out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file name such as {out / 'metrics.json'}")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: directory {out.parent} does not exist; create it first (mkdir -p {out.parent})")
    if out.exists() and not overwrite:
        raise InputError(f"--out {out} already exists; pass --overwrite to replace it, or give another --out")
    return out


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import InputError
    from pipeline.files import parse_date, write_json
    from pipeline.render import plot_precision_recall

    out = _check_out(Path(args.out), args.overwrite)
    where = parse_where(args.where) or None
    date = parse_date(args.date, "--date") if args.date else None
    if args.survey:
        report = _score_labels(args)
        curves = []
    else:
        if not args.truth:
            raise InputError("--detections needs --truth FILE: the ground-truth GeoJSON to score against")
        from pipeline.evaluate import evaluate_path
        from pipeline.truth import read_truth

        truth = read_truth(args.truth)
        report = {"truth": str(args.truth), "where": where, **evaluate_path(args.detections, truth, args.radius, date, where)}
        curves = [
            {"label": name, "recall": r["object"]["curve"]["recall"], "precision": r["object"]["curve"]["precision"],
             "at": (r["object"]["recall"], r["object"]["precision"]), "threshold": r["object"]["threshold"]}
            for name, r in report["detection"].items() if r["object"].get("scorable")
        ]
    if curves:
        plot_precision_recall(out.with_name(out.stem + "-pr.png"), curves,
                              f"object level, matched within {report['radius_m']:g} m")
    write_json(out, report)  # last, whole: a failed evaluation leaves no metrics file
    _print_summary(report, out)
    return 0


def _score_labels(args: argparse.Namespace) -> dict:
    from pipeline.detect import open_probability_map, resolve_model
    from pipeline.errors import InputError
    from pipeline.evaluate import score_on_labels
    from pipeline.labels import open_labels
    from pipeline.results import check_probability

    if not args.model or not args.labels:
        raise InputError("--survey needs --model ID (or latest) and --labels NAME: the predictions and the labels to score")
    store = open_store(args)
    survey = store.survey(args.survey)
    model_id = resolve_model(store, args.model).model_id
    labels = open_labels(store, survey.id, args.labels, args.stride, args.size)
    prediction = open_probability_map(store, model_id, survey.id, args.grid)
    threshold = check_probability(prediction.threshold if args.threshold is None else args.threshold)
    report = score_on_labels(prediction.values, prediction.transform, prediction.crs, labels, threshold)
    return {"survey": survey.id, "model_id": model_id, "grid": prediction.grid, **report}


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "n/a"


def _print_summary(report: dict, out: Path) -> None:
    if "tile" in report:
        t = report["tile"]
        print(f"{report['survey']} vs labels {report['labels']['name']!r}: " + ", ".join(
            f"{k} {_fmt(t[k])}" for k in ("precision", "recall", "f1", "roc_auc", "average_precision")))
    for name, r in report.get("detection", {}).items():
        o = r["object"]
        print(f"{name}: {o['n_detections']} detections vs {o['n_truth']} truth objects within {r['radius_m']:g} m: "
              + ", ".join(f"{k} {_fmt(o[k])}" for k in ("precision", "recall", "f1", "average_precision")))
    for name, r in report.get("change", {}).items():
        print(f"change {name}: " + ", ".join(f"{c} F1 {_fmt(r[c]['f1'])}" for c in ("new", "gone", "persisting")))
    for r in [report, *report.get("detection", {}).values()]:
        if r.get("warning"):
            print(f"warning: {r['warning']}", file=sys.stderr)
    print(f"metrics: {out}")
