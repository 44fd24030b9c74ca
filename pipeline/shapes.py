"""Shapes: adjacent cells of one class dissolved into polygons.

A *class raster* holds one code per map cell (change classes, confidence levels). Written cell by
cell as GeoJSON it is thousands of touching squares (the NAIP change map of 2,372 cells was
2.2 MB) that a GIS draws with every internal edge and counts as thousands of objects. Here the
cells of one class that share an edge (4-connectivity: cells touching at a corner only stay
apart, so no polygon pinches at a vertex) become one polygon, holes included, traced by GDAL's
polygonize along cell edges (:func:`rasterio.features.shapes`). Each shape carries the number of
its cells, its ground area and, for any per-cell *value* arrays given (probabilities), their
mean and maximum over its cells. The cells of a shape are found by burning the polygons back
onto the grid, where a cell belongs to the polygon containing its centre: the polygons follow
cell edges, so that is exact.

Polygons are traced in map coordinates and written as RFC 7946 longitude/latitude
(:func:`pipeline.geojson.to_wgs84`); their vertices are cell corners, and straight edges stay
straight lines between them (fine at the scale of a survey).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from affine import Affine

from pipeline.geojson import feature, feature_collection, to_wgs84
from pipeline.units import cell_area_m2

__all__ = ["dissolve_classes"]


def dissolve_classes(
    classes: np.ndarray,
    transform: Affine,
    crs: Any,
    names: Mapping[int, str],
    values: Mapping[str, np.ndarray] | None = None,
    properties: Mapping[str, Any] | None = None,
) -> dict:
    """An RFC 7946 FeatureCollection with one polygon per edge-connected patch of one class.

    ``classes`` (h, w) integer codes on the north-up grid ``transform`` in ``crs``; only the
    codes in ``names`` (code -> class name) become shapes. Each feature's properties: ``class``,
    ``cells``, ``area_m2``, ``mean_<v>``/``max_<v>`` of each array ``v`` in ``values`` (h, w,
    NaN ignored) over its cells, then ``properties`` (the same for every feature). Features are
    ordered by class code, then largest first; ``id`` is the rank from 1.
    """
    from rasterio.features import rasterize, shapes

    classes = np.asarray(classes)
    if classes.ndim != 2:
        raise ValueError(f"classes must be (h, w), got shape {classes.shape}")
    codes = [c for c in sorted(names) if np.any(classes == c)]
    # GDAL's polygonize reads these types; anything else is copied to int32 (codes are small).
    raster = classes if classes.dtype in (np.uint8, np.int16, np.uint16, np.int32) else classes.astype(np.int32)
    found: list[tuple[int, dict]] = []  # (code, geometry in map coordinates)
    for code in codes:
        mask = classes == code
        for geometry, value in shapes(raster, mask=mask, connectivity=4, transform=transform):
            found.append((code, geometry))
    if not found:
        return feature_collection([])
    # Burn shape k as k + 1 to find each cell's shape (0: in no shape).
    shape_of_cell = rasterize(
        ((g, k + 1) for k, (_, g) in enumerate(found)), out_shape=classes.shape, transform=transform,
        fill=0, dtype="int32", all_touched=False,
    )
    n = len(found) + 1
    flat = shape_of_cell.ravel()
    cells = np.bincount(flat, minlength=n)
    stats: dict[str, np.ndarray] = {}
    for name, array in (values or {}).items():
        v = np.asarray(array, dtype=np.float64).ravel()
        finite = np.isfinite(v)
        total = np.bincount(flat[finite], weights=v[finite], minlength=n)
        count = np.bincount(flat[finite], minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            stats[f"mean_{name}"] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        peak = np.full(n, -np.inf)
        np.maximum.at(peak, flat[finite], v[finite])
        stats[f"max_{name}"] = np.where(np.isfinite(peak), peak, np.nan)
    h, w = classes.shape
    centre = transform * (w / 2, h / 2)
    area = cell_area_m2(crs, transform.a, transform.e, centre)
    rows = []
    for k, (code, geometry) in enumerate(found):
        props: dict[str, Any] = {"class": names[code], "cells": int(cells[k + 1]),
                                 "area_m2": round(float(cells[k + 1] * area), 1)}
        for key, column in stats.items():
            value = float(column[k + 1])
            props[key] = round(value, 6) if np.isfinite(value) else None
        props.update(properties or {})
        rows.append((code, -props["cells"], k, geometry, props))
    rows.sort(key=lambda r: r[:3])
    return feature_collection(
        [feature(to_wgs84(geometry, crs), props, id=i + 1) for i, (_, _, _, geometry, props) in enumerate(rows)]
    )
