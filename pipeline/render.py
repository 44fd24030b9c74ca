"""Rendering: rasters and pictures a person opens.

Two kinds of output are drawn here from arrays already computed:

- a **Cloud-Optimized GeoTIFF** (:func:`write_cog`): one band, internal tiles of 512, deflate,
  overviews (at least one level, so QGIS opens coarse maps fast), nodata set; what QGIS and
  GDAL open;
- a **quicklook** PNG (:func:`render_quicklook`): side-by-side map panels of an overlay
  (probabilities, change classes) over a stretched thumbnail of the survey
  (:func:`survey_thumbnail`), with outlines of detections;
- a **precision–recall** plot (:func:`plot_precision_recall`) with the chosen threshold marked.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import matplotlib
import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from matplotlib.collections import LineCollection

from pipeline.geojson import from_wgs84, polygons

matplotlib.use("Agg")  # files only: never a window, whatever the user's backend setting

__all__ = ["cog_overview_count", "write_cog", "survey_thumbnail", "render_quicklook", "outline_rings", "plot_precision_recall"]


def cog_overview_count(height: int, width: int, smallest: int = 64) -> int:
    """Overview levels (each halving) until the larger side is at most ``smallest``; at least 1.

    GDAL's COG driver adds no overview to a raster smaller than one 512 block unless asked;
    QGIS opens coarse maps faster with them, so damwatch always asks for at least one.
    """
    return max(1, math.ceil(math.log2(max(height, width, 1) / smallest)))


def write_cog(
    path: str | os.PathLike,
    array: np.ndarray,
    transform: Affine,
    crs: Any,
    nodata: float | int | None,
    colormap: Mapping[int, tuple[int, ...]] | None = None,
    resampling: str = "average",
    tags: Mapping[str, str] | None = None,
) -> Path:
    """Write one band as a Cloud-Optimized GeoTIFF: 512 internal tiles, overviews, deflate.

    GDAL's COG driver only copies from an existing dataset, so a tiled GeoTIFF is written
    beside the target first and removed after. ``resampling`` builds the overviews
    (``average`` for probabilities, ``nearest`` for class codes).
    """
    path = Path(path)
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"write_cog takes one band (h, w), got shape {array.shape}")
    h, w = array.shape
    scratch = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tif")
    profile = dict(
        driver="GTiff", width=w, height=h, count=1, dtype=array.dtype.name, crs=crs,
        transform=transform, nodata=nodata, tiled=True, blockxsize=512, blockysize=512,
        compress="deflate",
    )
    try:
        with rasterio.open(scratch, "w", **profile) as dst:
            dst.write(array, 1)
            if colormap is not None:
                dst.write_colormap(1, dict(colormap))
            if tags:
                dst.update_tags(**tags)
        predictor = "YES" if array.dtype.kind == "f" else "NO"
        rasterio.shutil.copy(
            scratch, path, driver="COG", BLOCKSIZE=512, COMPRESS="DEFLATE", PREDICTOR=predictor,
            OVERVIEW_RESAMPLING=resampling.upper(), OVERVIEW_COUNT=cog_overview_count(h, w),
        )
    finally:
        scratch.unlink(missing_ok=True)
    return path


def survey_thumbnail(survey: Any, max_side: int = 1200, client: Any = None) -> tuple[np.ndarray, Affine]:
    """An RGB (h, w, 3) float array in [0, 1] of a survey, every k-th pixel, and its transform.

    Uses the bands named red/green/blue when present, else the first band in grey; each band
    is stretched between its 2nd and 98th percentile over valid pixels. The strided read goes
    through Dask (``client`` or the default scheduler), chunk by chunk.
    """
    k = max(1, math.ceil(max(survey.height, survey.width) / max_side))
    names = ("red", "green", "blue")
    bands = [survey.bands.index(n) for n in names] if all(n in survey.bands for n in names) else [0]
    image = survey.image_dask()[bands, ::k, ::k]
    valid = survey.valid_dask()[::k, ::k]
    if client is not None:
        image, valid = client.compute([image, valid], sync=True)
    else:
        image, valid = dask.compute(image, valid)
    image = np.asarray(image, dtype=np.float32)
    valid = np.asarray(valid, dtype=bool)
    out = np.zeros(image.shape[1:] + (3,), dtype=np.float32)
    for i, band in enumerate(image):
        values = band[valid] if valid.any() else band.ravel()
        lo, hi = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
        out[..., i] = np.clip((band - lo) / max(hi - lo, 1e-6), 0, 1)
    if len(bands) == 1:
        out[..., 1] = out[..., 2] = out[..., 0]
    out[~valid] = 1.0  # nodata shows as white paper
    return out, survey.transform * Affine.scale(k)


def _extent(transform: Affine, height: int, width: int) -> tuple[float, float, float, float]:
    """(left, right, bottom, top) of a north-up raster, for matplotlib's ``imshow(extent=)``."""
    left, top = transform * (0, 0)
    right, bottom = transform * (width, height)
    return left, right, bottom, top


def render_quicklook(
    path: str | os.PathLike,
    panels: Sequence[Mapping[str, Any]],
    title: str,
    dpi: int = 110,
) -> Path:
    """Draw side-by-side map panels to a PNG.

    Each panel is a dict with ``title``, optional ``image`` (h, w, 3) and ``image_transform``,
    and an ``overlay`` (h, w) with ``overlay_transform``, ``cmap`` (name or Colormap),
    ``vmin``/``vmax``, ``alpha``, optional ``norm`` and ``colorbar`` label, optional
    ``outlines`` (list of lists of map-coordinate (x, y) rings) and ``points`` (a list of
    (xs, ys, colour, label) groups of map-coordinate markers). Axes are map coordinates.
    """
    import matplotlib.pyplot as plt  # here: pyplot's import costs ~0.4 s, paid only when drawing

    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(6.2 * n, 6.0), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel.get("image") is not None:
            img = panel["image"]
            ax.imshow(img, extent=_extent(panel["image_transform"], *img.shape[:2]), interpolation="bilinear")
        ov = np.ma.masked_invalid(np.asarray(panel["overlay"], dtype=np.float64))
        if "mask_below" in panel:
            ov = np.ma.masked_where(ov.filled(-np.inf) < panel["mask_below"], ov)
        shown = ax.imshow(
            ov, extent=_extent(panel["overlay_transform"], *ov.shape), cmap=panel.get("cmap", "magma"),
            vmin=panel.get("vmin"), vmax=panel.get("vmax"), norm=panel.get("norm"),
            alpha=panel.get("alpha", 0.6), interpolation="nearest",
        )
        if panel.get("outlines"):  # one collection: thousands of ax.plot calls take seconds
            ax.add_collection(LineCollection(
                [np.asarray(ring) for ring in panel["outlines"]],
                colors=panel.get("outline_color", "cyan"), linewidths=1.0,
            ))
        for xs, ys, colour, label in panel.get("points", ()):
            ax.scatter(xs, ys, s=36, facecolors="none", edgecolors=colour, linewidths=1.3, label=label)
        if panel.get("points"):
            ax.legend(fontsize=7, loc="upper right", framealpha=0.8)
        if panel.get("colorbar"):
            cb = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
            cb.set_label(panel["colorbar"])
            if panel.get("ticks") is not None:
                cb.set_ticks(panel["ticks"], labels=panel.get("ticklabels"))
        ax.set_title(panel["title"], fontsize=10)
        ax.ticklabel_format(useOffset=False, style="plain")
        ax.tick_params(labelsize=7)
        ax.set_xlabel("easting (map units)", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


def outline_rings(geojson: Mapping[str, Any], crs: Any) -> list[list[tuple[float, float]]]:
    """Exterior rings of a GeoJSON's polygons, back in ``crs`` map coordinates, for plots."""
    rings = []
    for f in geojson["features"]:
        for poly in polygons(from_wgs84(f["geometry"], crs)):
            rings.append(poly[0])
    return rings


def plot_precision_recall(
    path: str | os.PathLike,
    curves: Sequence[Mapping[str, Any]],
    title: str,
    dpi: int = 110,
) -> Path:
    """Precision–recall curves to a PNG, each with its operating point marked.

    Each curve is a dict with ``label``, ``recall`` and ``precision`` (lists, strongest first)
    and optionally ``at`` = (recall, precision) of the chosen threshold and ``threshold``.
    """
    import matplotlib.pyplot as plt  # here: pyplot's import costs ~0.4 s, paid only when drawing

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for c in curves:
        recall = [0.0, *c["recall"]]
        precision = [c["precision"][0] if c["precision"] else 1.0, *c["precision"]]
        (line,) = ax.step(recall, precision, where="post", label=c["label"])
        if c.get("at") is not None and None not in c["at"]:
            ax.plot(*c["at"], "o", color=line.get_color(), markersize=7, markeredgecolor="black",
                    label=f"threshold {c['threshold']:.2f}" if c.get("threshold") is not None else None)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (share of truth objects found)")
    ax.set_ylabel("precision (share of detections that are real)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)
