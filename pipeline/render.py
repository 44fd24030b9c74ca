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

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine

from pipeline.geojson import from_wgs84, polygons

# matplotlib (~0.15 s) and dask are imported where a picture is drawn or a thumbnail computed:
# a stage that writes no picture does not pay for them. Pictures go to files only (Agg): never
# a window, whatever the user's backend setting.

__all__ = [
    "PROBABILITY_CMAP", "category_pam_xml", "class_rings", "cog_overview_count", "nice_length", "outline_rings",
    "plot_precision_recall", "quicklook_figure", "render_quicklook", "survey_thumbnail", "write_cog",
]


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
    import dask

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


#: The colour map of probability overlays: perceptually uniform with lightness rising from
#: dark blue-violet through magenta to yellow, so 0.3, 0.5 and 0.7 read as distinct hues
#: over the grey imagery drawn beneath (magma over colour imagery turned 0.3-0.6 into mud).
PROBABILITY_CMAP = "plasma"


def nice_length(metres: float) -> float:
    """The largest 1, 2 or 5 × 10^k metres not above ``metres``: a scale bar's length."""
    if metres <= 0:
        return 0.0
    k = math.floor(math.log10(metres))
    for step in (5, 2, 1):
        if step * 10**k <= metres:
            return float(step * 10**k)
    return float(10**k)


def _length_label(metres: float) -> str:
    return f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"


def _crs_name(crs: Any) -> str:
    from rasterio.crs import CRS

    crs = crs if isinstance(crs, CRS) else CRS.from_user_input(crs)
    epsg = crs.to_epsg()
    name = crs.to_dict(projjson=True).get("name") if hasattr(crs, "to_dict") else None
    name = name or crs.to_string()
    return f"{name} (EPSG:{epsg})" if epsg else name


def _true_north_angle(crs: Any, x: float, y: float) -> float:
    """Degrees clockwise from the map's up direction to true north at map point (x, y)."""
    from rasterio.warp import transform as warp

    (lon,), (lat,) = warp(crs, "EPSG:4326", [x], [y])
    xs, ys = warp("EPSG:4326", crs, [lon, lon], [lat, min(lat + 0.01, 89.99)])
    return math.degrees(math.atan2(xs[1] - xs[0], ys[1] - ys[0]))


def _map_furniture(ax, crs: Any, extent: tuple[float, float, float, float]) -> None:
    """Axis labels in the CRS's terms, a scale bar and a north arrow on one map panel."""
    from matplotlib import patheffects
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    from pipeline.units import ground_size

    left, right, bottom, top = extent
    cx, cy = (left + right) / 2, (bottom + top) / 2
    geographic = crs.is_geographic
    if geographic:
        ax.set_xlabel("longitude (°E)", fontsize=8)
        ax.set_ylabel("latitude (°N)", fontsize=8)
        ax.set_aspect(1 / max(math.cos(math.radians(cy)), 1e-6))  # a degree of longitude is shorter
    else:
        unit = crs.linear_units or "map units"
        unit = {"metre": "m", "meter": "m"}.get(unit, unit)
        ax.set_xlabel(f"easting ({unit})", fontsize=8)
        ax.set_ylabel(f"northing ({unit})", fontsize=8)
        ax.set_aspect("equal")
    # Scale bar: about a fifth of the panel's width, a round number of metres.
    metres_per_unit = ground_size(crs, 1.0, 1.0, (cx, cy))[0]
    bar_m = nice_length((right - left) * metres_per_unit / 5)
    if bar_m > 0:
        ax.add_artist(AnchoredSizeBar(
            ax.transData, bar_m / metres_per_unit, _length_label(bar_m), "lower left", pad=0.4,
            borderpad=0.5, sep=3, frameon=True, size_vertical=(top - bottom) / 120, color="black",
            fontproperties={"size": 8},
        ))
    # North arrow: true north at the panel's centre (UTM grid north differs by a degree or two).
    angle = math.radians(_true_north_angle(crs, cx, cy))
    length = 0.07
    tail = (0.94 - length / 2 * math.sin(angle), 0.80 - length / 2 * math.cos(angle))
    tip = (0.94 + length / 2 * math.sin(angle), 0.80 + length / 2 * math.cos(angle))
    halo = [patheffects.withStroke(linewidth=3, foreground="white")]
    ax.annotate("", xy=tip, xytext=tail, xycoords="axes fraction",
                arrowprops={"arrowstyle": "-|>", "color": "black", "lw": 1.5, "mutation_scale": 12,
                            "path_effects": halo})
    ax.text(tip[0], tip[1] + 0.015, "N", transform=ax.transAxes, ha="center", va="bottom", fontsize=9,
            fontweight="bold", path_effects=halo)


def _grey(image: np.ndarray) -> np.ndarray:
    """An RGB image as lightened grey (Rec. 709 luminance), for colour overlays to read on."""
    lum = image[..., :3] @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    lum = 0.25 + 0.75 * lum  # lifted: the darkest water stays lighter than plasma's dark end
    return np.repeat(lum[..., None], 3, axis=-1)


def render_quicklook(
    path: str | os.PathLike,
    panels: Sequence[Mapping[str, Any]],
    title: str,
    dpi: int = 110,
    crs: Any = None,
) -> Path:
    """Draw side-by-side map panels to a PNG a scientist can read.

    Each panel is a dict with ``title``; optional ``image`` (h, w, 3) and ``image_transform``
    (``grey``: draw it in grey, so a colour overlay reads); optional ``overlay`` (h, w) with
    ``overlay_transform``, ``cmap`` (name or Colormap), ``vmin``/``vmax``, ``alpha``, ``norm``,
    ``mask_below`` and ``colorbar`` label (``ticks``/``ticklabels``); optional ``outlines``
    (list of rings of map-coordinate (x, y)) in ``outline_color``; optional ``shapes``: a list
    of ``{"rings", "colour", "label"}`` drawn as outlines with a light fill, and ``points``: a
    list of (xs, ys, colour, label) groups of map-coordinate markers, both listed in a legend.
    With ``crs`` each panel gets axes named in the CRS's terms (longitude/latitude for a
    geographic CRS, with the aspect of the ground), a scale bar, a north arrow, and the figure
    names the CRS. The figure is cut to its content (no blank margins).
    """
    import matplotlib.pyplot as plt

    fig = quicklook_figure(panels, title, crs)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.08)
    plt.close(fig)
    return Path(path)


def quicklook_figure(panels: Sequence[Mapping[str, Any]], title: str, crs: Any = None):
    """The matplotlib Figure :func:`render_quicklook` saves (close it with ``plt.close``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # here: pyplot's import costs ~0.4 s, paid only when drawing
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.patches import Patch
    from rasterio.crs import CRS

    crs = None if crs is None else (crs if isinstance(crs, CRS) else CRS.from_user_input(crs))
    n = len(panels)
    extents = []
    for panel in panels:
        if panel.get("image") is not None:
            extents.append(_extent(panel["image_transform"], *panel["image"].shape[:2]))
        else:
            extents.append(_extent(panel["overlay_transform"], *np.shape(panel["overlay"])))
    left, right, bottom, top = extents[0]
    aspect = (top - bottom) / max(right - left, 1e-12)
    if crs is not None and crs.is_geographic:
        aspect /= max(math.cos(math.radians((top + bottom) / 2)), 1e-6)
    width = 5.6
    # "compressed": the layout for fixed-aspect maps, which leaves no band of white around them.
    fig, axes = plt.subplots(1, n, figsize=(width * n, width * min(max(aspect, 0.3), 3.0) + 1.3),
                             squeeze=False, layout="compressed")
    for ax, panel, extent in zip(axes[0], panels, extents):
        if panel.get("image") is not None:
            img = _grey(panel["image"]) if panel.get("grey") else panel["image"]
            ax.imshow(img, extent=extent, interpolation="bilinear")
        if panel.get("overlay") is not None:
            ov = np.ma.masked_invalid(np.asarray(panel["overlay"], dtype=np.float64))
            if "mask_below" in panel:
                ov = np.ma.masked_where(ov.filled(-np.inf) < panel["mask_below"], ov)
            shown = ax.imshow(
                ov, extent=_extent(panel["overlay_transform"], *ov.shape), cmap=panel.get("cmap", PROBABILITY_CMAP),
                vmin=panel.get("vmin"), vmax=panel.get("vmax"), norm=panel.get("norm"),
                alpha=panel.get("alpha", 0.7), interpolation="nearest",
            )
            if panel.get("colorbar"):
                cb = fig.colorbar(shown, ax=ax, location="bottom", shrink=0.8, aspect=35, pad=0.01)
                cb.set_label(panel["colorbar"], fontsize=8)
                cb.ax.tick_params(labelsize=7)
                if panel.get("ticks") is not None:
                    cb.set_ticks(panel["ticks"], labels=panel.get("ticklabels"))
        if panel.get("outlines"):  # one collection: thousands of ax.plot calls take seconds
            ax.add_collection(LineCollection(
                [np.asarray(ring) for ring in panel["outlines"]],
                colors=panel.get("outline_color", "cyan"), linewidths=1.0,
            ))
        legend = []
        for group in panel.get("shapes", ()):
            rings = [np.asarray(r) for r in group["rings"]]
            if not rings:
                continue
            ax.add_collection(PolyCollection(rings, facecolors=[(*group["colour"][:3], 0.22)],
                                             edgecolors=[group["colour"]], linewidths=1.2))
            legend.append(Patch(facecolor=(*group["colour"][:3], 0.22), edgecolor=group["colour"],
                                label=group.get("label", "")))
        for xs, ys, colour, label in panel.get("points", ()):
            legend.append(ax.scatter(xs, ys, s=36, facecolors="none", edgecolors=colour, linewidths=1.3, label=label))
        if legend:  # beneath the map, where the other panels have their colour bar
            ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=len(legend),
                      fontsize=7, frameon=False)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_title(panel["title"], fontsize=9)
        ax.ticklabel_format(useOffset=False, style="plain")
        ax.tick_params(labelsize=7)
        if crs is not None:
            _map_furniture(ax, crs, extent)
    fig.suptitle(title + (f"\nCRS: {_crs_name(crs)}" if crs is not None else ""), fontsize=10)
    return fig


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
def class_rings(classes: np.ndarray, transform: Affine, code: int) -> list[list[tuple[float, float]]]:
    """Rings (exterior and holes) of the edge-connected patches of ``code`` in a class raster,
    in map coordinates, for plots."""
    from rasterio.features import shapes

    classes = np.asarray(classes)
    raster = classes if classes.dtype in (np.uint8, np.int16, np.uint16, np.int32) else classes.astype(np.int32)
    rings = []
    for geometry, _ in shapes(raster, mask=classes == code, connectivity=4, transform=transform):
        rings.extend([tuple(map(float, pt)) for pt in ring] for ring in geometry["coordinates"])
    return rings
