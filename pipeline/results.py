"""Results: the output folder a scientist opens after a detection or a change.

A *result* is one output folder (:func:`pipeline.outputs.output_folder`: written whole or not
at all, ``provenance.json`` last) holding, for a **detection** (:func:`write_detection_maps`):

  ``probability.tif``     probability map, a Cloud-Optimized GeoTIFF (:mod:`pipeline.maps`)
  ``detections.geojson``  the detections, RFC 7946 (:mod:`pipeline.detections`)
  ``quicklook.png``       the probabilities and detections over the imagery
  ``metrics.json``        with a ground truth: the scores of :mod:`pipeline.evaluate`

and for a **change** between two dates (:func:`write_change_maps`):

  ``change.tif``          class codes (0 none, 1 new, 2 gone, 3 persisting, 255 nodata) with
                          a colour table; ``change.tif.aux.xml`` names the classes (category
                          names and a raster attribute table, for QGIS's legend)
  ``change.geojson``      one polygon per patch of edge-adjacent new/gone/persisting cells
                          (:mod:`pipeline.shapes`), with its cell count, area and the mean and
                          maximum of both probabilities
  ``change.png``          before, after and change side by side
  ``metrics.json``        with a ground truth

This module only composes: the maths, the drawing and the scores live in the modules named.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.change import CLASS_COLOURS, CLASS_NAMES, GONE, NEW, NODATA, PERSISTING, ChangeResult
from pipeline.detections import CONFIDENCE_LEVELS, detections_geojson
from pipeline.errors import InputError
from pipeline.evaluate import change_metrics, detection_metrics, read_truth
from pipeline.files import file_sha256
from pipeline.maps import PROBABILITY_NODATA, cells_beyond, probability_map
from pipeline.outputs import output_folder
from pipeline.provenance import base_provenance, model_provenance, survey_provenance
from pipeline.render import PROBABILITY_CMAP, class_rings, outline_rings, render_quicklook, survey_thumbnail, write_cog
from pipeline.shapes import dissolve_classes
from pipeline.stac import MEDIA_TYPES, model_item_file, write_item, write_model_item

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.detect import Predictions
    from pipeline.store import Store, Survey

__all__ = ["DETECTION_FILES", "CHANGE_FILES", "check_probability", "write_detection_maps", "write_change_maps"]

#: File names inside a detection output folder.
DETECTION_FILES = {
    "probability": "probability.tif",
    "detections": "detections.geojson",
    "quicklook": "quicklook.png",
    "metrics": "metrics.json",
    "probability_item": "probability.stac.json",
    "detections_item": "detections.stac.json",
}

#: The change classes drawn as shapes in change.geojson ("none" is the background).
CHANGE_SHAPE_CLASSES = {NEW: CLASS_NAMES[NEW], GONE: CLASS_NAMES[GONE], PERSISTING: CLASS_NAMES[PERSISTING]}

#: How a probability COG's band reads in QGIS and gdalinfo (render.write_cog's keywords).
PROBABILITY_BAND = {
    "band_description": "probability",
    "units": "0-1",
    "band_tags": {"long_name": "probability that the target is present", "valid_min": "0", "valid_max": "1"},
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


def write_detection_maps(
    store: "Store",
    predictions: "Predictions",
    out_dir: str | os.PathLike,
    threshold: float | None = None,
    truth: str | os.PathLike | None = None,
    overwrite: bool = False,
    cell: int | None = None,
    client: Any = None,
) -> dict[str, Any]:
    """Write the detection outputs of one scored survey into ``out_dir``, all or nothing.

    ``threshold`` defaults to the model's decision threshold; ``cell`` (survey pixels) to the
    grid's stride. ``truth`` (a GeoJSON path) adds ``metrics.json``. Returns the output files
    (Paths) by name: ``probability``, ``detections``, ``quicklook``, ``provenance`` and, with
    truth, ``metrics_file``; plus ``n_detections`` (int) and ``metrics`` (the report, or None).
    """
    threshold = check_probability(predictions.threshold if threshold is None else threshold)
    truth_data = read_truth(truth) if truth is not None else None  # fail before any work
    survey = store.survey(predictions.survey_id)
    grid = predictions.grid
    cell = int(cell or grid.stride)
    provenance = base_provenance("detect", {
        "threshold": threshold, "map_cell_px": cell,
        "overlap_rule": "mean of scored tiles whose footprint contains the cell centre",
        "confidence_levels": dict(CONFIDENCE_LEVELS),
        "truth": str(truth) if truth is not None else None,
    })
    provenance["inputs"] = {
        "survey": survey_provenance(survey),
        "model": model_provenance(store, predictions.model_id),
        "feature_spec": predictions.spec,
        "truth_sha256": file_sha256(truth) if truth is not None else None,
        "predictions": predictions.path,
    }
    provenance["tile_grid"] = grid.to_dict()
    provenance["n_scored_tiles"] = int(np.isfinite(predictions.probabilities).sum())
    metrics = None
    with output_folder(out_dir, DETECTION_FILES, provenance, overwrite) as folder:
        values, map_transform = probability_map(predictions.probabilities, grid, cell)
        values[cells_beyond(map_transform, values.shape, survey.bounds)] = PROBABILITY_NODATA
        write_cog(
            folder.path("probability"), values, map_transform, grid.crs, PROBABILITY_NODATA,
            tags={"survey_id": survey.id, "model_id": predictions.model_id, "rule": "mean of scored tiles containing the cell centre"},
            **PROBABILITY_BAND,
        )
        detections = detections_geojson(
            predictions.probabilities, grid, threshold, {"survey_id": survey.id, "model_id": predictions.model_id}
        )
        folder.write_json("detections", detections)
        thumb, thumb_transform = survey_thumbnail(survey, client=client)
        render_quicklook(
            folder.path("quicklook"),
            [{
                "title": f"tile probability (cells of {cell} px), {len(detections['features'])} detections ≥ {threshold:.2f}",
                "image": thumb, "image_transform": thumb_transform,
                "grey": True, "overlay": values, "overlay_transform": map_transform, "cmap": PROBABILITY_CMAP,
                "vmin": 0.0, "vmax": 1.0, "alpha": 0.7, "mask_below": min(0.2, threshold),
                "colorbar": "probability", "outlines": outline_rings(detections, grid.crs), "outline_color": "black",
            }],
            title=f"{survey.id} — model {predictions.model_id}", crs=grid.crs,
        )
        provenance["n_detections"] = len(detections["features"])
        _detection_items(store, folder, survey, predictions.model_id, map_transform, values.shape)
        if truth_data is not None:
            metrics = detection_metrics(predictions.probabilities, grid, truth_data, threshold, survey.date)
            folder.write_json("metrics", metrics)
    return _result_files(folder.written(), {"n_detections": len(detections["features"]), "metrics": metrics})


def write_change_maps(
    store: "Store",
    result: ChangeResult,
    out_dir: str | os.PathLike,
    truth: str | os.PathLike | None = None,
    overwrite: bool = False,
    client: Any = None,
) -> dict[str, Any]:
    """Write the change outputs into ``out_dir``, all or nothing (files: the module docstring).

    Returns the output files (Paths) by name: ``change``, ``geojson``, ``quicklook``,
    ``provenance`` and, with truth, ``metrics_file``; plus ``counts`` (cells per class) and
    ``metrics`` (the report, or None).
    """
    truth_data = read_truth(truth) if truth is not None else None
    before_s = store.survey(result.before.survey_id)
    after_s = store.survey(result.after.survey_id)
    grid = result.grid
    provenance = base_provenance("change", {
        **result.settings, **result.thresholds.to_dict(),
        "classes": {str(k): v for k, v in CLASS_NAMES.items()} | {"255": "nodata"},
        "truth": str(truth) if truth is not None else None,
    })
    provenance["inputs"] = {
        "before": survey_provenance(before_s),
        "after": survey_provenance(after_s),
        "model": model_provenance(store, result.before.model_id),
        "feature_spec": result.before.spec,
        "truth_sha256": file_sha256(truth) if truth is not None else None,
    }
    provenance["tile_grids"] = {"before": result.before.grid.to_dict(), "after": result.after.grid.to_dict()}
    provenance["change_grid"] = grid.to_dict()
    provenance["counts"] = result.counts()
    metrics = None
    with output_folder(out_dir, CHANGE_FILES, provenance, overwrite) as folder:
        write_cog(
            folder.path("change"), result.classes, grid.transform, grid.crs, NODATA,
            colormap=CLASS_COLOURS, resampling="nearest",
            tags={"classes": "0 none, 1 new, 2 gone, 3 persisting, 255 nodata",
                  "before": before_s.id, "after": after_s.id, "model_id": result.before.model_id},
            band_description="change class", categories=CLASS_NAMES,
        )
        folder.write_json("geojson", dissolve_classes(
            result.classes, grid.transform, grid.crs, CHANGE_SHAPE_CLASSES,
            values={"p_before": result.p_before, "p_after": result.p_after},
            properties={"before": before_s.id, "after": after_s.id, "model_id": result.before.model_id},
        ))
        _render_change(folder.path("quicklook"), result, before_s, after_s, client)
        _change_item(store, folder, result, before_s, after_s)
        if truth_data is not None:
            tile_map = result.before.grid.size * max(abs(result.before.grid.transform.a), abs(result.after.grid.transform.a))
            metrics = change_metrics(result, truth_data, before_s, after_s, tile_map)
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


def _detection_items(store: "Store", folder: Any, survey: "Survey", model_id: str, transform: Any, shape: tuple) -> None:
    sources = _stac_sources(store, [survey], model_id)
    common = dict(bounds=survey.bounds, crs=survey.crs, datetime=survey.date, sources=sources,
                  extra_assets={"overview": {"path": folder.path("quicklook"), "title": "quicklook", "roles": ["overview"]},
                                "provenance": {"path": folder.path("provenance"), "title": "provenance", "roles": ["metadata"]}})
    write_item(folder.path("probability"), path=folder.path("probability_item"), item_id=f"{survey.id}-probability-{model_id}",
               title=f"probability map of {survey.id}, model {model_id}",
               description="Probability (0-1) that the target is in each map cell: the mean probability of the scored "
                           "tiles containing the cell's centre; nodata beyond the survey.",
               transform=transform, shape=shape, **common)
    write_item(folder.path("detections"), path=folder.path("detections_item"), item_id=f"{survey.id}-detections-{model_id}",
               title=f"detections in {survey.id}, model {model_id}",
               description="Detections (RFC 7946 GeoJSON, WGS84) with peak and mean probability and a confidence class.",
               **common)


def _change_item(store: "Store", folder: Any, result: ChangeResult, before: "Survey", after: "Survey") -> None:
    grid = result.grid
    h, w = result.classes.shape
    left, top = grid.transform * (0, 0)
    right, bottom = grid.transform * (w, h)
    bounds = (max(left, before.bounds[0], after.bounds[0]), max(bottom, before.bounds[1], after.bounds[1]),
              min(right, before.bounds[2], after.bounds[2]), min(top, before.bounds[3], after.bounds[3]))
    model_id = result.before.model_id
    write_item(
        folder.path("change"), path=folder.path("change_item"), item_id=f"{before.id}..{after.id}-change-{model_id}",
        title=f"change {before.id} -> {after.id}, model {model_id}",
        description="New, gone and persisting detections between two dates: class codes (COG with category names) "
                    "and the patches of each class (GeoJSON).",
        bounds=bounds, crs=grid.crs, start=before.date, end=after.date, transform=grid.transform, shape=(h, w),
        sources=_stac_sources(store, [before, after], model_id),
        extra_assets={
            "vector": {"path": folder.path("geojson"), "title": "change patches (GeoJSON)", "roles": ["data"]},
            "categories": {"path": folder.path("categories"), "title": "class names (GDAL PAM)", "roles": ["metadata"]},
            "overview": {"path": folder.path("quicklook"), "title": "quicklook", "roles": ["overview"]},
            "provenance": {"path": folder.path("provenance"), "title": "provenance", "roles": ["metadata"]},
        },
        properties={"damwatch:counts": result.counts()},
    )


def _render_change(path: os.PathLike, result: ChangeResult, before: "Survey", after: "Survey", client: Any) -> None:
    panels = []
    for survey, values in ((before, result.p_before), (after, result.p_after)):
        thumb, thumb_transform = survey_thumbnail(survey, client=client)
        panels.append({
            "title": f"{survey.id}: probability",
            "image": thumb, "image_transform": thumb_transform, "grey": True,
            "overlay": values, "overlay_transform": result.grid.transform, "cmap": PROBABILITY_CMAP,
            "vmin": 0.0, "vmax": 1.0, "alpha": 0.7, "mask_below": result.thresholds.low,
            "colorbar": "probability",
        })
    counts = result.counts()
    # The change is drawn as outlined shapes with a light fill: the imagery stays visible.
    panels.append({
        "title": "change: " + ", ".join(f"{n} {counts[n]}" for n in ("new", "gone", "persisting")),
        "image": panels[1]["image"], "image_transform": panels[1]["image_transform"],
        "shapes": [
            {"rings": class_rings(result.classes, result.grid.transform, code),
             "colour": tuple(np.array(CLASS_COLOURS[code][:3]) / 255), "label": f"{CLASS_NAMES[code]} ({counts[CLASS_NAMES[code]]})"}
            for code in (NEW, GONE, PERSISTING)
        ],
    })
    render_quicklook(path, panels, title=f"change {before.id} → {after.id}, model {result.before.model_id}",
                     crs=result.grid.crs)
