"""Data-parallel training on a Dask cluster: shards on workers, gradients averaged exactly.

Synchronous data parallelism, as Horovod or PyTorch DDP do on GPUs: the training set is cut
into the shards of an :class:`ann.shards.ShardPlan`; each shard lives in one worker's memory for
the whole training; at every step each shard computes the *sum* of the losses and gradients of
its slice of the global batch, these sums are added along a fixed pairwise tree over the shard
indices (:func:`ann.shards.reduce_tree`) and divided by the example count, and the optimizer
steps. :class:`DaskGradientSource` implements
``ann.train.GradientSource``, so ``ann.train.fit`` trains with it exactly as with an in-memory
source, and the weights equal those of :class:`ann.shards.ShardedSource` (one process, same plan)
bit for bit.

How the work reaches the workers, and why:

- Shards are *produced by tasks* from a loader ``load_shard(i) -> (X, y, w)`` that reads the
  store, never sent with ``client.scatter`` (DESIGN decision 4): the driver holds the futures,
  so a shard lost with its worker is recomputed on another worker from its task, and training
  goes on to the same result.
- One task per worker thread per step, not one per shard: the task receives the current
  weights (so they reach each worker once per step) and the shards placed on that worker, and
  returns their sums already added up to the largest complete nodes of the reduction tree
  (one gradient per worker when its shards are contiguous, as placement arranges), and the
  driver adds the nodes. Every node is the same addition wherever it happens, so the result is
  the same bits for any placement. Per-task overhead (~1-2 ms) and the round trip (~10 ms) are paid once per
  worker and step; the plan's ``batch_size`` and ``micro_batch`` make each task long enough
  that they stay a small share (DESIGN decision 6; see benchmarks/README.md).
- Placement is checked at the start of every epoch: shards are balanced over the live workers
  in proportion to their threads, keeping each shard where it already is when possible, so a
  worker that died and came back gets its share again.

- Shards stay resident: a shard is read and standardized once, by its task, and held in its
  worker's memory for the whole training, so a step moves only weights and gradients, never
  examples (for pixel windows a shard is large, and reading it again from Zarr every step
  would cost more than the step). If its worker dies, the scheduler recomputes the shard's
  tasks (read, standardize) on a live worker the next time a step needs it; the step's other
  results are unaffected, and since every step is a pure function of (weights, shard, plan,
  epoch, step), training continues to bit-identical weights (tests/ann/test_parallel.py kills a
  worker with SIGKILL mid-training).
- Shards hold feature rows (n, F) for the classic network or pixel windows (n, H, W, C) for
  the ConvNet; the plan's D4 augmentation and balanced sampling run inside each shard's step
  (:func:`ann.shards.shard_gradient`), seeded by the shard and the examples' global indices,
  never by the worker.

The global batch: an exchange (weights out, gradients back, scheduler round trips) costs
~20-40 ms on one machine whatever the batch, so each worker's share of a step must compute for
~9x that. For the default ConvNet (~1.1 ms per window, forward and backward, one core) on 2
workers that is a global batch of 512 (benchmarks/conv.py: exchange ~5 % of the step at 512,
9-12 % at 256, over 25 % at 128): :data:`ann.convnet.DEFAULT_BATCH_SIZE`.

Only this module of ``ann`` imports Dask.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ann.shards import (
    Shard,
    ShardLoader,
    ShardPlan,
    StepResult,
    combine_moments,
    network_for,
    prepare_shard,
    reduce_held,
    reduce_tree,
    shard_gradient,
    shard_moments,
)
from ann.standardize import Standardizer

__all__ = ["DaskGradientSource", "balance_shards", "StepTiming"]


def _load(load_shard: ShardLoader, index: int):
    return load_shard(index)


def _gradient_group(
    architecture: dict, params: list[np.ndarray], plan: ShardPlan, epoch: int, step: int, *shards: Shard
) -> tuple[dict[tuple[int, int], StepResult], float, float]:
    """One worker's share of a step: its shards' sums, added up to the largest complete nodes of
    the reduction tree (fewer arrays to send back), the seconds spent computing gradients and
    the seconds spent adding them (the reduction is part of the exchange, not of the compute)."""
    start = time.perf_counter()
    net = network_for(architecture, params)
    leaves = {shard.index: shard_gradient(net, shard, plan, epoch, step) for shard in shards}
    computed = time.perf_counter()
    held = reduce_held(leaves, plan.n_shards)
    return held, computed - start, time.perf_counter() - computed


def balance_shards(
    holders: Mapping[int, Sequence[str]], nthreads: Mapping[str, int], n_shards: int
) -> list[tuple[str, list[int]]]:
    """Groups of shards, one per worker thread: ``[(worker address, [shard, ...]), ...]``.

    Each worker gets a share of the ``n_shards`` shards proportional to its threads (largest
    remainders, ties to the first address in sorted order); a shard stays on a worker that
    already holds it (``holders[shard]``) while that worker has room, and the rest fill the
    remaining room in shard order. Pure: it only decides, Dask moves the data.
    """
    workers = sorted(w for w, t in nthreads.items() if t > 0)
    total = sum(nthreads[w] for w in workers)
    exact = {w: n_shards * nthreads[w] / total for w in workers}
    room = {w: int(exact[w]) for w in workers}
    left = n_shards - sum(room.values())
    for w in sorted(workers, key=lambda w: (-(exact[w] - room[w]), w))[:left]:
        room[w] += 1
    assigned: dict[str, list[int]] = {w: [] for w in workers}
    unplaced = []
    for s in range(n_shards):
        home = next((w for w in sorted(holders.get(s, ())) if room.get(w, 0) > 0), None)
        if home is None:
            unplaced.append(s)
        else:
            assigned[home].append(s)
            room[home] -= 1
    for s in unplaced:
        w = next(w for w in workers if room[w] > 0)
        assigned[w].append(s)
        room[w] -= 1
    groups = []
    for w in workers:
        for run in np.array_split(np.array(sorted(assigned[w]), dtype=int), nthreads[w]):
            if run.size:
                groups.append((w, run.tolist()))  # contiguous runs: whole nodes of the reduction tree
    return groups


class StepTiming:
    """Wall time of each step on the driver and compute time inside its tasks (seconds).

    Compute is the gradient work only; each task's on-worker reduction (adding its shards'
    sums) is in ``reduce_seconds`` and counts as exchange, like the driver's additions.
    """

    def __init__(self) -> None:
        self.step_seconds: list[float] = []
        self.compute_seconds: list[float] = []  # summed over the step's tasks
        self.task_seconds: list[list[float]] = []  # gradient compute of each task (imbalance shows here)
        self.reduce_seconds: list[list[float]] = []  # on-worker reduction of each task
        self.n_groups: list[int] = []  # tasks (each received the weights)
        self.n_nodes: list[int] = []  # gradients sent back (reduction-tree nodes)


class DaskGradientSource:
    """A ``GradientSource`` whose shards live on the workers of a ``distributed.Client``.

    ``load_shard(i)`` must return shard ``i``'s examples ``plan.shard_indices(i)`` as
    ``(X (n_i, F), y (n_i,), w (n_i,) or None)``; it runs on the workers, so it must be
    picklable (a module-level function or a small object holding paths, not arrays).
    ``net`` gives the architecture and dtype. ``standardize=True`` computes mean and standard
    deviation of the raw features over all shards (exact, merged in shard order) and keeps
    standardized shards on the workers; :attr:`standardizer` holds the statistics.
    ``on_step(epoch, step, loss_sum, count)`` is called after every step (progress bars).

    Construction waits until every shard is loaded. Call :meth:`close` (or use ``with``) to
    release the shards.
    """

    def __init__(
        self,
        client,
        load_shard: ShardLoader,
        plan: ShardPlan,
        net,
        standardize: bool = True,
        on_step: Callable[[int, int, float, int], None] | None = None,
    ) -> None:
        self.client = client
        self.plan = plan
        self.n_examples = plan.n_examples
        self.on_step = on_step
        self.timing = StepTiming()
        self._architecture = net.architecture()
        dtype = str(net.params[0].dtype)
        self._groups: list[tuple[str, list[int]]] | None = None
        # Results straight from the workers (one hop less) when they run on this machine's own
        # cluster; for a remote cluster keep the client's setting (workers may be unreachable).
        self._direct = True if getattr(client, "cluster", None) is not None else None
        self._groups_epoch = -1

        # Spread the loads over the workers from the start; loose restrictions so a dead
        # worker's shards are recomputed anywhere.
        nthreads = client.nthreads()
        start_groups = balance_shards({}, nthreads, plan.n_shards)
        home = {s: w for w, shards in start_groups for s in shards}
        raw = [
            client.submit(
                _load, load_shard, s, key=f"damwatch-shard-raw-{s}-{_token()}",
                workers=[home[s]], allow_other_workers=True,
            )
            for s in range(plan.n_shards)
        ]
        self.standardizer = None
        mean = scale = None
        if standardize:
            moments = [
                client.submit(shard_moments, s, raw[s], plan, key=f"damwatch-shard-moments-{s}-{_token()}",
                              workers=[home[s]], allow_other_workers=True)
                for s in range(plan.n_shards)
            ]
            _, mean, var = combine_moments(client.gather(moments))
            self.standardizer = Standardizer.from_moments(mean, var)
            mean, scale = self.standardizer.mean, self.standardizer.scale
        self._shards = [
            client.submit(prepare_shard, s, raw[s], plan, dtype, mean, scale,
                          key=f"damwatch-shard-{s}-{_token()}", workers=[home[s]], allow_other_workers=True)
            for s in range(plan.n_shards)
        ]
        del raw  # the scheduler keeps their tasks as long as the prepared shards need them
        from distributed import wait

        wait(self._shards)
        for f in self._shards:
            if f.status == "error":
                f.result()

    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch()

    def _placement(self, epoch: int) -> list[tuple[str, list[int]]]:
        if self._groups is None or epoch != self._groups_epoch:
            if not self.client.nthreads():
                self.client.wait_for_workers(1, timeout=120)
            who = self.client.who_has(self._shards)
            holders = {s: who.get(f.key, ()) for s, f in enumerate(self._shards)}
            self._groups = balance_shards(holders, self.client.nthreads(), self.plan.n_shards)
            self._groups_epoch = epoch
        return self._groups

    def batch_gradient(self, params: list[np.ndarray], epoch: int, step: int) -> tuple[float, list[np.ndarray], float]:
        start = time.perf_counter()
        params = [np.asarray(p) for p in params]
        groups = self._placement(epoch)
        futures = [
            self.client.submit(
                _gradient_group, self._architecture, params, self.plan, epoch, step,
                *[self._shards[s] for s in shards],
                key=f"damwatch-grad-e{epoch}-s{step}-g{g}-{_token()}",
                workers=[worker], allow_other_workers=True,
            )
            for g, (worker, shards) in enumerate(groups)
        ]
        nodes: dict[tuple[int, int], StepResult] = {}
        task_seconds, reduce_seconds = [], []
        for held, seconds, reducing in self.client.gather(futures, direct=self._direct):
            nodes.update(held)
            task_seconds.append(seconds)
            reduce_seconds.append(reducing)
        loss, grads, count = reduce_tree(nodes, 0, self.plan.n_shards)
        self.timing.step_seconds.append(time.perf_counter() - start)
        self.timing.compute_seconds.append(sum(task_seconds))
        self.timing.task_seconds.append(task_seconds)
        self.timing.reduce_seconds.append(reduce_seconds)
        self.timing.n_groups.append(len(futures))
        self.timing.n_nodes.append(len(nodes))
        if self.on_step is not None:
            self.on_step(epoch, step, loss, count)
        return loss, grads, float(count)

    def shard_workers(self) -> dict[int, tuple[str, ...]]:
        """Which workers hold each shard now (a scheduler round trip; for tests and diagnostics)."""
        who = self.client.who_has(self._shards)
        return {s: tuple(who.get(f.key, ())) for s, f in enumerate(self._shards)}

    def close(self) -> None:
        """Release the shards from the workers' memory."""
        for f in self._shards:
            f.release()
        self._shards = []

    def __enter__(self) -> "DaskGradientSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _token() -> str:
    import uuid

    return uuid.uuid4().hex[:12]
