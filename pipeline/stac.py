"""STAC: every output and model described so STAC browsers and QGIS's STAC plugin find them.

A *STAC Item* (SpatioTemporal Asset Catalog, version 1.1.0) is a GeoJSON Feature describing one
output: where it lies (``geometry``/``bbox``: its footprint in WGS84), when (``datetime``: the
survey's date; a change has ``start_datetime``/``end_datetime``), its files (``assets``, each
with its media type and roles), on which grid (the projection extension v2.0.0: ``proj:code``,
``proj:shape``, ``proj:transform``, ``proj:bbox``), and what it was made from (``derived_from``
links to the source survey in the store and to the model's item). Each output folder holds one
item per output beside the files (``<name>.stac.json``, written by :func:`write_item`); each
run folder holds a *Catalog* (``catalog.json``, :func:`write_run_catalog`) linking its items,
which is what a browser opens. Each model in ``<store>/models`` is described by an item with
the machine-learning-model extension v1.4.0 (:func:`write_model_item`): architecture, task,
input bands and shape, output, hyperparameters, and the weights as its ``mlm:model`` asset.

Hrefs are relative (``./probability.tif``, ``../../store.zarr/surveys/<id>``), so a run folder
moved together with its store stays valid. Items are plain JSON written here (pystac is not a
runtime dependency: eight fields per item do not need it); the tests validate them with
stac-validator against the STAC and extension schemas, offline.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.files import write_json

__all__ = [
    "STAC_VERSION",
    "PROJECTION_EXTENSION",
    "MLM_EXTENSION",
    "MEDIA_TYPES",
    "item_file",
    "footprint",
    "write_item",
    "write_model_item",
    "model_item_file",
    "write_run_catalog",
]

STAC_VERSION = "1.1.0"
PROJECTION_EXTENSION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
MLM_EXTENSION = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
EO_EXTENSION = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
#: Band names that are electro-optical common names (eo extension), e.g. a NAIP "nir".
EO_COMMON_NAMES = {"coastal", "blue", "green", "red", "rededge", "yellow", "pan", "nir", "nir08", "nir09",
                   "cirrus", "swir16", "swir22", "lwir", "lwir11", "lwir12"}

#: Media types of damwatch's files, as STAC and IANA name them.
MEDIA_TYPES = {
    ".tif": "image/tiff; application=geotiff; profile=cloud-optimized",
    ".geojson": "application/geo+json",
    ".png": "image/png",
    ".json": "application/json",
    ".xml": "application/xml",
    ".html": "text/html",
    ".npz": "application/octet-stream",
    ".zarr": "application/vnd+zarr",
}


def item_file(output: str | os.PathLike) -> Path:
    """Where the item describing ``output`` goes: ``probability.tif`` -> ``probability.stac.json``."""
    output = Path(output)
    return output.with_name(f"{output.name.split('.')[0]}.stac.json")


def _media_type(path: str | os.PathLike) -> str:
    name = str(path)
    for suffix in (".aux.xml",):
        if name.endswith(suffix):
            return MEDIA_TYPES[".xml"]
    return MEDIA_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")


def _relative(target: str | os.PathLike, start: str | os.PathLike) -> str:
    rel = os.path.relpath(Path(target).resolve(), Path(start).resolve())
    return rel if rel.startswith("..") else f"./{rel}"


def _iso(value: dt.date | dt.datetime | str) -> str:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value) if "T" in value else dt.date.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def footprint(bounds: Sequence[float], crs: Any, points_per_side: int = 16) -> tuple[dict, list[float]]:
    """(GeoJSON Polygon in WGS84, bbox) of the rectangle ``bounds`` (left, bottom, right, top) in ``crs``.

    Each side is sampled at ``points_per_side`` points before reprojection, so the footprint of
    a UTM rectangle follows its true outline in longitude/latitude.
    """
    from pipeline.geojson import bbox, to_wgs84

    left, bottom, right, top = (float(v) for v in bounds)
    t = np.linspace(0.0, 1.0, points_per_side, endpoint=False)
    ring = (
        [(left + (right - left) * u, bottom) for u in t]
        + [(right, bottom + (top - bottom) * u) for u in t]
        + [(right - (right - left) * u, top) for u in t]
        + [(left, top - (top - bottom) * u) for u in t]
    )
    ring.append(ring[0])
    geometry = to_wgs84({"type": "Polygon", "coordinates": [[list(p) for p in ring]]}, crs)
    return geometry, bbox(geometry)


def _projection(crs: Any, transform: Any = None, shape: Sequence[int] | None = None,
                bounds: Sequence[float] | None = None) -> dict[str, Any]:
    epsg = crs.to_epsg() if crs is not None else None
    fields: dict[str, Any] = {"proj:code": f"EPSG:{epsg}"} if epsg else {"proj:code": None, "proj:wkt2": crs.to_wkt()}
    if shape is not None:
        fields["proj:shape"] = [int(v) for v in shape]
    if transform is not None:
        fields["proj:transform"] = [float(v) for v in tuple(transform)[:6]]
    if bounds is not None:
        fields["proj:bbox"] = [float(v) for v in bounds]
    return fields


def write_item(
    output: str | os.PathLike,
    *,
    item_id: str,
    title: str,
    description: str,
    bounds: Sequence[float],
    crs: Any,
    datetime: dt.date | dt.datetime | str | None = None,
    start: dt.date | str | None = None,
    end: dt.date | str | None = None,
    transform: Any = None,
    shape: Sequence[int] | None = None,
    roles: Sequence[str] = ("data",),
    extra_assets: Mapping[str, Mapping[str, Any]] | None = None,
    sources: Iterable[Mapping[str, str]] = (),
    properties: Mapping[str, Any] | None = None,
    path: str | os.PathLike | None = None,
) -> Path:
    """Write the STAC Item describing the file ``output``; its path (:func:`item_file` by default).

    ``bounds`` (left, bottom, right, top) in ``crs`` gives the footprint; ``transform``/``shape``
    the grid of a raster (projection extension). ``datetime`` (a survey's date), or ``start``
    and ``end`` for a span. ``extra_assets``: name -> ``{"path", "title", "roles"}`` of files
    beside it (quicklook: role ``overview``; provenance: ``metadata``). ``sources``: links
    ``{"href" (a path), "title", "rel" (default derived_from), "type"}``. The output itself is
    the asset ``data`` with ``roles``; a raster's asset carries its grid too.
    """
    output = Path(output)
    path = Path(path) if path is not None else item_file(output)
    here = path.parent
    geometry, box = footprint(bounds, crs)
    props: dict[str, Any] = {"title": title, "description": description}
    if datetime is not None:
        props["datetime"] = _iso(datetime)
    else:
        props.update(datetime=None, start_datetime=_iso(start), end_datetime=_iso(end))
    props["created"] = _iso(dt.datetime.now(dt.timezone.utc))
    props.update(_projection(crs, bounds=bounds))
    props["damwatch:version"] = __version__
    props.update(properties or {})
    data = {"href": _relative(output, here), "type": _media_type(output), "title": title, "roles": list(roles)}
    if transform is not None and shape is not None:
        data.update(_projection(crs, transform, shape, bounds))
    assets = {"data": data}
    for name, asset in (extra_assets or {}).items():
        assets[name] = {"href": _relative(asset["path"], here), "type": _media_type(asset["path"]),
                        "title": asset.get("title", Path(asset["path"]).name), "roles": list(asset.get("roles", ["metadata"]))}
    links = []
    for source in sources:
        link = {"rel": source.get("rel", "derived_from"), "href": _relative(source["href"], here),
                "title": source.get("title", Path(source["href"]).name)}
        link["type"] = source.get("type") or _media_type(source["href"])
        links.append(link)
    item = {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [PROJECTION_EXTENSION],
        "id": item_id,
        "geometry": geometry,
        "bbox": box,
        "properties": props,
        "links": links,
        "assets": assets,
    }
    return write_json(path, item)


# ---------------------------------------------------------------------------------------------
# Models


def model_item_file(models_dir: str | os.PathLike, model_id: str) -> Path:
    return Path(models_dir) / f"{model_id}.stac.json"


def _parameters(model: Mapping[str, Any]) -> int | None:
    arrays = (model.get("weights") or {}).get("arrays") or []
    try:
        return int(sum(int(np.prod(a["shape"])) for a in arrays)) or None
    except (KeyError, TypeError, ValueError):
        return None


def write_model_item(models_dir: str | os.PathLike, model_id: str, survey_bounds: Sequence[tuple[Sequence[float], Any]] = ()) -> Path:
    """Write ``<models_dir>/<model_id>.stac.json``: the model as a STAC Item with the MLM extension.

    Read from the model's own ``<model_id>.json`` (architecture, feature spec, threshold,
    training settings and metrics); ``survey_bounds``: (bounds, crs) of the surveys it was
    trained on, whose union is the item's footprint (no footprint without them).
    """
    models_dir = Path(models_dir)
    meta_path = models_dir / f"{model_id}.json"
    model = json.loads(meta_path.read_text())
    arch = model.get("architecture") or {}
    spec = model.get("feature_spec") or {}
    training = (model.get("metadata") or {}).get("training") or {}
    bands = list(spec.get("bands") or [])
    n_inputs = arch.get("n_inputs") or len(spec.get("names") or []) or None
    layers = [n_inputs, *(arch.get("hidden") or []), 1]
    architecture = arch.get("name") or (
        "dense network " + "-".join(str(v) for v in layers if v) + f" ({arch.get('activation', 'relu')}, "
        f"{arch.get('output_activation', 'sigmoid')} output)"
    )
    size = training.get("tile_size")
    path = model_item_file(models_dir, model_id)
    geometry = box = None
    if survey_bounds:
        geoms = [footprint(b, crs) for b, crs in survey_bounds]
        boxes = np.array([g[1] for g in geoms])
        box = [float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max())]
        geometry = geoms[0][0] if len(geoms) == 1 else {
            "type": "Polygon",
            "coordinates": [[[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]], [box[0], box[1]]]],
        }
    hyper = {k: v for k, v in {
        "threshold": model.get("threshold"),
        "tile_size_px": size,
        "tile_stride_px": training.get("stride"),
        "feature_spec": spec.get("id"),
        "hidden": arch.get("hidden"),
        "epochs": ((model.get("metadata") or {}).get("history") or {}).get("n_epochs"),
        **{f"optimizer.{k}": v for k, v in (training.get("config") or {}).items() if isinstance(v, (int, float, str))},
    }.items() if v is not None}
    created = dt.datetime.fromtimestamp(meta_path.stat().st_mtime, dt.timezone.utc)
    props: dict[str, Any] = {
        "title": f"damwatch model {model_id}",
        "description": (
            f"Tile classifier: the probability that a {size or '?'}-pixel tile of a survey holds the "
            f"target, from the tile's features (feature spec {spec.get('id', '?')}, bands "
            f"{', '.join(bands) or '?'}); a tile is flagged at probability >= {model.get('threshold')}."
        ),
        "datetime": _iso(created),
        "mlm:name": f"damwatch-{model_id}",
        "mlm:architecture": architecture,
        "mlm:tasks": ["classification"],
        "mlm:framework": "NumPy",
        "mlm:framework_version": np.__version__,
        "mlm:pretrained": False,
        "mlm:accelerator": "amd64",
        "mlm:accelerator_constrained": False,
        "mlm:input": [{
            "name": "tile features",
            "bands": bands,
            "input": {"shape": [-1, int(n_inputs or 1)], "dim_order": ["batch", "feature"], "data_type": "float32"},
            "description": (
                f"feature vector of one tile computed from bands {', '.join(bands)} by feature spec "
                f"{spec.get('id', '?')}, standardized with the training statistics stored in the model file"
            ),
        }],
        "mlm:output": [{
            "name": "probability",
            "tasks": ["classification"],
            "result": {"shape": [-1, 1], "dim_order": ["batch", "score"], "data_type": "float32"},
            "description": "probability (0-1) that the tile holds the target",
        }],
        "damwatch:version": __version__,
    }
    if (n := _parameters(model)) is not None:
        props["mlm:total_parameters"] = n
    if hyper:
        props["mlm:hyperparameters"] = hyper
    metrics = (model.get("metadata") or {}).get("metrics") or {}
    if metrics.get("test"):
        props["damwatch:test_metrics"] = {k: v for k, v in metrics["test"].items() if isinstance(v, (int, float)) or v is None}
    weights = models_dir / f"{model_id}.npz"
    assets = {
        "model": {"href": _relative(weights, models_dir), "type": MEDIA_TYPES[".npz"], "title": "weights (NumPy .npz, no pickle)",
                  "roles": ["mlm:model", "mlm:weights", "data"], "mlm:artifact_type": "numpy.savez",
                  # The input bands by name: MLM asks for them in a bands field, and STAC 1.1 and the
                  # eo extension allow bands on assets only.
                  "eo:bands": [{"name": b, **({"common_name": b} if b in EO_COMMON_NAMES else {})} for b in bands]},
        "metadata": {"href": _relative(meta_path, models_dir), "type": MEDIA_TYPES[".json"],
                     "title": "architecture, feature spec, normalization, threshold, training report",
                     "roles": ["metadata"]},
    }
    links = [{"rel": "derived_from", "href": _relative(Path(models_dir).parent / "store.zarr" / "surveys" / s["id"], models_dir),
              "type": MEDIA_TYPES[".zarr"], "title": f"training survey {s['id']}"}
             for s in training.get("surveys") or [] if isinstance(s, Mapping) and s.get("id")]
    item = {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [MLM_EXTENSION, EO_EXTENSION],
        "id": f"model-{model_id}",
        "geometry": geometry,
        **({"bbox": box} if box else {}),
        "properties": props,
        "links": links,
        "assets": assets,
    }
    return write_json(path, item)


# ---------------------------------------------------------------------------------------------
# Run catalogs


def write_run_catalog(run_dir: str | os.PathLike, outputs: Iterable[str | os.PathLike], run_id: str,
                      description: str, extra_items: Iterable[str | os.PathLike] = ()) -> Path | None:
    """Write ``<run_dir>/catalog.json`` linking the items beside the run's ``outputs``; its path.

    For every output file, its item (:func:`item_file`; an output that is an item counts as
    itself) is linked once, then ``extra_items``. None, and no file, when the run wrote no item.
    """
    run_dir = Path(run_dir)
    items: list[Path] = []
    for output in outputs:
        output = Path(output)
        item = output if output.name.endswith(".stac.json") else item_file(output)
        if item.is_file() and item not in items:
            items.append(item)
    items += [Path(p) for p in extra_items if Path(p).is_file() and Path(p) not in items]
    if not items:
        return None
    links = [{"rel": "root", "href": "./catalog.json", "type": "application/json", "title": run_id},
             {"rel": "self", "href": str((run_dir / "catalog.json").resolve()), "type": "application/json"}]
    for item in items:
        title = json.loads(item.read_text()).get("properties", {}).get("title", item.name)
        links.append({"rel": "item", "href": _relative(item, run_dir), "type": "application/geo+json", "title": title})
    catalog = {
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "id": run_id,
        "title": f"damwatch run {run_id}",
        "description": description,
        "links": links,
    }
    return write_json(run_dir / "catalog.json", catalog)
