"""Optimizer steps against hand-worked values (and PyTorch's optimizers as a second reference)."""

from __future__ import annotations

import numpy as np
import pytest

from ann.errors import ConfigError
from ann.optim import SGD, Adam


def test_sgd_momentum_two_steps_by_hand():
    p = [np.array([1.0, -2.0])]
    opt = SGD(learning_rate=0.1, momentum=0.9)
    opt.step(p, [np.array([0.5, -1.0])])
    # v = 0.9 * 0 - 0.1 * g = [-0.05, 0.1];  p = [1 - 0.05, -2 + 0.1]
    np.testing.assert_allclose(p[0], [0.95, -1.9], rtol=1e-15)
    opt.step(p, [np.array([0.2, 0.4])])
    # v = 0.9 * [-0.05, 0.1] - 0.1 * [0.2, 0.4] = [-0.065, 0.05];  p = [0.95 - 0.065, -1.9 + 0.05]
    np.testing.assert_allclose(opt.velocity[0], [-0.065, 0.05], rtol=1e-14)
    np.testing.assert_allclose(p[0], [0.885, -1.85], rtol=1e-14)


def test_plain_sgd_is_p_minus_lr_g():
    p = [np.array([[1.0, 2.0]], np.float32)]
    SGD(learning_rate=0.5, momentum=0.0).step(p, [np.array([[2.0, -4.0]], np.float32)])
    np.testing.assert_array_equal(p[0], [[0.0, 4.0]])


def test_adam_two_steps_by_hand():
    p = [np.array([1.0, 3.0])]
    opt = Adam(learning_rate=0.1, beta1=0.9, beta2=0.999, eps=1e-8)
    opt.step(p, [np.array([0.5, -2.0])])
    # t=1: m = 0.1 g = [0.05, -0.2]; v = 0.001 g² = [0.00025, 0.004];
    # m̂ = m / 0.1 = g; v̂ = v / 0.001 = g²; step = 0.1 * g / (|g| + 1e-8)
    np.testing.assert_allclose(opt.m[0], [0.05, -0.2], rtol=1e-14)
    np.testing.assert_allclose(opt.v[0], [0.00025, 0.004], rtol=1e-14)
    np.testing.assert_allclose(p[0], [1 - 0.1 * 0.5 / (0.5 + 1e-8), 3 + 0.1 * 2.0 / (2.0 + 1e-8)], rtol=1e-14)
    opt.step(p, [np.array([0.1, 1.0])])
    # t=2, first element: m = 0.9*0.05 + 0.1*0.1 = 0.055; v = 0.999*0.00025 + 0.001*0.01 = 0.00025975
    #   m̂ = 0.055 / (1 - 0.81) = 0.289473684...; v̂ = 0.00025975 / (1 - 0.998001) = 0.129939969...
    #   p = 0.9 - 0.1 * 0.289473684 / (sqrt(0.129939969) + 1e-8) = 0.9 - 0.080304096...
    # second element: m = 0.9*-0.2 + 0.1*1.0 = -0.08; v = 0.999*0.004 + 0.001*1.0 = 0.004996
    #   m̂ = -0.08 / 0.19 = -0.421052631...; v̂ = 0.004996 / 0.001999 = 2.499249624...
    #   p = 3.1 + 0.1 * 0.421052631 / (sqrt(2.499249624) + 1e-8) = 3.1 + 0.026633704...
    assert opt.t == 2
    np.testing.assert_allclose(opt.m[0], [0.055, -0.08], rtol=1e-14)
    np.testing.assert_allclose(opt.v[0], [0.00025975, 0.004996], rtol=1e-13)
    expected_first = (1 - 0.1 * 0.5 / (0.5 + 1e-8)) - 0.1 * (0.055 / 0.19) / (np.sqrt(0.00025975 / 0.001999) + 1e-8)
    expected_second = (3 + 0.1 * 2 / (2 + 1e-8)) + 0.1 * (0.08 / 0.19) / (np.sqrt(0.004996 / 0.001999) + 1e-8)
    np.testing.assert_allclose(p[0], [expected_first, expected_second], rtol=1e-13)
    np.testing.assert_allclose(p[0], [0.9 - 0.080304096, 3.1 + 0.026633704], atol=1e-8)


def test_optimizers_match_pytorch_over_several_steps():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    shapes = [(4, 3), (3,)]
    start = [rng.normal(size=s) for s in shapes]
    grads = [[rng.normal(size=s) for s in shapes] for _ in range(5)]
    cases = [
        (lambda: SGD(0.05, 0.9), lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)),
        (lambda: Adam(0.01), lambda ps: torch.optim.Adam(ps, lr=0.01)),
    ]
    for make_ours, make_torch in cases:
        ours = [s.copy() for s in start]
        tps = [torch.tensor(s, requires_grad=True) for s in start]
        opt, topt = make_ours(), make_torch(tps)
        for g in grads:
            opt.step(ours, g)
            for tp, gi in zip(tps, g):
                tp.grad = torch.tensor(gi)
            topt.step()
        for a, tp in zip(ours, tps):
            np.testing.assert_allclose(a, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_optimizer_refuses_another_networks_parameters():
    opt = Adam()
    opt.step([np.zeros(3)], [np.ones(3)])
    with pytest.raises(ConfigError, match="one optimizer per network"):
        opt.step([np.zeros(4)], [np.ones(4)])


@pytest.mark.parametrize("make", [lambda: SGD(learning_rate=0), lambda: SGD(momentum=1.0), lambda: Adam(beta2=1.0), lambda: Adam(eps=0)])
def test_bad_settings_are_refused(make):
    with pytest.raises(ConfigError):
        make()


@pytest.mark.parametrize("make", [lambda: SGD(0.05, 0.9), lambda: SGD(0.05, 0.0), lambda: Adam(0.01)])
def test_blocked_update_over_a_networks_buffer_equals_the_per_array_update(make, monkeypatch):
    import ann.optim
    from ann.network import MLP

    monkeypatch.setattr(ann.optim, "BLOCK", 100)  # several blocks, some straddling array ends
    net = MLP(30, (20, 5), seed=1)
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(16, 30)), rng.random(16) < 0.5
    separate = [p.copy() for p in net.params]  # ordinary arrays: updated one by one
    assert ann.optim.tiled_base(net.params) is not None and ann.optim.tiled_base(separate) is None
    fast, slow = make(), make()
    for _ in range(3):
        _, grads = net.loss_and_grad(X, y, reuse_buffers=True)  # views of one buffer
        fast.step(net.params, grads)
        slow.step(separate, [g.copy() for g in grads])
        for a, b in zip(net.params, separate):
            np.testing.assert_array_equal(a, b)
