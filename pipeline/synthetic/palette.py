"""Colours: the reflectance of each surface, and how reflectance becomes a digital number.

A *colour* is a reflectance-like value per band (red, green, blue, near-infrared), given for
midsummer and for the late season; a date's greenness (1 = midsummer, 0 = dry late season)
blends the two (:func:`colour`). Values were chosen against NAIP imagery of forest, fields and
wetlands: vegetation is bright in near-infrared, water dark in it.
"""

from __future__ import annotations

import numpy as np

from pipeline.synthetic.noise import F32

__all__ = ["PALETTE", "ROOFS", "HAZE", "DN_SCALE", "FIELD_CLASSES", "colour"]

# (summer, late season) per surface, each (red, green, blue, nir).
PALETTE = {
    "forest": ((0.080, 0.125, 0.070, 0.42), (0.115, 0.120, 0.075, 0.33)),
    "conifer": ((0.055, 0.090, 0.062, 0.30), (0.060, 0.088, 0.062, 0.28)),
    "shrub": ((0.120, 0.175, 0.085, 0.46), (0.170, 0.165, 0.095, 0.36)),
    "meadow": ((0.200, 0.270, 0.130, 0.46), (0.330, 0.315, 0.210, 0.33)),
    "wet_meadow": ((0.140, 0.200, 0.100, 0.38), (0.210, 0.220, 0.140, 0.30)),
    "crop": ((0.150, 0.255, 0.095, 0.56), (0.380, 0.345, 0.215, 0.35)),
    "cereal": ((0.430, 0.415, 0.300, 0.40), (0.500, 0.450, 0.330, 0.36)),
    "soil": ((0.380, 0.325, 0.255, 0.28), (0.395, 0.340, 0.265, 0.30)),
    "young": ((0.260, 0.270, 0.170, 0.36), (0.300, 0.285, 0.200, 0.32)),
    "stream": ((0.070, 0.095, 0.080, 0.035), (0.080, 0.095, 0.080, 0.035)),
    "deep": ((0.030, 0.055, 0.065, 0.018), (0.035, 0.055, 0.060, 0.018)),
    "shallow": ((0.090, 0.125, 0.100, 0.050), (0.100, 0.120, 0.095, 0.050)),
    "pond": ((0.045, 0.060, 0.048, 0.025), (0.050, 0.060, 0.048, 0.025)),
    "reeds": ((0.120, 0.165, 0.075, 0.30), (0.220, 0.200, 0.120, 0.28)),
    "mud": ((0.200, 0.190, 0.150, 0.20), (0.220, 0.205, 0.160, 0.21)),
    "bank": ((0.150, 0.150, 0.110, 0.22), (0.170, 0.160, 0.120, 0.22)),
    "dam": ((0.285, 0.245, 0.190, 0.20), (0.290, 0.250, 0.195, 0.20)),
    "snag": ((0.420, 0.400, 0.370, 0.27), (0.420, 0.400, 0.370, 0.27)),
    "bark": ((0.300, 0.265, 0.215, 0.26), (0.300, 0.265, 0.215, 0.26)),
    "rock": ((0.330, 0.320, 0.295, 0.27), (0.330, 0.320, 0.295, 0.27)),
    "asphalt": ((0.300, 0.300, 0.305, 0.26), (0.300, 0.300, 0.305, 0.26)),
    "gravel": ((0.430, 0.400, 0.350, 0.33), (0.440, 0.410, 0.355, 0.33)),
}
ROOFS = ((0.40, 0.40, 0.42, 0.36), (0.46, 0.22, 0.17, 0.30), (0.22, 0.22, 0.24, 0.20), (0.66, 0.66, 0.66, 0.58))
HAZE = (0.036, 0.044, 0.078, 0.012)  # path radiance added to every pixel, per band
DN_SCALE = 1.55 * 255  # reflectance -> digital number, a typical provider stretch
# Field classes by crop hash (3 bits): what a parcel grows this year.
FIELD_CLASSES = ("crop", "cereal", "soil", "meadow", "crop", "young", "cereal", "meadow")


def colour(name: str, green: float) -> np.ndarray:
    """The (4,) float32 colour of surface ``name`` at greenness ``green`` (0..1)."""
    summer, late = PALETTE[name]
    return (np.asarray(summer) * green + np.asarray(late) * (1 - green)).astype(F32)
