"""Convolution and pooling layers as explicit forward/backward pairs over channels-last arrays.

**Layout: channels-last.** An image batch is ``X (B, H, W, C)``: B examples, H rows, W columns,
C channels (bands, or a layer's filters). The channels of one pixel are contiguous, so the
patch under a k × k kernel is ``k`` runs of ``k * C`` contiguous numbers and *im2col* (copy
every patch into one row of a matrix) is ``k`` block copies; the convolution is then one BLAS
matrix product. Kernels are ``W (k, k, C_in, C_out)`` (rows, columns, input channels, filters),
so ``W.reshape(k * k * C_in, C_out)`` is the product's right-hand side without a copy.

A 2-D *convolution* (a cross-correlation, as in every deep-learning library) with stride s::

    A[b, i, j, f] = f_act( Σ_{p, q, c} Xpad[b, s i + p, s j + q, c] W[p, q, c, f] + bias[f] )
    cols = im2col(Xpad)          # (B Ho Wo, k k C_in), one patch per row
    A    = f_act(cols @ W2 + b)  # (B Ho Wo, C_out) = (B, Ho, Wo, C_out)

Padding: ``"valid"`` uses only patches fully inside the image (``Ho = (H - k) // s + 1``);
``"same"`` pads with zeros so that ``Ho = ceil(H / s)`` (the extra row/column, if the total
padding is odd, goes after, as TensorFlow and PyTorch's ``padding="same"`` do).

Backward, given ``dA``::

    delta = dA * f'(Z)            # (B Ho Wo, C_out)
    dW2   = cols.T @ delta        # (k k C_in, C_out)
    db    = Σ_rows delta          # (C_out,)
    dcols = delta @ W2.T          # (B Ho Wo, k k C_in), then col2im: each patch row added back
                                  # onto the pixels it was copied from, then the padding cropped

*Max pooling* of size s takes the largest value of each s × s block (stride s; rows/columns
that do not fill a block are dropped, as PyTorch's default floor mode does); its gradient goes
to the first maximum of each block in row-major order (PyTorch's rule for ties).
*Global* max/average pooling reduces each channel over all H × W positions: (B, H, W, C) ->
(B, C). The ``sliding_*`` functions are their counterparts over every window of a large feature
map (stride 1), used to score a whole image at once (:meth:`ann.convnet.ConvNet.score_map`).

Like :mod:`ann.layers`, every function can write into preallocated arrays (``out=`` and
friends) so that a training step allocates nothing; without them it allocates and is pure.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ann.functions import ACTIVATIONS, DERIVATIVES

__all__ = [
    "PADDINGS",
    "ConvCache",
    "col2im",
    "conv_backward",
    "conv_forward",
    "conv_output_size",
    "dx_by_convolution",
    "global_avg_backward",
    "global_avg_forward",
    "global_max_backward",
    "global_max_forward",
    "im2col",
    "maxpool_backward",
    "maxpool_forward",
    "same_padding",
    "sliding_avg",
    "sliding_max",
]

PADDINGS = ("valid", "same")


def conv_output_size(n: int, kernel: int, stride: int, padding: str) -> int:
    """Output length along one axis: ``(n - k) // s + 1`` (valid) or ``ceil(n / s)`` (same)."""
    if padding == "same":
        return -(-n // stride)
    return (n - kernel) // stride + 1


def same_padding(n: int, kernel: int, stride: int) -> tuple[int, int]:
    """Zeros (before, after) along one axis for ``"same"``: the odd one goes after."""
    total = max((conv_output_size(n, kernel, stride, "same") - 1) * stride + kernel - n, 0)
    return total // 2, total - total // 2


def _pads(shape: tuple[int, ...], kernel: int, stride: int, padding: str) -> tuple[tuple[int, int], tuple[int, int]]:
    if padding == "valid":
        return (0, 0), (0, 0)
    return same_padding(shape[1], kernel, stride), same_padding(shape[2], kernel, stride)


def _padded(x: np.ndarray, pads, out: np.ndarray | None) -> np.ndarray:
    """x (B, H, W, C) inside a zero border (B, H + pt + pb, W + pl + pr, C); x itself if no padding.

    ``out`` is reused across steps: only its interior is written, its border stays zero.
    """
    (pt, pb), (pl, pr) = pads
    if pt == pb == pl == pr == 0:
        return x
    B, H, W, C = x.shape
    shape = (B, H + pt + pb, W + pl + pr, C)
    if out is None or out.shape != shape:
        out = np.zeros(shape, x.dtype)
    out[:, pt : pt + H, pl : pl + W, :] = x
    return out


def im2col(xp: np.ndarray, kernel: int, stride: int, out: np.ndarray | None = None) -> np.ndarray:
    """Patches of the (already padded) xp (B, Hp, Wp, C) as rows: (B, Ho, Wo, k, k * C).

    Row (b, i, j) holds ``xp[b, s i : s i + k, s j : s j + k, :]`` in (row, column, channel)
    order, matching ``W.reshape(k * k * C, F)``. Along a row of the image, the k pixels under
    the kernel are ``k * C`` contiguous numbers, so the copy is k block copies (one per kernel
    row) of a strided view, not k² copies of C numbers.
    """
    B, Hp, Wp, C = xp.shape
    k, s = kernel, stride
    Ho, Wo = (Hp - k) // s + 1, (Wp - k) // s + 1
    if out is None:
        out = np.empty((B, Ho, Wo, k, k * C), xp.dtype)
    xp = np.ascontiguousarray(xp)
    sb, sh, sw, sc = xp.strides
    for p in range(k):
        # (B, Ho, Wo, k*C): for output (i, j), the k*C numbers from pixel (s i + p, s j) on
        src = as_strided(xp[:, p:], shape=(B, Ho, Wo, k * C), strides=(sb, s * sh, s * sw, sc), writeable=False)
        out[:, :, :, p, :] = src
    return out


def col2im(dcols: np.ndarray, xp_shape: tuple[int, ...], kernel: int, stride: int, out: np.ndarray | None = None) -> np.ndarray:
    """The adjoint of :func:`im2col`: patch rows (B, Ho, Wo, k, k, C) added onto (B, Hp, Wp, C).

    Each pixel receives the sum of the entries copied from it (up to k² of them with stride 1).
    """
    B, Hp, Wp, C = xp_shape
    k, s = kernel, stride
    Ho, Wo = dcols.shape[1], dcols.shape[2]
    d = dcols.reshape(B, Ho, Wo, k, k, C)
    if out is None:
        out = np.zeros(xp_shape, dcols.dtype)
    else:
        out[...] = 0
    for p in range(k):
        for q in range(k):
            out[:, p : p + s * (Ho - 1) + 1 : s, q : q + s * (Wo - 1) + 1 : s, :] += d[:, :, :, p, q, :]
    return out


def dx_by_convolution(stride: int, c_in: int) -> bool:
    """Whether :func:`conv_backward` computes dX as a convolution of the padded delta (else col2im).

    col2im adds k² strided runs of C_in numbers; for narrow inputs (C_in <= 8) those runs are
    too short and the convolution form (k block copies of k C_out numbers and one product) is
    ~1.7x faster; from 16 channels on col2im is as fast or faster (measured at batch 64 on
    31 x 31 and 14 x 14 maps, one core). Stride 2 always uses col2im.
    """
    return stride == 1 and c_in <= 8


class ConvCache(NamedTuple):
    """What the backward pass needs: the patch matrix, the input geometry, weights and output."""

    cols: np.ndarray  # (B Ho Wo, k k C_in)
    x_shape: tuple[int, ...]  # (B, H, W, C_in)
    pads: tuple[tuple[int, int], tuple[int, int]]
    W: np.ndarray  # (k, k, C_in, C_out)
    stride: int
    a: np.ndarray  # (B, Ho, Wo, C_out) after the activation
    activation: str | None


def conv_forward(
    x: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    stride: int = 1,
    padding: str = "valid",
    activation: str | None = "relu",
    *,
    out: np.ndarray | None = None,
    cols_out: np.ndarray | None = None,
    pad_out: np.ndarray | None = None,
) -> tuple[np.ndarray, ConvCache]:
    """``A = f(conv(x, W) + b)``: x (B, H, W, C_in), W (k, k, C_in, C_out), b (C_out,) -> (B, Ho, Wo, C_out).

    ``cols_out`` (B, Ho, Wo, k, k C_in) and ``pad_out`` (the padded input, for "same") are
    reused buffers; ``out`` receives A.
    """
    k, _, C_in, C_out = W.shape
    pads = _pads(x.shape, k, stride, padding)
    xp = _padded(x, pads, pad_out)  # (B, Hp, Wp, C_in)
    cols = im2col(xp, k, stride, out=cols_out)  # (B, Ho, Wo, k, k C_in)
    B, Ho, Wo = cols.shape[:3]
    cols2 = cols.reshape(B * Ho * Wo, k * k * C_in)
    if out is None:
        out = np.empty((B, Ho, Wo, C_out), x.dtype)
    a2 = out.reshape(B * Ho * Wo, C_out)
    np.matmul(cols2, W.reshape(k * k * C_in, C_out), out=a2)  # (B Ho Wo, C_out)
    a2 += b
    if activation is not None:
        ACTIVATIONS[activation](a2, out=a2)
    return out, ConvCache(cols2, x.shape, pads, W, stride, out, activation)


def conv_backward(
    da: np.ndarray,
    cache: ConvCache,
    *,
    need_dx: bool = True,
    dx_out: np.ndarray | None = None,
    dW_out: np.ndarray | None = None,
    db_out: np.ndarray | None = None,
    work: np.ndarray | None = None,
    dcols_out: np.ndarray | None = None,
    dpad_out: np.ndarray | None = None,
    ones: np.ndarray | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``(dX (B, H, W, C_in), dW (k, k, C_in, C_out), db (C_out,))`` from dA (B, Ho, Wo, C_out).

    ``da`` is overwritten with ``delta = dA * f'(Z)``. ``work``: scratch like dA for ``f'``
    (bool for ReLU). ``ones``: (B Ho Wo,) ones for ``db = ones @ delta`` (made here if not
    given, so that the pure call and the buffered one add in the same order: the same bits).
    ``dcols_out``/``dpad_out``: scratch for the input gradient. When :func:`dx_by_convolution`
    (the input gradient as a convolution of the padded delta): ``dpad_out`` (B, Ho + 2k - 2, Wo + 2k - 2, C_out) with a
    zero border and ``dcols_out`` (B, Hp, Wp, k, k C_out). Otherwise (col2im): ``dcols_out``
    (B, Ho, Wo, k, k C_in) and, for "same", ``dpad_out`` (B, Hp, Wp, C_in).
    ``need_dx=False`` (first layer: its input is data) skips dX and returns None.
    """
    cols2, x_shape, pads, W, stride, a, activation = cache
    k, _, C_in, C_out = W.shape
    delta = da.reshape(-1, C_out)  # (B Ho Wo, C_out)
    if activation is not None:
        fprime = DERIVATIVES[activation](a.reshape(-1, C_out), out=None if work is None else work.reshape(-1, C_out))
        np.multiply(delta, fprime, out=delta)
    dW = np.matmul(cols2.T, delta, out=None if dW_out is None else dW_out.reshape(k * k * C_in, C_out))
    dW = dW.reshape(W.shape)
    if ones is None:
        ones = np.ones(delta.shape[0], delta.dtype)
    db = np.matmul(ones, delta, out=db_out)  # (C_out,): the row sum as a BLAS product, like the buffered path
    if not need_dx:
        return None, dW, db
    B, H, Wd, _ = x_shape
    (pt, pb), (pl, pr) = pads
    Ho = (H + pt + pb - k) // stride + 1
    Wo = (Wd + pl + pr - k) // stride + 1
    xp_shape = (B, H + pt + pb, Wd + pl + pr, C_in)
    if dx_by_convolution(stride, C_in):
        # The input gradient is itself a convolution: delta zero-padded by k - 1 on every side,
        # correlated with the kernel flipped in space and transposed in channels,
        #   dXp[b, y, x, c] = Σ_{p, q, f} Dpad[b, y + p, x + q, f] W[k-1-p, k-1-q, c, f],
        # so it is im2col (k block copies of k C_out numbers) and one product, instead of
        # col2im's k² strided additions of C_in numbers (slow for the narrow early layers).
        d4 = delta.reshape(B, Ho, Wo, C_out)
        dpad = _padded(d4, ((k - 1, k - 1), (k - 1, k - 1)), dpad_out)  # (B, Ho + 2k - 2, Wo + 2k - 2, C_out)
        dcols = im2col(dpad, k, 1, out=dcols_out)  # (B, Hp, Wp, k, k C_out)
        Wflip = np.ascontiguousarray(W[::-1, ::-1].transpose(0, 1, 3, 2)).reshape(k * k * C_out, C_in)
        rows = dcols.reshape(-1, k * k * C_out)
        if pt == pb == pl == pr == 0:
            if dx_out is None:
                dx_out = np.empty(x_shape, delta.dtype)
            np.matmul(rows, Wflip, out=dx_out.reshape(-1, C_in))  # (B H W, C_in)
            return dx_out, dW, db
        dxp = np.matmul(rows, Wflip).reshape(xp_shape)
        inner = dxp[:, pt : pt + H, pl : pl + Wd, :]
        if dx_out is None:
            return inner.copy(), dW, db
        np.copyto(dx_out, inner)
        return dx_out, dW, db
    dcols = np.matmul(delta, W.reshape(k * k * C_in, C_out).T,
                      out=None if dcols_out is None else dcols_out.reshape(-1, k * k * C_in))  # (B Ho Wo, k k C_in)
    if pt == pb == pl == pr == 0:
        dx = col2im(dcols.reshape(B, Ho, Wo, k * k * C_in), xp_shape, k, stride, out=dx_out)
    else:
        dxp = col2im(dcols.reshape(B, Ho, Wo, k * k * C_in), xp_shape, k, stride, out=dpad_out)
        inner = dxp[:, pt : pt + H, pl : pl + Wd, :]
        if dx_out is None:
            dx = inner.copy()
        else:
            dx = dx_out
            np.copyto(dx, inner)
    return dx, dW, db


# ------------------------------------------------------------------------------------ pooling
def _blocks(x: np.ndarray, size: int, writeable: bool = False) -> np.ndarray:
    """x (B, H, W, C) cropped to whole blocks, viewed as (B, Ho, size, Wo, size, C)."""
    B, H, W, C = x.shape
    Ho, Wo = H // size, W // size
    # A view (no copy) for any strides: the crop keeps whole blocks, and splitting an axis of
    # length n * size into (n, size) is expressible with strides.
    sb, sh, sw, sc = x.strides
    return as_strided(x, shape=(B, Ho, size, Wo, size, C), strides=(sb, size * sh, sh, size * sw, sw, sc), writeable=writeable)


def maxpool_forward(
    x: np.ndarray,
    size: int = 2,
    out: np.ndarray | None = None,
    *,
    routes_out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Max over non-overlapping size × size blocks: (B, H, W, C) -> (B, H // size, W // size, C).

    ``routes_out`` (size 2 only): three bool arrays like the output that record where each
    maximum is, for :func:`maxpool_backward`: ``right_top = a01 > a00``, ``right_bottom =
    a11 > a10`` and ``bottom = max(a10, a11) > max(a00, a01)``. Strict comparisons: a tie goes
    to the earlier position in row-major order, PyTorch's rule.
    """
    v = _blocks(x, size)
    B, Ho, _, Wo, _, C = v.shape
    if out is None:
        out = np.empty((B, Ho, Wo, C), x.dtype)
    if routes_out is not None:
        if size != 2:
            raise ValueError("recorded routes exist for 2 x 2 pooling only")
        right_top, right_bottom, bottom = routes_out
        a00, a01, a10, a11 = v[:, :, 0, :, 0], v[:, :, 0, :, 1], v[:, :, 1, :, 0], v[:, :, 1, :, 1]
        np.greater(a01, a00, out=right_top)
        np.greater(a11, a10, out=right_bottom)
        np.maximum(a00, a01, out=out)  # top row's max
        low = np.maximum(a10, a11)  # bottom row's max
        np.greater(low, out, out=bottom)
        np.maximum(out, low, out=out)
        return out
    np.copyto(out, v[:, :, 0, :, 0, :])
    for p in range(size):
        for q in range(size):
            if p or q:
                np.maximum(out, v[:, :, p, :, q, :], out=out)
    return out


def maxpool_backward(
    dy: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    size: int = 2,
    *,
    out: np.ndarray | None = None,
    taken: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    routes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """dX (B, H, W, C) from dY (B, Ho, Wo, C): each block's gradient goes to its first maximum.

    ``x`` and ``y`` are the forward input and output. ``routes``: what
    :func:`maxpool_forward` recorded (size 2); then only bool combinations of them and four
    products are needed, instead of finding the maxima again. ``taken``/``mask``: bool scratch
    like dY. Rows/columns that the forward pass dropped (odd sizes) get 0.
    """
    if out is None:
        out = np.zeros(x.shape, dy.dtype)
    elif x.shape[1] % size or x.shape[2] % size:
        out[...] = 0
    dv = _blocks(out, size, writeable=True)  # (B, Ho, size, Wo, size, C) view of out
    if routes is not None:
        right_top, right_bottom, bottom = routes
        if mask is None:
            mask = np.empty(dy.shape, bool)
        np.logical_or(right_top, bottom, out=mask)  # not (0, 0)
        np.multiply(dy, np.logical_not(mask, out=mask), out=dv[:, :, 0, :, 0])
        np.greater(right_top, bottom, out=mask)  # right and top
        np.multiply(dy, mask, out=dv[:, :, 0, :, 1])
        np.greater(bottom, right_bottom, out=mask)  # bottom and left
        np.multiply(dy, mask, out=dv[:, :, 1, :, 0])
        np.logical_and(bottom, right_bottom, out=mask)
        np.multiply(dy, mask, out=dv[:, :, 1, :, 1])
        return out
    v = _blocks(x, size)
    if taken is None:
        taken = np.empty(dy.shape, bool)
        mask = np.empty(dy.shape, bool)
    last = size * size - 1
    for p in range(size):
        for q in range(size):
            first = p == q == 0
            np.equal(v[:, :, p, :, q, :], y, out=taken if first else mask)  # (B, Ho, Wo, C)
            if first:
                np.multiply(dy, taken, out=dv[:, :, p, :, q, :])
                continue
            np.greater(mask, taken, out=mask)  # a maximum here, none before: a later tie loses
            np.multiply(dy, mask, out=dv[:, :, p, :, q, :])
            if p * size + q < last:
                taken |= mask
    return out


def global_max_forward(x: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Max of each channel over all positions: (B, H, W, C) -> (B, C), and the (B, C) argmax
    over the flattened H W positions (its first occurrence, for the backward pass)."""
    B, H, W, C = x.shape
    flat = x.reshape(B, H * W, C)
    idx = np.argmax(flat, axis=1)  # (B, C)
    y = np.take_along_axis(flat, idx[:, None, :], axis=1)[:, 0, :]
    if out is not None:
        np.copyto(out, y)
        y = out
    return y, idx


def global_max_backward(dy: np.ndarray, idx: np.ndarray, x_shape: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
    """dX (B, H, W, C): dY (B, C) placed at each channel's maximum, zero elsewhere."""
    B, H, W, C = x_shape
    if out is None:
        out = np.zeros(x_shape, dy.dtype)
    else:
        out[...] = 0
    np.put_along_axis(out.reshape(B, H * W, C), idx[:, None, :], dy[:, None, :], axis=1)
    return out


def global_avg_forward(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Mean of each channel over all positions: (B, H, W, C) -> (B, C)."""
    B, H, W, C = x.shape
    y = np.sum(x.reshape(B, H * W, C), axis=1, out=out)
    y *= x.dtype.type(1.0 / (H * W)) if x.dtype.kind == "f" else 1.0 / (H * W)
    return y


def global_avg_backward(dy: np.ndarray, x_shape: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
    """dX (B, H, W, C) = dY / (H W) at every position."""
    B, H, W, C = x_shape
    if out is None:
        out = np.empty(x_shape, dy.dtype)
    np.multiply(dy[:, None, None, :], dy.dtype.type(1.0 / (H * W)), out=out)
    return out


def sliding_max(f: np.ndarray, size: int) -> np.ndarray:
    """Max over every size × size window of f (H, W, C), stride 1: (H - size + 1, W - size + 1, C).

    Separable: a running max down the rows, then along the columns (2 (size - 1) passes).
    """
    H, W, _ = f.shape
    rows = f[: H - size + 1].copy()
    for p in range(1, size):
        np.maximum(rows, f[p : p + H - size + 1], out=rows)
    out = rows[:, : W - size + 1].copy()
    for q in range(1, size):
        np.maximum(out, rows[:, q : q + W - size + 1], out=out)
    return out


def sliding_avg(f: np.ndarray, size: int) -> np.ndarray:
    """Mean over every size × size window of f (H, W, C), stride 1: (H - size + 1, W - size + 1, C).

    Sums in the same order as :func:`global_avg_forward` would not be cheaper to reproduce
    bit for bit; the two agree to rounding (a few ulps).
    """
    H, W, _ = f.shape
    rows = f[: H - size + 1].copy()
    for p in range(1, size):
        rows += f[p : p + H - size + 1]
    out = rows[:, : W - size + 1].copy()
    for q in range(1, size):
        out += rows[:, q : q + W - size + 1]
    out *= f.dtype.type(1.0 / (size * size))
    return out
