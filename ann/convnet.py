"""The convolutional network: conv/pool layers, a global pool, dense layers, one sigmoid output.

**Layout: channels-last.** Input windows are ``X (B, H, W, C)`` float arrays (B windows of H × W
pixels and C bands); every feature map is (B, h, w, filters). See :mod:`ann.conv` for why.

A network is described by plain data, the ``architecture`` stored in the model JSON::

    {"input_shape": [64, 64, 4],
     "layers": [{"type": "conv", "filters": 16, "kernel": 3, "stride": 1, "padding": "valid", "activation": "relu"},
                {"type": "maxpool", "size": 2},
                ...,
                {"type": "global_max"},
                {"type": "dense", "units": 32, "activation": "relu"},
                {"type": "dense", "units": 1, "activation": null}],
     "dtype": "float32", "output_activation": "sigmoid", "loss": "binary_cross_entropy"}

Layer types: ``conv`` (filters, kernel, stride 1 or 2, padding "valid" or "same", activation),
``maxpool`` (size), ``global_max`` / ``global_avg`` (exactly one, ending the convolutional
*trunk*), ``dense`` (units, activation; the *head*). The last layer is ``dense`` with one unit
and no activation: its logit goes to the sigmoid and the cross-entropy. Unknown types and keys
are refused with :class:`ConfigError`, never ignored. No batch normalization (DESIGN 13): its
statistics would depend on how a batch is split across workers.

**Geometry.** With "valid" padding everywhere, the trunk maps a window of ``n`` pixels to
:meth:`ConvNet.feature_size` ``(n)`` feature cells; :attr:`ConvNet.total_stride` ``S`` is the
product of the conv strides and pool sizes, :attr:`ConvNet.min_window` the smallest window the
trunk accepts. Scoring a whole image (:meth:`ConvNet.score_map`) runs the trunk once over it,
then the global pool as a *sliding* pool (stride 1) and the head at every cell: cell (i, j)
equals the probability of the window at pixel offset (i S, j S) scored alone. That identity
needs "valid" padding ("same" pads a lone window's border with zeros, where inside the image
there are real pixels), so the default network uses it.

**Default architecture** (:data:`DEFAULT_LAYERS`, windows of :data:`DEFAULT_WINDOW` = 64 px):
four 3 × 3 valid conv layers of 8, 8, 32, 64 filters with ReLU, 2 × 2 max pools between
them, global max, dense 32 + ReLU, sigmoid output. 64 → 62 → 31 → 29 → 14 → 12 → 6 → 4 cells;
total stride 8, minimum window 38 px, receptive field 38 px (76 m at 2 m), 23.8 k parameters
(4 bands). Chosen on a 64-px bar task (a bar of 8 px at a random position and orientation
against 8 scattered bright pixels, 4 bands, noise 0.3; 1280 windows to train, 400 to validate,
600 held out; 300 Adam steps at batch 64 with D4) and on the training step's time (batch 64,
one core, this code, load average ~2.4 on the 2 shared cores):

=====================  ==========  =============  ==================
filters                parameters  step (ms, 64)  held-out accuracy
=====================  ==========  =============  ==================
16, 32, 64, 64         62.8 k      131 [1]_       0.977
8, 16, 32, 64          26.7 k      61             0.983
**8, 8, 32, 64**       23.8 k      45             0.980
8, 8, 16, 32           7.8 k       48             0.953
4, 8, 16, 32           7.3 k       39             0.977
8, 16, 32, 32          16.4 k      78 [1]_        0.973
16, 32, 64, 64, *avg*  62.8 k      135 [1]_       0.557 (not learnt)
=====================  ==========  =============  ==================

.. [1] measured before two optimizations of the backward pass (~15 % faster since).

- the budget decides the width: 2000 steps at batch 64 must fit in ~90 s on the demo's 2 cores,
  i.e. <= ~45 ms a step; the first two layers work on the largest maps (62² and 29² cells) and
  cost most, so they are narrow; layers 3-4 (12² and 4² cells) are cheap and keep 32 and 64
  filters for capacity. (4, 8, 16, 32) is faster still, but with 7 k parameters it leaves
  little room for real imagery, which is harder than bars.
- global *max* rather than average: the target is one small object anywhere in the window; a
  max keeps the strongest detector response wherever it is, an average dilutes it by the
  area (the average-pooled net had not learnt the task after 300 steps);
- four conv layers reach a 38-px (76 m) receptive field, wide enough for a dam and its banks.

Parameters are ``[W1, b1, W2, b2, ...]`` over the conv and dense layers in order (conv
``W (k, k, C_in, F)``, dense ``W (n_in, n_out)``), laid out in one buffer like the
:class:`ann.network.MLP`'s, so optimizers update them in one pass.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ann.conv import (
    PADDINGS,
    conv_backward,
    conv_forward,
    conv_output_size,
    dx_by_convolution,
    global_avg_backward,
    global_avg_forward,
    global_max_backward,
    global_max_forward,
    maxpool_backward,
    maxpool_forward,
    sliding_avg,
    sliding_max,
)
from ann.errors import ConfigError, FeatureSpecMismatch
from ann.functions import (
    ACTIVATIONS,
    LOSS_FUNCTIONS,
    relu,
    sigmoid,
    sigmoid_cross_entropy_with_logits,
)
from ann.layers import dense_backward, dense_forward
from ann.network import MLP, _check_dtype, tiled_arrays

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LAYERS",
    "DEFAULT_MICRO_BATCH",
    "DEFAULT_WINDOW",
    "LAYER_KEYS",
    "MAX_PARAMETERS",
    "ConvNet",
    "architecture_param_shapes",
    "network_from_architecture",
]

DEFAULT_WINDOW = 64  # pixels (128 m at the default 2 m ground sample distance)
DEFAULT_LAYERS: list[dict[str, Any]] = [
    {"type": "conv", "filters": 8, "kernel": 3, "stride": 1, "padding": "valid", "activation": "relu"},
    {"type": "maxpool", "size": 2},
    {"type": "conv", "filters": 8, "kernel": 3, "stride": 1, "padding": "valid", "activation": "relu"},
    {"type": "maxpool", "size": 2},
    {"type": "conv", "filters": 32, "kernel": 3, "stride": 1, "padding": "valid", "activation": "relu"},
    {"type": "maxpool", "size": 2},
    {"type": "conv", "filters": 64, "kernel": 3, "stride": 1, "padding": "valid", "activation": "relu"},
    {"type": "global_max"},
    {"type": "dense", "units": 32, "activation": "relu"},
    {"type": "dense", "units": 1, "activation": None},
]
# Data-parallel defaults for the default network, measured by benchmarks/conv.py on 2 workers
# of one thread: an exchange (weights out, gradients back, round trips) costs ~25-45 ms; at
# ~1.1 ms per window (forward + backward, one core) a global batch of 512 (256 per worker)
# keeps it at ~5 % of a step (and the idle share, imbalance included, <= 0.10), where 256
# gave 9-12 % and 128 over 25 %. Pass it as TrainConfig(batch_size=...) / ShardPlan.from_config.
DEFAULT_BATCH_SIZE = 512
# Windows per gradient call inside a shard: the first layer's patch matrix for 64 windows of
# 64 x 64 x 4 takes 35 MB and all work buffers ~90 MB; larger micro-batches only add memory.
DEFAULT_MICRO_BATCH = 64
# A sane bound on a model's size, checked before anything is allocated (a damaged or hostile
# JSON claiming a 100000 x 100000 layer is refused instead of exhausting memory).
MAX_PARAMETERS = 50_000_000

# Keys of each layer type and their defaults (None: required).
LAYER_KEYS: dict[str, dict[str, Any]] = {
    "conv": {"filters": None, "kernel": 3, "stride": 1, "padding": "valid", "activation": "relu"},
    "maxpool": {"size": 2},
    "global_max": {},
    "global_avg": {},
    "dense": {"units": None, "activation": "relu"},
}
_GLOBAL = ("global_max", "global_avg")
_ARCHITECTURE_KEYS = {"input_shape", "layers", "dtype", "output_activation", "loss"}


def _positive_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1


def _normalized_layers(layers: Any) -> list[dict[str, Any]]:
    """Layers with every key explicit (defaults filled), checked; ConfigError naming the layer."""
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ConfigError(f"layers must be a non-empty list of layer dicts, got {layers!r}")
    out = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or layer.get("type") not in LAYER_KEYS:
            kind = layer.get("type") if isinstance(layer, dict) else layer
            raise ConfigError(f"layer {i} has unknown type {kind!r}; choose one of {sorted(LAYER_KEYS)}")
        kind = layer["type"]
        keys = LAYER_KEYS[kind]
        unknown = set(layer) - set(keys) - {"type"}
        if unknown:
            raise ConfigError(f"layer {i} ({kind}) has unknown keys {sorted(unknown)}; its keys are {sorted(keys)}")
        full = {"type": kind}
        for key, default in keys.items():
            if key not in layer and default is None:
                raise ConfigError(f"layer {i} ({kind}) needs {key!r}")
            full[key] = layer.get(key, default)
        if kind == "dense" and i == len(layers) - 1 and "activation" not in layer:
            full["activation"] = None  # the output layer's logit goes to the sigmoid
        for key in ("filters", "kernel", "units", "size"):
            if key in full and not _positive_int(full[key]):
                raise ConfigError(f"layer {i} ({kind}) {key}={full[key]!r} must be a positive integer")
            if key in full:
                full[key] = int(full[key])
        if kind == "conv":
            if full["stride"] not in (1, 2) or isinstance(full["stride"], bool):
                raise ConfigError(f"layer {i} (conv) stride={full['stride']!r} must be 1 or 2")
            if full["padding"] not in PADDINGS:
                raise ConfigError(f"layer {i} (conv) padding={full['padding']!r} must be one of {list(PADDINGS)}")
        if "activation" in full and full["activation"] is not None and full["activation"] not in ACTIVATIONS:
            raise ConfigError(f"layer {i} ({kind}) activation {full['activation']!r} is unknown; choose one of {sorted(ACTIVATIONS)} or null")
        out.append(full)
    kinds = [layer["type"] for layer in out]
    pools = [i for i, k in enumerate(kinds) if k in _GLOBAL]
    if len(pools) != 1:
        raise ConfigError(f"layers {kinds} must hold exactly one global pool (global_max or global_avg) between the conv layers and the dense head")
    g = pools[0]
    if any(k not in ("conv", "maxpool") for k in kinds[:g]) or not any(k == "conv" for k in kinds[:g]):
        raise ConfigError(f"layers {kinds}: before the global pool only conv and maxpool layers, at least one conv")
    if any(k != "dense" for k in kinds[g + 1 :]) or g == len(kinds) - 1:
        raise ConfigError(f"layers {kinds}: after the global pool only dense layers, at least one")
    last = out[-1]
    if last["units"] != 1 or last["activation"] is not None:
        raise ConfigError(f"the last layer must be dense with units=1 and no activation (the sigmoid output); got {last}")
    return out


def _trunk_sizes(layers: list[dict[str, Any]], h: int, w: int) -> list[tuple[int, int]]:
    """Spatial size (rows, columns) after each trunk layer for an h × w input."""
    sizes = []
    for layer in layers:
        if layer["type"] == "conv":
            k, s, pad = layer["kernel"], layer["stride"], layer["padding"]
            h, w = conv_output_size(h, k, s, pad), conv_output_size(w, k, s, pad)
        elif layer["type"] == "maxpool":
            h, w = h // layer["size"], w // layer["size"]
        else:
            break
        sizes.append((h, w))
    return sizes


def architecture_param_shapes(architecture: Any) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """Check a ConvNet architecture dict and return (normalized architecture, parameter shapes).

    Allocates nothing, so a model file can be checked against its .npz headers first. Raises
    :class:`ConfigError` for unknown keys, bad layers, an input too small for the trunk, or more
    than :data:`MAX_PARAMETERS` parameters.
    """
    if not isinstance(architecture, dict):
        raise ConfigError(f"architecture must be a dict, got {type(architecture).__name__}")
    unknown = set(architecture) - _ARCHITECTURE_KEYS
    missing = {"input_shape", "layers"} - set(architecture)
    if unknown or missing:
        raise ConfigError(
            f"architecture has unknown keys {sorted(unknown)} / lacks {sorted(missing)}; expected keys {sorted(_ARCHITECTURE_KEYS)}"
        )
    if architecture.get("output_activation", "sigmoid") != "sigmoid":
        raise ConfigError(f"output_activation {architecture['output_activation']!r} unsupported; only 'sigmoid'")
    if architecture.get("loss", "binary_cross_entropy") not in LOSS_FUNCTIONS:
        raise ConfigError(f"loss {architecture['loss']!r} unsupported; choose one of {sorted(LOSS_FUNCTIONS)}")
    shape = architecture["input_shape"]
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(_positive_int(v) for v in shape)):
        raise ConfigError(f"input_shape={shape!r} must be [window rows, window columns, channels], positive integers")
    H, W, C = (int(v) for v in shape)
    layers = _normalized_layers(architecture["layers"])
    dtype = _check_dtype(architecture.get("dtype", "float32"))
    sizes = _trunk_sizes(layers, H, W)
    if min(min(s) for s in sizes) < 1:
        raise ConfigError(f"input windows of {H} x {W} px are too small for these layers (feature maps {sizes}); use larger windows")
    shapes: list[tuple[int, ...]] = []
    channels = C
    for layer in layers:
        if layer["type"] == "conv":
            k, f = layer["kernel"], layer["filters"]
            shapes += [(k, k, channels, f), (f,)]
            channels = f
        elif layer["type"] == "dense":
            shapes += [(channels, layer["units"]), (layer["units"],)]
            channels = layer["units"]
    total = sum(math.prod(s) for s in shapes)
    if total > MAX_PARAMETERS:
        raise ConfigError(f"architecture has {total} parameters, more than the {MAX_PARAMETERS} allowed; this is not a damwatch network")
    normalized = {
        "input_shape": [H, W, C],
        "layers": layers,
        "dtype": dtype.name,
        "output_activation": "sigmoid",
        "loss": "binary_cross_entropy",
    }
    return normalized, shapes


class _Workspace:
    """Buffers of one forward (+ backward) pass for up to ``capacity`` windows of one size.

    Per layer: its output ``a``; for conv the patch matrix ``cols`` (and the padded input for
    "same"); with ``backward``: the gradient wrt each layer's output ``d``, activation
    derivative scratch, patch gradients, pool masks, the parameter gradients (one buffer).
    A batch of B windows uses the first B of each (contiguous views).
    """

    def __init__(self, net: "ConvNet", hw: tuple[int, int], capacity: int, backward: bool = True) -> None:
        dt = net.dtype
        self.capacity, self.hw = capacity, hw
        self.a, self.cols, self.pad, self.d, self.work, self.dcols, self.dpad = [], [], [], [], [], [], []
        self.taken, self.mask, self.ones, self.routes = [], [], [], []
        h, w = hw
        c = net.input_shape[2]
        for i, layer in enumerate(net.layers):
            kind = layer["type"]
            if kind == "conv":
                k, s, f, pad = layer["kernel"], layer["stride"], layer["filters"], layer["padding"]
                ho, wo = conv_output_size(h, k, s, pad), conv_output_size(w, k, s, pad)
                if pad == "same":
                    hp, wp = (ho - 1) * s + k, (wo - 1) * s + k
                    hp, wp = max(hp, h), max(wp, w)
                    self.pad.append(np.zeros((capacity, hp, wp, c), dt))
                else:
                    hp, wp = h, w
                    self.pad.append(None)
                self.cols.append(np.empty((capacity, ho, wo, k, k * c), dt))
                out_shape = (ho, wo, f)
                h, w, c = ho, wo, f
            elif kind == "maxpool":
                h, w = h // layer["size"], w // layer["size"]
                out_shape = (h, w, c)
                self.cols.append(None)
                self.pad.append(None)
            elif kind in _GLOBAL:
                out_shape = (c,)
                self.cols.append(None)
                self.pad.append(None)
            else:
                c = layer["units"]
                out_shape = (c,)
                self.cols.append(None)
                self.pad.append(None)
            self.a.append(np.empty((capacity, *out_shape), dt))
        if not backward:
            return
        self.grads = tiled_arrays([p.shape for p in net.params], dt)
        self.loss_work = np.empty((capacity, 1), dt)  # scratch of the loss
        for i, layer in enumerate(net.layers):
            out_shape = self.a[i].shape
            kind = layer["type"]
            self.d.append(np.empty(out_shape, dt))
            act = layer.get("activation")
            if i in net._relu_after_pool:
                act = None  # applied (and differentiated) by the max pool that follows
            self.work.append(None if act is None else np.empty(out_shape, bool if act == "relu" else dt))
            c_in = net.input_shape[2] if i == 0 else self.a[i - 1].shape[-1]
            if kind == "conv" and i > 0 and dx_by_convolution(layer["stride"], c_in):  # dX as a convolution
                k, (_, ho, wo, f) = layer["kernel"], out_shape
                hp, wp = ho + k - 1, wo + k - 1
                self.dpad.append(np.zeros((capacity, ho + 2 * (k - 1), wo + 2 * (k - 1), f), dt))
                self.dcols.append(np.empty((capacity, hp, wp, k, k * f), dt))
            else:  # col2im
                self.dcols.append(np.empty(self.cols[i].shape, dt) if kind == "conv" and i > 0 else None)
                self.dpad.append(np.zeros(self.pad[i].shape, dt) if self.pad[i] is not None and i > 0 else None)
            pooled = kind == "maxpool"
            self.taken.append(np.empty(out_shape, bool) if pooled else None)
            self.mask.append(np.empty(out_shape, bool) if pooled else None)
            two = pooled and layer["size"] == 2
            self.routes.append(tuple(np.empty(out_shape, bool) for _ in range(3)) if two else None)
            rows = int(np.prod(out_shape[:-1]))  # capacity * positions
            self.ones.append(np.ones(rows, dt) if kind in ("conv", "dense") else None)


class ConvNet:
    """A convolutional binary classifier over (B, H, W, C) windows (see the module docstring).

    Parameters
    ----------
    input_shape: (window rows, window columns, channels) the network is trained on.
    layers: the layer list (plain dicts); default :data:`DEFAULT_LAYERS`.
    dtype: float32 (default) or float64 (gradient checks).
    seed: seeds the initial weights (He normal for ReLU layers, Glorot uniform otherwise).
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (DEFAULT_WINDOW, DEFAULT_WINDOW, 4),
        layers: Sequence[dict[str, Any]] | None = None,
        dtype: Any = np.float32,
        seed: int | None = 0,
    ) -> None:
        arch = {
            "input_shape": list(input_shape) if isinstance(input_shape, (list, tuple)) else input_shape,
            "layers": copy.deepcopy(list(DEFAULT_LAYERS if layers is None else layers)),
            "dtype": _check_dtype(dtype).name,
        }
        normalized, shapes = architecture_param_shapes(arch)
        self._arch = normalized
        self.layers: list[dict[str, Any]] = normalized["layers"]
        self.input_shape: tuple[int, int, int] = tuple(normalized["input_shape"])  # type: ignore[assignment]
        self.dtype = np.dtype(normalized["dtype"])
        self._params = tiled_arrays(shapes, self.dtype)
        self._global = next(i for i, layer in enumerate(self.layers) if layer["type"] in _GLOBAL)
        # Conv layers whose ReLU is applied after the max pool that follows them instead of
        # before: relu(max(z)) = max(relu(z)) exactly (both are monotone and exact), and the
        # gradient is the same (a block whose max is <= 0 gets 0 either way), on a map 4x
        # smaller. An implementation detail: the architecture still says conv+relu, maxpool.
        self._relu_after_pool = {
            i for i, layer in enumerate(self.layers[:-1])
            if layer["type"] == "conv" and layer["activation"] == "relu" and self.layers[i + 1]["type"] == "maxpool"
        }
        # index of each conv/dense layer's W in params
        self._param_index: dict[int, int] = {}
        for i, layer in enumerate(self.layers):
            if layer["type"] in ("conv", "dense"):
                self._param_index[i] = 2 * len(self._param_index)
        rng = np.random.default_rng(seed)
        for i, j in self._param_index.items():
            W = self._params[j]
            fan_in = int(np.prod(W.shape[:-1]))
            fan_out = W.shape[-1] * (W.shape[0] * W.shape[1] if W.ndim == 4 else 1)
            if self.layers[i]["activation"] == "relu":  # He et al. 2015
                W[...] = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=W.shape)
            else:  # Glorot & Bengio 2010
                bound = np.sqrt(6.0 / (fan_in + fan_out))
                W[...] = rng.uniform(-bound, bound, size=W.shape)
            self._params[j + 1][...] = 0.0
        self._workspace: _Workspace | None = None

    # ------------------------------------------------------------------------------ description
    @property
    def params(self) -> list[np.ndarray]:
        """``[W1, b1, ...]`` over the conv and dense layers; the same arrays for life (update in place)."""
        return self._params

    @property
    def n_layers(self) -> int:
        """Layers holding parameters (conv and dense): the model file's W1..Wn, b1..bn."""
        return len(self._param_index)

    @property
    def n_parameters(self) -> int:
        return int(sum(p.size for p in self._params))

    @property
    def window(self) -> int:
        """Window edge (pixels) the network was built for: ``input_shape[0]``."""
        return self.input_shape[0]

    @property
    def channels(self) -> int:
        return self.input_shape[2]

    @property
    def total_stride(self) -> int:
        """Pixels between neighbouring trunk output cells: product of conv strides and pool sizes."""
        s = 1
        for layer in self.layers[: self._global]:
            s *= layer["stride"] if layer["type"] == "conv" else layer["size"]
        return s

    @property
    def receptive_field(self) -> int:
        """Pixels (along one axis) that one trunk output cell depends on."""
        r = 1
        for layer in reversed(self.layers[: self._global]):
            if layer["type"] == "conv":
                r = (r - 1) * layer["stride"] + layer["kernel"]
            else:
                r = r * layer["size"]
        return r

    @property
    def fully_convolutional(self) -> bool:
        """True when every conv is "valid": then :meth:`score_map` equals window-by-window scoring."""
        return all(layer["padding"] == "valid" for layer in self.layers if layer["type"] == "conv")

    def feature_size(self, window: int) -> int:
        """Trunk output cells along one axis for a window of ``window`` pixels (< 1: too small)."""
        return _trunk_sizes(self.layers[: self._global], window, window)[-1][0]

    @property
    def min_window(self) -> int:
        """Smallest window (pixels) giving at least one trunk output cell."""
        n = 1
        while self.feature_size(n) < 1:
            n += 1
        return n

    def architecture(self) -> dict[str, Any]:
        """JSON-ready description (every layer key explicit) from which the network is rebuilt."""
        return copy.deepcopy(self._arch)

    @classmethod
    def from_architecture(cls, architecture: dict[str, Any], params: Sequence[np.ndarray]) -> "ConvNet":
        """Rebuild from :meth:`architecture` and parameter arrays (copied); ConfigError on any mismatch."""
        normalized, shapes = architecture_param_shapes(architecture)
        if len(params) != len(shapes):
            raise ConfigError(f"architecture needs {len(shapes)} parameter arrays, got {len(params)}")
        for i, (shape, given) in enumerate(zip(shapes, params)):
            if np.shape(given) != shape:
                raise ConfigError(
                    f"parameter {i} ({'W' if i % 2 == 0 else 'b'}{i // 2 + 1}) has shape {np.shape(given)} but the architecture needs {shape}"
                )
        net = cls(normalized["input_shape"], normalized["layers"], normalized["dtype"], seed=0)
        for mine, given in zip(net._params, params):
            mine[...] = given
        return net

    # ------------------------------------------------------------------------------ computation
    def _check_X(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        H, W, C = self.input_shape
        if X.ndim != 4 or X.shape[3] != C or min(X.shape[1:3]) < self.min_window:
            raise FeatureSpecMismatch(
                f"input of shape {X.shape} does not fit this network: it takes (B, rows, columns, {C}) windows "
                f"(channels last) of at least {self.min_window} px, trained on {H} x {W}"
            )
        return X

    def _workspace_for(self, hw: tuple[int, int], batch: int) -> _Workspace:
        ws = self._workspace
        if ws is None or ws.hw != hw or ws.capacity < batch:
            ws = self._workspace = _Workspace(self, hw, batch)
        return ws

    def _forward(self, X: np.ndarray, ws: _Workspace, B: int, keep: bool) -> tuple[np.ndarray, list[Any]]:
        """Logits (B, 1) of X (B, H, W, C) and each layer's cache (``keep``: for the backward pass)."""
        p = self._params
        caches: list[Any] = []
        x = X
        for i, layer in enumerate(self.layers):
            kind = layer["type"]
            out = ws.a[i][:B]
            if kind == "conv":
                j = self._param_index[i]
                pad = None if ws.pad[i] is None else ws.pad[i][:B]
                act = None if i in self._relu_after_pool else layer["activation"]
                x, cache = conv_forward(x, p[j], p[j + 1], layer["stride"], layer["padding"], act,
                                        out=out, cols_out=ws.cols[i][:B], pad_out=pad)  # (B, Ho, Wo, F)
            elif kind == "maxpool":
                routes = tuple(r[:B] for r in ws.routes[i]) if keep and ws.routes[i] is not None else None
                y = maxpool_forward(x, layer["size"], out=out, routes_out=routes)  # (B, h/size, w/size, C)
                if i - 1 in self._relu_after_pool:
                    relu(y, out=y)  # the previous conv's ReLU, on the 4x smaller map (see __init__)
                cache = (x, y, routes)
                x = y
            elif kind == "global_max":
                y, idx = global_max_forward(x, out=out)  # (B, C)
                cache = (idx, x.shape)
                x = y
            elif kind == "global_avg":
                cache = x.shape
                x = global_avg_forward(x, out=out)  # (B, C)
            else:
                j = self._param_index[i]
                x, cache = dense_forward(x, p[j], p[j + 1], layer["activation"], out=out)  # (B, units)
            caches.append(cache if keep else None)
        return x, caches

    def predict_proba(self, X: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Probability (N,) for windows X (N, H, W, C), already standardized, ``batch_size`` at a time.

        Any window size from :attr:`min_window` on is accepted (the trunk is convolutional and
        the pool global). Uses its own buffers: safe from several threads.
        """
        X = self._check_X(X)
        N = X.shape[0]
        out = np.empty(N, self.dtype)
        if N == 0:
            return out
        ws = _Workspace(self, X.shape[1:3], min(N, batch_size), backward=False)
        for start in range(0, N, batch_size):
            stop = min(start + batch_size, N)
            xb = np.ascontiguousarray(X[start:stop], dtype=self.dtype)
            z, _ = self._forward(xb, ws, stop - start, keep=False)
            sigmoid(z[:, 0], out=out[start:stop])
        return out

    def loss_and_grad(
        self,
        X: np.ndarray,
        y: np.ndarray,
        sample_weight: np.ndarray | None = None,
        *,
        reuse_buffers: bool = False,
    ) -> tuple[float, list[np.ndarray]]:
        """Summed weighted cross-entropy of the batch X (B, H, W, C) and the summed gradients.

        Same contract as :meth:`ann.network.MLP.loss_and_grad`: sums, not means (shards add
        up exactly); ``reuse_buffers=True`` returns the network's own gradient buffers,
        overwritten by the next such call (the training path; allocates nothing).
        """
        X = self._check_X(X)
        B = X.shape[0]
        y = np.asarray(y).reshape(-1)
        if y.shape[0] != B:
            raise ConfigError(f"y has {y.shape[0]} labels for {B} examples in X")
        X = np.ascontiguousarray(X, dtype=self.dtype)
        y = y.astype(self.dtype, copy=False).reshape(B, 1)
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight).reshape(-1)
            if sample_weight.shape[0] != B:
                raise ConfigError(f"sample_weight has {sample_weight.shape[0]} values for {B} examples in X")
            sample_weight = sample_weight.astype(self.dtype, copy=False).reshape(B, 1)
        hw = (X.shape[1], X.shape[2])
        ws = self._workspace_for(hw, B) if reuse_buffers else _Workspace(self, hw, B)

        z, caches = self._forward(X, ws, B, keep=True)  # (B, 1) logits
        last = len(self.layers) - 1
        loss, _ = sigmoid_cross_entropy_with_logits(z, y, sample_weight, delta_out=ws.d[last][:B], work=ws.loss_work[:B])
        # ws.d[last] now holds delta = w (p - y) = ∂L/∂z of the output node (B, 1)
        grads = ws.grads
        for i in range(last, -1, -1):
            layer, kind = self.layers[i], self.layers[i]["type"]
            da = ws.d[i][:B]
            dx_out = ws.d[i - 1][:B] if i > 0 else None
            if kind == "dense":
                j = self._param_index[i]
                dense_backward(da, caches[i], need_dx=i > 0, dx_out=dx_out, dW_out=grads[j], db_out=grads[j + 1],
                               work=None if ws.work[i] is None else ws.work[i][:B], ones=ws.ones[i][:B])
            elif kind == "global_max":
                idx, x_shape = caches[i]
                global_max_backward(da, idx, x_shape, out=dx_out)
            elif kind == "global_avg":
                global_avg_backward(da, caches[i], out=dx_out)
            elif kind == "maxpool":
                x, y_, routes = caches[i]
                if i - 1 in self._relu_after_pool:  # the ReLU applied after the pool: relu'(y) = [y > 0]
                    np.multiply(da, np.greater(y_, 0, out=ws.taken[i][:B]), out=da)
                maxpool_backward(da, x, y_, layer["size"], out=dx_out, taken=ws.taken[i][:B], mask=ws.mask[i][:B],
                                 routes=routes)
            else:
                j = self._param_index[i]
                positions = da.size // da.shape[-1]
                conv_backward(
                    da, caches[i], need_dx=i > 0, dx_out=dx_out, dW_out=grads[j], db_out=grads[j + 1],
                    work=None if ws.work[i] is None else ws.work[i][:B],
                    dcols_out=None if ws.dcols[i] is None else ws.dcols[i][:B],
                    dpad_out=None if ws.dpad[i] is None else ws.dpad[i][:B], ones=ws.ones[i][:positions],
                )
        return loss, grads if reuse_buffers else [g.copy() for g in grads]

    # ------------------------------------------------------------------------- whole images
    def _trunk(self, x: np.ndarray, max_cols_bytes: int) -> np.ndarray:
        """Trunk feature map of one image x (1, h, w, C), conv layers computed in row chunks so
        that no patch matrix exceeds ``max_cols_bytes`` (valid padding only)."""
        p = self._params
        for i, layer in enumerate(self.layers[: self._global]):
            if layer["type"] == "maxpool":
                x = maxpool_forward(x, layer["size"])
                continue
            j = self._param_index[i]
            k, s = layer["kernel"], layer["stride"]
            _, h, w, c = x.shape
            ho, wo = (h - k) // s + 1, (w - k) // s + 1
            out = np.empty((1, ho, wo, layer["filters"]), self.dtype)
            row_bytes = wo * k * k * c * self.dtype.itemsize
            chunk = max(1, min(ho, max_cols_bytes // max(row_bytes, 1)))
            cols = np.empty((1, chunk, wo, k, k * c), self.dtype)
            for r0 in range(0, ho, chunk):
                r1 = min(r0 + chunk, ho)
                conv_forward(x[:, r0 * s : (r1 - 1) * s + k], p[j], p[j + 1], s, "valid", layer["activation"],
                             out=out[:, r0:r1], cols_out=cols[:, : r1 - r0])
            x = out
        return x

    def _strip_cells(self, width: int, window: int, budget: int) -> int:
        """Output rows per strip so that one strip's feature maps fit in ``budget`` bytes."""
        S, trunk = self.total_stride, self.layers[: self._global]
        item = self.dtype.itemsize

        def peak(cells: int) -> int:
            h = (cells - 1) * S + window
            sizes = [(h, width)] + _trunk_sizes(trunk, h, width)
            chans = [self.channels] + [
                layer["filters"] if layer["type"] == "conv" else None for layer in trunk
            ]
            c, biggest = self.channels, 0
            for (h0, w0), (h1, w1), ch in zip(sizes[:-1], sizes[1:], chans[1:]):
                c1 = c if ch is None else ch
                biggest = max(biggest, (h0 * w0 * c + h1 * w1 * c1) * item)
                c = c1
            return biggest

        cells = 1
        while peak(2 * cells) <= budget and 2 * cells < 1 << 20:
            cells *= 2
        lo, hi = cells, 2 * cells  # peak(lo) <= budget < peak(hi) (or lo = 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if peak(mid) <= budget else (lo, mid)
        return lo

    def score_map(
        self,
        image: np.ndarray,
        window: int | None = None,
        *,
        max_bytes: int = 192 * 2**20,
        preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
        logits: bool = False,
    ) -> np.ndarray:
        """Probabilities (h_out, w_out) of every window of ``image`` (H, W, C) at stride S.

        Cell (i, j) is the probability of ``image[i S : i S + window, j S : j S + window]``
        scored alone (:meth:`predict_proba`), S = :attr:`total_stride`; ``h_out = (H - window)
        // S + 1``. ``window`` defaults to the network's. The trunk runs over row strips of the
        image (overlapping by ``window - S`` rows, so no seam), each sized so that its feature
        maps take at most ``max_bytes``; its feature map is pooled with a sliding global pool
        (stride 1, the window's feature size) and the head applied at every cell.
        ``preprocess(strip) -> strip`` (e.g. standardization) is applied to each strip's pixels.
        ``logits=True`` returns the output node's logits instead of probabilities: they keep
        their order where float32 probabilities round to exactly 1 (logits above ~17), which
        object detection on the map needs.
        """
        if not self.fully_convolutional:
            raise ConfigError(
                "score_map needs a network whose conv layers all use padding='valid' ('same' zero-pads a "
                "window alone but not inside a large image, so the two scorings would differ); "
                "score windows with predict_proba instead"
            )
        window = self.window if window is None else int(window)
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != self.channels:
            raise FeatureSpecMismatch(f"image of shape {image.shape} does not fit this network: it takes (rows, columns, {self.channels})")
        if window < self.min_window:
            raise ConfigError(f"window {window} px is smaller than this network's minimum {self.min_window} px")
        H, W, _ = image.shape
        S = self.total_stride
        if H < window or W < window:
            return np.empty((max(0, (H - window) // S + 1), max(0, (W - window) // S + 1)), self.dtype)
        h_out, w_out = (H - window) // S + 1, (W - window) // S + 1
        fw = self.feature_size(window)
        pool = sliding_max if self.layers[self._global]["type"] == "global_max" else sliding_avg
        cells = min(h_out, self._strip_cells(W, window, max_bytes))
        out = np.empty((h_out, w_out), self.dtype)
        p = self._params
        for i0 in range(0, h_out, cells):
            i1 = min(i0 + cells, h_out)
            strip = image[i0 * S : (i1 - 1) * S + window]  # (rows, W, C)
            if preprocess is not None:
                strip = preprocess(strip)
            x = np.ascontiguousarray(strip, dtype=self.dtype)[None]
            fmap = self._trunk(x, max_cols_bytes=max(1, max_bytes // 4))[0]  # (hf, wf, F)
            pooled = pool(fmap, fw)[: i1 - i0, :w_out]  # (rows, w_out, F)
            z = np.ascontiguousarray(pooled).reshape(-1, pooled.shape[-1])
            for i in range(self._global + 1, len(self.layers)):
                j = self._param_index[i]
                z, _ = dense_forward(z, p[j], p[j + 1], self.layers[i]["activation"])
            if logits:
                out[i0:i1].reshape(-1)[...] = z[:, 0]
            else:
                sigmoid(z[:, 0], out=out[i0:i1].reshape(-1))
        return out


def network_from_architecture(architecture: dict[str, Any], params: Sequence[np.ndarray]) -> MLP | ConvNet:
    """An :class:`MLP` (architecture with ``n_inputs``) or a :class:`ConvNet` (with ``layers``)."""
    if isinstance(architecture, dict) and "layers" in architecture:
        return ConvNet.from_architecture(architecture, params)
    return MLP.from_architecture(architecture, params)
