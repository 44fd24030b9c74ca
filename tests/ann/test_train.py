"""The training loop learns what it should, follows the contract's step formula and stops right."""

from __future__ import annotations

import numpy as np
import pytest

from ann.errors import ConfigError
from ann.metrics import recall
from ann.network import MLP
from ann.train import History, InMemorySource, TrainConfig, class_sample_weights, fit


def separable(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points on both sides of a random hyperplane, none closer to it than 0.2."""
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=d)
    normal /= np.linalg.norm(normal)
    X = rng.normal(size=(3 * n, d))
    margin = X @ normal
    keep = np.abs(margin) > 0.2
    return X[keep][:n].astype(np.float32), (margin[keep][:n] > 0).astype(np.int8)


def test_learns_xor_with_one_hidden_layer():
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    y = np.array([0, 1, 1, 0])
    net = MLP(2, (8,), "tanh", seed=0)
    config = TrainConfig(learning_rate=0.05, l2=0.0, max_epochs=400, patience=400, metric="loss", target=0.05)
    history = fit(net, InMemorySource(net, X, y, batch_size=4), X, y, config)
    p = net.predict_proba(X)
    assert history.stop_reason == "target"
    np.testing.assert_array_equal(p > 0.5, y.astype(bool))
    assert history.best["val_loss"] <= 0.05


def test_logistic_regression_cannot_learn_xor():
    # The reference point for the test above: without a hidden layer XOR stays at chance.
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    y = np.array([0, 1, 1, 0])
    net = MLP(2, (), seed=0)
    history = fit(net, InMemorySource(net, X, y, batch_size=4), X, y, TrainConfig(learning_rate=0.05, l2=0.0, max_epochs=300, patience=300))
    assert history.best["val_accuracy"] <= 0.75


@pytest.mark.parametrize("optimizer,lr", [("adam", 0.01), ("sgd", 0.1)])
def test_linearly_separable_set_reaches_about_100_percent(optimizer, lr):
    X, y = separable(3000, 10, seed=1)
    X_train, y_train, X_val, y_val = X[:2000], y[:2000], X[2000:], y[2000:]
    net = MLP(10, (16,), seed=2)
    config = TrainConfig(optimizer=optimizer, learning_rate=lr, batch_size=64, max_epochs=60, target=0.995)
    history = fit(net, InMemorySource(net, X_train, y_train, batch_size=64, seed=3), X_val, y_val, config)
    assert history.stop_reason == "target"
    assert np.mean((net.predict_proba(X_val) >= 0.5) == y_val) >= 0.995


def test_class_weights_raise_recall_of_rare_positives():
    rng = np.random.default_rng(4)
    n = 6000
    y = (rng.random(n) < 0.03).astype(np.int8)  # 3 % positives, overlapping classes
    X = (rng.normal(size=(n, 5)) + 0.8 * y[:, None]).astype(np.float32)
    X_train, y_train, X_val, y_val = X[:4000], y[:4000], X[4000:], y[4000:]
    recalls = {}
    for class_weight in (None, "balanced"):
        net = MLP(5, (8,), seed=5)
        config = TrainConfig(learning_rate=0.01, batch_size=128, seed=6, class_weight=class_weight, max_epochs=15, patience=15, metric="loss")
        source = InMemorySource.from_config(net, X_train, y_train, config)
        if class_weight is None:
            assert source.w is None
        else:
            np.testing.assert_array_equal(source.w, class_sample_weights(y_train, class_weight))
        fit(net, source, X_val, y_val, config)
        recalls[class_weight] = recall(y_val, net.predict_proba(X_val) >= 0.5)
    assert recalls[None] < 0.2  # unweighted, the network mostly answers "no"
    assert recalls["balanced"] > 0.6
    assert recalls["balanced"] > recalls[None] + 0.4


def test_balanced_class_weights_by_hand():
    y = np.array([1, 0, 0, 0])
    # N / (2 N_c): positives 4 / (2 * 1) = 2, negatives 4 / (2 * 3) = 2/3; they average 1.
    np.testing.assert_allclose(class_sample_weights(y, "balanced"), [2, 2 / 3, 2 / 3, 2 / 3], rtol=1e-6)
    np.testing.assert_array_equal(class_sample_weights(y, (1.0, 5.0)), [5, 1, 1, 1])
    assert class_sample_weights(y, None) is None
    with pytest.raises(ConfigError, match="both classes"):
        class_sample_weights(np.zeros(5), "balanced")


def test_one_step_follows_the_contract_formula():
    # mean gradient = sum / n, plus l2 * W on weight matrices only; then the optimizer step.
    rng = np.random.default_rng(7)
    X, y = rng.normal(size=(12, 4)), (rng.random(12) < 0.5)
    net = MLP(4, (3,), dtype=np.float64, seed=8)
    before = [p.copy() for p in net.params]
    _, grads = net.loss_and_grad(X, y)
    lr, l2 = 0.1, 0.01
    config = TrainConfig(optimizer="sgd", momentum=0.0, learning_rate=lr, l2=l2, max_epochs=1)
    fit(net, InMemorySource(net, X, y, batch_size=12), X, y, config)
    for p, p0, g in zip(net.params, before, grads):
        decay = l2 * p0 if p.ndim == 2 else 0.0
        np.testing.assert_allclose(p, p0 - lr * (g / 12 + decay), rtol=1e-13)


def test_source_covers_every_example_once_per_epoch_in_a_seeded_order():
    X = np.arange(10, dtype=np.float32)[:, None]
    net = MLP(1, (), seed=0)
    source = InMemorySource(net, X, np.zeros(10), batch_size=4, seed=11)
    assert source.steps_per_epoch() == 3

    def epoch_order(src, epoch):
        rows = []
        for step in range(src.steps_per_epoch()):
            src.batch_gradient(net.params, epoch, step)
            rows += src._xb[: min(4, 10 - 4 * step), 0].astype(int).tolist()
        return rows

    first = epoch_order(source, 0)
    assert sorted(first) == list(range(10))
    assert epoch_order(source, 1) != first  # reshuffled each epoch
    fresh = InMemorySource(net, X, np.zeros(10), batch_size=4, seed=11)
    assert epoch_order(fresh, 1) == epoch_order(source, 1)  # depends on (seed, epoch) only
    assert first == np.random.default_rng((11, 0)).permutation(10).tolist()


def test_source_computes_at_the_parameters_it_is_given():
    rng = np.random.default_rng(12)
    X, y = rng.normal(size=(8, 3)), rng.random(8) < 0.5
    net = MLP(3, (4,), dtype=np.float64, seed=1)
    other = MLP(3, (4,), dtype=np.float64, seed=2)
    source = InMemorySource(net, X, y, batch_size=8)
    loss, grads, n = source.batch_gradient(other.params, 0, 0)
    ref_loss, ref = other.loss_and_grad(X, y)
    assert n == 8 and loss == pytest.approx(ref_loss, rel=1e-12)
    for a, b in zip(grads, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12)


class ReadOnlyCopies:
    """Wraps a source and hands out fresh read-only gradient arrays, as deserialized Dask results are."""

    def __init__(self, inner: InMemorySource) -> None:
        self.inner = inner
        self.n_examples = inner.n_examples

    def steps_per_epoch(self) -> int:
        return self.inner.steps_per_epoch()

    def batch_gradient(self, params, epoch, step):
        loss, grads, n = self.inner.batch_gradient(params, epoch, step)
        grads = [g.copy() for g in grads]
        for g in grads:
            g.flags.writeable = False
        return loss, grads, n


def test_a_source_of_read_only_fresh_arrays_trains_to_the_same_weights():
    X, y = separable(300, 6, seed=13)
    nets = [MLP(6, (5,), seed=14) for _ in range(2)]
    config = TrainConfig(max_epochs=3, batch_size=50)
    fit(nets[0], InMemorySource(nets[0], X, y, batch_size=50, seed=1), X, y, config)
    fit(nets[1], ReadOnlyCopies(InMemorySource(nets[1], X, y, batch_size=50, seed=1)), X, y, config)
    for a, b in zip(*(n.params for n in nets)):
        np.testing.assert_array_equal(a, b)


def test_patience_stops_and_restores_the_best_epochs_weights():
    # 40 examples with random labels, a wide network: validation loss falls, then rises (overfitting).
    rng = np.random.default_rng(15)
    X, y = rng.normal(size=(40, 20)).astype(np.float32), rng.random(40) < 0.5
    X_val, y_val = rng.normal(size=(200, 20)).astype(np.float32), rng.random(200) < 0.5
    net = MLP(20, (64,), seed=16)
    snapshots = []
    config = TrainConfig(learning_rate=0.01, l2=0.0, max_epochs=200, patience=5, metric="loss", batch_size=8)
    history = fit(net, InMemorySource(net, X, y, batch_size=8), X_val, y_val, config,
                  callback=lambda record: snapshots.append([p.copy() for p in net.params]))
    assert history.stop_reason == "patience"
    losses = history.series("val_loss")
    assert history.best_epoch == int(np.argmin(losses)) == len(losses) - 6
    for p, best in zip(net.params, snapshots[history.best_epoch]):
        np.testing.assert_array_equal(p, best)
    assert len(snapshots) == len(history.epochs)


def test_max_epochs_and_history_record():
    X, y = separable(200, 4, seed=17)
    net = MLP(4, (3,), seed=0)
    history = fit(net, InMemorySource(net, X, y, batch_size=50), X, y, TrainConfig(max_epochs=3))
    assert history.stop_reason == "max_epochs" and len(history.epochs) == 3
    record = history.epochs[-1]
    assert set(record) >= {"epoch", "train_loss", "val_loss", "val_accuracy", "val_f1", "val_roc_auc", "seconds"}
    assert History.from_dict(history.to_dict()) == history
    assert history.summary()["n_epochs"] == 3


def test_train_config_rejects_unknown_and_bad_settings():
    assert TrainConfig.from_dict(TrainConfig(class_weight=(1, 3)).to_dict()) == TrainConfig(class_weight=(1, 3))
    with pytest.raises(ConfigError, match="unknown training settings.*lerning_rate"):
        TrainConfig.from_dict({"lerning_rate": 0.1})
    for bad in (dict(optimizer="rmsprop"), dict(metric="auc"), dict(batch_size=0), dict(l2=-1), dict(class_weight="auto")):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)


# ------------------------------------------------------------------- divergence, progress, pixels
def test_a_diverging_training_stops_with_an_error_naming_the_learning_rate():
    X, y = separable(200, 4, seed=18)
    net = MLP(4, (8,), seed=0)
    config = TrainConfig(optimizer="sgd", momentum=0.0, learning_rate=1e30, max_epochs=5)
    with pytest.raises(ConfigError, match=r"training diverged: .* lower learning_rate \(now 1e\+30\)"), np.errstate(all="ignore"):
        fit(net, InMemorySource(net, X, y, batch_size=50), X, y, config)


def test_callback_gets_epoch_steps_train_loss_and_validation_metrics():
    X, y = separable(200, 4, seed=19)
    net = MLP(4, (3,), seed=0)
    records = []
    fit(net, InMemorySource(net, X, y, batch_size=64), X, y, TrainConfig(max_epochs=3, metric="f1"), callback=records.append)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert [r["steps"] for r in records] == [4, 8, 12]  # ceil(200 / 64) steps per epoch
    assert all({"train_loss", "val_f1", "val_loss"} <= r.keys() for r in records)


def test_balanced_rows_take_half_positives_and_visit_negatives_in_turn():
    from ann.shards import balanced_rows

    labels = np.zeros(100, np.int8)
    labels[[3, 50, 77]] = 1
    steps = [balanced_rows(labels, 10, seed=1, epoch=0, step=t) for t in range(20)]
    assert all(len(r) == 10 and labels[r].sum() == 5 for r in steps)
    negatives = np.concatenate([r[labels[r] == 0] for r in steps])
    np.testing.assert_array_equal(np.sort(negatives[:97]), np.flatnonzero(labels == 0))  # each once per cycle
    np.testing.assert_array_equal(balanced_rows(labels, 10, 1, 0, 5), steps[5])  # a pure function
    assert not np.array_equal(balanced_rows(labels, 10, 1, 1, 5), steps[5])
    assert labels[balanced_rows(np.zeros(9), 4, 0, 0, 0)].sum() == 0  # one class: drawn from it alone


def test_in_memory_source_augments_windows_by_their_index_and_samples_balanced():
    from ann.augment import apply_d4, d4_codes
    from ann.convnet import ConvNet

    rng = np.random.default_rng(20)
    X = rng.normal(size=(30, 12, 12, 2)).astype(np.float32)
    y = (np.arange(30) < 6).astype(np.int8)
    layers = [{"type": "conv", "filters": 3, "kernel": 3}, {"type": "global_max"}, {"type": "dense", "units": 1}]
    net = ConvNet((12, 12, 2), layers, seed=1)
    config = TrainConfig(batch_size=8, seed=4, augment="d4", sampling="balanced")
    source = InMemorySource.from_config(net, X, y, config)
    loss, grads, n = source.batch_gradient(net.params, epoch=2, step=1)
    from ann.shards import balanced_rows

    rows = balanced_rows(y, 8, 4, 2, 1)
    assert n == 8 and y[rows].sum() == 4
    ref_loss, ref = net.loss_and_grad(apply_d4(X[rows], d4_codes(4, 2, rows)), y[rows])
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="pixel windows"):
        InMemorySource(MLP(3, ()), np.zeros((4, 3)), np.zeros(4), augment="d4")


def test_new_settings_are_validated_and_reach_the_shard_plan():
    from ann.shards import ShardPlan

    for bad in (dict(augment="rot90"), dict(sampling="stratified")):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)
    config = TrainConfig(batch_size=64, seed=3, augment="d4", sampling="balanced")
    plan = ShardPlan.from_config(1000, config, micro_batch=32)
    assert (plan.batch_size, plan.seed, plan.augment, plan.sampling, plan.micro_batch) == (64, 3, "d4", "balanced", 32)
    assert plan.to_dict()["augment"] == "d4"
