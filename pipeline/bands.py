"""Bands by name, and the values computed from them.

A survey's *bands* are named (``red``, ``green``, ``blue``, ``nir``, ``swir1``, ...; see
:mod:`pipeline.ingest`), and everything that reads pixels chooses bands **by name**, never by
position: a survey whose bands come in another order gives the same result, and one that lacks
a band is refused with a message naming it. Computed from named bands:

- the pixel *scale* that takes stored values to reflectance-like [0, 1] (:func:`pixel_scale`);
- *grayscale* (ITU-R BT.601 luma, :data:`LUMA`), the input layer of the seed's network;
- *normalized-difference indices* (:data:`INDICES`): NDVI = (nir − red)/(nir + red)
  (vegetation) and NDWI = (green − nir)/(green + nir) (open water where > 0), 0 where the
  denominator is 0 (:func:`normalized_difference`);
- *band statistics*: the mean and covariance of a survey's bands over its valid pixels
  (:func:`band_moments` per piece, :func:`merge_moments` to add pieces up exactly), recorded at
  ingest; models normalize inputs and check for drift with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.errors import InputError

__all__ = [
    "LUMA",
    "INDICES",
    "MOMENT_STEP",
    "pixel_scale",
    "normalized_difference",
    "band_positions",
    "band_moments",
    "merge_moments",
    "moments_summary",
]

#: Grayscale weights of red, green and blue (ITU-R BT.601 luma).
LUMA = {"red": 0.299, "green": 0.587, "blue": 0.114}
#: Normalized-difference indices by name: (a, b) gives (a − b)/(a + b).
INDICES = {"ndvi": ("nir", "red"), "ndwi": ("green", "nir")}


def pixel_scale(dtype: np.dtype | str) -> float:
    """Factor taking pixel values to [0, 1]: ``1 / max`` for integer dtypes (signed: to [−1, 1]), 1 for floats."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return 1.0 / float(np.iinfo(dtype).max)
    return 1.0


def normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a − b)/(a + b)`` element-wise, 0 where ``a + b == 0``."""
    num = a - b
    den = a + b
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den != 0)
    return out


def band_positions(needed: Sequence[str], band_names: Sequence[str], needer: str, holder: str, fix: str) -> list[int]:
    """Position in ``band_names`` of each of the ``needed`` bands.

    Refuses with :class:`InputError` naming the missing bands: ``needer`` says who needs them
    ("feature spec rgbn-v1"), ``holder`` whose bands they are ("survey creek-2024-06-01"),
    ``fix`` what to do about it.
    """
    missing = [b for b in needed if b not in band_names]
    if missing:
        raise InputError(
            f"{needer} needs bands {list(needed)} but {holder} has bands {list(band_names)} (missing: "
            f"{', '.join(missing)}); {fix}"
        )
    return [list(band_names).index(b) for b in needed]


# --------------------------------------------------------------------------------------------
# Band statistics: mean and covariance of a survey's bands, merged exactly across pieces

#: Band statistics are taken on every MOMENT_STEP-th pixel down and across (1/16 of the pixels):
#: plenty for a mean and a covariance, and 16 times less arithmetic at ingest.
MOMENT_STEP = 4


def band_moments(pixels: np.ndarray, valid: np.ndarray | None = None, step: int = MOMENT_STEP) -> dict:
    """Count, mean (B,) and sum of squared deviations (B, B) of the valid pixels of ``pixels``
    (B, h, w), on every ``step``-th pixel: the pieces :func:`merge_moments` adds up exactly."""
    x = np.asarray(pixels)[:, ::step, ::step]
    keep = np.ones(x.shape[1:], bool) if valid is None else np.asarray(valid)[::step, ::step]
    keep = keep & np.isfinite(x).all(axis=0)
    v = x[:, keep].astype(np.float64)  # (B, n)
    n = int(v.shape[1])
    if n == 0:
        b = x.shape[0]
        return {"count": 0, "mean": np.zeros(b), "m2": np.zeros((b, b))}
    mean = v.mean(axis=1)
    d = v - mean[:, None]
    return {"count": n, "mean": mean, "m2": d @ d.T}


def merge_moments(pieces: list[dict]) -> dict:
    """The moments of the union of ``pieces`` (Chan et al.'s pairwise update, in list order)."""
    total = None
    for p in pieces:
        if p["count"] == 0:
            continue
        if total is None:
            total = {"count": p["count"], "mean": np.asarray(p["mean"], float), "m2": np.asarray(p["m2"], float)}
            continue
        n_a, n_b = total["count"], p["count"]
        n = n_a + n_b
        delta = np.asarray(p["mean"], float) - total["mean"]
        total = {
            "count": n,
            "mean": total["mean"] + delta * (n_b / n),
            "m2": total["m2"] + np.asarray(p["m2"], float) + np.outer(delta, delta) * (n_a * n_b / n),
        }
    if total is None:
        b = len(pieces[0]["mean"]) if pieces else 0
        return {"count": 0, "mean": np.zeros(b), "m2": np.zeros((b, b))}
    return total


def moments_summary(moments: dict, band_names: Sequence[str], step: int = MOMENT_STEP) -> dict:
    """JSON-ready band statistics: per band mean and standard deviation, and the covariance."""
    n = max(int(moments["count"]), 1)
    cov = np.asarray(moments["m2"], float) / n
    return {
        "bands": list(band_names),
        "count": int(moments["count"]),
        "step": int(step),
        "mean": [float(v) for v in moments["mean"]],
        "std": [float(v) for v in np.sqrt(np.maximum(np.diag(cov), 0.0))],
        "covariance": cov.tolist(),
    }
