"""Drift: is this survey's imagery like what the model was trained on?

A network learns only what its data shows. Before a survey is scored, its band statistics
(recorded at ingest, :mod:`pipeline.bands`) are compared with those of the model's training
surveys (recorded in the model). For each band the model reads:

- the **brightness factor**: the survey's mean over the nearest of the training surveys' means
  (1 inside their range);
- the **contrast factor**: the survey's standard deviation over the nearest training one.

Training covered a band when both factors lie within :data:`BRIGHTNESS_TOLERANCE` and
:data:`CONTRAST_TOLERANCE` of 1 (either way). What changes between two flights of one area
stays inside: the synthetic generator's second date is 19–25 % darker with 70–80 % of the
contrast; a flight 40 % darker than that, a different sensor or another processing does not. Outside, :func:`check_drift`
returns a warning naming the bands and how far off they are, which the command prints and the
run summary and provenance record: a model applied to imagery it was not trained for says so
rather than printing confident detections.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.bands import pixel_scale

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.store import Survey

__all__ = ["BRIGHTNESS_TOLERANCE", "CONTRAST_TOLERANCE", "check_drift"]

BRIGHTNESS_TOLERANCE = 1 / 0.7  # a band's mean may be up to 30 % below (43 % above) the training range
CONTRAST_TOLERANCE = 1 / 0.6  # its standard deviation up to 40 % below (67 % above)


def _band(stats: Mapping[str, Any], band: str, scale: float) -> tuple[float, float] | None:
    names = list(stats.get("bands", []))
    if band not in names:
        return None
    i = names.index(band)
    return float(stats["mean"][i]) * scale, float(stats["std"][i]) * scale


def check_drift(survey: "Survey", training: Mapping[str, Mapping[str, Any]], bands: Sequence[str]) -> dict:
    """Compare ``survey``'s band statistics with the training surveys' (``{survey id:
    band_statistics with its "dtype"}``, as a cnn model records them) for ``bands``; values are
    compared after scaling each by its dtype's range.

    Returns ``{"bands": {band: {...}}, "drifted": [bands], "warning": text or None}``.
    """
    stats = survey.band_statistics
    report: dict[str, Any] = {"bands": {}, "drifted": [], "warning": None,
                              "rule": f"mean within a factor {BRIGHTNESS_TOLERANCE:.3g} of the training surveys' means, "
                                      f"standard deviation within a factor {CONTRAST_TOLERANCE:.3g} of theirs"}
    if not stats or not training:
        report["warning"] = (f"survey {survey.id} or the model has no band statistics, so whether its imagery is like "
                             f"the training imagery cannot be checked")
        return report
    here_scale = pixel_scale(survey.dtype)
    for band in bands:
        mine = _band(stats, band, here_scale)
        seen = [_band(t, band, pixel_scale(t.get("dtype", survey.dtype))) for t in training.values()]
        seen = [s for s in seen if s is not None]
        if mine is None or not seen:
            continue
        means, stds = np.array([s[0] for s in seen]), np.array([s[1] for s in seen])
        brightness = _factor(mine[0], means)
        contrast = _factor(mine[1], stds)
        drifted = _outside(brightness, BRIGHTNESS_TOLERANCE) or _outside(contrast, CONTRAST_TOLERANCE)
        report["bands"][band] = {"mean": mine[0], "training_means": means.tolist(), "brightness_factor": round(brightness, 3),
                                 "std": mine[1], "training_stds": stds.tolist(), "contrast_factor": round(contrast, 3),
                                 "drifted": bool(drifted)}
        if drifted:
            direction = "darker" if brightness < 1 else "brighter" if brightness > 1 else "of other contrast"
            report["drifted"].append(f"{band} ({direction}: mean x{brightness:.2f}, contrast x{contrast:.2f} of the "
                                     f"training imagery)")
    if report["drifted"]:
        report["warning"] = (
            f"survey {survey.id} differs from the imagery the model was trained on in {', '.join(report['drifted'])}; "
            f"its detections may be unreliable: check them against a few known places, or train a model that "
            f"includes imagery like this survey"
        )
    return report


def _factor(value: float, training: np.ndarray) -> float:
    """``value`` over the nearest end of the training range (1 inside it)."""
    lo, hi = float(training.min()), float(training.max())
    if value < lo:
        return value / lo if lo > 0 else 0.0
    if value > hi:
        return value / hi if hi > 0 else np.inf
    return 1.0


def _outside(factor: float, tolerance: float) -> bool:
    return factor < 1 / tolerance or factor > tolerance
