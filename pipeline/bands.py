"""Bands by name, and the values computed from them.

A survey's *bands* are named (``red``, ``green``, ``blue``, ``nir``, ``swir1``, ...; see
:mod:`pipeline.ingest`), and everything that reads pixels chooses bands **by name**, never by
position: a survey whose bands come in another order gives the same result, and one that lacks
a band is refused with a message naming it. Computed from named bands:

- the pixel *scale* that takes stored values to reflectance-like [0, 1] (:func:`pixel_scale`);
- *grayscale* (ITU-R BT.601 luma, :data:`LUMA`), the input layer of the seed's network;
- *normalized-difference indices* (:data:`INDICES`): NDVI = (nir − red)/(nir + red)
  (vegetation) and NDWI = (green − nir)/(green + nir) (open water where > 0), 0 where the
  denominator is 0 (:func:`normalized_difference`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.errors import InputError

__all__ = ["LUMA", "INDICES", "pixel_scale", "normalized_difference", "band_positions"]

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
