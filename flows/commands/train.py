"""Train a tile classifier on the labelled tiles of one or more surveys, evaluate it on a
held-out region, and save it in the store.

Needs the surveys' features (`damwatch features`) and labels (`damwatch labels`, stored under
--labels NAME, default "default"), on the same tile grid: --size and --stride mean what they mean
for those commands (default 128 and 128 pixels). Each survey is cut into bands of tile columns, west to east:
training | validation | test. The test band (the eastmost --holdout-test of the columns,
default 0.2) is never trained on and gives the reported held-out metrics; the validation band
(--holdout-val, default 0.2) drives early stopping and the decision threshold (best F1 there,
or the lowest threshold reaching --precision P / the highest reaching --recall R).

Training is data-parallel on Dask (a local cluster of --workers processes, default one per
core, or --cluster ADDRESS / $DAMWATCH_CLUSTER); --workers 1 trains in this process without
Dask. The weights depend on --seed and the settings only, never on the number of workers.
Each optimizer step averages the gradients of --batch-size tiles (default 131072, i.e. the
whole training set when it is smaller), spread over --shards fixed shards (default 8); these
defaults keep Dask's exchange at about a tenth of a step (benchmarks/README.md). Training
stops when the validation accuracy reaches --target-accuracy, after --patience epochs without
improvement (keeping the best epoch), or after --epochs epochs (default 200).

Runs the Prefect flow `train`, so the run appears in Prefect's run history (on the server
PREFECT_API_URL names, else on Prefect's temporary local server). A run whose surveys, labels and
settings are unchanged since a model was trained from them is skipped and names that model.
Prints the model id and the held-out metrics; the full report (history per epoch, metrics, tile
counts, region columns) goes to <store>/runs/<run_id>/train-report.json, and --report FILE
writes a copy.

  damwatch train --survey creek-2024-06-01
  damwatch train --survey creek-2023-06-01 --survey creek-2024-06-01 --labels dams \\
      --workers 2 --target-accuracy 0.95 --report train.json
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
HELP = "train a tile classifier (data-parallel on Dask), evaluate it on a held-out region, save it"
ORDER = 30


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden takes layer sizes separated by commas, e.g. 64,32; got {text!r}")
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden layer sizes must be positive, got {text!r}")
    return sizes


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--survey", action="append", required=True, metavar="ID", dest="surveys",
                        help="survey id to train on (repeat for several surveys)")
    parser.add_argument("--labels", default="default", metavar="NAME",
                        help="name of the stored labels to train on (default: default)")
    parser.add_argument("--spec", default="default", metavar="NAME", help="feature spec (default: default)")
    parser.add_argument("--size", type=int, default=128, metavar="N",
                        help="tile edge of the stored features and labels, pixels (default: 128)")
    # The name train used before every command said --size; kept so old scripts still run.
    parser.add_argument("--tile-size", type=int, dest="size", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--stride", type=int, default=128, metavar="N",
                        help="tile stride of the stored features and labels, pixels (default: 128)")
    parser.add_argument("--epochs", type=int, default=200, metavar="N", help="most epochs (default: 200)")
    parser.add_argument("--target-accuracy", type=float, default=None, metavar="A",
                        help="stop once the validation accuracy reaches A (a fraction, e.g. 0.95)")
    parser.add_argument("--patience", type=int, default=20, metavar="N",
                        help="stop after N epochs without a better validation accuracy (default: 20)")
    parser.add_argument("--learning-rate", type=float, default=0.01, metavar="LR",
                        help="Adam step size (default: 0.01, suited to the large default batches)")
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="default: adam")
    parser.add_argument("--hidden", type=_hidden, default=(64, 32), metavar="N,N",
                        help="hidden layer sizes (default: 64,32)")
    parser.add_argument("--class-weight", choices=("balanced", "none"), default="balanced",
                        help="weigh the rare class up so both count equally (default: balanced)")
    parser.add_argument("--batch-size", type=int, default=131072, metavar="N",
                        help="tiles per optimizer step over all shards (default: 131072)")
    parser.add_argument("--shards", type=int, default=8, metavar="N",
                        help="fixed shards of the training set (default: 8; use a multiple of the workers)")
    parser.add_argument("--micro-batch", type=int, default=512, metavar="N",
                        help="tiles per gradient computation inside a shard (default: 512)")
    parser.add_argument("--holdout-test", type=float, default=0.2, metavar="F",
                        help="share of tile columns held out for the test metrics (default: 0.2)")
    parser.add_argument("--holdout-val", type=float, default=0.2, metavar="F",
                        help="share of tile columns for validation (default: 0.2)")
    threshold = parser.add_mutually_exclusive_group()
    threshold.add_argument("--precision", type=float, default=None, metavar="P",
                           help="choose the decision threshold for this validation precision")
    threshold.add_argument("--recall", type=float, default=None, metavar="R",
                           help="choose the decision threshold for this validation recall")
    parser.add_argument("--seed", type=int, default=0, help="fixes initial weights and shards (default: 0)")
    parser.add_argument("--report", metavar="FILE", default=None, help="also write the training report as JSON")
    add_store_argument(parser)
    add_cluster_arguments(parser)


def settings_from(args: argparse.Namespace):
    """The :class:`pipeline.training.TrainingSettings` the options describe."""
    from pipeline.training import TrainingSettings

    return TrainingSettings.from_dict({
        "spec": args.spec,
        "labels": args.labels,
        "size": args.size,
        "stride": args.stride,
        "hidden": list(args.hidden),
        "holdout": {"test_fraction": args.holdout_test, "val_fraction": args.holdout_val},
        "config": {
            "optimizer": args.optimizer,
            "learning_rate": args.learning_rate,
            "batch_size": args.batch_size,
            "max_epochs": args.epochs,
            "patience": args.patience,
            "target": args.target_accuracy,
            "metric": "accuracy",
            "class_weight": None if args.class_weight == "none" else args.class_weight,
            "seed": args.seed,
        },
        "n_shards": args.shards,
        "micro_batch": args.micro_batch,
        "target_precision": args.precision,
        "target_recall": args.recall,
    })


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from pipeline.errors import InputError
    from pipeline.features import open_features
    from pipeline.labels import open_labels

    # Everything a user can get wrong is checked before Prefect or a cluster starts.
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    if args.target_accuracy is not None and not 0 < args.target_accuracy <= 1:
        raise InputError(f"--target-accuracy must be a fraction in (0, 1], got {args.target_accuracy}")
    store = open_store(args)
    settings = settings_from(args)
    for survey_id in args.surveys:  # the store names what is missing and the command that makes it
        store.survey(survey_id)
        open_features(store, survey_id, settings.spec, settings.stride, settings.size)
        open_labels(store, survey_id, settings.labels, settings.stride, settings.size)
    if args.report and not Path(args.report).resolve().parent.is_dir():
        raise InputError(f"--report {args.report}: directory {Path(args.report).parent} does not exist; create it first")
    prepare_flow_run()
    from flows.train import train_flow

    summary = run_flow(
        train_flow,
        surveys=list(args.surveys), store=str(store.root), settings=settings.to_dict(),
        cluster=args.cluster, workers=args.workers,
        make_features=False,  # features come from `damwatch features`, checked above
    )
    model_id = summary["model_id"]
    report_file = Path(summary["maps"]["report"])
    report = json.loads(report_file.read_text())
    if args.report:
        from pipeline.files import write_json

        write_json(args.report, report)
    counts = report["counts"]
    history = report["history"]
    best = history["epochs"][history["best_epoch"]] if history["best_epoch"] is not None else {}
    val_accuracy = best.get("val_accuracy")
    status = stage_status(summary, "train", "")
    print(f"trained model {model_id} on {counts['train']['tiles']} tiles of {', '.join(report['survey_ids'])} "
          f"({report['workers']} worker{'s' if report['workers'] != 1 else ''}, {len(history['epochs'])} epochs, "
          f"stopped: {history['stop_reason']}, best epoch {history['best_epoch']}, validation accuracy "
          + (f"{val_accuracy:.3f}" if val_accuracy is not None else "n/a") + ")"
          + ("" if status == "done" else f" ({status}: the model of run {_from_run(summary)})"))
    print(f"decision threshold {report['threshold']:.3f} (chosen on {counts['validation']['tiles']} validation tiles)")
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
