"""Provenance: what made an output, from which inputs, with which settings.

A *provenance record* (``provenance.json`` beside every output, DESIGN decision 8) lets a
scientist trace a map back to its inputs: the damwatch version and time, the settings, the
surveys (source file name and sha256, grid, CRS, bands) and the model (hashes of its files).
Each function returns one JSON-able part of it.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import __version__
from pipeline.files import file_sha256

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.store import Store, Survey

__all__ = ["base_provenance", "model_provenance", "survey_provenance"]


def model_provenance(store: "Store", model_id: str) -> dict:
    """Hashes of a model's files in the store (absent files are listed as None)."""
    out = {"id": model_id}
    for ext in ("npz", "json"):
        f = Path(store.models_dir) / f"{model_id}.{ext}"
        out[f"{ext}_sha256"] = file_sha256(f) if f.is_file() else None
    return out


def survey_provenance(survey: "Survey") -> dict:
    """What identifies a survey's input: id, source file name and hash, grid and CRS."""
    return {
        "id": survey.id,
        "area": survey.area,
        "date": survey.date.isoformat(),
        "source_name": survey.source_name,
        "source_sha256": survey.source_sha256,
        "crs": survey.crs.to_string(),
        "transform": list(survey.transform)[:6],
        "shape": [survey.height, survey.width],
        "bands": list(survey.bands),
    }


def base_provenance(kind: str, settings: Mapping[str, Any]) -> dict:
    """The common head of every provenance.json: what made it, when, with which settings."""
    return {
        "kind": kind,
        "damwatch_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": dict(settings),
    }
