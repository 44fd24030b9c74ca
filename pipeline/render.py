"""Rendering: rasters and pictures a person opens.

Two kinds of output are drawn here from arrays already computed:

- a **Cloud-Optimized GeoTIFF** (:func:`write_cog`): one band, internal tiles of 512, deflate,
  overviews (at least one level, so QGIS opens coarse maps fast), nodata set; what QGIS and
  GDAL open;
- a **quicklook** PNG (:func:`render_quicklook`): side-by-side map panels of an overlay
  (probabilities, change classes) over a stretched thumbnail of the survey
  (:func:`survey_thumbnail`), with outlines of detections.
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

__all__ = ["cog_overview_count", "write_cog", "category_pam_xml", "survey_thumbnail", "render_quicklook", "outline_rings"]


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
    *,
    band_description: str | None = None,
    units: str | None = None,
    categories: Mapping[int, str] | None = None,
    band_tags: Mapping[str, str] | None = None,
) -> Path:
    """Write one band as a Cloud-Optimized GeoTIFF: 512 internal tiles, overviews, deflate.

    GDAL's COG driver only copies from an existing dataset, so a tiled GeoTIFF is written
    beside the target first and removed after. ``resampling`` builds the overviews
    (``average`` for probabilities, ``nearest`` for class codes).

    What QGIS and ``gdalinfo`` show of the band: ``band_description`` (e.g. ``"probability"``)
    and ``units`` (e.g. ``"0-1"``) are stored in the file itself; ``band_tags`` are band
    metadata items; ``categories`` (class code -> name) makes a thematic raster: its category
    names and a raster attribute table (value, class name, pixel count and, with a
    ``colormap``, the class colour) go to ``<path>.aux.xml``, GDAL's own sidecar for them (a
    GeoTIFF has no tag for either; GDAL writes them there too, and QGIS reads both).
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
            if band_description:
                dst.set_band_description(1, band_description)
            if units:
                dst.set_band_unit(1, units)
            if band_tags:
                dst.update_tags(1, **band_tags)
        predictor = "YES" if array.dtype.kind == "f" else "NO"
        rasterio.shutil.copy(
            scratch, path, driver="COG", BLOCKSIZE=512, COMPRESS="DEFLATE", PREDICTOR=predictor,
            OVERVIEW_RESAMPLING=resampling.upper(), OVERVIEW_COUNT=cog_overview_count(h, w),
        )
    finally:
        scratch.unlink(missing_ok=True)
        Path(f"{scratch}.aux.xml").unlink(missing_ok=True)
    aux = Path(f"{path}.aux.xml")
    if categories:
        aux.write_text(category_pam_xml(array, categories, colormap))
    else:
        aux.unlink(missing_ok=True)  # a stale sidecar would relabel the new band
    return path


def category_pam_xml(
    array: np.ndarray, categories: Mapping[int, str], colormap: Mapping[int, tuple[int, ...]] | None = None
) -> str:
    """GDAL's PAM sidecar (``.aux.xml``) giving band 1 category names and a thematic attribute table.

    Category names are a list indexed by pixel value (GDAL's ``GetCategoryNames``); the table
    has one row per class: ``Value`` (min-max usage), ``Class`` (name usage), ``Count`` (pixel
    count) and, with a colour map, ``Red``/``Green``/``Blue``/``Alpha`` (0-255).
    """
    from xml.sax.saxutils import escape

    codes = sorted(int(c) for c in categories)
    if codes and codes[0] < 0:
        raise ValueError(f"category codes must be non-negative pixel values, got {codes[0]}")
    counts = np.bincount(np.asarray(array).ravel().astype(np.int64), minlength=max(codes, default=0) + 1) \
        if np.issubdtype(np.asarray(array).dtype, np.integer) and np.asarray(array).size else None
    # GDALRATFieldType: 0 integer, 2 string; GDALRATFieldUsage: 1 pixel count, 2 name, 5 min-max, 6-9 RGBA
    fields = [("Value", 0, 5), ("Class", 2, 2), ("Count", 0, 1)]
    if colormap is not None:
        fields += [("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8), ("Alpha", 0, 9)]
    lines = ["<PAMDataset>", '  <PAMRasterBand band="1">', "    <CategoryNames>"]
    names = {int(c): str(n) for c, n in categories.items()}
    lines += [f"      <Category>{escape(names.get(v, ''))}</Category>" for v in range(max(codes, default=-1) + 1)]
    lines += ["    </CategoryNames>", '    <GDALRasterAttributeTable tableType="thematic">']
    lines += [
        f'      <FieldDefn index="{i}"><Name>{n}</Name><Type>{t}</Type><Usage>{u}</Usage></FieldDefn>'
        for i, (n, t, u) in enumerate(fields)
    ]
    for row, code in enumerate(codes):
        count = int(counts[code]) if counts is not None and code < len(counts) else 0
        cells = [str(code), escape(names[code]), str(count)]
        if colormap is not None:
            rgba = tuple(colormap.get(code, (0, 0, 0, 0))) + (255,)
            cells += [str(int(v)) for v in rgba[:4]]
        lines.append(f'      <Row index="{row}">' + "".join(f"<F>{c}</F>" for c in cells) + "</Row>")
    lines += ["    </GDALRasterAttributeTable>", "  </PAMRasterBand>", "</PAMDataset>", ""]
    return "\n".join(lines)


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
    ``outlines`` (list of lists of map-coordinate (x, y) rings). Axes are map coordinates.
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
