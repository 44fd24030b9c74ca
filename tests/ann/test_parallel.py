"""Data-parallel training: the averaged gradient is the full-batch gradient, and the weights do
not depend on the number of workers, even when a worker dies mid-training.

References: the network's own ``loss_and_grad`` on the whole (standardized) batch in one
process, NumPy's mean/std on the whole array, and the in-process run of the same plan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ann.network import MLP
from ann.parallel import DaskGradientSource
from ann.shards import NpyShardLoader, ShardedSource, ShardPlan


def NpyLoader(directory: Path, plan: ShardPlan) -> NpyShardLoader:
    return NpyShardLoader(plan, directory / "X.npy", directory / "y.npy", directory / "w.npy")


def make_data(directory: Path, n: int = 600, f: int = 12, seed: int = 0):
    """Two noisy classes, features on very different scales, class weights 1 and 3."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int8)
    X = (rng.normal(size=(n, f)) + 1.5 * y[:, None]) * np.geomspace(0.01, 100, f) + np.arange(f)
    w = np.where(y == 1, 3.0, 1.0)
    np.save(directory / "X.npy", X.astype(np.float32))
    np.save(directory / "y.npy", y)
    np.save(directory / "w.npy", w)
    return X.astype(np.float32), y, w


def reference_gradient(net: MLP, X, y, w):
    """Mean loss and mean gradient of the whole batch in one call, one process."""
    loss, grads = net.loss_and_grad(X, y, w)
    return loss / len(y), [g / len(y) for g in grads]


def assert_close_relative(got, want, rtol):
    for g, r in zip(got, want):
        err = np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-300)
        assert err <= rtol, err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shards")
    return directory, *make_data(directory)


def _sources(kind, loader, plan, net, dask_client=None):
    if kind == "in-process":
        return ShardedSource(loader, plan, net)
    return DaskGradientSource(dask_client, loader, plan, net)


@pytest.mark.parametrize("kind", ["in-process", "dask"])
def test_averaged_gradient_equals_full_batch_gradient(kind, data, request):
    directory, X, y, w = data
    client = request.getfixturevalue("dask_client") if kind == "dask" else None
    net = MLP(X.shape[1], hidden=(16, 8), activation="tanh", dtype=np.float64, seed=1)
    params = [p.copy() for p in net.params]
    X64 = X.astype(np.float64)
    Xs = (X64 - X64.mean(axis=0)) / X64.std(axis=0)

    # one step covering the whole training set: the full-batch gradient
    plan = ShardPlan(n_examples=len(y), n_shards=8, batch_size=len(y), micro_batch=16, seed=5)
    source = _sources(kind, NpyLoader(directory, plan), plan, net, client)
    assert source.steps_per_epoch() == 1
    np.testing.assert_allclose(source.standardizer.mean, X64.mean(axis=0), rtol=1e-12)
    loss, grads, n = source.batch_gradient(params, epoch=0, step=0)
    assert n == len(y)
    ref_loss, ref_grads = reference_gradient(net, Xs, y, w)
    assert abs(loss / n - ref_loss) <= 1e-10 * abs(ref_loss)
    assert_close_relative([g / n for g in grads], ref_grads, 1e-10)
    if kind == "dask":
        source.close()

    # mini-batches: step t's gradient is the gradient of the union of the shards' slices
    plan = ShardPlan(n_examples=len(y), n_shards=8, batch_size=100, micro_batch=4, seed=5)
    source = _sources(kind, NpyLoader(directory, plan), plan, net, client)
    assert source.steps_per_epoch() == 6  # shards of 75 rows, 13 = ceil(100 / 8) per step
    for epoch, step in [(0, 0), (3, 5)]:
        batch = np.concatenate([plan.shard_indices(s)[plan.step_rows(s, epoch, step)] for s in range(8)])
        loss, grads, n = source.batch_gradient(params, epoch, step)
        assert n == len(batch)
        ref_loss, ref_grads = reference_gradient(net, Xs[batch], y[batch], w[batch])
        assert abs(loss / n - ref_loss) <= 1e-10 * abs(ref_loss)
        assert_close_relative([g / n for g in grads], ref_grads, 1e-10)
    if kind == "dask":
        source.close()
