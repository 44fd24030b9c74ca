"""The shard plan, the moment reduction and the shard placement: pure functions, no cluster."""

from __future__ import annotations

import numpy as np
import pytest

from ann.errors import ConfigError
from ann.parallel import balance_shards
from ann.shards import ShardPlan, combine_moments, covering_nodes, reduce_held, reduce_tree, shard_moments


@pytest.mark.parametrize(
    "n, shards, batch",
    [
        (100, 8, 32),  # several steps, shards of 12 and 13
        (7, 7, 3),  # one example per shard
        (1000, 3, 5000),  # batch larger than the data: one full-batch step
        (53, 4, 17),  # nothing divides anything
    ],
)
def test_plan_partitions_examples_and_each_epoch_visits_every_example_once(n, shards, batch):
    plan = ShardPlan(n_examples=n, n_shards=shards, batch_size=batch, micro_batch=4, seed=3)
    parts = [plan.shard_indices(s) for s in range(shards)]
    # a partition: every example in exactly one shard, sizes within one of each other
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))
    assert [len(p) for p in parts] == plan.shard_sizes()
    assert max(plan.shard_sizes()) - min(plan.shard_sizes()) <= 1
    for epoch in (0, 5):
        seen = []
        for step in range(plan.steps_per_epoch()):
            rows = [plan.step_rows(s, epoch, step) for s in range(shards)]
            assert all(len(r) <= plan.shard_batch for r in rows)
            seen.extend(parts[s][r] for s, r in enumerate(rows))
        np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(n))


def test_plan_is_fixed_by_the_seed_and_epochs_reshuffle():
    a = ShardPlan(n_examples=500, n_shards=4, batch_size=64, seed=1)
    b = ShardPlan(n_examples=500, n_shards=4, batch_size=256, micro_batch=7, seed=1)  # other step settings
    c = ShardPlan(n_examples=500, n_shards=4, batch_size=64, seed=2)
    # the partition depends on the seed only, not on how steps are cut
    assert all(np.array_equal(a.shard_indices(s), b.shard_indices(s)) for s in range(4))
    assert not np.array_equal(a.shard_indices(0), c.shard_indices(0))
    assert not np.array_equal(a.step_rows(0, 0, 0), a.step_rows(0, 1, 0))
    np.testing.assert_array_equal(a.step_rows(2, 3, 1), ShardPlan(500, 4, 64, seed=1).step_rows(2, 3, 1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_examples=3, n_shards=4), "at most one shard per example"),
        (dict(n_examples=10, n_shards=0), "n_shards=0"),
        (dict(n_examples=10, batch_size=-1), "batch_size=-1"),
    ],
)
def test_plan_rejects_impossible_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ShardPlan(**kwargs)


def test_combined_moments_equal_numpy_on_the_whole_array():
    rng = np.random.default_rng(0)
    X = rng.normal(5.0, 3.0, size=(103, 6)).astype(np.float32) * np.array([1, 10, 100, 1e3, 1e-3, 0], np.float32)
    plan = ShardPlan(n_examples=103, n_shards=5, seed=4)
    moments = [shard_moments(s, (X[plan.shard_indices(s)], np.zeros(len(plan.shard_indices(s))), None), plan)
               for s in range(5)]
    n, mean, var = combine_moments(moments)
    assert n == 103
    np.testing.assert_allclose(mean, X.astype(np.float64).mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(var, X.astype(np.float64).var(axis=0), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize(
    "holders, nthreads, n_shards, expected",
    [
        # fresh start: 8 shards over two single-threaded workers, 4 each, in shard order
        ({}, {"a": 1, "b": 1}, 8, [("a", [0, 1, 2, 3]), ("b", [4, 5, 6, 7])]),
        # shards stay where they are when that is balanced
        ({0: ["b"], 1: ["a"], 2: ["b"], 3: ["a"]}, {"a": 1, "b": 1}, 4, [("a", [1, 3]), ("b", [0, 2])]),
        # worker b died and came back as c: a keeps half, c gets the other half
        ({s: ["a"] for s in range(4)}, {"a": 1, "c": 1}, 4, [("a", [0, 1]), ("c", [2, 3])]),
        # a two-thread worker gets twice the share, split into contiguous runs, one per thread
        ({}, {"a": 2, "b": 1}, 6, [("a", [0, 1]), ("a", [2, 3]), ("b", [4, 5])]),
        # more workers than shards: the extra worker gets no group
        ({}, {"a": 1, "b": 1, "c": 1}, 2, [("a", [0]), ("b", [1])]),
        # uneven split: the first worker in sorted order takes the extra shard
        ({}, {"b": 1, "a": 1}, 3, [("a", [0, 1]), ("b", [2])]),
    ],
)
def test_balance_shards(holders, nthreads, n_shards, expected):
    assert balance_shards(holders, nthreads, n_shards) == expected


@pytest.mark.parametrize(
    "held, n_shards, expected",
    [
        ([0, 1, 2, 3], 8, [(0, 4)]),  # an aligned half of the tree: one node
        ([4, 5, 6, 7], 8, [(4, 8)]),
        ([2, 3, 4], 8, [(2, 4), (4, 5)]),  # not aligned: the largest complete nodes
        ([0, 2, 4, 6], 8, [(0, 1), (2, 3), (4, 5), (6, 7)]),  # scattered: single shards
        ([0, 1, 2], 3, [(0, 3)]),  # everything: the root, for any shard count
        ([1, 2], 3, [(1, 3)]),  # 3 shards split at mid = 1: root = (0,1) + (1,3)
    ],
)
def test_covering_nodes(held, n_shards, expected):
    assert covering_nodes(held, 0, n_shards) == expected


def test_tree_reduction_is_the_same_bits_for_any_placement_and_equals_the_sum():
    rng = np.random.default_rng(0)
    n_shards = 8
    leaves = {
        s: (float(rng.random()), [rng.normal(size=(7, 3)).astype(np.float32) * 10.0 ** rng.integers(-3, 4),
                                  rng.normal(size=3).astype(np.float32)], int(rng.integers(1, 9)))
        for s in range(n_shards)
    }
    one_process = reduce_tree(reduce_held(leaves, n_shards), 0, n_shards)
    reference = np.sum([leaves[s][1][0].astype(np.float64) for s in range(n_shards)], axis=0)
    np.testing.assert_allclose(one_process[1][0], reference, rtol=1e-5, atol=1e-3)
    assert one_process[2] == sum(r[2] for r in leaves.values())
    for _ in range(30):  # random placements of the shards on 1 to 8 workers
        owner = rng.integers(0, rng.integers(1, 9), size=n_shards)
        nodes = {}
        for w in np.unique(owner):
            nodes.update(reduce_held({s: leaves[s] for s in np.flatnonzero(owner == w)}, n_shards))
        loss, grads, count = reduce_tree(nodes, 0, n_shards)
        assert (loss, count) == (one_process[0], one_process[2])
        for g, h in zip(grads, one_process[1]):
            np.testing.assert_array_equal(g, h)
