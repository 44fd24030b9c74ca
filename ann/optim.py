"""Optimizers: turn a gradient into a change of the parameters, in place.

An optimizer owns only its own state (SGD's velocity; Adam's moment estimates ``m``, ``v`` and
step count ``t``), created on the first :meth:`step` with the parameters' shapes. It never sees
the network, the loss or the weight decay: the trainer hands it the final mean gradient.

Both update the parameter arrays in place and allocate nothing after the first step (one
scratch array per parameter is part of the state).
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from ann.errors import ConfigError

__all__ = ["Optimizer", "SGD", "Adam"]


class Optimizer(Protocol):
    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        """Update every ``params[i]`` in place from ``grads[i]`` (the mean gradient)."""


def _check_shapes(state: list[np.ndarray], params: list[np.ndarray], grads: list[np.ndarray]) -> None:
    if len(params) != len(grads) or len(state) != len(params):
        raise ConfigError(
            f"optimizer got {len(params)} parameters and {len(grads)} gradients but holds state for "
            f"{len(state)}; use one optimizer per network"
        )
    for i, (s, p, g) in enumerate(zip(state, params, grads)):
        if not (s.shape == p.shape == g.shape):
            raise ConfigError(
                f"parameter {i} has shape {p.shape}, its gradient {g.shape}, the optimizer's state {s.shape}; "
                "use one optimizer per network"
            )


class SGD:
    """Stochastic gradient descent with (heavy-ball) momentum.

    ``velocity = momentum * velocity - learning_rate * grad; param += velocity``
    (``momentum=0`` is plain SGD: ``param -= learning_rate * grad``).
    """

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.9) -> None:
        if not learning_rate > 0:
            raise ConfigError(f"SGD learning_rate={learning_rate} must be > 0 (try 0.01)")
        if not 0 <= momentum < 1:
            raise ConfigError(f"SGD momentum={momentum} must be in [0, 1) (try 0.9)")
        self.learning_rate = float(learning_rate)
        self.momentum = float(momentum)
        self.velocity: list[np.ndarray] = []
        self._scratch: list[np.ndarray] = []

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        if not self._scratch:
            self._scratch = [np.empty_like(p) for p in params]
            if self.momentum:
                self.velocity = [np.zeros_like(p) for p in params]
        _check_shapes(self._scratch, params, grads)
        for i, (p, g) in enumerate(zip(params, grads)):
            step = np.multiply(g, self.learning_rate, out=self._scratch[i])  # lr * g
            if self.momentum:
                v = self.velocity[i]
                v *= self.momentum
                v -= step
                p += v
            else:
                p -= step


class Adam:
    """Adam (Kingma & Ba 2015): per-parameter step sizes from running gradient moments.

    ``m = β1 m + (1 - β1) g``; ``v = β2 v + (1 - β2) g²``;
    ``param -= lr * m̂ / (sqrt(v̂) + eps)`` with the bias-corrected ``m̂ = m / (1 - β1^t)``,
    ``v̂ = v / (1 - β2^t)`` (as in the paper and PyTorch). The corrections are folded into two
    scalars so the update costs whole-array passes only:
    ``param -= [lr sqrt(1-β2^t) / (1-β1^t)] * m / (sqrt(v) + eps sqrt(1-β2^t))``.
    """

    def __init__(
        self,
        learning_rate: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        if not learning_rate > 0:
            raise ConfigError(f"Adam learning_rate={learning_rate} must be > 0 (try 0.001)")
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= beta < 1:
                raise ConfigError(f"Adam {name}={beta} must be in [0, 1) (defaults 0.9, 0.999)")
        if not eps > 0:
            raise ConfigError(f"Adam eps={eps} must be > 0 (default 1e-8)")
        self.learning_rate = float(learning_rate)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.eps = float(eps)
        self.t = 0
        self.m: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self._scratch: list[np.ndarray] = []

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        if not self.m:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
            self._scratch = [np.empty_like(p) for p in params]
        _check_shapes(self.m, params, grads)
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        root_c2 = math.sqrt(1.0 - b2**self.t)
        step_size = self.learning_rate * root_c2 / (1.0 - b1**self.t)
        eps_hat = self.eps * root_c2
        for p, g, m, v, s in zip(params, grads, self.m, self.v, self._scratch):
            np.subtract(g, m, out=s)  # m += (1 - β1)(g - m)  ==  β1 m + (1 - β1) g
            s *= 1.0 - b1
            m += s
            np.multiply(g, g, out=s)  # v += (1 - β2)(g² - v)
            s -= v
            s *= 1.0 - b2
            v += s
            np.sqrt(v, out=s)
            s += eps_hat
            np.divide(m, s, out=s)
            s *= step_size
            p -= s
