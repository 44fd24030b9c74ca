"""The dense layer as an explicit forward/backward pair.

A *dense layer* connects every one of its ``n_in`` inputs to every one of its ``n_out`` nodes:
node ``j`` computes ``a_j = f(Σ_i x_i W_ij + b_j)``, a weighted sum of the inputs plus a bias (the
node's threshold), passed through the activation ``f``. For a batch of ``B`` examples at once,
``A = f(X @ W + b)`` with X (B, n_in), W (n_in, n_out), b (n_out,), A (B, n_out).

Backpropagation through it, given ``dA = ∂L/∂A`` from the layer above::

    delta = dA * f'(Z)          # (B, n_out)  ∂L/∂Z, f' written in terms of A (see functions.py)
    dW    = X.T @ delta         # (n_in, n_out)
    db    = delta.sum(axis=0)   # (n_out,)
    dX    = delta @ W.T         # (B, n_in)   handed to the layer below

Because the loss is a *sum* over examples, ``dW`` and ``db`` are sums of per-example gradients.

Every output can be written into a preallocated array (``out=``): the network's training path
passes the same buffers at every step, so a step allocates no arrays at all.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ann.functions import ACTIVATIONS, DERIVATIVES

__all__ = ["DenseCache", "dense_forward", "dense_backward"]


class DenseCache(NamedTuple):
    """What the backward pass needs from the forward pass: the input, weights and output."""

    x: np.ndarray  # (B, n_in)
    W: np.ndarray  # (n_in, n_out)
    a: np.ndarray  # (B, n_out) output after the activation (``None`` activation: the logits)
    activation: str | None


def dense_forward(
    x: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    activation: str | None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, DenseCache]:
    """``A = f(x @ W + b)``; ``activation=None`` leaves the logits ``x @ W + b``.

    x (B, n_in), W (n_in, n_out), b (n_out,) -> A (B, n_out), written into ``out`` when given.
    """
    a = np.matmul(x, W, out=out)  # (B, n_out)
    a += b
    if activation is not None:
        ACTIVATIONS[activation](a, out=a)
    return a, DenseCache(x, W, a, activation)


def dense_backward(
    da: np.ndarray,
    cache: DenseCache,
    *,
    need_dx: bool = True,
    dx_out: np.ndarray | None = None,
    dW_out: np.ndarray | None = None,
    db_out: np.ndarray | None = None,
    work: np.ndarray | None = None,
    ones: np.ndarray | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of the layer: ``(dX, dW, db)`` from ``dA`` (B, n_out).

    ``da`` is overwritten with ``delta = dA * f'(Z)`` (the caller's buffer is reused). ``work``
    is a (B, n_out) scratch array for ``f'`` (bool is enough for ReLU's 0/1, and faster).
    ``ones``, a (B,) vector of ones, makes ``db = ones @ delta`` a BLAS matrix-vector product,
    about twice as fast as ``delta.sum(axis=0)`` (made here when not given). ``need_dx=False`` skips ``dX`` (the first
    layer's inputs are data, nobody needs their gradient) and returns ``None`` in its place.
    """
    x, W, a, activation = cache
    delta = da
    if activation is not None:
        fprime = DERIVATIVES[activation](a, out=work)  # (B, n_out)
        np.multiply(delta, fprime, out=delta)
    dW = np.matmul(x.T, delta, out=dW_out)  # (n_in, n_out)
    if ones is None:  # the pure call adds like the buffered one: the same bits
        ones = np.ones(delta.shape[0], delta.dtype)
    db = np.matmul(ones, delta, out=db_out)  # (n_out,)
    if not need_dx:
        dx = None
    elif W.shape[1] == 1:
        # One output node (the sigmoid output): delta @ W.T is an outer product (B, 1) x (1, n_in),
        # which a broadcast multiply does ~10x faster than BLAS's matrix product.
        dx = np.multiply(delta, W.T, out=dx_out)  # (B, n_in)
    else:
        dx = np.matmul(delta, W.T, out=dx_out)  # (B, n_in)
    return dx, dW, db
