"""The convolutional network in NumPy against PyTorch, against its own matrix products, and
data-parallel on Dask against independent processes.

All on the default architecture (``ann.convnet.DEFAULT_LAYERS``, 64 x 64 x 4 windows), float32,
one thread on every side (threadpoolctl caps NumPy's OpenBLAS, ``torch.set_num_threads(1)``,
Dask workers of one thread), measured in the same run, interleaved (A, B, A, B, ...), medians:

- step: one training step at batch 64 (forward, backward, mean gradient, Adam), ann vs PyTorch
  2.13 CPU on the same weights and data. PyTorch is timed in both memory layouts
  (contiguous NCHW and ``channels_last``); the ratio uses the faster. Target <= 1.2.
- floor: the same step against the im2col matrix products alone (every conv and dense layer's
  forward, weight-gradient and input-gradient products on preallocated arrays). Target <= 1.3.
- inference: a 4096 x 4096 x 4 raster scored fully convolutionally (``ConvNet.score_map``)
  vs PyTorch running the same network on the same raster (trunk, sliding max pool, the dense
  head as 1 x 1 convolutions). Target <= 1.25.
- data-parallel: 2 single-threaded Dask workers training on shards produced by tasks, against
  2 independent single-threaded processes computing the same per-worker steps (same windows per
  step, micro-batches, Adam) with no exchange. Throughput target >= 0.85 x theirs; idle share =
  1 - mean task compute / step time (load imbalance counts as idle) <= 0.10. Swept over global
  batches to choose the default.

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset together for this benchmark (before NumPy
loads); the BLAS kernel threadpoolctl reports is printed. The machine is shared: its load
average is printed before and after.

Run: ``.venv/bin/python benchmarks/conv.py [--rounds 5] [--quick]``. Last line: JSON
``{"conv_step_vs_torch", "conv_step_vs_gemm_floor", "conv_infer_vs_torch",
"dp_throughput_vs_ceiling", "dp_idle_share"}``.
"""

from __future__ import annotations

import os

for _name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # together, for this benchmark only
    os.environ.pop(_name, None)
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"  # spawned processes and Dask workers inherit it

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/ann.py would shadow the ann package for a script run from this directory.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np

BATCH = 64
CHANNELS = 4
MICRO_BATCH = 64  # windows per gradient call inside a shard (bounds the patch matrices)


def median(xs):
    return statistics.median(xs)


def make_windows(n: int, seed: int = 0, window: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, window, window, CHANNELS)).astype(np.float32)
    y = (rng.random(n) < 0.5).astype(np.float32)
    X[y == 1, 20:24, 20:40, :] += 1.5
    return X, y


# ------------------------------------------------------------------------------- the networks
def torch_params(torch, net):
    """Our parameters as torch tensors: conv kernels (k, k, C, F) -> (F, C, k, k)."""
    out = []
    for p in net.params:
        a = p.transpose(3, 2, 0, 1) if p.ndim == 4 else p
        out.append(torch.nn.Parameter(torch.tensor(np.ascontiguousarray(a))))
    return out


def torch_forward(torch, net, x, params):
    """The default architecture in torch (any layer list of conv / maxpool / global / dense)."""
    F = torch.nn.functional
    j = 0
    for layer in net.layers:
        kind = layer["type"]
        if kind == "conv":
            x = F.conv2d(x, params[j], params[j + 1], stride=layer["stride"])
            x = torch.relu(x) if layer["activation"] == "relu" else x
            j += 2
        elif kind == "maxpool":
            x = F.max_pool2d(x, layer["size"])
        elif kind == "global_max":
            x = torch.amax(x, dim=(2, 3))
        elif kind == "global_avg":
            x = torch.mean(x, dim=(2, 3))
        else:
            x = x @ params[j] + params[j + 1]
            x = torch.relu(x) if layer["activation"] == "relu" else x
            j += 2
    return x[:, 0]


def torch_score_map(torch, net, image, params, window):
    """Fully convolutional scoring in torch: trunk, sliding max pool, head as 1 x 1 convs."""
    F = torch.nn.functional
    x = image
    j = 0
    g = next(i for i, layer in enumerate(net.layers) if layer["type"].startswith("global"))
    for layer in net.layers[:g]:
        if layer["type"] == "conv":
            x = torch.relu(F.conv2d(x, params[j], params[j + 1], stride=layer["stride"]))
            j += 2
        else:
            x = F.max_pool2d(x, layer["size"])
    x = F.max_pool2d(x, net.feature_size(window), stride=1)
    for layer in net.layers[g + 1 :]:
        W = params[j].t()[:, :, None, None]  # (out, in, 1, 1)
        x = F.conv2d(x, W, params[j + 1])
        x = torch.relu(x) if layer["activation"] == "relu" else x
        j += 2
    return torch.sigmoid(x[0, 0])


# ------------------------------------------------------------------------------ measurements
def gemm_floor(net, X):
    """A closure running only the step's matrix products (im2col products of every layer)."""
    from ann.conv import conv_output_size

    rng = np.random.default_rng(1)
    B, h, w, c = X.shape
    products = []
    first = True
    for layer, i in zip(net.layers, range(len(net.layers))):
        kind = layer["type"]
        if kind == "conv":
            k, f = layer["kernel"], layer["filters"]
            h, w = conv_output_size(h, k, layer["stride"], layer["padding"]), conv_output_size(w, k, layer["stride"], layer["padding"])
            n, K = B * h * w, k * k * c
            cols = rng.standard_normal((n, K), dtype=np.float32)
            W2 = rng.standard_normal((K, f), dtype=np.float32)
            d = rng.standard_normal((n, f), dtype=np.float32)
            products.append((cols, W2, np.empty((n, f), np.float32)))  # forward
            products.append((cols.T, d, np.empty((K, f), np.float32)))  # dW
            if not first:
                products.append((d, W2.T, np.empty((n, K), np.float32)))  # dcols
            c, first = f, False
        elif kind == "maxpool":
            h, w = h // layer["size"], w // layer["size"]
        elif kind == "dense":
            u = layer["units"]
            a = rng.standard_normal((B, c), dtype=np.float32)
            W2 = rng.standard_normal((c, u), dtype=np.float32)
            d = rng.standard_normal((B, u), dtype=np.float32)
            products += [(a, W2, np.empty((B, u), np.float32)), (a.T, d, np.empty((c, u), np.float32)),
                         (d, W2.T, np.empty((B, c), np.float32))]
            c = u

    def run():
        for a, b, out in products:
            np.matmul(a, b, out=out)

    return run


def bench_step(rounds: int) -> dict:
    import torch
    from threadpoolctl import threadpool_limits

    from ann.convnet import ConvNet
    from ann.optim import Adam

    torch.set_num_threads(1)
    X, y = make_windows(BATCH, seed=3)
    net = ConvNet((64, 64, CHANNELS), seed=0)
    opt = Adam(1e-3)
    tp = torch_params(torch, net)
    topt = torch.optim.Adam(tp, lr=1e-3)
    xt = torch.tensor(np.ascontiguousarray(X.transpose(0, 3, 1, 2)))
    xt_cl = xt.contiguous(memory_format=torch.channels_last)
    yt = torch.tensor(y)
    floor = gemm_floor(net, X)

    def ours():
        loss, grads = net.loss_and_grad(X, y, reuse_buffers=True)
        grads[0].base[...] *= 1.0 / BATCH  # the mean gradient, in one pass over the gradient buffer
        opt.step(net.params, grads)

    def theirs(x):
        def run():
            topt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(torch_forward(torch, net, x, tp), yt)
            loss.backward()
            topt.step()
        return run

    # same weights, same data: the first losses agree
    with torch.no_grad():
        tl = torch.nn.functional.binary_cross_entropy_with_logits(torch_forward(torch, net, xt, tp), yt).item()
    ol = net.loss_and_grad(X, y)[0] / BATCH
    assert abs(tl - ol) < 1e-4 * abs(tl), (tl, ol)
    sides = {"ann": ours, "torch NCHW": theirs(xt), "torch channels_last": theirs(xt_cl), "GEMM floor": floor}
    times: dict[str, list[float]] = {k: [] for k in sides}
    with threadpool_limits(1):
        for f in sides.values():
            f(), f()  # warm up (buffers, oneDNN primitives)
        for _ in range(rounds):
            for name, f in sides.items():  # interleaved: A, B, C, D, A, B, ...
                ts = []
                for _ in range(5):
                    t = time.perf_counter()
                    f()
                    ts.append(time.perf_counter() - t)
                times[name].append(min(ts))
    return {k: median(v) for k, v in times.items()}


def bench_infer(rounds: int, size: int) -> dict:
    import torch
    from threadpoolctl import threadpool_limits

    from ann.convnet import ConvNet

    torch.set_num_threads(1)
    net = ConvNet((64, 64, CHANNELS), seed=0)
    rng = np.random.default_rng(5)
    image = rng.standard_normal((size, size, CHANNELS), dtype=np.float32)
    tp = torch_params(torch, net)
    it = torch.tensor(np.ascontiguousarray(image.transpose(2, 0, 1)[None])).contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {"ann score_map": [], "torch": []}
    with threadpool_limits(1), torch.no_grad():
        ours = net.score_map(image)
        theirs = torch_score_map(torch, net, it, tp, 64).numpy()
        assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
        agree = float(np.max(np.abs(ours - theirs)))
        for _ in range(rounds):
            t = time.perf_counter()
            net.score_map(image)
            times["ann score_map"].append(time.perf_counter() - t)
            t = time.perf_counter()
            torch_score_map(torch, net, it, tp, 64)
            times["torch"].append(time.perf_counter() - t)
    out = {k: median(v) for k, v in times.items()}
    out["max_abs_difference"] = agree
    out["cells"] = int(ours.size)
    return out


# ---------------------------------------------------------------------------- data-parallel
def _independent(shard_batch: int, steps: int, barrier, queue) -> None:
    """One single-threaded process computing a worker's share of each step, no exchange."""
    from threadpoolctl import threadpool_limits

    from ann.convnet import ConvNet
    from ann.optim import Adam

    X, y = make_windows(4 * shard_batch, seed=7)
    net = ConvNet((64, 64, CHANNELS), seed=0)
    opt = Adam(1e-3)
    total = [np.zeros_like(p) for p in net.params]
    with threadpool_limits(1):
        def step(k):
            start = (k * shard_batch) % (3 * shard_batch)
            for acc in total:
                acc[...] = 0
            for m in range(0, shard_batch, MICRO_BATCH):
                rows = slice(start + m, start + min(m + MICRO_BATCH, shard_batch))
                _, grads = net.loss_and_grad(X[rows], y[rows], reuse_buffers=True)
                for acc, g in zip(total, grads):
                    acc += g
            for g in total:
                g /= 2 * shard_batch
            opt.step(net.params, total)

        step(0)
        barrier.wait()
        t = time.perf_counter()
        for k in range(steps):
            step(k)
        queue.put(steps * shard_batch / (time.perf_counter() - t))


def ceiling(shard_batch: int, steps: int) -> float:
    """Examples/s of 2 independent single-threaded processes side by side (summed)."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_independent, args=(shard_batch, steps, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    rates = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def dp_steps(client, paths, n_examples: int, batch: int, steps: int) -> dict:
    from ann.convnet import ConvNet
    from ann.optim import Adam
    from ann.parallel import DaskGradientSource, StepTiming
    from ann.shards import NpyShardLoader, ShardPlan

    plan = ShardPlan(n_examples=n_examples, n_shards=8, batch_size=batch, micro_batch=MICRO_BATCH, seed=0)
    net = ConvNet((64, 64, CHANNELS), seed=0)
    opt = Adam(1e-3)
    with DaskGradientSource(client, NpyShardLoader(plan, *paths), plan, net, standardize=False) as source:
        per_epoch = source.steps_per_epoch()
        source.batch_gradient(net.params, 0, 0)  # warm-up: workers build their networks
        source.timing = StepTiming()
        wall, examples = 0.0, 0
        for k in range(steps):
            t = time.perf_counter()
            loss, grads, n = source.batch_gradient(net.params, 1 + k // per_epoch, k % per_epoch)
            for g in grads:
                g /= n
            opt.step(net.params, grads)
            wall += time.perf_counter() - t
            examples += n
        tm = source.timing
    mean_compute = sum(statistics.mean(t) for t in tm.task_seconds)
    slowest = sum(max(t) for t in tm.task_seconds)
    reduction = sum(max(r) for r in tm.reduce_seconds)
    return {
        "batch": batch,
        "step_ms": 1e3 * wall / steps,
        "mean_task_ms": 1e3 * mean_compute / steps,
        "slowest_task_ms": 1e3 * slowest / steps,
        "reduce_ms": 1e3 * reduction / steps,
        "exchange_ms": 1e3 * (wall - slowest) / steps,
        "idle_share": 1 - mean_compute / wall,
        "examples_per_s": examples / wall,
    }


def bench_dp(rounds: int, batches: tuple[int, ...], default: int, steps: int) -> dict:
    from pipeline.cluster import dask_client

    n_examples = 8 * 3 * (max(batches) // 8)
    results: dict[int, list[dict]] = {b: [] for b in batches}
    ceilings: list[float] = []
    ratios: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        X, y = make_windows(n_examples, seed=9)
        np.save(Path(tmp) / "X.npy", X)
        np.save(Path(tmp) / "y.npy", y)
        paths = (Path(tmp) / "X.npy", Path(tmp) / "y.npy")
        del X
        with dask_client(n_workers=2, threads_per_worker=1, memory_limit="3GiB") as client:
            for r in range(rounds):
                before = ceiling(default // 2, steps)
                run = dp_steps(client, paths, n_examples, default, steps)
                after = ceiling(default // 2, steps)
                ceil_rate = (before + after) / 2
                ceilings.append(ceil_rate)
                ratios.append(run["examples_per_s"] / ceil_rate)
                results[default].append(run)
                print(f"  dp round {r + 1}/{rounds}: batch {default}: {run['examples_per_s']:.0f} ex/s vs ceiling "
                      f"{ceil_rate:.0f} ex/s, idle share {run['idle_share']:.3f}", flush=True)
                for b in batches:
                    if b != default:
                        results[b].append(dp_steps(client, paths, n_examples, b, max(3, steps * default // b)))
    table = {b: {k: median([x[k] for x in runs]) for k in runs[0]} for b, runs in results.items()}
    return {"table": table, "ceiling": median(ceilings), "ratio": median(ratios),
            "idle_share": table[default]["idle_share"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=4096, help="raster edge for the inference benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and a smaller raster (a smoke test)")
    parser.add_argument("--dp-rounds", type=int, default=None, help="data-parallel rounds (default: rounds // 2, at least 2)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.size = 2, 1024

    from threadpoolctl import threadpool_info

    from ann.convnet import DEFAULT_BATCH_SIZE, DEFAULT_MICRO_BATCH

    assert DEFAULT_MICRO_BATCH == MICRO_BATCH

    blas = [(i.get("internal_api"), i.get("architecture"), i.get("version")) for i in threadpool_info() if i.get("user_api") == "blas"]
    load_before = os.getloadavg()
    print(f"BLAS seen by threadpoolctl: {blas}; OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset; "
          f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} (2 cores, shared)", flush=True)

    step = bench_step(args.rounds)
    torch_best = min(step["torch NCHW"], step["torch channels_last"])
    print(f"\ntraining step, batch {BATCH}, 64x64x{CHANNELS}, float32, 1 thread (medians of {args.rounds} interleaved rounds)")
    print(f"{'side':<22}{'ms':>9}{'ann / side':>12}")
    for name, t in step.items():
        print(f"{name:<22}{t * 1e3:>9.1f}{step['ann'] / t:>12.2f}")

    infer = bench_infer(max(2, args.rounds // 2), args.size)
    print(f"\ninference, {args.size}x{args.size}x{CHANNELS} raster, fully convolutional ({infer['cells']} cells), 1 thread; "
          f"max |ann - torch| = {infer['max_abs_difference']:.1e}")
    print(f"{'side':<22}{'s':>9}{'ann / side':>12}")
    for name in ("ann score_map", "torch"):
        print(f"{name:<22}{infer[name]:>9.2f}{infer['ann score_map'] / infer[name]:>12.2f}")

    default = DEFAULT_BATCH_SIZE
    batches = tuple(sorted({256, default, 1024}))
    dp = bench_dp(args.dp_rounds or max(2, args.rounds // 2), batches, default, steps=6 if not args.quick else 3)
    print(f"\ndata-parallel, 2 workers x 1 thread, 8 shards, micro-batch {MICRO_BATCH}; ceiling (2 independent "
          f"processes at batch {default}): {dp['ceiling']:.0f} examples/s")
    print("idle share = 1 - mean task compute / step; exchange = step - slowest task (weights out, gradients back, "
          "on-worker reduction, driver additions, Adam)")
    print(f"{'global batch':>12}{'step ms':>9}{'mean task':>10}{'slowest':>9}{'reduce':>8}{'exchange':>9}{'idle':>7}{'ex/s':>8}")
    for b, row in dp["table"].items():
        print(f"{b:>12}{row['step_ms']:>9.1f}{row['mean_task_ms']:>10.1f}{row['slowest_task_ms']:>9.1f}"
              f"{row['reduce_ms']:>8.2f}{row['exchange_ms']:>9.1f}{row['idle_share']:>7.3f}{row['examples_per_s']:>8.0f}")
    load_after = os.getloadavg()
    print(f"\nload average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(json.dumps({
        "conv_step_vs_torch": round(step["ann"] / torch_best, 4),
        "conv_step_vs_gemm_floor": round(step["ann"] / step["GEMM floor"], 4),
        "conv_infer_vs_torch": round(infer["ann score_map"] / infer["torch"], 4),
        "dp_throughput_vs_ceiling": round(dp["ratio"], 4),
        "dp_idle_share": round(dp["idle_share"], 4),
    }))


if __name__ == "__main__":
    main()
