"""Activations, their derivatives and the loss: small functions kept in tables.

An *activation* is the function a node applies to its weighted input ``z = x @ W + b``. The
network needs three of them for hidden layers (``relu``, ``tanh``, ``sigmoid``) and the sigmoid
on its single output node, which turns the output's ``z`` (the *logit*) into a probability.

Each derivative is written in terms of the activation's *output* ``a = f(z)`` rather than ``z``
(``relu'(z) = [a > 0]``, ``tanh'(z) = 1 - a²``, ``sigmoid'(z) = a (1 - a)``), so backpropagation
only has to keep the layer outputs it already computed in the forward pass.

Every function takes an optional ``out=`` array. Without it the function is pure and returns
a new array; with it (``out`` may be the input itself) the result is written there and nothing
is allocated — the training loop always passes preallocated buffers.

The loss is binary cross-entropy on the sigmoid of the logit. It is computed from the logit
(``softplus(z) - y z``), which is exact where ``log(p)`` would be ``log(0)``, and its gradient
with respect to the logit is the famous fused ``p - y``: the sigmoid's derivative ``p (1 - p)``
cancels against the cross-entropy's ``1 / (p (1 - p))``, so the output layer never divides by a
probability. :func:`binary_cross_entropy` computes the same loss from probabilities alone
(clipping them to ``[eps, 1 - eps]``), for validation where only probabilities are at hand.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "DERIVATIVES",
    "LOSS_FUNCTIONS",
    "relu",
    "relu_derivative",
    "tanh",
    "tanh_derivative",
    "sigmoid",
    "sigmoid_derivative",
    "binary_cross_entropy",
    "sigmoid_cross_entropy_with_logits",
]


def relu(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """max(z, 0) elementwise."""
    return np.maximum(z, 0, out=out)


def relu_derivative(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """relu'(z) from a = relu(z): 1 where a > 0, else 0 (the subgradient at 0 is taken as 0)."""
    if out is None:
        out = np.empty_like(a)
    return np.greater(a, 0, out=out)


def tanh(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Hyperbolic tangent elementwise, in (-1, 1)."""
    return np.tanh(z, out=out)


def tanh_derivative(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """tanh'(z) = 1 - a² from a = tanh(z)."""
    out = np.multiply(a, a, out=out)
    return np.subtract(1, out, out=out)


# Largest x with exp(x) finite in each float type, minus a margin: sigmoid clips -z to it.
_EXP_LIMIT = {np.dtype(t): float(np.log(np.finfo(t).max)) - 1.0 for t in (np.float16, np.float32, np.float64)}


def sigmoid(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """1 / (1 + exp(-z)) elementwise, in [0, 1].

    ``-z`` is clipped just below the overflow point of ``exp`` (about 87 in float32), so very
    negative logits give tiny positive probabilities (~1e-38) rather than an overflow warning.
    """
    out = np.negative(z, out=out)
    np.minimum(out, _EXP_LIMIT[out.dtype], out=out)
    np.exp(out, out=out)
    out += 1
    return np.reciprocal(out, out=out)


def sigmoid_derivative(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """sigmoid'(z) = a (1 - a) from a = sigmoid(z)."""
    out = np.subtract(1, a, out=out)
    return np.multiply(out, a, out=out)


ACTIVATIONS: dict[str, Callable[..., np.ndarray]] = {
    "relu": relu,
    "tanh": tanh,
    "sigmoid": sigmoid,
}
DERIVATIVES: dict[str, Callable[..., np.ndarray]] = {
    "relu": relu_derivative,
    "tanh": tanh_derivative,
    "sigmoid": sigmoid_derivative,
}


def sigmoid_cross_entropy_with_logits(
    z: np.ndarray,
    y: np.ndarray,
    sample_weight: np.ndarray | None = None,
    *,
    delta_out: np.ndarray | None = None,
    work: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """Summed binary cross-entropy of ``sigmoid(z)`` against ``y``, and its gradient wrt ``z``.

    z: (B, 1) logits. y: (B, 1) targets in {0, 1} (any value in [0, 1] works). sample_weight:
    (B, 1) or None (all ones). Returns ``(loss_sum, delta)`` where
    ``loss_sum = Σ w_i [softplus(z_i) - y_i z_i]`` (nats, summed, not averaged) and
    ``delta = w (p - y)`` with ``p = sigmoid(z)``, shape (B, 1), written into ``delta_out`` when
    given. ``work`` is a (B, 1) scratch array; pass one to allocate nothing.

    ``softplus(z) = max(z, 0) + log1p(exp(-|z|))`` never overflows and never takes ``log(0)``.
    """
    if work is None:
        work = np.empty_like(z)
    if delta_out is None:
        delta_out = np.empty_like(z)
    zf, wf = z.ravel(), None if sample_weight is None else sample_weight.ravel()

    def weighted_sum(v: np.ndarray) -> float:
        return float(v.sum()) if wf is None else float(np.dot(wf, v.ravel()))

    # Loss, as sums of whole vectors (no per-example Python): Σ w [max(z,0) + log1p(exp(-|z|)) - y z],
    # with max(z, 0) = (z + |z|) / 2 so that no extra buffer is needed.
    np.multiply(y, z, out=delta_out)  # (B, 1) y z, scratch until the gradient is written below
    loss = -weighted_sum(delta_out) + 0.5 * weighted_sum(zf)
    np.abs(z, out=work)
    loss += 0.5 * weighted_sum(work)
    np.negative(work, out=work)
    np.exp(work, out=work)
    np.log1p(work, out=work)
    loss += weighted_sum(work)

    # Gradient: delta = w (p - y). (p - y is dL/dz for sigmoid + cross-entropy: the sigmoid's
    # derivative p (1 - p) cancels the loss's 1 / (p (1 - p)).)
    delta = sigmoid(z, out=delta_out)
    delta -= y
    if sample_weight is not None:
        delta *= sample_weight
    return loss, delta


def binary_cross_entropy(
    y_true: np.ndarray, p: np.ndarray, sample_weight: np.ndarray | None = None
) -> float:
    """Mean binary cross-entropy (nats per example) of probabilities ``p`` against ``y_true``.

    Probabilities are clipped to ``[eps, 1 - eps]`` with ``eps = np.finfo(p.dtype).eps`` so a
    confident wrong answer costs about ``-log(eps)`` (16 nats in float32) instead of infinity.
    With ``sample_weight`` the mean is ``Σ w_i l_i / Σ w_i``.
    """
    p = np.asarray(p)
    dtype = p.dtype if p.dtype.kind == "f" else np.dtype(np.float64)
    eps = np.finfo(dtype).eps
    p = np.clip(p.astype(dtype, copy=False).ravel(), eps, 1 - eps)
    y = np.asarray(y_true, dtype=dtype).ravel()
    losses = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    if sample_weight is None:
        return float(losses.mean())
    w = np.asarray(sample_weight, dtype=dtype).ravel()
    return float((losses * w).sum() / w.sum())


LOSS_FUNCTIONS: dict[str, Callable[..., float]] = {
    # The only loss: the output node is a sigmoid, the task binary. The table names it in model
    # files so a file made with another loss is refused rather than misread.
    "binary_cross_entropy": binary_cross_entropy,
}
