"""Results: the output folder a scientist opens after a detection or a change.

A *result* is one output folder (:func:`pipeline.outputs.output_folder`: written whole or not
at all, ``provenance.json`` last) holding, for a **detection** (:func:`write_detection_maps`):

  ``probability.tif``     the probability map, a Cloud-Optimized GeoTIFF of output cells
  ``detections.geojson``  the detections: one point per object (RFC 7946), with its
                          probability, confidence class and longitude/latitude
  ``footprints.geojson``  each detection's footprint polygon (the same ids)
  ``quicklook.png``       the probabilities and detections over the imagery
  ``metrics.json``        with a ground truth: object and cell scores (:mod:`pipeline.evaluate`)
  ``*.stac.json``         a STAC item for the map and one for the detections (:mod:`pipeline.stac`)

and for a **change** between two dates (:func:`write_change_maps`):

  ``change.tif``          class codes (0 none, 1 new, 2 gone, 3 persisting, 4 uncertain,
                          255 nodata) drawn from the objects, with a colour table;
                          ``change.tif.aux.xml`` names the classes (category names and a raster
                          attribute table, for QGIS's legend)
  ``change.geojson``      one point per change object with its class and both probabilities
  ``change.png``          before, after and change side by side
  ``change.stac.json``    a STAC item for the change
  ``metrics.json``        with a ground truth: object scores per class, the confusion table,
                          and cell scores

Detections are the peaks of the map at or above the threshold, lesser peaks within half the
model's footprint suppressed (:func:`pipeline.detections.find_peaks`). This module only
composes: the maths, the drawing and the scores live in the modules named.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
from rasterio.warp import transform as warp_transform

from pipeline.change import CLASS_COLOURS, CLASS_NAMES, GONE, NEW, NODATA, PERSISTING, UNCERTAIN, ChangeResult
from pipeline.detections import CONFIDENCE_LEVELS, Points, confidence_class, find_peaks, footprints
from pipeline.errors import InputError
from pipeline.evaluate import (
    CANDIDATE_FLOOR,
    ChangeObjects,
    cell_metrics,
    change_metrics,
    evaluate_change,
    evaluate_detections,
)
from pipeline.files import file_sha256
from pipeline.geojson import feature, feature_collection, to_wgs84
from pipeline.maps import PROBABILITY_NODATA, cells_beyond
from pipeline.outputs import output_folder
from pipeline.provenance import base_provenance, model_provenance, survey_provenance
from pipeline.render import PROBABILITY_CMAP, class_rings, outline_rings, render_quicklook, survey_thumbnail, write_cog
from pipeline.stac import MEDIA_TYPES, model_item_file, write_item, write_model_item
from pipeline.truth import read_truth

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.detect import ProbabilityMap
    from pipeline.store import Store, Survey

__all__ = ["DETECTION_FILES", "CHANGE_FILES", "check_probability", "detections_of", "write_detection_maps", "write_change_maps"]

#: File names inside a detection output folder.
DETECTION_FILES = {
    "probability": "probability.tif",
    "detections": "detections.geojson",
    "footprints": "footprints.geojson",
    "quicklook": "quicklook.png",
    "metrics": "metrics.json",
    "probability_item": "probability.stac.json",
    "detections_item": "detections.stac.json",
}

#: How a probability COG's band reads in QGIS and gdalinfo (render.write_cog's keywords).
PROBABILITY_BAND = {
    "band_description": "probability",
    "units": "0-1",
    "band_tags": {"long_name": "probability that a target lies in the window centred on the cell",
                  "valid_min": "0", "valid_max": "1"},
}

#: File names inside a change output folder.
CHANGE_FILES = {
    "change": "change.tif",
    "categories": "change.tif.aux.xml",
    "change_item": "change.stac.json",
    "geojson": "change.geojson",
    "quicklook": "change.png",
    "metrics": "metrics.json",
}


def check_probability(value: float, option: str = "--threshold") -> float:
    """``value`` as a float if it is a probability in [0, 1], else :class:`InputError` naming ``option``."""
    if not 0.0 <= float(value) <= 1.0:
        raise InputError(f"{option} must be a probability between 0 and 1, got {value}")
    return float(value)


def _result_files(written: dict, extra: dict) -> dict[str, Any]:
    # The metrics *file* is "metrics_file": "metrics" is the report itself.
    return {("metrics_file" if name == "metrics" else name): path for name, path in written.items()} | extra


def detections_of(pm: "ProbabilityMap", threshold: float) -> Points:
    """The detections of a probability map: its peaks at or above ``threshold``, lesser peaks
    within half the model's footprint suppressed, strongest first."""
    return find_peaks(pm.values, pm.transform, pm.footprint_m / 2, threshold)


def _lonlat(x: np.ndarray, y: np.ndarray, crs: Any) -> tuple[list[float], list[float]]:
    if len(x) == 0:
        return [], []
    lon, lat = warp_transform(crs, "EPSG:4326", list(map(float, x)), list(map(float, y)))
    return list(lon), list(lat)


def write_detection_maps(
    store: "Store",
    pm: "ProbabilityMap",
    out_dir: str | os.PathLike,
    threshold: float | None = None,
    truth: str | os.PathLike | None = None,
    overwrite: bool = False,
    client: Any = None,
    where: dict | None = None,
    drift: dict | None = None,
) -> dict[str, Any]:
    """Write the detection outputs of one scored survey into ``out_dir``, all or nothing.

    ``threshold`` defaults to the model's decision threshold. ``truth`` (a GeoJSON path) adds
    ``metrics.json`` (targets chosen by ``where``). ``drift``: the drift check of the survey
    (:func:`pipeline.drift.check_drift`), recorded in the provenance. Returns the output files
    (Paths) by name, plus ``n_detections`` and ``metrics`` (the report, or None).
    """
    threshold = check_probability(pm.threshold if threshold is None else threshold)
    truth_data = read_truth(truth) if truth is not None else None  # fail before any work
    survey = store.survey(pm.survey_id)
    radius = pm.footprint_m / 2
    provenance = base_provenance("detect", {
        "threshold": threshold, "footprint_m": pm.footprint_m, "cell_m": pm.cell_m, "suppression_radius_m": radius,
        "model_type": pm.model_type, "grid": pm.grid, "confidence_levels": dict(CONFIDENCE_LEVELS),
        "truth": str(truth) if truth is not None else None, "where": where,
    })
    provenance["inputs"] = {
        "survey": survey_provenance(survey),
        "model": model_provenance(store, pm.model_id),
        "model_input": pm.spec,
        "reading": pm.reading,
        "truth_sha256": file_sha256(truth) if truth is not None else None,
        "predictions": pm.path,
    }
    provenance["drift"] = drift
    provenance["n_scored_cells"] = int(np.isfinite(pm.values).sum())
    detections = detections_of(pm, threshold)
    metrics = None
    with output_folder(out_dir, DETECTION_FILES, provenance, overwrite) as folder:
        values = np.array(pm.values, dtype=np.float32)
        values[cells_beyond(pm.transform, values.shape, survey.bounds)] = PROBABILITY_NODATA
        write_cog(folder.path("probability"), values, pm.transform, pm.crs, PROBABILITY_NODATA,
                  tags={"survey_id": survey.id, "model_id": pm.model_id,
                        "rule": "probability of a target in the window centred on the cell"},
                  **PROBABILITY_BAND)
        lon, lat = _lonlat(detections.x, detections.y, pm.crs)
        shapes = footprints(pm.values, pm.transform, detections, threshold, radius)
        points, polygons = [], []
        for i, (x, y, p, shape) in enumerate(zip(detections.x, detections.y, detections.probability, shapes), start=1):
            props = {"id": i, "probability": round(float(p), 6), "confidence": confidence_class(float(p)),
                     "lon": round(lon[i - 1], 8), "lat": round(lat[i - 1], 8), "threshold": threshold,
                     "survey_id": survey.id, "model_id": pm.model_id}
            points.append(feature(to_wgs84({"type": "Point", "coordinates": [float(x), float(y)]}, pm.crs), props, id=i))
            if shape is not None:
                polygons.append(feature(to_wgs84(shape, pm.crs), {"id": i, "probability": props["probability"]}, id=i))
        folder.write_json("detections", feature_collection(points))
        folder.write_json("footprints", feature_collection(polygons))
        thumb, thumb_transform = survey_thumbnail(survey, client=client)
        render_quicklook(
            folder.path("quicklook"),
            [{
                "title": f"probability ({pm.cell_m:g} m cells), {len(detections)} detections ≥ {threshold:.2f}",
                "image": thumb, "image_transform": thumb_transform, "grey": True,
                "overlay": pm.values, "overlay_transform": pm.transform, "cmap": PROBABILITY_CMAP,
                "vmin": 0.0, "vmax": 1.0, "alpha": 0.7, "mask_below": min(0.2, threshold),
                "colorbar": "probability",
                "outlines": outline_rings(feature_collection(polygons), pm.crs), "outline_color": "black",
                "points": [(detections.x, detections.y, "cyan", "detection")],
            }],
            title=f"{survey.id} — model {pm.model_id}", crs=pm.crs,
        )
        provenance["n_detections"] = len(detections)
        _detection_items(store, folder, survey, pm)
        if truth_data is not None:
            candidates = find_peaks(pm.values, pm.transform, radius, CANDIDATE_FLOOR)
            metrics = evaluate_detections(candidates, pm.crs, truth_data, threshold, radius, pm.scored_area_km2,
                                          survey.date, where)
            metrics["cell"] = cell_metrics(pm, truth_data, survey.date, where)
            metrics["date"] = survey.date.isoformat()
            folder.write_json("metrics", metrics)
    return _result_files(folder.written(), {"n_detections": len(detections), "metrics": metrics})


def write_change_maps(
    store: "Store",
    result: ChangeResult,
    out_dir: str | os.PathLike,
    truth: str | os.PathLike | None = None,
    overwrite: bool = False,
    client: Any = None,
    where: dict | None = None,
) -> dict[str, Any]:
    """Write the change outputs into ``out_dir``, all or nothing (files: the module docstring).

    Returns the output files (Paths) by name, plus ``counts`` (objects per class) and
    ``metrics`` (the report, or None).
    """
    truth_data = read_truth(truth) if truth is not None else None
    before_s = store.survey(result.before.survey_id)
    after_s = store.survey(result.after.survey_id)
    provenance = base_provenance("change", {
        **result.settings, **result.thresholds.to_dict(),
        "classes": {str(k): v for k, v in CLASS_NAMES.items()} | {"255": "nodata"},
        "truth": str(truth) if truth is not None else None, "where": where,
    })
    provenance["inputs"] = {
        "before": survey_provenance(before_s),
        "after": survey_provenance(after_s),
        "model": model_provenance(store, result.before.model_id),
        "predictions": {"before": result.before.path, "after": result.after.path},
        "truth_sha256": file_sha256(truth) if truth is not None else None,
    }
    provenance["counts"] = result.counts()
    metrics = None
    with output_folder(out_dir, CHANGE_FILES, provenance, overwrite) as folder:
        write_cog(
            folder.path("change"), result.classes_map, result.transform, result.crs, NODATA,
            colormap=CLASS_COLOURS, resampling="nearest",
            tags={"classes": "0 none, 1 new, 2 gone, 3 persisting, 4 uncertain, 255 nodata",
                  "before": before_s.id, "after": after_s.id, "model_id": result.before.model_id},
            band_description="change class", categories=CLASS_NAMES,
        )
        lon, lat = _lonlat(result.x, result.y, result.crs)
        objects = []
        for i, (x, y, pb, pa, code) in enumerate(zip(result.x, result.y, result.p_before, result.p_after, result.classes), start=1):
            props = {"id": i, "class": CLASS_NAMES.get(int(code), "nodata"),
                     "p_before": None if not np.isfinite(pb) else round(float(pb), 6),
                     "p_after": None if not np.isfinite(pa) else round(float(pa), 6),
                     "probability": round(float(np.nanmax([pb, pa, 0.0])), 6),
                     "lon": round(lon[i - 1], 8), "lat": round(lat[i - 1], 8),
                     "before": before_s.id, "after": after_s.id, "model_id": result.before.model_id}
            objects.append(feature(to_wgs84({"type": "Point", "coordinates": [float(x), float(y)]}, result.crs), props, id=i))
        folder.write_json("geojson", feature_collection(objects))
        _render_change(folder.path("quicklook"), result, before_s, after_s, client)
        _change_item(store, folder, result, before_s, after_s)
        if truth_data is not None:
            reported = np.isin(result.classes, (NEW, GONE, PERSISTING))
            predicted = ChangeObjects(result.x[reported], result.y[reported],
                                      np.fmax(result.p_before, result.p_after)[reported],
                                      np.array([CLASS_NAMES[int(c)] for c in result.classes[reported]], dtype=object))
            metrics = evaluate_change(predicted, result.crs, truth_data, before_s.date, after_s.date, result.radius_m, where)
            metrics["cell"] = change_metrics(result, truth_data, before_s.date, after_s.date, where)
            folder.write_json("metrics", metrics)
    return _result_files(folder.written(), {"counts": result.counts(), "metrics": metrics})


def _stac_sources(store: "Store", surveys: list["Survey"], model_id: str) -> list[dict[str, str]]:
    """derived_from links of an output: its surveys in the store and its model's STAC item."""
    sources = [{"href": str(store.survey_dir(s.id)), "title": f"survey {s.id} ({s.source_name})",
                "type": MEDIA_TYPES[".zarr"]} for s in surveys]
    model_item = model_item_file(store.models_dir, model_id)
    if (store.models_dir / f"{model_id}.json").is_file():
        if not model_item.is_file():
            write_model_item(store.models_dir, model_id, training_footprints(store, model_id))
        sources.append({"href": str(model_item), "title": f"model {model_id}", "type": "application/geo+json"})
    return sources


def training_footprints(store: "Store", model_id: str) -> list[tuple[tuple[float, ...], Any]]:
    """(bounds, crs) of the surveys a stored model was trained on that the store still holds."""
    import json

    meta = json.loads((store.models_dir / f"{model_id}.json").read_text())
    surveys = ((meta.get("metadata") or {}).get("training") or {}).get("surveys") or []
    ids = [s.get("id") for s in surveys if isinstance(s, dict)]
    return [(store.survey(i).bounds, store.survey(i).crs) for i in ids if i in store.survey_ids()]


def _detection_items(store: "Store", folder: Any, survey: "Survey", pm: "ProbabilityMap") -> None:
    sources = _stac_sources(store, [survey], pm.model_id)
    common = dict(bounds=survey.bounds, crs=survey.crs, datetime=survey.date, sources=sources,
                  extra_assets={"overview": {"path": folder.path("quicklook"), "title": "quicklook", "roles": ["overview"]},
                                "provenance": {"path": folder.path("provenance"), "title": "provenance", "roles": ["metadata"]}})
    write_item(folder.path("probability"), path=folder.path("probability_item"), item_id=f"{survey.id}-probability-{pm.model_id}",
               title=f"probability map of {survey.id}, model {pm.model_id}",
               description=f"Probability (0-1) that a target lies in the model's {pm.footprint_m:g} m window centred on "
                           f"each {pm.cell_m:g} m cell; nodata where the window is mostly outside the survey's data.",
               transform=pm.transform, shape=pm.values.shape, **common)
    write_item(folder.path("detections"), path=folder.path("detections_item"), item_id=f"{survey.id}-detections-{pm.model_id}",
               title=f"detections in {survey.id}, model {pm.model_id}",
               description="Detections (RFC 7946 GeoJSON points, WGS84): the peaks of the probability map at or above "
                           "the threshold, with their probability and a confidence class.",
               **common)


def _change_item(store: "Store", folder: Any, result: ChangeResult, before: "Survey", after: "Survey") -> None:
    h, w = result.classes_map.shape
    left, top = result.transform * (0, 0)
    right, bottom = result.transform * (w, h)
    bounds = (max(left, before.bounds[0], after.bounds[0]), max(bottom, before.bounds[1], after.bounds[1]),
              min(right, before.bounds[2], after.bounds[2]), min(top, before.bounds[3], after.bounds[3]))
    model_id = result.before.model_id
    write_item(
        folder.path("change"), path=folder.path("change_item"), item_id=f"{before.id}..{after.id}-change-{model_id}",
        title=f"change {before.id} -> {after.id}, model {model_id}",
        description="New, gone and persisting objects between two dates: class codes (COG with category names) "
                    "and one point per object (GeoJSON).",
        bounds=bounds, crs=result.crs, start=before.date, end=after.date, transform=result.transform, shape=(h, w),
        sources=_stac_sources(store, [before, after], model_id),
        extra_assets={
            "vector": {"path": folder.path("geojson"), "title": "change objects (GeoJSON)", "roles": ["data"]},
            "categories": {"path": folder.path("categories"), "title": "class names (GDAL PAM)", "roles": ["metadata"]},
            "overview": {"path": folder.path("quicklook"), "title": "quicklook", "roles": ["overview"]},
            "provenance": {"path": folder.path("provenance"), "title": "provenance", "roles": ["metadata"]},
        },
        properties={"damwatch:counts": result.counts()},
    )


def _render_change(path: os.PathLike, result: ChangeResult, before: "Survey", after: "Survey", client: Any) -> None:
    panels = []
    for survey, pm in ((before, result.before), (after, result.after)):
        thumb, thumb_transform = survey_thumbnail(survey, client=client)
        panels.append({
            "title": f"{survey.id}: probability",
            "image": thumb, "image_transform": thumb_transform, "grey": True,
            "overlay": pm.values, "overlay_transform": pm.transform, "cmap": PROBABILITY_CMAP,
            "vmin": 0.0, "vmax": 1.0, "alpha": 0.7, "mask_below": result.thresholds.low,
            "colorbar": "probability",
        })
    counts = result.counts()
    # The change is drawn as outlined shapes with a light fill, so the imagery stays visible,
    # and each object as a marker of its class's colour.
    colour = {c: tuple(np.array(CLASS_COLOURS[c][:3]) / 255) for c in (NEW, GONE, PERSISTING, UNCERTAIN)}
    panels.append({
        "title": "change: " + ", ".join(f"{n} {counts[n]}" for n in ("new", "gone", "persisting", "uncertain")),
        "image": panels[1]["image"], "image_transform": panels[1]["image_transform"], "grey": True,
        "shapes": [
            {"rings": class_rings(result.classes_map, result.transform, code), "colour": colour[code],
             "label": f"{CLASS_NAMES[code]} ({counts[CLASS_NAMES[code]]})"}
            for code in (NEW, GONE, PERSISTING, UNCERTAIN) if (result.classes == code).any()
        ],
    })
    render_quicklook(path, panels, title=f"change {before.id} → {after.id}, model {result.before.model_id}",
                     crs=result.crs)
