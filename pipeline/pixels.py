"""Pixels: what a pixel model reads of a survey — its bands by name, at the model's resolution.

A pixel model (the convolutional detector) reads *channels*: a grayscale channel (the seed's
input layer; added when red, green and blue are all present) followed by the survey's bands
chosen **by name** (:class:`InputSpec`). Values are scaled to [0, 1] by the dtype's range and
then standardized per channel.

**Ground resolution.** A model works at one *ground sample distance* (GSD, metres per pixel) and
sees windows of ``window`` pixels, a footprint of ``window × gsd`` metres. A survey is read at
the model's GSD (:func:`reading_for`):

- at the same GSD (within 1 %): as it is;
- finer by an integer factor k (0.5 m for a 1 m model: k = 2): the mean of each k × k block of
  valid pixels;
- otherwise: resampled by GDAL (``rasterio.warp.reproject``), *average* when the survey is finer,
  *bilinear* when it is coarser;
- more than twice coarser than the model: refused. Upsampling cannot invent the detail the
  model was trained on.

The method is stated in every output's provenance. A model pixel is valid when at least half of
what it averages is valid.

**Normalization** (``InputSpec.normalization``): ``"survey"`` standardizes each channel by the
survey's own mean and standard deviation (recorded at ingest, :mod:`pipeline.bands`), so a
later flight's darker or hazier imagery reaches the network on the same scale as the training
surveys; ``"none"`` keeps the scaled values. The model's own standardizer (training-set
statistics) follows in both cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine
from rasterio.warp import Resampling, reproject

from pipeline.bands import LUMA, band_positions, pixel_scale
from pipeline.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.store import Survey

__all__ = [
    "NORMALIZATIONS",
    "InputSpec",
    "input_spec_for",
    "ground_resolution_m",
    "Reading",
    "reading_for",
    "channel_statistics",
    "read_channels",
]

NORMALIZATIONS = ("survey", "none")
_SAME_GSD = 0.01  # relative difference under which a survey is read as it is
_MAX_COARSER = 2.0  # a survey more than this much coarser than the model is refused
_METRES_PER_DEGREE = 111_320.0  # along a meridian, and along the equator (WGS84, rounded)


@dataclass(frozen=True)
class InputSpec:
    """What a pixel model reads: channels (``gray`` first when ``grayscale``, then ``bands`` by
    name), at ``gsd_m`` metres per pixel, in windows of ``window`` pixels."""

    bands: tuple[str, ...]
    grayscale: bool
    gsd_m: float
    window: int
    normalization: str = "survey"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bands", tuple(self.bands))
        if not self.bands:
            raise InputError("a pixel model needs at least one band")
        if self.grayscale and any(b not in self.bands for b in LUMA):
            raise InputError(f"a grayscale channel needs bands red, green and blue; the bands are {list(self.bands)}")
        if not (isinstance(self.gsd_m, (int, float)) and 0 < self.gsd_m < 1e5):
            raise InputError(f"ground sample distance {self.gsd_m!r} m must be a positive number of metres per pixel")
        if self.normalization not in NORMALIZATIONS:
            raise InputError(f"normalization {self.normalization!r} is unknown; choose one of {list(NORMALIZATIONS)}")

    @property
    def channels(self) -> tuple[str, ...]:
        return (("gray",) if self.grayscale else ()) + self.bands

    @property
    def footprint_m(self) -> float:
        return self.window * self.gsd_m

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "pixels",
            "bands": list(self.bands),
            "grayscale": self.grayscale,
            "channels": list(self.channels),
            "gsd_m": float(self.gsd_m),
            "window": int(self.window),
            "footprint_m": float(self.footprint_m),
            "normalization": self.normalization,
            "scale": "pixel values / the dtype's largest value (floats as they are)",
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputSpec":
        return cls(tuple(d["bands"]), bool(d["grayscale"]), float(d["gsd_m"]), int(d["window"]), d.get("normalization", "survey"))


def input_spec_for(
    survey_bands: Sequence[str], bands: Sequence[str] | None, gsd_m: float, window: int, normalization: str = "survey"
) -> InputSpec:
    """The input of a model trained on a survey with ``survey_bands``: ``bands`` by name (default:
    all of them), plus grayscale when red, green and blue are all among them."""
    chosen = tuple(bands) if bands else tuple(survey_bands)
    band_positions(chosen, survey_bands, "the model", "the survey",
                   f"choose bands the survey has with --bands (it has {', '.join(survey_bands)})")
    return InputSpec(chosen, all(b in chosen for b in LUMA), float(gsd_m), int(window), normalization)


def _metres_per_unit(survey: "Survey") -> tuple[float, float]:
    """Metres per CRS unit along x and y at the survey's centre."""
    crs = survey.crs
    if crs.is_geographic:
        west, south, east, north = survey.bounds
        lat = math.radians((south + north) / 2)
        return _METRES_PER_DEGREE * math.cos(lat), _METRES_PER_DEGREE
    factor = crs.linear_units_factor[1] if crs.is_projected else 1.0
    return float(factor), float(factor)


def ground_resolution_m(survey: "Survey") -> float:
    """The survey's pixel size in metres (mean of x and y; at its centre for geographic CRSs)."""
    mx, my = _metres_per_unit(survey)
    rx, ry = survey.res
    return 0.5 * (rx * mx + ry * my)


@dataclass(frozen=True)
class Reading:
    """How a survey is read at a model's GSD: ``factor`` source pixels per model pixel, the
    ``method``, and the model pixel grid (``height`` × ``width``, ``transform``)."""

    survey_id: str
    source_gsd_m: float
    gsd_m: float
    factor: float
    method: str
    height: int
    width: int
    transform: Affine

    @property
    def integer_factor(self) -> int | None:
        k = round(self.factor)
        return k if k >= 1 and abs(self.factor - k) <= _SAME_GSD * max(k, 1) else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "survey": self.survey_id,
            "survey_gsd_m": round(self.source_gsd_m, 6),
            "model_gsd_m": self.gsd_m,
            "source_pixels_per_model_pixel": round(self.factor, 6),
            "method": self.method,
            "shape": [self.height, self.width],
            "transform": [float(v) for v in self.transform[:6]],
        }


def reading_for(survey: "Survey", gsd_m: float) -> Reading:
    """How to read ``survey`` at ``gsd_m`` metres per pixel (rules: the module docstring)."""
    src = ground_resolution_m(survey)
    factor = gsd_m / src
    if factor < 1 / _MAX_COARSER - 1e-9:
        raise InputError(
            f"survey {survey.id} has {src:.3g} m pixels, more than {_MAX_COARSER:g} times coarser than the "
            f"{gsd_m:g} m the model was trained at: the model would look for detail the survey does not "
            f"have. Use a model trained at {src:.3g} m or coarser (damwatch train --gsd {src:.3g}), or a "
            f"finer survey"
        )
    k = round(factor)
    if abs(factor - 1) <= _SAME_GSD:
        factor, method = 1.0, "none (same ground resolution)"
    elif k >= 2 and abs(factor - k) <= _SAME_GSD * k:
        factor, method = float(k), f"mean of {k} x {k} pixel blocks"
    elif factor > 1:
        method = f"GDAL average resampling ({factor:.3g} survey pixels per model pixel)"
    else:
        method = f"GDAL bilinear resampling (survey {1 / factor:.3g} times coarser than the model)"
    height = math.ceil(survey.height / factor - 1e-9)
    width = math.ceil(survey.width / factor - 1e-9)
    return Reading(survey.id, src, float(gsd_m), float(factor), method, height, width,
                   survey.transform * Affine.scale(factor))


def channel_statistics(survey: "Survey", spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (C,) of each channel over the survey's valid pixels, in
    scaled units, from the band statistics recorded at ingest."""
    stats = survey.band_statistics
    if not stats:
        raise InputError(
            f"survey {survey.id} was ingested before damwatch recorded band statistics, which the model's "
            f"normalization needs; ingest it again: damwatch ingest FILE --area {survey.area} --date "
            f"{survey.date.isoformat()} --overwrite"
        )
    scale = pixel_scale(survey.dtype)
    index = [list(stats["bands"]).index(b) for b in spec.bands]
    mean = np.asarray(stats["mean"], float) * scale
    cov = np.asarray(stats["covariance"], float) * scale * scale
    means, stds = [], []
    if spec.grayscale:
        w = np.zeros(len(mean))
        for band, weight in LUMA.items():
            w[list(stats["bands"]).index(band)] = weight
        means.append(float(w @ mean))
        stds.append(float(math.sqrt(max(w @ cov @ w, 0.0))))
    for i in index:
        means.append(float(mean[i]))
        stds.append(float(math.sqrt(max(cov[i, i], 0.0))))
    std = np.asarray(stds)
    return np.asarray(means), np.where(std > 0, std, 1.0)


def _block_mean(x: np.ndarray, valid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each k × k block of ``x`` (B, h·k, w·k) over its valid pixels; valid when at
    least half of the block is."""
    b, hk, wk = x.shape
    h, w = hk // k, wk // k
    v = valid.reshape(h, k, w, k)
    s = np.where(v[None], x.reshape(b, h, k, w, k), 0.0).sum(axis=(2, 4), dtype=np.float64)
    n = v.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s / np.maximum(n, 1)
    return mean.astype(np.float32), 2 * n >= k * k


def read_channels(
    survey: "Survey",
    reading: Reading,
    spec: InputSpec,
    row0: int,
    col0: int,
    height: int,
    width: int,
    stats: tuple[np.ndarray, np.ndarray] | None = None,
    image: Any = None,
    valid_array: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Channels (height, width, C) float32 and valid mask (height, width) of a block of the model
    pixel grid, rows ``row0..`` and columns ``col0..``; the block may reach outside the survey,
    where it is invalid. Invalid pixels hold the channel's mean (0 after normalization).

    ``stats``: the survey's channel statistics (:func:`channel_statistics`, computed once by
    the caller; computed here when None). Invalid pixels take the channel's survey mean, so a
    window reads the same whether it is read alone or cut from a larger block.
    ``image``/``valid_array``: the survey's Zarr arrays, when the caller holds them open.
    """
    image = survey.image() if image is None else image
    valid_array = survey.valid() if valid_array is None else valid_array
    index = band_positions(spec.bands, survey.bands, "the model", f"survey {survey.id}",
                           "use a model trained on bands this survey has, or ingest the survey with --bands naming its bands")
    f = reading.factor
    k = reading.integer_factor
    # Source pixels covering the block (one more around it when resampling).
    margin = 0 if k else 2
    r0 = math.floor(row0 * f) - margin
    c0 = math.floor(col0 * f) - margin
    r1 = math.ceil((row0 + height) * f) + margin
    c1 = math.ceil((col0 + width) * f) + margin
    rr0, rr1 = max(r0, 0), min(r1, survey.height)
    cc0, cc1 = max(c0, 0), min(c1, survey.width)
    src = np.zeros((len(index), r1 - r0, c1 - c0), np.float32)
    ok = np.zeros((r1 - r0, c1 - c0), bool)
    if rr0 < rr1 and cc0 < cc1:
        block = np.asarray(image[:, rr0:rr1, cc0:cc1])
        src[:, rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = block[index]
        ok[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = np.asarray(valid_array[rr0:rr1, cc0:cc1])
        ok &= np.isfinite(src).all(axis=0)
    src *= np.float32(pixel_scale(survey.dtype))
    if k == 1:
        x, valid = src, ok
    elif k:
        x, valid = _block_mean(src, ok, k)
    else:
        x, valid = _resample(src, ok, survey, reading, r0, c0, row0, col0, height, width)
    channels = np.empty((height, width, len(spec.channels)), np.float32)
    at = 0
    if spec.grayscale:
        channels[..., 0] = sum(np.float32(w) * x[spec.bands.index(b)] for b, w in LUMA.items())
        at = 1
    channels[..., at:] = np.moveaxis(x, 0, -1)
    mean, std = stats if stats is not None else channel_statistics(survey, spec)
    if spec.normalization == "survey":
        channels -= mean.astype(np.float32)
        channels /= std.astype(np.float32)
        channels[~valid] = 0.0
    else:
        channels[~valid] = mean.astype(np.float32)
    return channels, valid


def _resample(src, ok, survey, reading, r0, c0, row0, col0, height, width):
    """GDAL average (finer survey) or bilinear (coarser) resampling onto the model pixel block."""
    data = np.where(ok[None], src, np.nan).astype(np.float32)
    src_transform = survey.transform * Affine.translation(c0, r0)
    dst_transform = reading.transform * Affine.translation(col0, row0)
    out = np.full((src.shape[0], height, width), np.nan, np.float32)
    method = Resampling.average if reading.factor > 1 else Resampling.bilinear
    reproject(data, out, src_transform=src_transform, src_crs=survey.crs, dst_transform=dst_transform,
              dst_crs=survey.crs, resampling=method, src_nodata=np.nan, dst_nodata=np.nan)
    valid = np.isfinite(out).all(axis=0)
    return np.where(valid[None], out, 0.0).astype(np.float32), valid
