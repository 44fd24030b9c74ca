"""Detection: a trained model's probability for every tile of a survey.

A *prediction grid* holds one probability per tile of a survey's tile grid (see
:mod:`pipeline.tiling`; the detection default is a half-tile stride of 64 px, so an object cut
by one tile's edge is whole in a neighbour). Detection:

1. takes the model's own feature spec and tile size (a model refuses features made with
   another spec) and checks that the survey has the bands the spec needs;
2. reuses the survey's features for that spec and grid if the store has them, else computes
   them (:func:`pipeline.features.compute_features`);
3. scores the tiles in parallel with Dask: one task per block of tile rows (at least ~100 ms of
   work each), each reading its features from Zarr, standardizing them with the model's
   training statistics and running the network forward;
4. stores the probabilities at ``predictions/<model_id>/<survey_id>`` in the store: a
   (tile_row, tile_col) float32 array, NaN where a tile was not scored (less than
   ``min_valid`` of its pixels are valid), with the grid, spec, model threshold and survey
   hash as attributes (:meth:`pipeline.store.Store.new_group`: an interrupted run never
   leaves a prediction grid that looks complete).

Predictions already stored for the same model, survey content and grid are reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ann.io import Classifier, load_model
from pipeline.blocks import compute_tasks
from pipeline.coords import TILE_DIMS, add_tile_coordinates, grid_mapping_attrs
from pipeline.errors import InputError, StoreError, command
from pipeline.features import FeatureSpec, compute_features
from pipeline.tiling import DEFAULT_TILE_SIZE, DETECTION_STRIDE, TileGrid

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.store import Store

__all__ = [
    "DETECTION_STRIDE",
    "MIN_VALID_FRACTION",
    "Predictions",
    "resolve_model",
    "model_tile_size",
    "model_spec",
    "check_model_bands",
    "score_tiles",
    "detect_survey",
    "predictions_path",
    "save_predictions",
    "open_predictions",
]

#: Tiles with less than this fraction of valid pixels are not scored (NaN), as in training.
MIN_VALID_FRACTION = 0.5
#: Tiles per scoring task: ~16k tiles x ~1,100 float32 features is ~70 MB read and a few
#: hundred ms of work per task (DESIGN decision 6: every task carries >= ~100 ms).
TILES_PER_TASK = 16384


@dataclass(frozen=True)
class Predictions:
    """The probability of each tile of one survey under one model.

    ``probabilities`` (n_rows, n_cols) float32 in [0, 1], NaN where the tile was not scored;
    ``grid`` the survey's :class:`~pipeline.tiling.TileGrid`; ``threshold`` the model's
    decision threshold; ``spec`` the feature spec (dict) the model was trained with.
    """

    survey_id: str
    model_id: str
    probabilities: np.ndarray
    grid: TileGrid
    threshold: float
    spec: dict

    @property
    def path(self) -> str:
        """Where the store keeps it: ``predictions/<model_id>/<survey_id>``."""
        return predictions_path(self.model_id, self.survey_id)


def predictions_path(model_id: str, survey_id: str) -> str:
    return f"predictions/{model_id}/{survey_id}"


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


def _model_id(classifier: Any) -> str:
    model_id = getattr(classifier, "model_id", None)
    if not model_id:
        raise InputError(
            "the model has no id: save it first (ann.io.save_model(classifier, store.models_dir)) so "
            "that predictions and maps can name the model that made them"
        )
    return str(model_id)


def model_spec(classifier: Any):
    """The :class:`~pipeline.features.FeatureSpec` a model was trained with."""
    return FeatureSpec.from_dict(dict(classifier.feature_spec))


def model_tile_size(classifier: Any) -> int:
    """Tile edge (pixels) the model was trained on, from its metadata, else the default 128.

    ``pipeline.training`` records it as ``metadata["training"]["tile_size"]``; a top-level
    ``tile_size`` (hand-made models) is read too.
    """
    meta = dict(getattr(classifier, "metadata", {}) or {})
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    for source in (training, meta):
        if source.get("tile_size") is not None:
            return int(source["tile_size"])
    return DEFAULT_TILE_SIZE


def check_model_bands(classifier: Any, survey: Any) -> None:
    """Refuse a survey that lacks a band the model's feature spec is computed from."""
    spec = model_spec(classifier)
    missing = [b for b in spec.bands if b not in survey.bands]
    if missing:
        raise InputError(
            f"model {getattr(classifier, 'model_id', '?')} was trained on feature spec {spec.id}, which "
            f"needs bands {list(spec.bands)}, but survey {survey.id} has bands {list(survey.bands)} "
            f"(missing: {', '.join(missing)}); use a model trained on a spec this survey's bands allow, "
            f"or ingest the survey with its band names (damwatch ingest --bands)"
        )


# --------------------------------------------------------------------------------------------
# Scoring


def score_tiles(classifier: Any, values: np.ndarray, valid_fraction: np.ndarray, min_valid: float = MIN_VALID_FRACTION) -> np.ndarray:
    """Probabilities (n, m) float32 of a block of tiles, NaN where not scored.

    ``values`` (n, m, F) raw features; ``valid_fraction`` (n, m). The classifier standardizes
    the scored tiles' features with its training statistics, then runs its network forward:
    exactly ``Classifier.predict_proba``, so stored probabilities equal what the model file
    gives anywhere else. (Its float64 standardization costs several times the forward pass
    itself; see benchmarks/detect.py.)
    """
    values = np.asarray(values)
    keep = (np.asarray(valid_fraction) >= min_valid) & (np.asarray(valid_fraction) > 0)
    out = np.full(keep.shape, np.nan, dtype=np.float32)
    if keep.any():
        out[keep] = classifier.predict_proba(values[keep])  # (N, F) -> (N,)
    return out


def _score_rows(values: Any, valid_fraction: np.ndarray, r0: int, r1: int, classifier: Any, min_valid: float) -> np.ndarray:
    """One Dask task: read tile rows [r0, r1) of the features from Zarr and score them."""
    block = np.asarray(values[r0:r1])  # (r1 - r0, n_cols, F)
    return score_tiles(classifier, block, valid_fraction, min_valid)


def detect_survey(
    store: "Store",
    survey_id: str,
    model: Any,
    stride: int = DETECTION_STRIDE,
    client: Any = None,
    min_valid: float = MIN_VALID_FRACTION,
    reuse: bool = True,
) -> Predictions:
    """Score every tile of ``survey_id`` with ``model`` and store the probabilities.

    ``model`` is a :class:`ann.io.Classifier`, a model id in the store or a model file path;
    ``stride`` in pixels (the tile size is the model's). Runs on ``client``, else on the
    default Dask client, else on local threads. Returns the :class:`Predictions` (also
    stored at ``predictions/<model_id>/<survey_id>``); stored ones for the same model, survey
    content and grid are returned as they are unless ``reuse=False``.
    """
    import dask  # here, not at the top: the command line imports this module to check its input

    classifier = resolve_model(store, model)
    model_id = _model_id(classifier)
    survey = store.survey(survey_id)
    check_model_bands(classifier, survey)
    spec = model_spec(classifier)
    size = model_tile_size(classifier)
    grid = TileGrid.for_survey(survey, size=size, stride=int(stride))
    if reuse:
        try:
            stored, attrs = _open(store, model_id, survey_id)
            if stored.grid == grid and attrs.get("source_sha256") == survey.source_sha256 and attrs.get("min_valid") == min_valid:
                return stored
        except StoreError:
            pass

    features = compute_features(store, survey_id, spec, stride=int(stride), size=size, client=client)
    classifier.check_feature_spec(features.spec.to_dict())
    n_rows, n_cols = grid.shape
    rows_per_task = max(1, TILES_PER_TASK // max(1, n_cols))
    model_key = dask.delayed(classifier, name=f"model-{model_id}", pure=True)
    tasks = []
    for r0 in range(0, n_rows, rows_per_task):
        r1 = min(n_rows, r0 + rows_per_task)
        tasks.append(
            dask.delayed(_score_rows, pure=True)(
                features.values, features.valid_fraction[r0:r1], r0, r1, model_key, min_valid,
                dask_key_name=f"score-{model_id}-{survey_id}-{r0}",
            )
        )
    blocks = compute_tasks(tasks, client, f"scoring {survey_id}")
    probabilities = np.concatenate(blocks, axis=0) if blocks else np.full(grid.shape, np.nan, np.float32)
    predictions = Predictions(survey_id, model_id, probabilities, grid, float(classifier.threshold), spec.to_dict())
    save_predictions(store, predictions, {"source_sha256": survey.source_sha256, "min_valid": min_valid,
                                          "features": features.path})
    return predictions


# --------------------------------------------------------------------------------------------
# The store


def save_predictions(store: "Store", predictions: Predictions, extra_attrs: dict | None = None) -> None:
    """Write ``predictions`` to ``predictions/<model_id>/<survey_id>`` (replacing any), atomically."""
    import zarr  # here, not at the top: the command line imports this module to check its input

    p = np.asarray(predictions.probabilities, dtype=np.float32)
    attributes = {
        "survey_id": predictions.survey_id,
        "model_id": predictions.model_id,
        "threshold": predictions.threshold,
        "feature_spec": predictions.spec,
        "grid": predictions.grid.to_dict(),
        **(extra_attrs or {}),
    }
    with store.new_group(predictions.path, attributes, consolidate=True) as group:
        group.create_array(
            "probability",
            data=p,
            chunks=tuple(min(1024, max(1, n)) for n in p.shape),
            compressors=zarr.codecs.ZstdCodec(level=3),
            dimension_names=list(TILE_DIMS),
            attributes={"description": "tile probabilities, NaN where a tile was not scored", "units": "0-1",
                        **grid_mapping_attrs(predictions.grid)},
        )
        add_tile_coordinates(group, predictions.grid)  # georeferenced in xarray/rioxarray


def open_predictions(store: "Store", model_id: str, survey_id: str) -> Predictions:
    """Stored predictions (StoreError saying how to make them if absent)."""
    return _open(store, model_id, survey_id)[0]


def _open(store: "Store", model_id: str, survey_id: str) -> tuple[Predictions, dict]:
    group = store.open_complete(
        predictions_path(model_id, survey_id),
        f"no predictions of model {model_id} for survey {survey_id} in the store at {store.root}; "
        f"make them with {command('detect', survey_id, '--model', model_id, store=store)}",
    )
    attrs = dict(group.attrs)
    return Predictions(
        survey_id=survey_id,
        model_id=model_id,
        probabilities=np.asarray(group["probability"][...], dtype=np.float32),
        grid=TileGrid.from_dict(attrs["grid"]),
        threshold=float(attrs["threshold"]),
        spec=dict(attrs["feature_spec"]),
    ), attrs
