"""Trained classifiers and their model files (never pickle).

A :class:`Classifier` is everything needed to score raw inputs: the network, the
standardization statistics of its training set, the spec of its inputs, the decision
threshold, and free metadata (training history summary, metrics, data provenance). Two model
types:

- ``"classic"``: an :class:`ann.network.MLP` over tile feature vectors (N, F); the spec is the
  feature spec (name and feature order) and the statistics are per feature;
- ``"cnn"``: an :class:`ann.convnet.ConvNet` over pixel windows (N, H, W, C), channels last;
  the spec is an opaque dict the pipeline fills (bands, ground sample distance, window, pixel
  scaling) and the statistics are per channel. :meth:`Classifier.score_map` scores a whole
  image fully convolutionally.

On disk a model is two files in a models directory, named by its *model id*::

    <id>.npz   the weight arrays W1, b1, ..., loaded with allow_pickle=False
    <id>.json  everything else, plus the weights' SHA-256 and the model id

The model id (format version 2) is the first 12 hex digits of the SHA-256 of what *defines*
the model: model type, architecture, weights (their checksum), spec, normalization and
threshold. Metadata (training history, timings, metrics, provenance) is not part of it, so two
identical trainings from the same seed give the same id however long they took. Files of
format version 1 (whose id hashed the whole JSON, metadata included) still load, checked the
way they were written.

:func:`load_model` checks everything it reads and refuses, each with its own
:class:`ModelFileError` message, a file that is missing, truncated, not JSON / not an .npz, of
an unknown format version, missing fields, an invalid or absurdly large architecture, holding
pickled objects, arrays of the wrong name, shape or dtype, weights that do not match their
checksum, content that does not match the model id, or non-finite weights. The array names,
shapes and dtypes are read from the .npz member headers and compared with the architecture
*before* any array is loaded, so a file claiming a 100000 × 100000 layer costs nothing.
Inputs made with another spec are refused with :class:`FeatureSpecMismatch`
(:meth:`Classifier.check_feature_spec`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ann.convnet import MAX_PARAMETERS, ConvNet, architecture_param_shapes
from ann.errors import AnnError, ConfigError, FeatureSpecMismatch, ModelFileError
from ann.functions import ACTIVATIONS
from ann.network import MLP, _check_dtype
from ann.standardize import Standardizer

__all__ = ["FORMAT_VERSION", "MODEL_FORMAT", "MODEL_TYPES", "Classifier", "load_model", "save_model"]

MODEL_FORMAT = "damwatch-ann-model"
FORMAT_VERSION = 2  # 2: model_type, ConvNets, id over the defining content only; 1: classic, id over the whole JSON
MODEL_TYPES = ("classic", "cnn")
_REQUIRED_V1 = ("format", "format_version", "model_id", "architecture", "weights", "feature_spec", "normalization", "threshold", "metadata")
_REQUIRED = _REQUIRED_V1 + ("model_type",)
# What defines a model (version 2): these fields, and nothing else, make its id.
_ID_FIELDS = ("model_type", "architecture", "weights", "feature_spec", "normalization", "threshold")


def _spec_dict(spec: Any) -> dict[str, Any]:
    """A feature spec as a JSON-ready dict (accepts a dict or an object with ``to_dict()``)."""
    if hasattr(spec, "to_dict"):
        spec = spec.to_dict()
    if not isinstance(spec, dict):
        raise ConfigError(f"feature spec must be a dict or have to_dict(), got {type(spec).__name__}")
    return _json_ready(spec)


def _spec_label(spec: dict[str, Any]) -> str:
    if "names" not in spec and "name" not in spec:  # a cnn's input description: show it
        return _short(spec, 160)
    name = spec.get("name", "?")
    version = spec.get("version")
    n = len(spec.get("names", ()))
    return f"'{name}-v{version}' ({n} features)" if version is not None else f"'{name}' ({n} features)"


def _json_ready(value: Any) -> Any:
    """Plain JSON types: NumPy scalars/arrays to Python, tuples to lists, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Path):
        return str(value)
    raise ConfigError(f"model metadata value {value!r} of type {type(value).__name__} cannot be written to JSON")


class Classifier:
    """A trained network with its input spec, normalization and decision threshold.

    network: the trained :class:`MLP` (model type "classic") or :class:`ConvNet` ("cnn").
    standardizer: training-set statistics applied to raw inputs first, per feature (classic)
    or per channel (cnn); None: inputs go in as they are. feature_spec: dict (or object with
    ``to_dict()``); for a classic model it needs ``name`` and ``names`` (feature names in
    column order), for a cnn it is an opaque description of the input (bands, ground sample
    distance, window, pixel scaling) that the pipeline fills and compares. threshold:
    probability at or above which a tile or window counts as a detection. metadata: JSON-ready
    dict (history summary, metrics, provenance); NaN becomes null. It is not part of the
    model id.
    """

    def __init__(
        self,
        network: MLP | ConvNet,
        standardizer: Standardizer | None,
        feature_spec: Any,
        threshold: float = 0.5,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        spec = _spec_dict(feature_spec)
        if isinstance(network, ConvNet):
            if standardizer is not None and standardizer.n_features != network.channels:
                raise ConfigError(
                    f"standardizer has statistics for {standardizer.n_features} channels but the network takes {network.channels}"
                )
        elif isinstance(network, MLP):
            names = spec.get("names")
            if not isinstance(spec.get("name"), str) or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ConfigError(f"feature spec {spec} needs 'name' (str) and 'names' (list of feature names in column order)")
            if len(names) != network.n_inputs:
                raise FeatureSpecMismatch(
                    f"feature spec {_spec_label(spec)} lists {len(names)} features but the network takes {network.n_inputs} inputs"
                )
            if standardizer is not None and standardizer.n_features != network.n_inputs:
                raise ConfigError(
                    f"standardizer has statistics for {standardizer.n_features} features but the network takes {network.n_inputs}"
                )
        else:
            raise ConfigError(f"network must be an ann MLP or ConvNet, got {type(network).__name__}")
        if not (isinstance(threshold, (int, float, np.floating)) and 0 <= threshold <= 1):
            raise ConfigError(f"decision threshold {threshold!r} must be a probability in [0, 1]")
        self.network = network
        self.standardizer = standardizer
        self.feature_spec = spec
        self.threshold = float(threshold)
        self.metadata = _json_ready(dict(metadata or {}))
        self.model_id: str | None = None  # set by save_model / load_model

    @property
    def model_type(self) -> str:
        """ "classic" (MLP over feature vectors) or "cnn" (ConvNet over pixel windows)."""
        return "cnn" if isinstance(self.network, ConvNet) else "classic"

    @property
    def spec(self) -> dict[str, Any]:
        """The input description (the feature spec of a classic model)."""
        return self.feature_spec

    @property
    def feature_names(self) -> list[str]:
        return list(self.feature_spec["names"])

    def check_feature_spec(self, spec: Any) -> None:
        """Raise :class:`FeatureSpecMismatch`, naming both specs, unless ``spec`` is this model's.

        Classic models compare name, version and feature names; cnn models the whole input
        description (bands, ground sample distance, window, scaling), naming the keys that differ.
        """
        other = _spec_dict(spec)
        mine = self.feature_spec
        if self.model_type == "cnn":
            if other == mine:
                return
            keys = sorted(k for k in mine.keys() | other.keys() if mine.get(k) != other.get(k))
            detail = "; ".join(f"{k}: model {mine.get(k)!r}, data {other.get(k)!r}" for k in keys)
            raise FeatureSpecMismatch(
                f"pixels were prepared for input {_spec_label(other)} but model {self.model_id or '(unsaved)'} "
                f"was trained on {_spec_label(mine)} ({detail}). Read the survey with the model's input "
                "description or use a model trained on this one."
            )
        keys = [k for k in ("name", "version", "names") if k in mine or k in other]
        if all(mine.get(k) == other.get(k) for k in keys):
            return
        detail = ""
        a, b = mine.get("names", []), other.get("names", [])
        if a != b:
            if len(a) != len(b):
                detail = f" The model has {len(a)} features, the data {len(b)}."
            else:
                i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
                detail = f" Feature {i} is '{a[i]}' in the model but '{b[i]}' in the data."
        raise FeatureSpecMismatch(
            f"features were made with feature spec {_spec_label(other)} but model {self.model_id or '(unsaved)'} "
            f"was trained on {_spec_label(mine)}.{detail} Recompute the features with spec "
            f"'{mine.get('name')}' or use a model trained on '{other.get('name')}'."
        )

    def predict_proba(self, features: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Probabilities (N,) for raw (unstandardized) inputs: features (N, F) in spec order
        (classic) or pixel windows (N, H, W, C) (cnn)."""
        if self.model_type == "cnn":
            return self._predict_windows(features, batch_size or 64)
        batch_size = batch_size or 8192
        X = np.asarray(features)
        n_in = self.network.n_inputs
        if X.ndim != 2 or X.shape[1] != n_in:
            raise FeatureSpecMismatch(
                f"features of shape {X.shape} do not fit model {self.model_id or '(unsaved)'}: it takes "
                f"(N, {n_in}) arrays of feature spec {_spec_label(self.feature_spec)}"
            )
        out = np.empty(X.shape[0], self.network.dtype)
        for start in range(0, X.shape[0], batch_size):  # bounded memory for any N
            chunk = X[start : start + batch_size]
            if self.standardizer is not None:
                chunk = self.standardizer.transform(chunk, dtype=self.network.dtype)
            out[start : start + len(chunk)] = self.network.predict_proba(chunk, batch_size=batch_size)
        return out

    def _predict_windows(self, windows: np.ndarray, batch_size: int) -> np.ndarray:
        X = np.asarray(windows)
        net = self.network
        if X.ndim != 4 or X.shape[3] != net.channels:
            raise FeatureSpecMismatch(
                f"windows of shape {X.shape} do not fit model {self.model_id or '(unsaved)'}: it takes "
                f"(N, rows, columns, {net.channels}) pixel windows, channels last"
            )
        out = np.empty(X.shape[0], net.dtype)
        for start in range(0, X.shape[0], batch_size):  # standardize a batch at a time: bounded memory
            chunk = X[start : start + batch_size]
            if self.standardizer is not None:
                chunk = self.standardizer.transform(chunk, dtype=net.dtype)
            out[start : start + len(chunk)] = net.predict_proba(chunk, batch_size=batch_size)
        return out

    def score_map(self, image: np.ndarray, window: int | None = None, **kwargs: Any) -> np.ndarray:
        """Probabilities (h_out, w_out) of every window of the raw image (H, W, C), fully
        convolutionally: see :meth:`ann.convnet.ConvNet.score_map` (cnn models only)."""
        if self.model_type != "cnn":
            raise ConfigError(f"model {self.model_id or '(unsaved)'} is a classic model over tile features; score_map needs a cnn model")
        std, dtype = self.standardizer, self.network.dtype
        pre = None if std is None else (lambda strip: std.transform(strip, dtype=dtype))
        return self.network.score_map(image, window, preprocess=pre, **kwargs)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Detections (N,) bool: probability >= threshold."""
        return self.predict_proba(features) >= self.threshold

    def __repr__(self) -> str:
        if self.model_type == "cnn":
            shape = f"input_shape={self.network.input_shape}, parameters={self.network.n_parameters}"
        else:
            shape = f"sizes={self.network.sizes}"
        return (
            f"Classifier(model_id={self.model_id!r}, model_type={self.model_type!r}, {shape}, "
            f"feature_spec={_spec_label(self.feature_spec)}, threshold={self.threshold})"
        )


# --------------------------------------------------------------------------------------------
def _array_names(n_layers: int) -> list[str]:
    return [f"{kind}{i}" for i in range(1, n_layers + 1) for kind in ("W", "b")]


def _weights_digest(names: list[str], arrays: list[np.ndarray]) -> str:
    """SHA-256 over each array's name, dtype, shape and bytes (not the .npz bytes: the zip
    container stores timestamps, so the same weights would hash differently)."""
    h = hashlib.sha256()
    for name, a in zip(names, arrays):
        a = np.ascontiguousarray(a)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _content_id_v1(doc: dict[str, Any]) -> str:
    """Format 1's id: the whole JSON but the id (metadata and timings included)."""
    body = {k: v for k, v in doc.items() if k != "model_id"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _content_id(doc: dict[str, Any]) -> str:
    """Format 2's id: only what defines the model (:data:`_ID_FIELDS`), not metadata."""
    body = {k: doc.get(k) for k in _ID_FIELDS}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask (reading it means setting it; the lock keeps threads from racing)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _write_atomic(path: Path, write: Any) -> None:
    """Write through a temporary file in the same directory, then rename: never a partial file.

    mkstemp creates the file 0600; it gets the mode an ordinary ``open`` would have given it
    (0666 less the umask), so other users and services see models as they see other files.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(clf: Classifier, models_dir: str | os.PathLike) -> str:
    """Write ``<id>.npz`` and ``<id>.json`` into ``models_dir`` (created if needed); return the id.

    The .npz is written first and the JSON last, each through a temporary file, so a model whose
    JSON exists is complete. Saving the same model again rewrites the same files.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    net = clf.network
    names = _array_names(net.n_layers)
    arrays = [np.ascontiguousarray(p) for p in net.params]
    doc: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "format_version": FORMAT_VERSION,
        "model_type": clf.model_type,
        "architecture": net.architecture(),
        "weights": {
            "sha256": _weights_digest(names, arrays),
            "arrays": [{"name": n, "shape": list(a.shape), "dtype": a.dtype.name} for n, a in zip(names, arrays)],
        },
        "feature_spec": clf.feature_spec,
        "normalization": None if clf.standardizer is None else clf.standardizer.to_dict(),
        "threshold": clf.threshold,
        "metadata": clf.metadata,
    }
    model_id = _content_id(doc)
    doc["model_id"] = model_id
    _write_atomic(models_dir / f"{model_id}.npz", lambda f: np.savez(f, **dict(zip(names, arrays))))
    text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    _write_atomic(models_dir / f"{model_id}.json", lambda f: f.write(text.encode()))
    clf.model_id = model_id
    return model_id


def _resolve(source: str | os.PathLike, models_dir: str | os.PathLike | None) -> tuple[Path, Path]:
    path = Path(source)
    if path.suffix in (".json", ".npz"):
        stem = path.with_suffix("")
    elif models_dir is not None:
        stem = Path(models_dir) / str(source)
    else:
        raise ModelFileError(
            f"model {str(source)!r} is neither a .json/.npz path nor given with a models directory; "
            "pass the path of <id>.json or load_model(model_id, models_dir)"
        )
    json_path, npz_path = stem.with_suffix(".json"), stem.with_suffix(".npz")
    for p in (json_path, npz_path):
        if not p.is_file():
            known = sorted(q.stem for q in p.parent.glob("*.json")) if p.parent.is_dir() else []
            raise ModelFileError(
                f"model file {p} not found (a model is <id>.json + <id>.npz side by side). "
                f"Models in {p.parent}: {known or 'none'}"
            )
    return json_path, npz_path


def _mlp_param_shapes(arch: Any) -> list[tuple[int, ...]]:
    """Parameter shapes of a classic architecture dict, checked, allocating nothing."""
    if not isinstance(arch, dict):
        raise ConfigError("architecture must be a JSON object")
    missing = {"n_inputs", "hidden"} - arch.keys()
    if missing:
        raise ConfigError(f"architecture lacks {sorted(missing)}")

    def positive_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    n_inputs, hidden = arch["n_inputs"], arch["hidden"]
    if not positive_int(n_inputs):
        raise ConfigError(f"n_inputs={n_inputs!r} must be a positive integer")
    if not isinstance(hidden, list) or not all(positive_int(h) for h in hidden):
        raise ConfigError(f"hidden={hidden!r} must list positive integer layer sizes")
    if arch.get("activation", "relu") not in ACTIVATIONS:
        raise ConfigError(f"activation {arch.get('activation')!r} is unknown; choose one of {sorted(ACTIVATIONS)}")
    _check_dtype(arch.get("dtype", "float32"))
    sizes = [n_inputs, *hidden, 1]
    shapes = [s for a, b in zip(sizes[:-1], sizes[1:]) for s in ((a, b), (b,))]
    total = sum(math.prod(s) for s in shapes)
    if total > MAX_PARAMETERS:
        raise ConfigError(f"architecture has {total} parameters, more than the {MAX_PARAMETERS} allowed; this is not a damwatch network")
    return shapes


def _npz_headers(npz_path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{array name: (shape, dtype)} from the .npy headers inside the .npz, no array data read.

    Raises ModelFileError for members that are not .npy arrays or hold pickled objects.
    """
    headers = {}
    with zipfile.ZipFile(npz_path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                raise ModelFileError(f"weights file {npz_path} holds {info.filename!r}, which is not an .npy array: save the model again")
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy format version {version}")
            if dtype.hasobject:
                raise ModelFileError(
                    f"weights file {npz_path} holds pickled Python objects ({info.filename}); model files never use "
                    "pickle (loading them could run arbitrary code). Refused"
                )
            headers[info.filename[: -len(".npy")]] = (tuple(shape), dtype)
    return headers


def load_model(source: str | os.PathLike, models_dir: str | os.PathLike | None = None) -> Classifier:
    """Load and check a model: ``load_model("dir/<id>.json")`` (or ``.npz``), or ``load_model(id, dir)``."""
    json_path, npz_path = _resolve(source, models_dir)

    # -- the JSON -----------------------------------------------------------------------------
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(
            f"model file {json_path} is not valid JSON ({e}); it is truncated or damaged: save the model again"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
        raise ModelFileError(
            f"{json_path} is not a damwatch model file (no \"format\": \"{MODEL_FORMAT}\" marker); "
            "pass the JSON written by save_model"
        )
    version = doc.get("format_version")
    if version not in (1, FORMAT_VERSION) or isinstance(version, bool):
        raise ModelFileError(
            f"{json_path} has model format version {version!r}; this damwatch reads versions 1 to {FORMAT_VERSION}. "
            "Load it with the damwatch version that wrote it, or retrain"
        )
    missing = [k for k in (_REQUIRED_V1 if version == 1 else _REQUIRED) if k not in doc]
    if missing:
        raise ModelFileError(f"{json_path} lacks the fields {missing}; it was edited or damaged: save the model again")
    model_type = "classic" if version == 1 else doc["model_type"]
    if model_type not in MODEL_TYPES:
        raise ModelFileError(f"{json_path} has model_type {model_type!r}; this damwatch knows {list(MODEL_TYPES)}")
    arch = doc["architecture"]
    try:  # shapes from the architecture alone: nothing is allocated yet
        if model_type == "cnn":
            shapes = architecture_param_shapes(arch)[1]
            dtype = np.dtype(arch.get("dtype", "float32"))
        else:
            shapes = _mlp_param_shapes(arch)
            dtype = np.dtype(arch.get("dtype", "float32"))
    except (ConfigError, TypeError, KeyError, ValueError) as e:
        raise ModelFileError(f"{json_path} has an invalid architecture {_short(arch)}: {e}") from None
    names = _array_names(len(shapes) // 2)
    listed = doc["weights"].get("arrays") if isinstance(doc["weights"], dict) else None
    if isinstance(listed, list):
        for entry, name, shape in zip(listed, names, shapes):
            if not isinstance(entry, dict) or entry.get("name") != name or tuple(entry.get("shape", ())) != shape:
                raise ModelFileError(
                    f"{json_path} lists weight array {entry!r} but its architecture needs {name} of shape {shape}: "
                    "it was edited or damaged; save the model again"
                )

    # -- the weights: headers first, then the data --------------------------------------------
    if not zipfile.is_zipfile(npz_path):  # np.load would try anything else as a pickle
        raise ModelFileError(
            f"weights file {npz_path} is truncated or not an .npz archive (no zip directory): save the model again"
        )
    try:
        headers = _npz_headers(npz_path)
        if sorted(headers) != sorted(names):
            raise ModelFileError(
                f"weights file {npz_path} holds arrays {sorted(headers)} but the architecture "
                f"in {json_path.name} needs {names}: the files belong to different models"
            )
        for name, shape in zip(names, shapes):
            got_shape, got_dtype = headers[name]
            if got_shape != shape:
                raise ModelFileError(
                    f"array {name} in {npz_path} has shape {got_shape} but the architecture in "
                    f"{json_path.name} needs {shape}: the files belong to different models"
                )
            if got_dtype != dtype:
                raise ModelFileError(
                    f"array {name} in {npz_path} is {got_dtype} but the architecture in {json_path.name} says "
                    f"{dtype.name}: the files belong to different models"
                )
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = [npz[n] for n in names]
    except ModelFileError:
        raise
    except ValueError as e:
        if "pickle" in str(e):
            raise ModelFileError(
                f"weights file {npz_path} holds pickled Python objects; model files never use pickle "
                "(loading them could run arbitrary code). Refused"
            ) from None
        raise ModelFileError(f"weights file {npz_path} is damaged ({e}): save the model again") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as e:
        raise ModelFileError(
            f"weights file {npz_path} is truncated or not an .npz archive ({type(e).__name__}: {e}): save the model again"
        ) from None
    weights = doc["weights"]
    if not isinstance(weights, dict) or _weights_digest(names, arrays) != weights.get("sha256"):
        raise ModelFileError(
            f"weights in {npz_path} do not match the checksum in {json_path.name}: the .npz was modified "
            "or comes from another model with the same shapes"
        )
    content_id = _content_id_v1(doc) if version == 1 else _content_id(doc)
    if content_id != doc["model_id"] or (json_path.stem != doc["model_id"]):
        raise ModelFileError(
            f"{json_path} does not match its model id {doc['model_id']!r} (its content hashes to "
            f"{content_id!r}): it was edited after saving or renamed. Save the model again"
        )
    for name, a in zip(names, arrays):
        if not np.isfinite(a).all():
            raise ModelFileError(f"array {name} in {npz_path} holds NaN or infinity: training diverged; retrain")

    # -- the rest -----------------------------------------------------------------------------
    try:
        net = ConvNet.from_architecture(arch, arrays) if model_type == "cnn" else MLP.from_architecture(arch, arrays)
        norm = doc["normalization"]
        standardizer = None if norm is None else Standardizer.from_dict(norm)
        clf = Classifier(net, standardizer, doc["feature_spec"], doc["threshold"], doc["metadata"])
    except AnnError as e:
        raise ModelFileError(f"{json_path} is inconsistent: {e}") from None
    clf.model_id = doc["model_id"]
    return clf


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
