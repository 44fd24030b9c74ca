"""Headlines: the one-line summaries of stage outcomes that open a run's summary.

Each takes a stage outcome (the dict a stage task returns, :class:`flows.resume.Stage`) and
returns one markdown line for the run's summary artifact and the command's output: what was
made, how many, and how it scored against a truth when one was given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["train_summary", "train_headline", "labels_headline", "detection_headline", "change_headline"]


def train_summary(report: Mapping[str, Any]) -> dict:
    """The figures of a training report a run summary shows: epochs, final validation metrics, seconds."""
    history = report["history"]
    return {
        "model_id": report["model_id"],
        "epochs": len(history["epochs"]),
        "best_epoch": history["best_epoch"],
        "stop_reason": history["stop_reason"],
        "threshold": report["threshold"],
        "validation": report["validation"],
        "test": report["test"],
        "counts": report["counts"],
        "columns": report["columns"],
        "workers": report["workers"],
        "seconds": report["seconds"],
    }


def train_headline(train: dict) -> str:
    s = train_summary(train["outputs"]["report"])
    v = s["validation"]
    line = (
        f"model **{s['model_id']}**: {s['epochs']} epochs ({s['stop_reason']}), {s['seconds']:.0f} s on "
        f"{s['workers']} worker(s); validation F1 {v['f1']:.2f}"
    )
    if s["test"]:
        t = s["test"]
        line += f"; held-out test precision {t['precision']:.2f}, recall {t['recall']:.2f}, F1 {t['f1']:.2f}"
    return line


def labels_headline(outcome: dict) -> str:
    out = outcome["outputs"]
    return (
        f"labels {out['survey_id']} '{out['name']}' from {out['source']}: {out['positive']} positive, "
        f"{out['negative']} negative, {out['unknown']} unknown ({outcome['status']})"
    )


def detection_headline(detect: dict) -> str:
    out = detect["outputs"]
    line = (
        f"detections on {out['survey_id']}: **{out['n_detections']}** "
        f"({out['scored_cells']} cells scored, threshold {out['threshold']:.2f}, model {out['model_id']})"
    )
    if out.get("metrics"):
        m = out["metrics"]["object"]
        line += "; vs truth (objects) " + ", ".join(
            f"{k} {m[k]:.2f}" for k in ("precision", "recall", "f1") if isinstance(m.get(k), (int, float))
        )
    if (out.get("drift") or {}).get("warning"):
        line += f"; **drift warning**: {out['drift']['warning']}"
    return line


def change_headline(change: dict) -> str:
    out = change["outputs"]
    counts = out["counts"]
    line = (
        f"change {out['before']} → {out['after']}: {counts.get('new', 0)} new, {counts.get('gone', 0)} gone, "
        f"{counts.get('persisting', 0)} persisting"
    )
    metrics = out.get("metrics") or {}
    f1 = {name: metrics[name]["f1"] for name in ("new", "gone", "persisting")
          if isinstance(metrics.get(name), dict) and metrics[name].get("f1") is not None}
    if f1:
        line += "; F1 vs truth " + ", ".join(f"{name} {v:.2f}" for name, v in f1.items())
    return line
