"""Backpropagation against its references: central differences (float64) and PyTorch.

Every activation, the dense layer and the loss are checked alone, then the whole network.
"""

from __future__ import annotations

import numpy as np
import pytest

from ann.functions import (
    ACTIVATIONS,
    DERIVATIVES,
    binary_cross_entropy,
    sigmoid,
    sigmoid_cross_entropy_with_logits,
)
from ann.layers import dense_backward, dense_forward
from ann.network import MLP

H = 1e-6  # central-difference step: error O(H²) ~ 1e-12, rounding O(eps / H) ~ 1e-10


def central_difference(f, x: np.ndarray) -> np.ndarray:
    """∂f/∂x elementwise for scalar f, perturbing x in place."""
    grad = np.zeros_like(x)
    for i in range(x.size):
        old = x.flat[i]
        x.flat[i] = old + H
        up = f()
        x.flat[i] = old - H
        down = f()
        x.flat[i] = old
        grad.flat[i] = (up - down) / (2 * H)
    return grad


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivative_matches_central_difference(name):
    rng = np.random.default_rng(1)
    z = rng.uniform(-3, 3, 50)
    z = z[np.abs(z) > 1e-3]  # keep away from ReLU's kink at 0
    a = ACTIVATIONS[name](z)
    numeric = (ACTIVATIONS[name](z + H) - ACTIVATIONS[name](z - H)) / (2 * H)
    np.testing.assert_allclose(DERIVATIVES[name](a).astype(float), numeric, rtol=1e-7, atol=1e-9)


def test_activation_out_argument_writes_in_place_and_matches_pure_call():
    z = np.linspace(-2, 2, 9)
    for name, f in ACTIVATIONS.items():
        buf = z.copy()
        assert f(buf, out=buf) is buf
        np.testing.assert_array_equal(buf, f(z))


def test_sigmoid_is_finite_and_exact_at_extreme_logits():
    for dtype in (np.float32, np.float64):
        z = np.array([-1000, -50, 0, 50, 1000], dtype=dtype)
        p = sigmoid(z)
        assert np.isfinite(p).all() and p.dtype == dtype
        assert p[2] == 0.5 and p[-1] == 1.0 and 0 <= p[0] < 1e-37
        np.testing.assert_allclose(p[1], np.exp(-50.0), rtol=1e-5)  # tiny but not rounded to 0


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_gradient_is_w_times_p_minus_y_and_matches_central_difference(weighted):
    rng = np.random.default_rng(2)
    z = rng.normal(0, 3, (20, 1))
    y = (rng.random((20, 1)) < 0.5).astype(float)
    w = rng.uniform(0.5, 2, (20, 1)) if weighted else None
    loss, delta = sigmoid_cross_entropy_with_logits(z, y, w)
    # Reference loss: the textbook formula on probabilities, summed.
    p = 1 / (1 + np.exp(-z))
    per = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(loss, float((per * (1 if w is None else w)).sum()), rtol=1e-12)
    numeric = central_difference(lambda: sigmoid_cross_entropy_with_logits(z, y, w)[0], z)
    np.testing.assert_allclose(delta, numeric, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(delta, (p - y) * (1 if w is None else w), rtol=1e-12)


def test_loss_from_logits_stays_exact_where_probabilities_saturate():
    # p = sigmoid(40) rounds to 1, so log(1 - p) is -inf; the logit form gives the true 40 nats.
    loss, delta = sigmoid_cross_entropy_with_logits(np.array([[40.0]]), np.array([[0.0]]))
    np.testing.assert_allclose(loss, 40.0 + np.log1p(np.exp(-40.0)), rtol=1e-12)
    assert delta[0, 0] == 1.0


def test_probability_cross_entropy_clips_instead_of_inf():
    loss = binary_cross_entropy(np.array([0, 1]), np.array([1.0, 0.0], np.float32))
    np.testing.assert_allclose(loss, -np.log(np.finfo(np.float32).eps), rtol=1e-6)
    np.testing.assert_allclose(binary_cross_entropy([1, 0], [0.8, 0.4]), -(np.log(0.8) + np.log(0.6)) / 2)


@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid"])
def test_dense_layer_backward_matches_central_difference(activation):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 5))
    W = rng.normal(size=(5, 4))
    b = rng.normal(size=4)
    upstream = rng.normal(size=(6, 4))  # L = Σ upstream * A, so ∂L/∂A = upstream

    def loss() -> float:
        return float((dense_forward(x, W, b, activation)[0] * upstream).sum())

    _, cache = dense_forward(x, W, b, activation)
    dx, dW, db = dense_backward(upstream.copy(), cache)
    for analytic, wrt in ((dx, x), (dW, W), (db, b)):
        np.testing.assert_allclose(analytic, central_difference(loss, wrt), rtol=1e-6, atol=1e-8)
    # The buffered path (bool ReLU mask, BLAS bias sum, out= arrays) gives the same numbers.
    outs = dict(dx_out=np.empty_like(x), dW_out=np.empty_like(W), db_out=np.empty_like(b))
    work = np.empty((6, 4), bool if activation == "relu" else float)
    dx2, dW2, db2 = dense_backward(upstream.copy(), cache, work=work, ones=np.ones(6), **outs)
    for a, b_ in ((dx, dx2), (dW, dW2), (db, db2)):
        np.testing.assert_allclose(a, b_, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("hidden", [(), (7,), (6, 4)])
def test_network_gradient_matches_central_difference(activation, hidden):
    rng = np.random.default_rng(4)
    net = MLP(5, hidden, activation, dtype=np.float64, seed=5)
    X = rng.normal(size=(9, 5))
    y = (rng.random(9) < 0.4).astype(float)
    w = rng.uniform(0.5, 3, 9)
    loss, grads = net.loss_and_grad(X, y, w)
    assert [g.shape for g in grads] == [p.shape for p in net.params]
    for p, g in zip(net.params, grads):
        numeric = central_difference(lambda: net.loss_and_grad(X, y, w)[0], p)
        np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-8)


def test_reused_buffers_give_the_same_numbers_as_fresh_ones():
    rng = np.random.default_rng(6)
    net = MLP(8, (16, 8), dtype=np.float32, seed=1)
    X, y = rng.normal(size=(40, 8)).astype(np.float32), (rng.random(40) < 0.5)
    fresh_loss, fresh = net.loss_and_grad(X, y)
    net.loss_and_grad(X[:33], y[:33], reuse_buffers=True)  # grow/use the workspace with another batch size
    loss, reused = net.loss_and_grad(X, y, reuse_buffers=True)
    assert loss == pytest.approx(fresh_loss, rel=1e-6)
    for a, b in zip(fresh, reused):
        np.testing.assert_array_equal(a, b)
    _, again = net.loss_and_grad(X[:10], y[:10], reuse_buffers=True)
    assert all(a is b for a, b in zip(reused, again))  # documented: the same buffers, overwritten


# ------------------------------------------------------------------------------------ PyTorch
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_forward_and_backward_equal_pytorch_on_the_same_weights(activation):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    net = MLP(12, (10, 6), activation, dtype=np.float64, seed=8)
    X = rng.normal(size=(30, 12))
    y = (rng.random(30) < 0.3).astype(float)
    w = rng.uniform(0.2, 4, 30)

    tparams = [torch.tensor(p, requires_grad=True) for p in net.params]
    act = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[activation]
    h = torch.tensor(X)
    for i in range(0, len(tparams) - 2, 2):
        h = act(h @ tparams[i] + tparams[i + 1])
    logits = (h @ tparams[-2] + tparams[-1]).squeeze(1)
    tloss = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.tensor(y), weight=torch.tensor(w), reduction="sum"
    )
    tloss.backward()

    np.testing.assert_allclose(net.predict_proba(X), torch.sigmoid(logits).detach().numpy(), rtol=1e-12)
    loss, grads = net.loss_and_grad(X, y, w)
    np.testing.assert_allclose(loss, tloss.item(), rtol=1e-12)
    for g, tp in zip(grads, tparams):
        np.testing.assert_allclose(g, tp.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_float32_network_agrees_with_float64_to_single_precision():
    rng = np.random.default_rng(9)
    net64 = MLP(20, (16,), dtype=np.float64, seed=3)
    net32 = MLP.from_architecture({**net64.architecture(), "dtype": "float32"}, net64.params)
    X = rng.normal(size=(50, 20))
    y = rng.random(50) < 0.5
    assert net32.predict_proba(X).dtype == np.float32
    np.testing.assert_allclose(net32.predict_proba(X), net64.predict_proba(X), rtol=1e-5, atol=1e-6)
    (_, g32), (_, g64) = net32.loss_and_grad(X, y), net64.loss_and_grad(X, y)
    for a, b in zip(g32, g64):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(n_inputs=0), "n_inputs=0"),
        (dict(n_inputs="12"), "n_inputs='12'"),
        (dict(n_inputs=4, hidden=(8, 0)), "hidden=(8, 0)"),
        (dict(n_inputs=4, activation="swish"), "activation 'swish' is unknown"),
        (dict(n_inputs=4, dtype=np.float16), "float16 is not supported"),
    ],
)
def test_bad_architecture_settings_are_refused(kwargs, words):
    from ann.errors import ConfigError

    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        MLP(**kwargs)


def test_architecture_round_trip_and_wrong_shapes():
    from ann.errors import ConfigError, FeatureSpecMismatch

    net = MLP(6, (4, 3), "sigmoid", dtype=np.float64, seed=3)
    copy = MLP.from_architecture(net.architecture(), net.params)
    X = np.random.default_rng(0).normal(size=(5, 6))
    np.testing.assert_array_equal(copy.predict_proba(X), net.predict_proba(X))
    with pytest.raises(ConfigError, match=r"W2\) has shape \(3, 3\)"):
        MLP.from_architecture(net.architecture(), [net.params[0], net.params[1], np.zeros((3, 3))] + net.params[3:])
    with pytest.raises(ConfigError, match="unknown keys \\['depth'\\]"):
        MLP.from_architecture({**net.architecture(), "depth": 3}, net.params)
    with pytest.raises(FeatureSpecMismatch, match=r"takes \(N, 6\)"):
        net.predict_proba(np.zeros((2, 5)))
