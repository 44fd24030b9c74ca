"""The ``demo`` flow: the whole of damwatch on a built-in synthetic area, with a score against the truth.

    synth (two dates + truth) ─▶ ingest ×2 ─▶ features ─▶ labels (date 1 truth) ─▶ train (Dask)
        ─▶ detect ×2 (maps, metrics) ─▶ change (maps, metrics) ─▶ summary.json

The synthetic area (:mod:`pipeline.synthetic`) is ``size`` × ``size`` pixels of 1 m with tens of
beaver dams at the default size (6144: ~90 dams, ~75 hard negatives), some built, some breached
between the two dates. The network is trained on the first date's dams, each training tile also
seen under its 8 mirror and rotation symmetries (:mod:`pipeline.training`), data-parallel on a
Dask LocalCluster of ``workers`` processes, holding out the eastern band of the area (the *test
region*, 20 % of the tile columns) which training never sees. Detection metrics are reported on
that held-out region on both dates — the second date is also unseen imagery (another season,
sun, misregistration) — and, for reference, over the whole area (``metrics.json`` beside each
map, which includes the training region and so flatters the model). Change between the dates
is classified with hysteresis thresholds relative to the model's decision threshold
(:func:`change_thresholds`).

Everything lands under ``out`` (a damwatch store): ``synth/`` (GeoTIFFs, truth, quicklooks),
``store.zarr``, ``models/``, and ``runs/<run_id>/`` with ``detect/<survey>/`` and
``change/<before>..<after>/`` (COG, GeoJSON, PNG, metrics) and ``summary.json``: ``detection``
(held-out metrics per date), ``change`` (change metrics), ``train`` (epochs, final validation
metrics, seconds) and ``seconds`` per stage. Re-running with the same settings skips every
stage whose inputs are unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger

from flows.headlines import change_headline, detection_headline, train_headline, train_summary
from flows.runs import RunRecord, top_detections
from flows.session import cluster_session
from flows.tasks import change_task, detect_task, features_task, ingest_task, labels_task, synth_task, train_task
from pipeline.detect import open_predictions
from pipeline.evaluate import detection_metrics
from pipeline.files import write_json
from pipeline.store import Store
from pipeline.tiling import DETECTION_STRIDE, TileGrid
from pipeline.training import TrainingSettings
from pipeline.truth import read_truth

__all__ = [
    "demo_flow",
    "DEFAULT_SIZE",
    "DEFAULT_TRAINING",
    "change_thresholds",
    "heldout_bounds",
    "heldout_metrics",
]

#: px of 1 m: ~90 dams, ~2 min on 2 cores. At 4096 (~40 dams) the training band holds ~20 dams
#: and the test band ~8: too few to learn from, and held-out figures that swing with each dam.
DEFAULT_SIZE = 6144
#: The demo's training settings (:class:`pipeline.training.TrainingSettings`), chosen on the
#: validation band at 6144 px, seed 7 (never the test band).
DEFAULT_TRAINING: dict[str, Any] = {
    # The synthetic surveys have a near-infrared band: the spec with NDVI/NDWI sees water, which
    # the visible-only "default" spec does not (held-out ROC AUC ~0.9 against ~0.7 at 4096 px).
    "spec": "rgbn",
    # Overlapping tiles give each dam several training tiles. 32 (four times the tiles, 2.5 ×
    # the training time) scored no better on the validation band at 6144 px.
    "stride": 64,
    "hidden": [64, 32],
    # Dams are rare, so early stopping watches validation average precision (accuracy would
    # reward never detecting), and classes are not reweighted, which keeps probabilities near
    # calibrated for the change thresholds; the decision threshold is then chosen for the best
    # validation F1. With the 8 tile symmetries the full-batch steps keep improving past 100
    # epochs (best epoch ~100-130), and weight decay 3e-3 beat 1e-4 / 1e-3 / 1e-2 (validation AP
    # 0.44 against 0.39 / 0.41 / 0.40).
    "config": {
        "optimizer": "adam",
        "learning_rate": 3e-3,
        "l2": 3e-3,
        "max_epochs": 300,
        "patience": 40,
        "metric": "average_precision",
        "class_weight": None,
        "seed": 0,
    },
}


def training_settings(overrides: dict[str, Any] | None = None) -> TrainingSettings:
    """:data:`DEFAULT_TRAINING` with ``overrides`` (top-level keys replace; ``config`` merges)."""
    overrides = dict(overrides or {})
    config = {**DEFAULT_TRAINING["config"], **overrides.pop("config", {})}
    return TrainingSettings.from_dict({**DEFAULT_TRAINING, **overrides, "config": config})


def change_thresholds(model_threshold: float) -> dict[str, float]:
    """Change hysteresis relative to the model's decision threshold ``t``: high t, low t/2, rise t/2.

    pipeline.change's absolute defaults (0.7 / 0.3) suit a model whose threshold is near 0.5;
    a model of a rare class, trained without reweighting, puts its threshold far lower (~0.1
    in the demo), and would then see almost no change at all.
    """
    t = float(model_threshold)
    return {"high": t, "low": t / 2, "min_difference": t / 2}


def heldout_bounds(store: Store, survey_id: str, columns: dict[str, list[int]], size: int, stride: int) -> tuple[float, float]:
    """West and east edges (map units) of the test band ``columns["test"]`` of the training grid."""
    grid = TileGrid.for_survey(store.survey(survey_id), size=size, stride=stride)
    c0, c1 = columns["test"]
    bounds = grid.bounds_array()  # (n_rows, n_cols, 4): left, bottom, right, top
    return float(bounds[0, c0, 0]), float(bounds[0, c1 - 1, 2])


def heldout_metrics(store: Store, model_id: str, survey_id: str, truth: str, west_east: tuple[float, float]) -> dict:
    """Detection metrics of ``survey_id`` on the tiles lying wholly inside the held-out band.

    The band is given in map coordinates, so it is the same ground on both dates even though
    their pixel grids differ. Tiles outside it count as unscored (left out).
    """
    predictions = open_predictions(store, model_id, survey_id)
    bounds = predictions.grid.bounds_array()
    west, east = west_east
    inside = (bounds[..., 0] >= west - 1e-6) & (bounds[..., 2] <= east + 1e-6)
    masked = np.where(inside, predictions.probabilities, np.nan)
    report = detection_metrics(masked, predictions.grid, read_truth(truth), predictions.threshold, store.survey(survey_id).date)
    report["region"] = {"west": west, "east": east, "units": "map units of the survey CRS", "tiles": int(inside.sum())}
    return report


@flow(name="demo")
def demo_flow(
    out: str = "damwatch-demo",
    size: int = DEFAULT_SIZE,
    seed: int = 7,
    workers: int | None = None,
    area: str = "creek",
    dates: list[str] | None = None,
    training: dict[str, Any] | None = None,
    cluster: str | None = None,
) -> dict:
    """Run damwatch end to end on a synthetic ``size``-px area; outputs and the score land in ``out``.

    ``workers``: Dask LocalCluster processes (default: one per core); ``training``: overrides of
    :data:`DEFAULT_TRAINING` (top-level keys replace, ``config`` keys merge). Detection always
    uses the detection stride of :mod:`pipeline.tiling`.
    """
    params = dict(locals())
    logger = get_run_logger()
    dates = list(dates or ["2023-06-01", "2024-06-01"])
    st = Store(out)
    st.ensure()
    run = RunRecord(st, "demo", params)
    root = str(st.root)
    settings = training_settings(training)
    with run.failing(), cluster_session(cluster, workers):
        synth = run.add(synth_task(str(Path(out) / "synth"), root, area, dates, size=size, seed=seed, workers=workers, run_id=run.run_id))
        truth = synth["outputs"]["truth"]
        survey_ids = []
        for date, path in synth["outputs"]["surveys"].items():
            survey_ids.append(run.add(ingest_task(root, path, area, date, run_id=run.run_id))["outputs"]["survey_id"])
        first, last = survey_ids[0], survey_ids[-1]
        run.add(features_task(root, first, spec=settings.spec, stride=settings.stride, size=settings.size, run_id=run.run_id))
        labels = run.add(labels_task(root, first, truth, where={"class": "dam"}, stride=settings.stride,
                                     size=settings.size, run_id=run.run_id, name=settings.labels))
        logger.info(
            "labels of %s from the truth: %d dam tiles, %d without", first, labels["outputs"]["positive"], labels["outputs"]["negative"]
        )
        trained = run.add(train_task(root, [first], settings=settings.to_dict(), run_id=run.run_id))
        model_id = trained["outputs"]["model_id"]
        detections = []
        for sid in survey_ids:
            detections.append(
                run.add(
                    detect_task(root, sid, model_id, str(run.dir / "detect" / sid), stride=DETECTION_STRIDE,
                                truth=truth, run_id=run.run_id)
                )
            )
        change = run.add(
            change_task(root, first, last, model_id, str(run.dir / "change" / f"{first}..{last}"),
                        stride=DETECTION_STRIDE, truth=truth,
                        thresholds=change_thresholds(trained["outputs"]["report"]["threshold"]), run_id=run.run_id)
        )

        report = trained["outputs"]["report"]
        band = heldout_bounds(st, first, report["columns"][first], settings.size, settings.stride)
        detection = {}
        for sid, det in zip(survey_ids, detections):
            metrics = heldout_metrics(st, model_id, sid, truth, band)
            write_json(run.dir / f"heldout-metrics-{sid}.json", metrics)
            detection[st.survey(sid).date.isoformat()] = metrics

    train = train_summary(report)
    maps = {"truth": truth, **{f"synthetic {d} quicklook": p for d, p in synth["outputs"]["quicklooks"].items()}}
    for det in detections:
        maps.update({f"{det['outputs']['survey_id']} {k}": v for k, v in det["outputs"]["files"].items()})
    maps.update({f"change {k}": v for k, v in change["outputs"]["files"].items()})
    headline = [
        f"synthetic area **{area}**, {size} x {size} px (seed {seed}), dates {', '.join(dates)}",
        train_headline(trained),
        *[detection_headline(d) for d in detections],
        *[
            f"held-out region {date}: precision {_fmt(m['overall']['precision'])}, recall "
            f"{_fmt(m['overall']['recall'])}, F1 {_fmt(m['overall']['f1'])} ({m['n_objects']} dams there)"
            for date, m in detection.items()
        ],
        change_headline(change),
    ]
    summary = run.finish(
        {
            "area": area,
            "size": size,
            "seed": seed,
            "surveys": survey_ids,
            "model_id": model_id,
            "detection": detection,
            "detection_whole_area": {st.survey(d["outputs"]["survey_id"]).date.isoformat(): d["outputs"]["metrics"] for d in detections},
            "change": change["outputs"]["metrics"],
            "change_counts": change["outputs"]["counts"],
            "train": train,
        },
        headline=headline,
        detections=top_detections([d["outputs"]["files"]["detections"] for d in detections]),
        maps=maps,
    )
    _print_where_to_look(summary, headline)
    return summary


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "n/a"


def _print_where_to_look(summary: dict, headline: list[str]) -> None:
    run_dir = Path(summary["run_dir"])
    lines = ["", "damwatch demo: done in %.0f s" % summary["seconds"]["total"], ""]
    lines += ["  " + re.sub(r"\*\*", "", h) for h in headline]
    lines += ["", "Where to look:"]
    for label, path in summary["maps"].items():
        if label.endswith(("quicklook", "probability", "detections", "change", "geojson")):
            lines.append(f"  {label:<40} {path}")
    lines += [
        f"  {'run summary (all figures)':<40} {run_dir / 'summary.json'}",
        "",
        "Open the .tif and .geojson files in QGIS; the .png files are quicklooks.",
    ]
    print("\n".join(lines), flush=True)
