"""Convolution and pooling layers against PyTorch on the same weights and inputs, and against
central differences (float64).

Tolerances: float32 within 1e-5 and float64 within 1e-10, relative, as ``‖ours - torch‖ /
‖torch‖`` over each array (an elementwise relative error is meaningless where a sum cancels to
~0). PyTorch is channels-first: inputs are transposed (B, H, W, C) -> (B, C, H, W) and kernels
(k, k, C_in, F) -> (F, C_in, k, k).
"""

from __future__ import annotations

import numpy as np
import pytest

from ann.conv import (
    col2im,
    conv_backward,
    conv_forward,
    global_avg_backward,
    global_avg_forward,
    global_max_backward,
    global_max_forward,
    im2col,
    maxpool_backward,
    maxpool_forward,
    sliding_avg,
    sliding_max,
)

TOL = {np.float32: 1e-5, np.float64: 1e-10}


def assert_rel(ours, ref, rtol):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    err = np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-300)
    assert err <= rtol, f"relative error {err:.2e} > {rtol:.0e}"


def nchw(a):  # (B, H, W, C) -> torch (B, C, H, W)
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


CONV_CASES = [
    # (kernel, stride, padding, activation, H, W, C_in); dX by convolution for stride 1 and
    # C_in <= 8, by col2im otherwise (ann.conv.dx_by_convolution): both paths are covered
    (3, 1, "valid", "relu", 9, 8, 4),
    (3, 1, "same", None, 9, 8, 4),
    (3, 1, "valid", "relu", 9, 8, 12),  # col2im
    (3, 1, "same", "tanh", 7, 6, 12),  # col2im, padded
    (3, 2, "same", "tanh", 9, 8, 4),  # odd size, stride 2: the extra zero row/column goes after
    (3, 2, "valid", "sigmoid", 10, 7, 4),
    (1, 1, "valid", "relu", 5, 6, 4),  # 1 x 1: a dense layer at every pixel
    (5, 1, "same", None, 7, 7, 4),
    (4, 2, "same", None, 8, 9, 4),  # even kernel: asymmetric padding
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, s, padding, activation, H, W, C", CONV_CASES)
def test_conv_forward_and_backward_equal_pytorch(dtype, k, s, padding, activation, H, W, C):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(k * 100 + s * 10 + H)
    x = rng.normal(size=(3, H, W, C)).astype(dtype)
    Wk = (rng.normal(size=(k, k, C, 6)) / k).astype(dtype)
    b = rng.normal(size=6).astype(dtype)
    a, cache = conv_forward(x, Wk, b, s, padding, activation)

    xt = torch.tensor(nchw(x), requires_grad=True)
    Wt = torch.tensor(np.ascontiguousarray(Wk.transpose(3, 2, 0, 1)), requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    (pt, pb), (pl, pr) = cache.pads
    zt = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), Wt, bt, stride=s)
    if padding == "same" and s == 1:  # PyTorch's own "same" agrees with the explicit padding
        assert torch.equal(zt, F.conv2d(xt, Wt, bt, padding="same"))
    at = {None: lambda z: z, "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[activation](zt)
    assert_rel(a, nhwc(at), TOL[dtype])

    da = rng.normal(size=a.shape).astype(dtype)
    at.backward(torch.tensor(nchw(da)))
    dx, dW, db = conv_backward(da.copy(), cache)
    assert dx.dtype == dW.dtype == db.dtype == dtype
    assert_rel(dx, nhwc(xt.grad), TOL[dtype])
    assert_rel(dW, Wt.grad.numpy().transpose(2, 3, 1, 0), TOL[dtype])
    assert_rel(db, bt.grad.numpy(), TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size, H, W", [(2, 8, 6), (2, 9, 7), (3, 9, 10)])
def test_maxpool_equals_pytorch(dtype, size, H, W):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(size + H)
    x = rng.normal(size=(2, H, W, 3)).astype(dtype)
    x[0, :2, :2, 0] = 1.5  # a tie: the gradient goes to the first maximum (row-major), as in PyTorch
    y = maxpool_forward(x, size)
    xt = torch.tensor(nchw(x), requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, size)
    np.testing.assert_array_equal(y, nhwc(yt))  # a max is exact
    dy = rng.normal(size=y.shape).astype(dtype)
    yt.backward(torch.tensor(nchw(dy)))
    np.testing.assert_array_equal(maxpool_backward(dy, x, y, size), nhwc(xt.grad))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_pools_equal_pytorch(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 5, 4, 6)).astype(dtype)
    dy = rng.normal(size=(3, 6)).astype(dtype)
    xt = torch.tensor(nchw(x), requires_grad=True)
    yt = torch.amax(xt, dim=(2, 3))
    y, idx = global_max_forward(x)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(global_max_backward(dy, idx, x.shape), nhwc(xt.grad))

    xt = torch.tensor(nchw(x), requires_grad=True)
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, 1)[:, :, 0, 0]
    assert_rel(global_avg_forward(x), yt.detach().numpy(), TOL[dtype])
    yt.backward(torch.tensor(dy))
    assert_rel(global_avg_backward(dy, x.shape), nhwc(xt.grad), TOL[dtype])


# ------------------------------------------------------------------------ central differences
@pytest.mark.parametrize("k, s, padding, activation, C", [(3, 1, "valid", "tanh", 3), (3, 2, "same", None, 3),
                                                         (2, 1, "same", "sigmoid", 3), (3, 1, "same", "tanh", 10)])
def test_conv_backward_matches_central_differences(k, s, padding, activation, C, central_difference):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 6, 5, C))
    Wk = rng.normal(size=(k, k, C, 4)) / k
    b = rng.normal(size=4)
    up = rng.normal(size=conv_forward(x, Wk, b, s, padding, activation)[0].shape)

    def loss() -> float:
        return float((conv_forward(x, Wk, b, s, padding, activation)[0] * up).sum())

    dx, dW, db = conv_backward(up.copy(), conv_forward(x, Wk, b, s, padding, activation)[1])
    for analytic, wrt in ((dx, x), (dW, Wk), (db, b)):
        np.testing.assert_allclose(analytic, central_difference(loss, wrt), rtol=1e-6, atol=1e-8)


def test_pool_backwards_match_central_differences(central_difference):
    rng = np.random.default_rng(12)
    # distinct values at least 1e-3 apart, so a 1e-6 step never changes which one is the max
    x = rng.permutation(2 * 7 * 6 * 3).reshape(2, 7, 6, 3) * 1e-2 + rng.uniform(0, 1e-3, (2, 7, 6, 3))
    for forward, backward in [
        (lambda: maxpool_forward(x, 2), lambda up: maxpool_backward(up, x, maxpool_forward(x, 2), 2)),
        (lambda: global_max_forward(x)[0], lambda up: global_max_backward(up, global_max_forward(x)[1], x.shape)),
        (lambda: global_avg_forward(x), lambda up: global_avg_backward(up, x.shape)),
    ]:
        up = rng.normal(size=forward().shape)
        numeric = central_difference(lambda: float((forward() * up).sum()), x)
        np.testing.assert_allclose(backward(up), numeric, rtol=1e-6, atol=1e-8)


def test_col2im_is_the_adjoint_of_im2col():
    # <im2col(x), c> = <x, col2im(c)> for all x, c: the defining property of the backward copy.
    rng = np.random.default_rng(13)
    for k, s in [(3, 1), (3, 2), (2, 2)]:
        x = rng.normal(size=(2, 7, 8, 3))
        cols = im2col(x, k, s)
        c = rng.normal(size=cols.shape)
        assert np.vdot(cols, c) == pytest.approx(np.vdot(x, col2im(c, x.shape, k, s)), rel=1e-12)


def test_sliding_pools_equal_global_pools_of_each_window():
    rng = np.random.default_rng(14)
    f = rng.normal(size=(9, 11, 4)).astype(np.float32)
    size = 4
    windows = np.stack([f[i : i + size, j : j + size] for i in range(6) for j in range(8)])  # (48, 4, 4, 4)
    np.testing.assert_array_equal(sliding_max(f, size).reshape(-1, 4), global_max_forward(windows)[0])
    np.testing.assert_allclose(sliding_avg(f, size).reshape(-1, 4), global_avg_forward(windows), rtol=1e-5, atol=1e-6)


def test_maxpool_backward_from_recorded_routes_equals_searching_again():
    rng = np.random.default_rng(15)
    x = np.round(rng.normal(size=(3, 9, 8, 4)), 1).astype(np.float32)  # rounded: many ties
    x[0, :2, :2, :] = 0.5
    x[1, 4:6, 2:4, 1] = 0.0
    x[2, 0:2, 0:2, 2] = [[0.1, 0.3], [0.3, 0.2]]  # top-right and bottom-left tie: top-right wins
    routes = tuple(np.empty((3, 4, 4, 4), bool) for _ in range(3))
    y = maxpool_forward(x, 2, routes_out=routes)
    np.testing.assert_array_equal(y, maxpool_forward(x, 2))
    dy = rng.normal(size=y.shape).astype(np.float32)
    np.testing.assert_array_equal(maxpool_backward(dy, x, y, 2, routes=routes), maxpool_backward(dy, x, y, 2))
    assert maxpool_backward(dy, x, y, 2, routes=routes)[2, 0, 1, 2] == dy[2, 0, 0, 2]
