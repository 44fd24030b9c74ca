"""Detection: a model's probability at every place of a survey, as a map.

A *probability map* (:class:`ProbabilityMap`) holds, for each *output cell* of a survey, the
model's probability that the window centred on the cell holds a target. Two model families
make it:

- **cnn** (the default detector, :mod:`ann.convnet`): the survey is read at the model's ground
  resolution (:mod:`pipeline.pixels`) and scored *fully convolutionally*: each Dask task reads a
  block of the survey plus a halo as wide as the window, runs the network over it once, and
  writes a probability at every output cell of the block — ``S`` model pixels apart, the
  network's total stride. Cell (i, j) is the window of ``W`` pixels whose top-left pixel is
  (i S − P, j S − P), P = (W − S) / 2, so its centre is the cell's centre: the map's cells tile
  the survey exactly (no overhang). Overlapping windows share their work, and the result equals
  scoring each window on its own (no seam at block borders: every cell's window is read whole
  by the task that writes it). A cell whose window is less than half valid is nodata (NaN).
- **classic** (the dense network over per-tile features, :mod:`pipeline.features`): tiles of
  the model's size every ``stride`` pixels are scored, and each map cell of ``stride`` pixels
  takes the mean probability of the scored tiles containing its centre (:mod:`pipeline.maps`).
  Classic models read tiles in survey pixels, so a survey at another ground resolution is
  refused.

Maps are stored at ``predictions/<model_id>/<survey_id>/<grid>``, where ``<grid>`` names the
output grid (``gsd2m_cell8px``, ``size128_stride64``): a second detection at another setting
never replaces the first. A map already stored for the same model, survey content and grid is
reused. Tasks write their own Zarr chunks, so memory depends on the block size and the
number of workers, never on the survey's size.

A model's probabilities may be *calibrated* (:data:`CALIBRATION`, fitted on validation data at
training): the network's output p becomes ``sigmoid(a · logit(p) + b)``, which keeps the order
of the probabilities (so every detection and ranking) and makes a reported 0.8 come true about
80 % of the time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from ann.io import Classifier, load_model
from pipeline.blocks import compute_tasks
from pipeline.coords import add_cell_coordinates
from pipeline.errors import InputError, StoreError, command
from pipeline.features import FeatureSpec, compute_features
from pipeline.maps import probability_map
from pipeline.pixels import InputSpec, channel_statistics, ground_resolution_m, read_channels, reading_for
from pipeline.tiling import DEFAULT_TILE_SIZE, DETECTION_STRIDE, TileGrid

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.store import Store, Survey

__all__ = [
    "MODEL_TYPES",
    "MIN_VALID_FRACTION",
    "ProbabilityMap",
    "resolve_model",
    "check_model_type",
    "check_model_input",
    "model_spec",
    "model_tile_size",
    "calibrate",
    "detect_survey",
    "open_probability_map",
    "stored_maps",
    "window_valid_share",
]

MODEL_TYPES = ("cnn", "classic")
#: A cell (or tile) whose window has less than this share of valid pixels is not scored.
MIN_VALID_FRACTION = 0.5
#: Model pixels along a cnn scoring task's block (about one 1024-px Zarr chunk at 1 m read at
#: 2 m, plus the halo): ~0.5-1 s of forward pass per task (DESIGN decision 6).
BLOCK_PIXELS = 1024
#: Tiles per classic scoring task: ~16k tiles x ~1,100 float32 features is ~70 MB read.
TILES_PER_TASK = 16384
#: Most bytes of feature maps a scoring task holds (:func:`feature_map_budget`).
FEATURE_MAP_BYTES = 192 * 2**20
CALIBRATION = "calibration"  # key of the calibration (a, b) in a cnn model's input description


@dataclass(frozen=True)
class ProbabilityMap:
    """One survey's probabilities under one model on one output grid.

    ``values`` (h, w) float32 in [0, 1], NaN where not scored, on ``transform`` / ``crs``
    (cells of ``cell_m`` metres); ``footprint_m`` is the model's window (or tile) edge in
    metres; ``reading`` says how the survey was read (its resampling, for provenance).
    """

    survey_id: str
    model_id: str
    model_type: str
    grid: str
    values: np.ndarray
    transform: Affine
    crs: CRS
    threshold: float
    footprint_m: float
    cell_m: float
    reading: dict
    spec: dict

    @property
    def path(self) -> str:
        return f"predictions/{self.model_id}/{self.survey_id}/{self.grid}"

    @property
    def scored_area_km2(self) -> float:
        return float(np.isfinite(self.values).sum()) * self.cell_m**2 / 1e6


# --------------------------------------------------------------------------------------------
# The model


def resolve_model(store: "Store", model: Any) -> Classifier:
    """A :class:`ann.io.Classifier` from a Classifier, a model id in the store, a model file
    path, or ``"latest"``: the model saved most recently in ``<store>/models`` (by file time)."""
    if isinstance(model, Classifier):
        return model
    text = str(model)
    if text == "latest":
        models_dir = Path(store.models_dir)
        saved = sorted(models_dir.glob("*.json"), key=lambda p: p.stat().st_mtime) if models_dir.is_dir() else []
        if not saved:
            raise InputError(
                f"model 'latest' asked for, but the store at {store.root} holds no model yet; train "
                f"one first ({command('train', '--help')} shows how) or give --model ID"
            )
        text = saved[-1].stem
    path = Path(text) if text.endswith((".json", ".npz")) else Path(store.models_dir) / f"{text}.json"
    if path.is_file():
        return load_model(path)  # ModelFileError names what is wrong with a damaged file
    models_dir = Path(store.models_dir)
    known = sorted(p.stem for p in models_dir.glob("*.json")) if models_dir.is_dir() else []
    raise InputError(
        f"model {text!r} is neither a model id in {models_dir} nor a model file (.json/.npz); "
        f"known model ids: {', '.join(known) or 'none'} (to train one: {command('train', '--help')})"
    )


def _model_id(classifier: Classifier) -> str:
    if not classifier.model_id:
        raise InputError(
            "the model has no id: save it first (ann.io.save_model(classifier, store.models_dir)) so "
            "that predictions and maps can name the model that made them"
        )
    return str(classifier.model_id)


def check_model_type(classifier: Classifier, wanted: str | None) -> None:
    """Refuse a model of another family than ``wanted`` (``--model-type``); None accepts any."""
    if wanted is None or classifier.model_type == wanted:
        return
    raise InputError(
        f"model {classifier.model_id} is a {classifier.model_type} model but --model-type {wanted} was asked "
        f"for; give a {wanted} model (damwatch train --model-type {wanted}) or drop --model-type"
    )


def model_spec(classifier: Classifier) -> FeatureSpec:
    """The :class:`~pipeline.features.FeatureSpec` a classic model was trained with."""
    return FeatureSpec.from_dict(dict(classifier.feature_spec))


def model_tile_size(classifier: Classifier) -> int:
    """Tile edge (pixels) a classic model was trained on (its metadata), else the default 128."""
    meta = dict(classifier.metadata or {})
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    for source in (training, meta):
        if source.get("tile_size") is not None:
            return int(source["tile_size"])
    return DEFAULT_TILE_SIZE


def _classic_gsd_m(classifier: Classifier) -> float | None:
    training = (classifier.metadata or {}).get("training") or {}
    return training.get("gsd_m")


def _check_bands(name: str, needs: str, bands: Sequence[str], survey: "Survey", retrain: str) -> None:
    missing = [b for b in bands if b not in survey.bands]
    if missing:
        raise InputError(
            f"model {name} {needs} {list(bands)}, but survey {survey.id} has bands {list(survey.bands)} "
            f"(missing: {', '.join(missing)}); use a model trained on {retrain}, or ingest the "
            f"survey naming its bands (damwatch ingest --bands)"
        )


def check_model_input(classifier: Classifier, survey: "Survey") -> dict:
    """Refuse a survey the model cannot read (a missing band, a too coarse or, for a classic
    model, another ground resolution); return how the survey will be read (for provenance)."""
    name = classifier.model_id or "(unsaved)"
    if classifier.model_type == "cnn":
        spec = InputSpec.from_dict(classifier.feature_spec)
        _check_bands(name, "reads bands", spec.bands, survey, "bands this survey has (damwatch train --bands ...)")
        return reading_for(survey, spec.gsd_m).to_dict()  # InputError for a survey > 2 x coarser
    spec = model_spec(classifier)
    _check_bands(name, f"was trained on feature spec {spec.id}, which needs bands", spec.bands, survey,
                 "a feature spec using only bands this survey has")
    gsd, here = _classic_gsd_m(classifier), ground_resolution_m(survey)
    if gsd is not None and abs(here / gsd - 1) > 0.01:
        raise InputError(
            f"model {name} is a classic model trained on {gsd:g} m pixels; survey {survey.id} has {here:.3g} m "
            f"pixels, and classic models read tiles in survey pixels. Use a cnn model (it reads any survey at "
            f"its own resolution) or a survey at {gsd:g} m"
        )
    return {"survey": survey.id, "survey_gsd_m": here, "method": "none (classic model: survey pixels)"}


def calibrate(z: np.ndarray, calibration: dict | None) -> np.ndarray:
    """Probabilities from the network's logits ``z``: ``sigmoid(a · z + b)`` with the model's
    calibration {"a", "b"}, ``sigmoid(z)`` without one. NaN stays NaN. Computed in float64 and
    rounded once, so that only probabilities within float32's resolution of 1 become 1."""
    z = np.asarray(z, np.float64)
    if calibration:
        z = calibration["a"] * z + calibration["b"]
    with np.errstate(over="ignore"):
        return (1 / (1 + np.exp(-z))).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Scoring


def _cnn_grid(classifier: Classifier, survey: "Survey") -> dict:
    """The output grid of a cnn model on a survey: cells of S model pixels, the halo P."""
    spec = InputSpec.from_dict(classifier.feature_spec)
    reading = reading_for(survey, spec.gsd_m)
    S, W = int(classifier.network.total_stride), int(spec.window)
    P = (W - S) // 2
    rows, cols = reading.height // S, reading.width // S
    if rows < 1 or cols < 1:
        raise InputError(
            f"survey {survey.id} is {reading.height} x {reading.width} pixels at the model's {spec.gsd_m:g} m: "
            f"smaller than one {S}-pixel output cell; give a larger survey"
        )
    return {
        "spec": spec, "reading": reading, "S": S, "W": W, "P": P, "shape": (rows, cols),
        "transform": reading.transform * Affine.scale(S),
        "key": f"gsd{spec.gsd_m:g}m_cell{S}px",
    }


def window_valid_share(valid: np.ndarray, S: int, W: int, n_rows: int, n_cols: int) -> np.ndarray:
    """Share of valid pixels in each cell's window: windows of W pixels every S pixels."""
    sat = np.zeros((valid.shape[0] + 1, valid.shape[1] + 1), np.float64)
    sat[1:, 1:] = valid.cumsum(0).cumsum(1)
    r = np.arange(n_rows) * S
    c = np.arange(n_cols) * S
    r0, r1, c0, c1 = r[:, None], r[:, None] + W, c[None, :], c[None, :] + W
    return (sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]) / (W * W)


def _score_cnn_block(survey: "Survey", classifier: Classifier, grid: dict, stats: Any, out_path: str,
                     i0: int, i1: int, j0: int, j1: int) -> None:
    """One Dask task: read cells [i0, i1) × [j0, j1)'s windows (block + halo), score, write."""
    import zarr  # on the worker

    S, W, P = grid["S"], grid["W"], grid["P"]
    h, w = (i1 - i0 - 1) * S + W, (j1 - j0 - 1) * S + W
    x, valid = read_channels(survey, grid["reading"], grid["spec"], i0 * S - P, j0 * S - P, h, w, stats)
    # (i1 - i0, j1 - j0): window (a, b) at pixel (a S, b S) of the block
    z = classifier.score_map(x, W, logits=True, max_bytes=feature_map_budget(x.nbytes))
    share = window_valid_share(valid, S, W, i1 - i0, j1 - j0)
    p = np.where(share >= MIN_VALID_FRACTION, calibrate(z, classifier.feature_spec.get(CALIBRATION)), np.nan)
    zarr.open_array(out_path, mode="r+")[i0:i1, j0:j1] = p.astype(np.float32)


def feature_map_budget(block_bytes: int) -> int:
    """Bytes of feature maps a scoring task may hold at once (``ConvNet.score_map``'s strips).

    192 MB (large strips keep the matrix products efficient), but no more than what is left of
    a quarter of the Dask worker's memory limit once the block's pixels (``block_bytes``) are
    counted, and at least 16 MB: a worker given little memory scores in thinner strips instead
    of being paused or restarted by Dask's memory manager.
    """
    budget = FEATURE_MAP_BYTES
    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
    except (ImportError, ValueError, AttributeError):  # not on a Dask worker: local threads
        limit = None
    if limit:
        budget = min(budget, limit // 4 - 2 * block_bytes)
    return int(max(budget, 16 * 2**20))


def _score_classic_rows(values: Any, valid_fraction: np.ndarray, r0: int, r1: int, classifier: Classifier) -> np.ndarray:
    """One Dask task: read tile rows [r0, r1) of the features from Zarr and score them."""
    block = np.asarray(values[r0:r1])  # (r1 - r0, n_cols, F)
    keep = (valid_fraction >= MIN_VALID_FRACTION) & (valid_fraction > 0)
    out = np.full(keep.shape, np.nan, dtype=np.float32)
    if keep.any():
        out[keep] = classifier.predict_proba(block[keep])  # (N, F) -> (N,)
    return out


def detect_survey(
    store: "Store",
    survey_id: str,
    model: Any,
    stride: int | None = None,
    client: Any = None,
    reuse: bool = True,
) -> ProbabilityMap:
    """The probability map of ``survey_id`` under ``model`` (rules: the module docstring).

    ``model``: a :class:`ann.io.Classifier`, a model id in the store or a model file path.
    ``stride``: pixels between a classic model's tiles (default 64; a cnn model's output grid
    is its own). Runs on ``client``, else on the default Dask client, else on local threads.
    The map is stored (see the module docstring) and returned; one already stored for the same
    model, survey content and grid is returned as it is unless ``reuse=False``.
    """
    import dask  # here, not at the top: the command line imports this module to check its input

    classifier = resolve_model(store, model)
    model_id = _model_id(classifier)
    survey = store.survey(survey_id)
    reading = check_model_input(classifier, survey)
    if classifier.model_type == "cnn":
        grid = _cnn_grid(classifier, survey)
        key, shape, transform = grid["key"], grid["shape"], grid["transform"]
        footprint, cell = grid["spec"].footprint_m, grid["S"] * grid["spec"].gsd_m
    else:
        size, stride = model_tile_size(classifier), int(stride or DETECTION_STRIDE)
        tiles = TileGrid.for_survey(survey, size=size, stride=stride)
        key, gsd = f"size{size}_stride{stride}", ground_resolution_m(survey)
        footprint, cell = size * gsd, stride * gsd
    path = f"predictions/{model_id}/{survey_id}/{key}"
    if reuse and store.is_complete(path):
        stored = open_probability_map(store, model_id, survey_id, key)
        if store.open_group(path).attrs.get("source_sha256") == survey.source_sha256:
            return stored

    attributes = {
        "survey_id": survey_id, "model_id": model_id, "model_type": classifier.model_type, "grid": key,
        "threshold": float(classifier.threshold), "footprint_m": float(footprint), "cell_m": float(cell),
        "reading": reading, "spec": classifier.feature_spec, "crs_wkt": survey.crs.to_wkt(),
        "source_sha256": survey.source_sha256,
    }
    model_key = dask.delayed(classifier, name=f"model-{model_id}", pure=True)
    if classifier.model_type == "cnn":
        stats = channel_statistics(survey, grid["spec"])
        cells = max(8, BLOCK_PIXELS // grid["S"])
        with store.new_group(path, {**attributes, "transform": list(transform)[:6]}, consolidate=True) as group:
            _create_map_array(group, shape, (cells, cells))
            add_cell_coordinates(group, transform, shape, survey.crs)
            out_path = str(Path(group.store.root) / "probability")
            tasks = [
                dask.delayed(_score_cnn_block, pure=False)(
                    survey, model_key, grid, stats, out_path, i0, min(i0 + cells, shape[0]), j0, min(j0 + cells, shape[1]),
                    dask_key_name=f"score-{model_id}-{survey_id}-{i0}-{j0}",
                )
                for i0 in range(0, shape[0], cells) for j0 in range(0, shape[1], cells)
            ]
            compute_tasks(tasks, client, f"scoring {survey_id}")
    else:
        features = compute_features(store, survey_id, model_spec(classifier), stride=stride, size=size, client=client)
        classifier.check_feature_spec(features.spec.to_dict())
        rows_per_task = max(1, TILES_PER_TASK // max(1, tiles.n_cols))
        tasks = [
            dask.delayed(_score_classic_rows, pure=True)(
                features.values, features.valid_fraction[r0 : r0 + rows_per_task], r0, min(tiles.n_rows, r0 + rows_per_task),
                model_key, dask_key_name=f"score-{model_id}-{survey_id}-{r0}",
            )
            for r0 in range(0, tiles.n_rows, rows_per_task)
        ]
        blocks = compute_tasks(tasks, client, f"scoring {survey_id}")
        values, transform = probability_map(np.concatenate(blocks, axis=0), tiles, cell=stride)
        values = values[: survey.height // stride, : survey.width // stride]  # whole cells only: no overhang
        with store.new_group(path, {**attributes, "transform": list(transform)[:6], "tile_grid": tiles.to_dict()},
                             consolidate=True) as group:
            _create_map_array(group, values.shape, tuple(min(1024, n) for n in values.shape))[...] = values
            add_cell_coordinates(group, transform, values.shape, survey.crs)
    return open_probability_map(store, model_id, survey_id, key)


def _create_map_array(group: Any, shape: tuple[int, int], chunks: tuple[int, int]) -> Any:
    import zarr  # here, not at the top: the command line imports this module to check its input

    return group.create_array(
        "probability", shape=shape, chunks=tuple(max(1, min(c, n)) for c, n in zip(chunks, shape)), dtype=np.float32,
        fill_value=np.nan, compressors=zarr.codecs.ZstdCodec(level=3), dimension_names=["y", "x"],
        attributes={"long_name": "probability of a target in the window centred on the cell", "units": "0-1",
                    "valid_range": [0.0, 1.0], "grid_mapping": "spatial_ref"},
    )


# --------------------------------------------------------------------------------------------
# The store


def stored_maps(store: "Store", model_id: str, survey_id: str) -> list[str]:
    """Grid keys of the complete probability maps of a model on a survey."""
    return store.complete_groups(f"predictions/{model_id}/{survey_id}", "*")


def open_probability_map(store: "Store", model_id: str, survey_id: str, grid: str | None = None) -> ProbabilityMap:
    """A stored probability map (StoreError saying how to make it, or which grids exist)."""
    available = stored_maps(store, model_id, survey_id)
    if grid is None:
        if len(available) == 1:
            grid = available[0]
        else:
            raise StoreError(
                f"model {model_id} has {'no probability map' if not available else 'several probability maps (' + ', '.join(available) + ')'} "
                f"for survey {survey_id} in the store at {store.root}; make one with "
                f"{command('detect', survey_id, '--model', model_id, store=store)}" + ("" if not available else " or name the grid")
            )
    group = store.open_complete(
        f"predictions/{model_id}/{survey_id}/{grid}",
        f"no probability map of model {model_id} for survey {survey_id} on grid {grid} in the store at "
        f"{store.root} (available: {', '.join(available) or 'none'}); make it with "
        f"{command('detect', survey_id, '--model', model_id, store=store)}",
    )
    a = dict(group.attrs)
    return ProbabilityMap(
        survey_id=survey_id, model_id=model_id, model_type=a["model_type"], grid=grid,
        values=np.asarray(group["probability"][...], dtype=np.float32), transform=Affine(*a["transform"]),
        crs=CRS.from_wkt(a["crs_wkt"]), threshold=float(a["threshold"]), footprint_m=float(a["footprint_m"]),
        cell_m=float(a["cell_m"]), reading=dict(a["reading"]), spec=dict(a["spec"]),
    )

