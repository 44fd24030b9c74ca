"""Train a detector on one or more surveys, choose its threshold on held-out data, and save it.

Two model families (--model-type):

cnn (default): the convolutional detector. It reads the surveys' pixels at --gsd metres per
  pixel (default 2; a finer survey is averaged, see `damwatch detect --help`), in windows of
  --window pixels (default 48), from the bands named by --bands (default: all; a grayscale
  channel is added when red, green and blue are there). It learns from --truth FILE (a GeoJSON
  of the objects: targets chosen by --where, default class=dam; features naming a `kind` are
  look-alikes, always shown as negatives), or, without --truth, from a stored label set
  (--labels NAME, made by `damwatch labels` on a --size/--stride tile grid: each window is
  centred on a labelled tile). The east --holdout-val of the area (default 0.2) is held out:
  early stopping, the probability calibration and the decision threshold (best object F1
  there, or the lowest threshold reaching --precision P / the highest reaching --recall R) are
  chosen on it. --mining-rounds rounds of hard negatives follow the first training.

classic: a dense network over per-tile features (`damwatch features`, --spec) and tile labels
  (`damwatch labels`, --labels), on --size-pixel tiles every --stride pixels. Each survey is cut
  into training | validation | test bands of tile columns (--holdout-val, --holdout-test).

Training is data-parallel on Dask (a local cluster of --workers processes, default one per
core, or --cluster ADDRESS / $DAMWATCH_CLUSTER); --workers 1 trains in this process without
Dask. The weights depend on --seed and the settings only, never on the number of workers.
Each optimizer step averages the gradients of --batch-size examples over --shards fixed shards.

Runs the Prefect flow `train`. A run whose surveys, labels and settings are unchanged since a
model was trained from them is skipped and names that model. Prints the model id and the
validation figures; the full report goes to <store>/runs/<run_id>/train-report.json, and
--report FILE writes a copy.

  damwatch train --survey creek-2023-06-01 --survey creek-2024-06-01 --truth synth/creek-truth.geojson
  damwatch train --survey pothole-2009-08-18 --labels water --size 32 --stride 32 --gsd 5 --window 40 --bands red,green,blue
  damwatch train --model-type classic --survey creek-2024-06-01 --spec rgbn --labels dams
"""

from __future__ import annotations

import argparse

from flows.commands._common import (
    add_cluster_arguments,
    add_store_argument,
    open_store,
    prepare_flow_run,
    run_flow,
    stage_status,
)

NAME = "train"
HELP = "train a detector (cnn by default, data-parallel on Dask), choose its threshold on held-out data, save it"
ORDER = 30


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden takes layer sizes separated by commas, e.g. 64,32; got {text!r}")
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden layer sizes must be positive, got {text!r}")
    return sizes


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--survey", action="append", required=True, metavar="ID", dest="surveys",
                        help="survey id to train on (repeat for several surveys, e.g. several dates)")
    parser.add_argument("--model-type", choices=("cnn", "classic"), default="cnn",
                        help="cnn: convolutional detector over pixels (default); classic: dense net over tile features")
    source = parser.add_argument_group("what the model learns from")
    source.add_argument("--truth", metavar="FILE", default=None,
                        help="cnn: ground-truth GeoJSON of the objects (else a stored label set, --labels)")
    source.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="with --truth: choose the targets by property (repeatable; default: class=dam)")
    source.add_argument("--labels", default="default", metavar="NAME",
                        help="name of the stored label set (default: default)")
    source.add_argument("--size", type=int, default=128, metavar="N",
                        help="tile edge of the labels (and classic features), pixels (default: 128)")
    # The name train used before every command said --size; kept so old scripts still run.
    source.add_argument("--tile-size", type=int, dest="size", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    source.add_argument("--stride", type=int, default=128, metavar="N",
                        help="tile stride of the labels (and classic features), pixels (default: 128)")
    cnn = parser.add_argument_group("cnn")
    cnn.add_argument("--bands", type=_names, default=None, metavar="NAMES",
                     help="input bands by name, e.g. red,green,blue (default: all of the survey's)")
    cnn.add_argument("--gsd", type=float, default=2.0, metavar="M", help="ground resolution of the model, m/pixel (default: 2)")
    cnn.add_argument("--window", type=int, default=48, metavar="PX", help="window edge, pixels at --gsd (default: 48)")
    cnn.add_argument("--mining-rounds", type=int, default=1, metavar="N", help="rounds of hard negatives (default: 1)")
    classic = parser.add_argument_group("classic")
    classic.add_argument("--spec", default="default", metavar="NAME", help="feature spec (default: default)")
    classic.add_argument("--hidden", type=_sizes, default=(64, 32), metavar="N,N", help="hidden layer sizes (default: 64,32)")
    classic.add_argument("--class-weight", choices=("balanced", "none"), default=None,
                         help="weigh the rare class up (default: balanced for classic; cnn samples balanced batches)")
    classic.add_argument("--holdout-test", type=float, default=0.2, metavar="F",
                         help="share of tile columns held out for test metrics (default: 0.2)")
    opt = parser.add_argument_group("optimization (defaults: the family's)")
    opt.add_argument("--epochs", type=int, default=None, metavar="N", help="most epochs (cnn 30, classic 200)")
    opt.add_argument("--patience", type=int, default=None, metavar="N", help="epochs without improvement before stopping")
    opt.add_argument("--learning-rate", type=float, default=None, metavar="LR", help="Adam step (cnn 0.002, classic 0.01)")
    opt.add_argument("--optimizer", choices=("adam", "sgd"), default=None, help="default: adam")
    opt.add_argument("--batch-size", type=int, default=None, metavar="N",
                     help="examples per optimizer step over all shards (cnn 512, classic 131072)")
    opt.add_argument("--shards", type=int, default=8, metavar="N", help="fixed shards of the training set (default: 8)")
    opt.add_argument("--micro-batch", type=int, default=None, metavar="N", help="examples per gradient call in a shard")
    opt.add_argument("--target-accuracy", type=float, default=None, metavar="A",
                     help="classic: stop once the validation accuracy reaches A")
    opt.add_argument("--holdout-val", type=float, default=0.2, metavar="F",
                     help="share of the area (east) held out for validation (default: 0.2)")
    threshold = opt.add_mutually_exclusive_group()
    threshold.add_argument("--precision", type=float, default=None, metavar="P",
                           help="choose the decision threshold for this validation precision")
    threshold.add_argument("--recall", type=float, default=None, metavar="R",
                           help="choose the decision threshold for this validation recall")
    opt.add_argument("--seed", type=int, default=0, help="fixes initial weights, shards and windows (default: 0)")
    parser.add_argument("--report", metavar="FILE", default=None, help="also write the training report as JSON")
    add_store_argument(parser)
    add_cluster_arguments(parser)


def settings_from(args: argparse.Namespace):
    """The :class:`pipeline.training.TrainingSettings` the options describe."""
    from pipeline.training import TrainingSettings

    config = {k: v for k, v in {
        "optimizer": args.optimizer, "learning_rate": args.learning_rate, "batch_size": args.batch_size,
        "max_epochs": args.epochs, "patience": args.patience, "seed": args.seed,
    }.items() if v is not None}
    if args.class_weight is not None:
        config["class_weight"] = None if args.class_weight == "none" else args.class_weight
    if args.model_type == "classic":
        config.update(target=args.target_accuracy, metric="accuracy")
    d = {
        "model_type": args.model_type, "labels": args.labels, "size": args.size, "stride": args.stride,
        "n_shards": args.shards, "micro_batch": args.micro_batch, "config": config,
        "target_precision": args.precision, "target_recall": args.recall,
    }
    if args.model_type == "classic":
        d.update(spec=args.spec, hidden=list(args.hidden),
                 holdout={"test_fraction": args.holdout_test, "val_fraction": args.holdout_val})
    else:
        d.update(bands=args.bands, gsd_m=args.gsd, window=args.window, mining_rounds=args.mining_rounds,
                 windows={"val_fraction": args.holdout_val})
    return TrainingSettings.from_dict(d)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from flows.commands.labels import parse_where
    from pipeline.errors import InputError
    from pipeline.features import open_features
    from pipeline.labels import open_labels
    from pipeline.pixels import input_spec_for, reading_for
    from pipeline.truth import check_targets, read_truth

    # Everything a user can get wrong is checked before Prefect or a cluster starts.
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    if args.target_accuracy is not None and not 0 < args.target_accuracy <= 1:
        raise InputError(f"--target-accuracy must be a fraction in (0, 1], got {args.target_accuracy}")
    if args.truth and args.model_type == "classic":
        raise InputError("--truth is for --model-type cnn; a classic model trains on stored labels: make them with "
                         "`damwatch labels SURVEY --from FILE --size N --stride N` and pass --labels NAME")
    store = open_store(args)
    settings = settings_from(args)
    where = parse_where(args.where) or ({"class": "dam"} if args.truth else None)
    if args.truth:
        check_targets(read_truth(args.truth), where)
    for survey_id in args.surveys:  # the store names what is missing and the command that makes it
        survey = store.survey(survey_id)
        if settings.model_type == "classic":
            open_features(store, survey_id, settings.spec, settings.stride, settings.size)
        if settings.model_type == "classic" or not args.truth:
            open_labels(store, survey_id, settings.labels, settings.stride, settings.size)
        if settings.model_type == "cnn":
            input_spec_for(survey.bands, settings.bands, settings.gsd_m, settings.window)
            reading_for(survey, settings.gsd_m)
    if args.report and not Path(args.report).resolve().parent.is_dir():
        raise InputError(f"--report {args.report}: directory {Path(args.report).parent} does not exist; create it first")
    prepare_flow_run()
    from flows.train import train_flow

    summary = run_flow(
        train_flow,
        surveys=list(args.surveys), store=str(store.root), settings=settings.to_dict(), truth=args.truth, where=where,
        cluster=args.cluster, workers=args.workers,
        make_features=False,  # classic features come from `damwatch features`, checked above
    )
    model_id = summary["model_id"]
    report = json.loads(Path(summary["maps"]["report"]).read_text())
    if args.report:
        from pipeline.files import write_json

        write_json(args.report, report)
    history = report["history"]
    status = stage_status(summary, "train", "")
    print(f"trained {settings.model_type} model {model_id} on {', '.join(report['survey_ids'])} "
          f"({report['workers']} worker{'s' if report['workers'] != 1 else ''}, {len(history['epochs'])} epochs in the "
          f"last round, stopped: {history['stop_reason']}, best epoch {history['best_epoch']})"
          + ("" if status == "done" else f" ({status}: the model of run {_from_run(summary)})"))
    v = report["validation"]
    print(f"decision threshold {report['threshold']:.3f}, chosen on the validation band: "
          + ", ".join(f"{k} {v[k]:.3f}" if isinstance(v.get(k), (int, float)) else f"{k} n/a"
                      for k in ("precision", "recall", "f1")))
    if report["test"] is not None:
        t = report["test"]
        print(f"held-out test region ({t['n']} tiles, {t['n_positive']} positive): "
              + ", ".join(f"{k} {t[k]:.3f}" if t[k] is not None else f"{k} n/a"
                          for k in ("accuracy", "precision", "recall", "f1", "roc_auc")))
    for note in report.get("notes", []):
        print(f"note: {note}")
    print(f"saved {store.models_dir / (model_id + '.json')}")
    if args.report:
        print(f"report: {args.report}")
    print(f"run record: {summary['run_dir']}")
    return 0


def _from_run(summary: dict) -> str:
    import json
    from pathlib import Path

    provenance = json.loads((Path(summary["run_dir"]) / "provenance.json").read_text())
    return next((s.get("from_run") for s in provenance["stages"] if s["stage"] == "train"), None) or "unknown"
