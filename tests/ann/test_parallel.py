"""Data-parallel training: the averaged gradient is the full-batch gradient, and the weights do
not depend on the number of workers, even when a worker dies mid-training. For the dense
network on feature rows and for the ConvNet on pixel windows (with D4 augmentation and
balanced sampling inside the shards' steps).

References: the network's own ``loss_and_grad`` on the whole (standardized) batch in one
process, NumPy's mean/std on the whole array, and the in-process run of the same plan.
"""

from __future__ import annotations

import os
import signal
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from ann.augment import apply_d4, d4_codes
from ann.convnet import ConvNet
from ann.network import MLP
from ann.parallel import DaskGradientSource
from ann.shards import NpyShardLoader, ShardedSource, ShardPlan
from ann.train import TrainConfig, fit


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


CNN_LAYERS = [
    {"type": "conv", "filters": 4, "kernel": 3},
    {"type": "maxpool", "size": 2},
    {"type": "conv", "filters": 6, "kernel": 3},
    {"type": "global_max"},
    {"type": "dense", "units": 8},
    {"type": "dense", "units": 1},
]


def make_windows(directory: Path, n: int = 240, size: int = 12, seed: int = 0):
    """Noise windows of 3 bands on different scales; positives (25 %) hold a bright 3-px bar."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(np.int8)
    X = rng.normal(size=(n, size, size, 3))
    for i in np.flatnonzero(y):
        r, c = rng.integers(0, size - 3, 2)
        X[i, r, c : c + 3, :] += 2.0
    X = (X * [1.0, 30.0, 0.01] + [0.0, 100.0, 5.0]).astype(np.float32)
    w = np.where(y == 1, 2.0, 1.0)
    np.save(directory / "X.npy", X)
    np.save(directory / "y.npy", y)
    np.save(directory / "w.npy", w)
    return X, y, w


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


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    directory = tmp_path_factory.mktemp("window-shards")
    return directory, *make_windows(directory)


@pytest.mark.parametrize("kind", ["in-process", "dask"])
def test_cnn_averaged_gradient_with_d4_and_balanced_sampling_equals_the_batch_gradient(kind, windows, request):
    directory, X, y, w = windows
    client = request.getfixturevalue("dask_client") if kind == "dask" else None
    net = ConvNet((12, 12, 3), CNN_LAYERS, dtype=np.float64, seed=1)
    params = [p.copy() for p in net.params]
    X64 = X.astype(np.float64)
    mean, std = X64.mean(axis=(0, 1, 2)), X64.std(axis=(0, 1, 2))  # per channel over every pixel
    Xs = (X64 - mean) / std
    for sampling, batch_size in (("uniform", len(y)), ("balanced", 48)):
        plan = ShardPlan(n_examples=len(y), n_shards=8, batch_size=batch_size, micro_batch=4, seed=5,
                         augment="d4", sampling=sampling)
        source = _sources(kind, NpyLoader(directory, plan), plan, net, client)
        np.testing.assert_allclose(source.standardizer.mean, mean, rtol=1e-12)
        np.testing.assert_allclose(source.standardizer.scale, std, rtol=1e-12)
        for epoch, step in [(0, 0), (3, plan.steps_per_epoch() - 1)]:
            batch = np.concatenate([plan.shard_indices(s)[plan.shard_step_rows(s, y[plan.shard_indices(s)], epoch, step)]
                                    for s in range(8)])
            if sampling == "balanced":
                assert len(batch) == 48 and y[batch].sum() == 24
            loss, grads, n = source.batch_gradient(params, epoch, step)
            assert n == len(batch)
            ref_loss, ref_grads = reference_gradient(net, apply_d4(Xs[batch], d4_codes(5, epoch, batch)), y[batch], w[batch])
            assert abs(loss / n - ref_loss) <= 1e-10 * abs(ref_loss)
            assert_close_relative([g / n for g in grads], ref_grads, 1e-10)
        if kind == "dask":
            source.close()


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


# ---------------------------------------------------------------------------------------------
# Whole trainings: the same weights with 1, 2 and 4 workers, and after a worker dies.

N_EPOCHS = 4


def _train(make_source, directory, X_val, y_val, model="mlp"):
    """Train a float32 network for N_EPOCHS from seed 2 on the shards of one fixed plan.

    ``model="cnn"``: the ConvNet on 240 windows, D4 augmentation and balanced sampling on.
    """
    if model == "cnn":
        plan = ShardPlan(n_examples=240, n_shards=8, batch_size=48, micro_batch=4, seed=7, augment="d4", sampling="balanced")
        net = ConvNet((12, 12, 3), CNN_LAYERS, seed=2)
    else:
        plan = ShardPlan(n_examples=600, n_shards=8, batch_size=96, micro_batch=8, seed=7)
        net = MLP(12, hidden=(16, 8), seed=2)
    source = make_source(NpyLoader(directory, plan), plan, net)
    Xv = source.standardizer.transform(X_val)
    history = fit(net, source, Xv, y_val, TrainConfig(max_epochs=N_EPOCHS, patience=100))
    return [p.copy() for p in net.params], history, source


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def in_process_run(request, data, windows, tmp_path_factory):
    """(model, training directory, params, history, validation set) of the in-process run."""
    model = request.param
    if model == "cnn":
        directory = windows[0]
        X_val, y_val, _ = make_windows(tmp_path_factory.mktemp("val-windows"), n=60, seed=1)
    else:
        directory = data[0]
        X_val, y_val, _ = make_data(tmp_path_factory.mktemp("val"), n=200, seed=1)
    with threadpool_limits(1):  # one worker = one single-threaded BLAS, as on the Dask workers
        params, history, _ = _train(ShardedSource, directory, X_val, y_val, model)
    return model, directory, params, history, (X_val, y_val)


@pytest.fixture(scope="module")
def four_workers():
    from pipeline.cluster import dask_client

    with dask_client(n_workers=4, threads_per_worker=1, memory_limit="1GiB") as client:
        yield client


def assert_same_weights(got, want):
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)  # bitwise: same shard sums, added in the same order


def test_two_workers_train_the_same_weights_as_one_process(in_process_run, dask_client):
    model, directory, params1, history1, (X_val, y_val) = in_process_run
    params2, history2, source = _train(partial(DaskGradientSource, dask_client), directory, X_val, y_val, model)
    source.close()
    assert_same_weights(params2, params1)
    # the same History form and figures as single-process training
    assert [e["train_loss"] for e in history2.epochs] == [e["train_loss"] for e in history1.epochs]
    assert history2.epochs[0].keys() == history1.epochs[0].keys()
    assert history1.epochs[-1]["train_loss"] < history1.epochs[0]["train_loss"]  # it did train


def test_four_workers_train_the_same_weights_and_survive_a_killed_worker(in_process_run, four_workers):
    model, directory, params1, _, (X_val, y_val) = in_process_run
    client = four_workers

    params4, _, source = _train(partial(DaskGradientSource, client), directory, X_val, y_val, model)
    assert len({w for ws in source.shard_workers().values() for w in ws}) == 4  # really on 4 workers
    source.close()
    assert_same_weights(params4, params1)

    # Kill the process of a worker holding shards in the middle of epoch 1: its shards and its
    # part of the step are lost, recomputed from their tasks elsewhere, and training goes on.
    killed = {}

    def kill_once(source, epoch, step, loss, count):
        if (epoch, step) == (1, 2) and not killed:
            victim = source.shard_workers()[0][0]
            pid = client.run(os.getpid, workers=[victim])[victim]
            os.kill(pid, signal.SIGKILL)
            killed.update(address=victim, pid=pid)

    def make(loader, plan, net):
        source = DaskGradientSource(client, loader, plan, net)
        source.on_step = partial(kill_once, source)
        return source

    params_k, history_k, source = _train(make, directory, X_val, y_val, model)
    assert killed, "the worker was never killed"
    assert len(history_k.epochs) == N_EPOCHS
    holders = {w for ws in source.shard_workers().values() for w in ws}
    assert killed["address"] not in holders  # the shards it held now live elsewhere
    source.close()
    assert_same_weights(params_k, params1)


def test_a_failing_loader_raises_its_own_error_on_the_driver(tmp_path, dask_client):
    """A shard that cannot be read stops training at once with the loader's error, not a hang."""
    plan = ShardPlan(n_examples=40, n_shards=4, seed=0)
    loader = NpyShardLoader(plan, tmp_path / "missing-X.npy", tmp_path / "missing-y.npy")
    with pytest.raises(FileNotFoundError, match="missing-X.npy"):
        DaskGradientSource(dask_client, loader, plan, MLP(3, hidden=(2,)))
