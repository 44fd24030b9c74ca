"""Data-parallel training on Dask: how much of a step is communication, and how close 2 workers
come to the machine's ceiling.

Measured in one run, interleaved (other programs share the cores, so every figure is the
median of several rounds, and each round measures its own ceiling next to its training):

- comm share = 1 - gradient compute measured inside the slowest task / step time on the
  driver, at the default shard plan and over a sweep of examples per shard per step; target
  <= 0.10 at the defaults. Compute is the gradient work only: each task's on-worker reduction
  (adding the sums of the shards it holds) is timed apart and counted as exchange, with the
  transfers, the driver's additions and the optimizer step.
- idle share = 1 - *mean* task compute / step time: like the comm share, but the faster
  worker's wait for the slower (load imbalance) counts as idle too. This is the parallel
  efficiency figure; target <= 0.10.
- throughput: training examples per second with 2 single-threaded workers, against the
  ceiling measured in the same round by two single-threaded processes running only the same
  network's matrix products side by side. Target >= 0.8.
- a cost model of the per-step exchange, fitted over network widths: exchange = a + b * MB
  moved per step (weights out to each task, one summed gradient per task back), and the
  examples per shard per step it implies for N workers at a 10 % exchange share.

Run: ``.venv/bin/python benchmarks/parallel.py [--rounds 3]``. Last line: JSON
``{"comm_share": x, "idle_share": x, "throughput_vs_ceiling": r}``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/ann.py would shadow the ann package for a script run from this directory.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402

N_FEATURES = 1041  # the default feature spec's length (pipeline.features.get_spec("default"))
HIDDEN = (64, 32)  # the network damwatch trains by default
SWEEP = (512, 2048, 4096, 8192)  # examples per shard per step (the default, 16384, is measured too)
WIDTHS = ((16,), (64, 32), (256, 64), (1024, 64))  # networks of 0.07 to 4.5 MB of weights


def _matmul_process(batch: int, hidden: tuple[int, ...], seconds: float, barrier, queue) -> None:
    """Run only the forward and backward matrix products of the network; report examples/s.

    Streams through 64 MB of examples batch by batch (fresh data each batch, as in training;
    a single batch reused would sit in cache and flatter the ceiling).
    """
    import numpy as np  # noqa: F811 (spawned process: BLAS threads already capped by the env)

    rng = np.random.default_rng(0)
    sizes = (N_FEATURES, *hidden, 1)
    W = [rng.standard_normal((a, b), dtype=np.float32) * 0.01 for a, b in zip(sizes[:-1], sizes[1:])]
    X = rng.standard_normal((16384, N_FEATURES), dtype=np.float32)
    A = [rng.standard_normal((batch, b), dtype=np.float32) for b in sizes[1:]]  # no denormals
    D = [rng.standard_normal((batch, b), dtype=np.float32) for b in sizes[1:]]
    G = [np.empty_like(w) for w in W]

    def once(x):
        a = x
        for w, out in zip(W, A):
            np.matmul(a, w, out=out)
            a = out
        for i in range(len(W) - 1, -1, -1):
            np.matmul((x if i == 0 else A[i - 1]).T, D[i], out=G[i])
            if i > 0:
                np.matmul(D[i], W[i].T, out=D[i - 1])

    once(X[:batch])
    barrier.wait()
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < seconds:
        for s in range(0, X.shape[0] - batch + 1, batch):
            once(X[s : s + batch])
            n += batch
    queue.put(n / (time.perf_counter() - start))


def ceiling(batch: int, hidden: tuple[int, ...], seconds: float = 2.0, processes: int = 2) -> float:
    """Examples/s of ``processes`` single-threaded matmul-only processes side by side (summed)."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    saved = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({k: "1" for k in saved})
    try:
        procs = [ctx.Process(target=_matmul_process, args=(batch, hidden, seconds, barrier, queue)) for _ in range(processes)]
        for p in procs:
            p.start()
        rates = [queue.get() for _ in procs]
        for p in procs:
            p.join()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return sum(rates)


def make_data(directory: Path, n: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    y = (rng.random(n) < 0.3).astype(np.float32)
    X = rng.standard_normal((n, N_FEATURES), dtype=np.float32)
    X[:, :8] += y[:, None]
    np.save(directory / "X.npy", X)
    np.save(directory / "y.npy", y)
    return directory / "X.npy", directory / "y.npy"


def train_steps(client, paths, n_examples: int, shard_batch: int, micro_batch: int, hidden, n_steps: int) -> dict:
    """Train ``n_steps`` Adam steps data-parallel; time each step on the driver (exchange + update)."""
    from ann.network import MLP
    from ann.parallel import DaskGradientSource, StepTiming
    from ann.shards import NpyShardLoader, ShardPlan
    from ann.train import TrainConfig, make_optimizer

    plan = ShardPlan(n_examples=n_examples, n_shards=8, batch_size=8 * shard_batch, micro_batch=micro_batch, seed=0)
    net = MLP(N_FEATURES, hidden, seed=0)
    optimizer = make_optimizer(TrainConfig())
    with DaskGradientSource(client, NpyShardLoader(plan, *paths), plan, net, standardize=False) as source:
        steps = source.steps_per_epoch()
        source.batch_gradient(net.params, 0, 0)  # warm-up: workers build their network buffers
        source.timing = StepTiming()
        loop = []
        examples = 0
        for k in range(n_steps):
            t0 = time.perf_counter()
            loss, grads, n = source.batch_gradient(net.params, 1 + k // steps, k % steps)
            for g in grads:
                g /= n
            optimizer.step(net.params, grads)
            loop.append(time.perf_counter() - t0)
            examples += n
        timing = source.timing
        slowest = sum(max(t) for t in timing.task_seconds)  # the step's critical path of gradient compute
        mean = sum(statistics.mean(t) for t in timing.task_seconds)
        reduction = sum(max(r) for r in timing.reduce_seconds)  # on-worker additions: exchange, not compute
        arrays_moved = statistics.mean(timing.n_groups) + statistics.mean(timing.n_nodes)
        wall = sum(loop)
    weights_mb = sum(p.nbytes for p in net.params) / 1e6
    return {
        "shard_batch": shard_batch,
        "hidden": hidden,
        "weights_mb": weights_mb,
        "mb_moved": arrays_moved * weights_mb,
        "step_ms": 1e3 * wall / n_steps,
        "slowest_ms": 1e3 * slowest / n_steps,
        "mean_ms": 1e3 * mean / n_steps,
        "exchange_ms": 1e3 * (wall - slowest) / n_steps,
        "reduce_ms": 1e3 * reduction / n_steps,
        "comm_share": 1 - slowest / wall,
        "idle_share": 1 - mean / wall,
        "examples_per_s": examples / wall,
        "seconds_per_example": sum(map(sum, timing.task_seconds)) / examples,
    }


def fit_cost_model(runs: list[dict]) -> tuple[float, float]:
    """Least squares exchange_s = a + b * mb_moved over the width runs: (a seconds, b seconds per MB)."""
    x = np.array([r["mb_moved"] for r in runs])
    t = np.array([r["exchange_ms"] / 1e3 for r in runs])
    b, a = np.polyfit(x, t, 1)
    return float(a), float(b)


def implied_shard_batch(a: float, b: float, weights_mb: float, seconds_per_example: float, n_workers: int,
                        share: float = 0.10) -> tuple[int, int]:
    """(shards, examples per shard per step) keeping the exchange at ``share`` of a step on N workers.

    The step's compute per worker must be (1 - share) / share times the exchange; shards =
    max(8, N) so every worker holds at least one; each worker receives the weights and returns
    one gradient: 2 N copies of the weights move per step.
    """
    shards = max(8, n_workers)
    exchange = a + b * 2 * n_workers * weights_mb
    per_worker = (1 - share) / share * exchange / seconds_per_example
    return shards, int(np.ceil(per_worker * n_workers / shards))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="steps per training run at the defaults")
    args = parser.parse_args()

    from ann.shards import ShardPlan
    from pipeline.cluster import dask_client

    defaults = ShardPlan(n_examples=1 << 20)
    default_shard_batch, micro = -(-defaults.batch_size // defaults.n_shards), defaults.micro_batch
    n_examples = 8 * max(max(SWEEP), default_shard_batch)
    rows: dict[str, list[dict]] = {}
    ratios, shares, idles, ceilings = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_data(Path(tmp), n_examples)
        with dask_client(n_workers=2, threads_per_worker=1) as client:
            load_before = os.getloadavg()[0]
            from threadpoolctl import threadpool_info

            print(f"BLAS: {[(i.get('internal_api'), i.get('architecture')) for i in threadpool_info() if i.get('user_api') == 'blas']}; "
                  f"load average {load_before:.2f}", flush=True)
            for r in range(args.rounds):
                # ceiling | training | ceiling | training | ceiling: each training run is compared
                # with the ceilings measured just before and just after it (the load varies)
                ceils = [ceiling(micro, HIDDEN)]
                for _ in range(2):
                    run = train_steps(client, paths, n_examples, default_shard_batch, micro, HIDDEN, args.steps)
                    ceils.append(ceiling(micro, HIDDEN))
                    ceil_rate = (ceils[-2] + ceils[-1]) / 2
                    ceilings.append(ceil_rate)
                    ratios.append(run["examples_per_s"] / ceil_rate)
                    shares.append(run["comm_share"])
                    idles.append(run["idle_share"])
                    rows.setdefault("default", []).append(run)
                    print(f"round {r + 1}/{args.rounds}: comm share {shares[-1]:.3f} "
                          f"(idle share {run['idle_share']:.3f}), "
                          f"throughput {run['examples_per_s']:.0f}/s vs ceiling {ceil_rate:.0f}/s", flush=True)
                for sb in SWEEP:  # about the same examples per run: more steps for small shards
                    steps = min(64, max(4, args.steps * default_shard_batch // sb))
                    rows.setdefault(f"sweep {sb}", []).append(
                        train_steps(client, paths, n_examples, sb, micro, HIDDEN, steps))
                for hidden in WIDTHS:
                    rows.setdefault(f"width {hidden}", []).append(
                        train_steps(client, paths, n_examples, 512, micro, hidden, 16))
            load_after = os.getloadavg()[0]

    def med(runs, key):
        return statistics.median(x[key] for x in runs)

    print(f"\nshard plan defaults: {defaults.n_shards} shards, global batch {defaults.batch_size}, "
          f"{default_shard_batch} examples per shard per step, micro-batch {micro}; network {N_FEATURES}-"
          f"{'-'.join(map(str, HIDDEN))}-1 float32; 2 workers x 1 thread; medians of {args.rounds} rounds; "
          f"load average {load_before:.1f} before, {load_after:.1f} after (other programs share the 2 cores)")
    print("slowest/mean task: gradient compute measured inside the step's tasks (their on-worker reduction\n"
          "excluded: 'reduce' column); exchange = step - slowest task (transfers, reduction, driver additions,\n"
          "optimizer); comm share = 1 - slowest task / step; idle share = 1 - mean task / step (adds the\n"
          "faster worker's wait for the slower, i.e. load imbalance)")
    print(f"{'run':<18}{'MB moved':>9}{'step ms':>9}{'slowest':>9}{'mean':>8}{'reduce':>8}{'exchange':>9}"
          f"{'comm share':>11}{'idle share':>11}{'examples/s':>11}")
    for name, runs in rows.items():
        print(f"{name:<18}{med(runs, 'mb_moved'):>9.2f}{med(runs, 'step_ms'):>9.1f}{med(runs, 'slowest_ms'):>9.1f}"
              f"{med(runs, 'mean_ms'):>8.1f}{med(runs, 'reduce_ms'):>8.2f}{med(runs, 'exchange_ms'):>9.1f}"
              f"{med(runs, 'comm_share'):>11.3f}{med(runs, 'idle_share'):>11.3f}{med(runs, 'examples_per_s'):>11.0f}")
    print(f"ceiling (2 matmul-only processes, batch {micro}): {statistics.median(ceilings):.0f} examples/s")

    width_runs = [run for name, runs in rows.items() if name.startswith("width") for run in runs]
    a, b = fit_cost_model(width_runs)
    weights_mb = rows["default"][0]["weights_mb"]
    spe = med(rows["default"], "seconds_per_example")
    print(f"\ncost model: exchange per step = {a * 1e3:.1f} ms + {b * 1e3:.2f} ms per MB moved "
          f"(MB moved = 2 x workers x {weights_mb:.3f} MB of weights); compute {spe * 1e6:.2f} us per example")
    print(f"{'workers':>8}{'shards':>8}{'examples/shard/step':>21}{'global batch':>14}")
    for n in (1, 2, 4, 8, 16, 32):
        shards, sb = implied_shard_batch(a, b, weights_mb, spe, n)
        print(f"{n:>8}{shards:>8}{sb:>21}{sb * shards:>14}")
    print(json.dumps({"comm_share": round(statistics.median(shares), 4),
                      "idle_share": round(statistics.median(idles), 4),
                      "throughput_vs_ceiling": round(statistics.median(ratios), 4)}))


if __name__ == "__main__":
    main()
