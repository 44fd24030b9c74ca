"""The multilayer perceptron: dense layers stacked, one sigmoid output node.

An :class:`MLP` with ``n_inputs`` features and ``hidden=(64, 32)`` is the chain::

    X (B, F) -> dense+relu (B, 64) -> dense+relu (B, 32) -> dense (B, 1) logits -> sigmoid -> p (B,)

Its parameters are the flat list ``[W1, b1, W2, b2, ..., W_out, b_out]`` (W of shape
(n_in, n_out), b of shape (n_out,)), the same list object for the network's whole life, so an
optimizer can update them in place. The network knows nothing of optimizers or weight decay:
it computes probabilities, and the summed loss and gradients of a batch
(:meth:`MLP.loss_and_grad`, see :mod:`ann.layers` for the backward pass of one layer).

Initial weights depend on the activation they feed: He (normal, std ``sqrt(2 / fan_in)``) for
ReLU, which zeroes half its inputs; Glorot (uniform in ``±sqrt(6 / (fan_in + fan_out))``) for
tanh and sigmoid, and for the sigmoid output node. Biases start at zero. The seed fixes them.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ann.errors import ConfigError, FeatureSpecMismatch
from ann.functions import ACTIVATIONS, LOSS_FUNCTIONS, sigmoid, sigmoid_cross_entropy_with_logits
from ann.layers import DenseCache, dense_backward, dense_forward

__all__ = ["MLP", "DTYPES", "tiled_arrays"]

DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}
_ARCHITECTURE_KEYS = {"n_inputs", "hidden", "activation", "output_activation", "loss", "dtype"}


def _check_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise ConfigError(f"dtype {dtype!r} is not a NumPy dtype; use float32 or float64") from e
    if dt.name not in DTYPES:
        raise ConfigError(f"dtype {dt.name} is not supported by the network; use float32 (default) or float64")
    return dt


def tiled_arrays(shapes: Sequence[tuple[int, ...]], dtype: np.dtype) -> list[np.ndarray]:
    """Arrays of the given shapes laid back to back in one 1-D buffer (their common ``.base``).

    The network keeps its parameters and gradients this way so that elementwise work over all
    of them (the trainer's scaling, the optimizer's update) is one NumPy call on the buffer
    instead of one per array (see :func:`ann.optim.tiled_base`).
    """
    sizes = [int(np.prod(s)) for s in shapes]
    flat = np.empty(sum(sizes), dtype)
    views, start = [], 0
    for shape, size in zip(shapes, sizes):
        views.append(flat[start : start + size].reshape(shape))
        start += size
    return views


class _Workspace:
    """Arrays one forward+backward pass writes into, for batches of up to ``capacity`` rows.

    For each layer: its output ``a`` (capacity, n_out), its ``delta`` (∂L/∂A, then ∂L/∂Z in
    place), a ``work`` array for the activation's derivative (bool for ReLU, whose derivative is
    0/1); a vector of ones for the bias gradients; one gradient array per parameter. A batch of
    B rows uses the first B rows of each (contiguous views).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activations: Sequence[str | None],
        params: list[np.ndarray],
        capacity: int,
        backward: bool = True,
    ) -> None:
        dtype = params[0].dtype
        self.capacity = capacity
        self.a = [np.empty((capacity, n), dtype) for n in sizes[1:]]
        if backward:  # prediction needs the layer outputs only
            self.delta = [np.empty((capacity, n), dtype) for n in sizes[1:]]
            self.work = [np.empty((capacity, n), bool if act == "relu" else dtype) for n, act in zip(sizes[1:], activations)]
            self.ones = np.ones(capacity, dtype)
            self.grads = tiled_arrays([p.shape for p in params], dtype)


class MLP:
    """A fully connected binary classifier network.

    Parameters
    ----------
    n_inputs: features per example (the feature spec's length).
    hidden: nodes of each hidden layer, input side first; ``()`` gives logistic regression.
    activation: hidden layers' activation, ``"relu"`` (default: trains fastest, no saturation),
        ``"tanh"`` or ``"sigmoid"`` (the classic choice). The output node is always a sigmoid.
    dtype: float32 (default, half the memory and twice the matrix-product speed) or float64.
    seed: seeds the initial weights; ``None`` draws fresh entropy.
    """

    def __init__(
        self,
        n_inputs: int,
        hidden: Sequence[int] = (64, 32),
        activation: str = "relu",
        dtype: Any = np.float32,
        seed: int | None = 0,
    ) -> None:
        def positive_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1

        if not positive_int(n_inputs):
            raise ConfigError(f"n_inputs={n_inputs!r} must be a positive integer (the number of features)")
        if isinstance(hidden, (str, bytes)) or not all(positive_int(h) for h in hidden):
            raise ConfigError(f"hidden={hidden!r} must list positive integer layer sizes, e.g. (64, 32)")
        hidden = tuple(int(h) for h in hidden)
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation {activation!r} is unknown; choose one of {sorted(ACTIVATIONS)}")
        self.n_inputs = int(n_inputs)
        self.hidden = hidden
        self.activation = activation
        self.dtype = _check_dtype(dtype)
        self.sizes = (self.n_inputs, *hidden, 1)
        # Activation after each layer; None on the output layer, whose logits go to the loss.
        self.activations: list[str | None] = [activation] * len(hidden) + [None]
        rng = np.random.default_rng(seed)
        shapes = [s for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]) for s in ((n_in, n_out), (n_out,))]
        self._params = tiled_arrays(shapes, self.dtype)
        for layer, act in enumerate(self.activations):
            fan_in, fan_out = self.sizes[layer], self.sizes[layer + 1]
            if act == "relu":  # He et al. 2015
                W = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))
            else:  # Glorot & Bengio 2010, tanh / sigmoid / the sigmoid output
                bound = np.sqrt(6.0 / (fan_in + fan_out))
                W = rng.uniform(-bound, bound, size=(fan_in, fan_out))
            self._params[2 * layer][...] = W
            self._params[2 * layer + 1][...] = 0.0
        self._workspace: _Workspace | None = None

    # ----------------------------------------------------------------------------------------
    @property
    def params(self) -> list[np.ndarray]:
        """``[W1, b1, ..., W_out, b_out]``; always the same list and arrays (update in place).

        The arrays are consecutive views of one buffer; replacing a list element with another
        array works, only slower (optimizers then update array by array)."""
        return self._params

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    def architecture(self) -> dict[str, Any]:
        """JSON-ready description from which :meth:`from_architecture` rebuilds the network."""
        return {
            "n_inputs": self.n_inputs,
            "hidden": list(self.hidden),
            "activation": self.activation,
            "output_activation": "sigmoid",
            "loss": "binary_cross_entropy",
            "dtype": self.dtype.name,
        }

    @classmethod
    def from_architecture(cls, architecture: dict[str, Any], params: Sequence[np.ndarray]) -> "MLP":
        """Rebuild a network from :meth:`architecture` and its parameter arrays (copied).

        Raises :class:`ConfigError` naming the problem if keys are missing or unknown, names
        are unsupported, or the arrays do not have the shapes the architecture implies.
        """
        if not isinstance(architecture, dict):
            raise ConfigError(f"architecture must be a dict, got {type(architecture).__name__}")
        missing = {"n_inputs", "hidden"} - architecture.keys()
        unknown = architecture.keys() - _ARCHITECTURE_KEYS
        if missing or unknown:
            raise ConfigError(
                f"architecture {architecture} is missing {sorted(missing)} / has unknown keys {sorted(unknown)}; "
                f"expected keys {sorted(_ARCHITECTURE_KEYS)}"
            )
        if architecture.get("output_activation", "sigmoid") != "sigmoid":
            raise ConfigError(f"output_activation {architecture['output_activation']!r} unsupported; only 'sigmoid'")
        if architecture.get("loss", "binary_cross_entropy") not in LOSS_FUNCTIONS:
            raise ConfigError(f"loss {architecture['loss']!r} unsupported; choose one of {sorted(LOSS_FUNCTIONS)}")
        if not isinstance(architecture["hidden"], (list, tuple)):
            raise ConfigError(f"architecture 'hidden' must be a list of layer sizes, got {architecture['hidden']!r}")
        net = cls(
            architecture["n_inputs"],
            architecture["hidden"],
            architecture.get("activation", "relu"),
            dtype=architecture.get("dtype", "float32"),
            seed=0,
        )
        if len(params) != len(net._params):
            raise ConfigError(
                f"architecture {net.sizes} needs {len(net._params)} parameter arrays, got {len(params)}"
            )
        for i, (mine, given) in enumerate(zip(net._params, params)):
            given = np.asarray(given)
            if given.shape != mine.shape:
                raise ConfigError(
                    f"parameter {i} ({'W' if i % 2 == 0 else 'b'}{i // 2 + 1}) has shape {given.shape} but "
                    f"architecture {net.sizes} needs {mine.shape}"
                )
            mine[...] = given
        return net

    # ----------------------------------------------------------------------------------------
    def _check_X(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_inputs:
            raise FeatureSpecMismatch(
                f"input of shape {X.shape} does not fit this network: it takes (N, {self.n_inputs}) "
                f"arrays, one row of {self.n_inputs} features per example"
            )
        return X

    def _workspace_for(self, batch: int) -> _Workspace:
        """The network's own reusable workspace, grown (never shrunk) to hold ``batch`` rows."""
        if self._workspace is None or self._workspace.capacity < batch:
            self._workspace = _Workspace(self.sizes, self.activations, self._params, batch)
        return self._workspace

    def _forward(self, X: np.ndarray, ws: _Workspace, B: int) -> tuple[np.ndarray, list[DenseCache]]:
        """Logits (B, 1) of the first B rows of X, and each layer's cache."""
        p = self._params
        caches = []
        x = X
        for layer, act in enumerate(self.activations):
            x, cache = dense_forward(x, p[2 * layer], p[2 * layer + 1], act, out=ws.a[layer][:B])
            caches.append(cache)
        return x, caches

    def predict_proba(self, X: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """Probability of the positive class for each row of X (N, n_inputs) -> (N,) in dtype.

        Rows are processed ``batch_size`` at a time, so memory stays bounded for any N. Uses its
        own buffers (safe to call from several threads at once).
        """
        X = self._check_X(X)
        N = X.shape[0]
        out = np.empty(N, self.dtype)
        if N == 0:
            return out
        ws = _Workspace(self.sizes, self.activations, self._params, min(N, batch_size), backward=False)
        for start in range(0, N, batch_size):
            stop = min(start + batch_size, N)
            xb = np.asarray(X[start:stop], dtype=self.dtype)
            z, _ = self._forward(xb, ws, stop - start)
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
        """Summed weighted cross-entropy of the batch and the summed gradient of each parameter.

        X (B, n_inputs); y (B,) in {0, 1}; sample_weight (B,) or None. Returns
        ``(Σ_i w_i loss_i, [dW1, db1, ...])`` in the order and shapes of :attr:`params`. Sums, not
        means, so that batches split across workers add up exactly (DESIGN decision 5); the
        trainer divides by the example count and adds weight decay.

        ``reuse_buffers=True`` is the training loop's allocation-free path: the returned gradient
        arrays are the network's own work buffers, overwritten by the next call with
        ``reuse_buffers=True`` (copy them to keep them), and this path is not thread-safe. The
        default returns fresh arrays.
        """
        X = self._check_X(X)
        B = X.shape[0]
        y = np.asarray(y).reshape(-1)
        if y.shape[0] != B:
            raise ConfigError(f"y has {y.shape[0]} labels for {B} examples in X")
        if X.dtype != self.dtype:
            X = X.astype(self.dtype)
        y = y.astype(self.dtype, copy=False).reshape(B, 1)
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight).reshape(-1)
            if sample_weight.shape[0] != B:
                raise ConfigError(f"sample_weight has {sample_weight.shape[0]} values for {B} examples in X")
            sample_weight = sample_weight.astype(self.dtype, copy=False).reshape(B, 1)
        ws = self._workspace_for(B) if reuse_buffers else _Workspace(self.sizes, self.activations, self._params, B)

        z, caches = self._forward(X, ws, B)  # (B, 1) logits
        loss, delta = sigmoid_cross_entropy_with_logits(
            z, y, sample_weight, delta_out=ws.delta[-1][:B], work=ws.work[-1][:B]
        )  # delta (B, 1) = w (p - y) = ∂L/∂z of the output node
        grads = ws.grads
        for layer in range(self.n_layers - 1, -1, -1):
            delta, _, _ = dense_backward(
                delta,
                caches[layer],
                need_dx=layer > 0,
                dx_out=ws.delta[layer - 1][:B] if layer > 0 else None,
                dW_out=grads[2 * layer],
                db_out=grads[2 * layer + 1],
                work=ws.work[layer][:B],
                ones=ws.ones[:B],
            )
        return loss, grads if reuse_buffers else list(grads)
