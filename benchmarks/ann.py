"""How fast does ann train, next to PyTorch, scikit-learn and the bare matrix products?

One epoch over the same data (N × 1100 float32, labels 0/1), the same network
(1100 → 256 → 64 → 1, ReLU hidden, sigmoid output, binary cross-entropy), the same optimizer and
batch, one thread on every side (threadpoolctl caps NumPy's OpenBLAS, torch.set_num_threads(1)):

- ann: ``ann.train.fit`` with an ``InMemorySource`` (shuffle, gather, forward, backward, mean
  gradient, optimizer step, and fit's validation on 64 rows), timed between the callbacks that
  end its first and second epochs (steady state, like the other sides' persistent optimizers);
- torch: the idiomatic loop (randperm, ``X[idx]``, ``BCEWithLogitsLoss``, ``backward``,
  ``optimizer.step``) with torch's default Adam (and, for information, the fused Adam);
- sklearn: ``MLPClassifier.partial_fit`` (one epoch; same sizes, Adam, alpha=0);
- floor: the eight matrix products of forward and backward alone, on contiguous batches,
  written into preallocated arrays: what no NumPy implementation can beat;
- torch fwd+bwd only: torch's forward and backward on contiguous batches, no optimizer. It
  shows how much of the b2048 ratio is BLAS: torch's products run on MKL, NumPy's on OpenBLAS.

Weight decay is off on every side (sklearn's alpha=0). The machine is shared, so every
measurement is repeated in alternating rounds, the best (least disturbed) time of each side is
kept, and the ratios use the process's CPU time (wall time is printed beside it). Ratios are
ann's time over the other's (lower is faster). The last line printed is JSON.

Run: ``.venv/bin/python benchmarks/ann.py [--rounds 9] [--n 16384]`` (about a minute).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

# Run as a script, this file's folder comes first on sys.path and its own name, ann.py, would
# shadow the ann package it measures.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="alternating repetitions; best kept (default 9)")
    parser.add_argument("--n", type=int, default=16384, help="training examples per epoch (default 16384)")
    args = parser.parse_args()

    import torch
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    from ann.network import MLP
    from ann.train import InMemorySource, TrainConfig, fit

    def clocks() -> tuple[float, float]:
        """(wall, CPU) seconds. Ratios use CPU time: with one thread per side it equals the wall
        time of an idle machine, but does not count the time other agents' processes hold the core."""
        return time.perf_counter(), time.process_time()

    threadpool_limits(limits=1)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=ConvergenceWarning)

    sizes = (1100, 256, 64, 1)
    rng = np.random.default_rng(0)
    N = args.n
    X = rng.standard_normal((N, sizes[0]), dtype=np.float32)
    y = (X[:, :10].sum(axis=1) + rng.standard_normal(N, dtype=np.float32) > 0).astype(np.float32)
    X_val, y_val = X[:64], y[:64]

    # ---------------------------------------------------------------- ann
    def ann_epoch(batch: int, optimizer: str) -> callable:
        net = MLP(sizes[0], sizes[1:-1], "relu", dtype=np.float32, seed=0)
        source = InMemorySource(net, X, y, batch_size=batch, seed=0)
        momentum = 0.0  # plain SGD for the floor comparison
        config = TrainConfig(optimizer=optimizer, learning_rate=1e-3, momentum=momentum, l2=0.0, max_epochs=2, patience=2)

        def run() -> tuple[float, float]:
            # The second epoch, between the ends of epochs 0 and 1 (fit's callback): steady state
            # (optimizer state exists), with the shuffle and the per-epoch validation, without
            # fit's one-off setup.
            stamps: list[tuple[float, float]] = []
            fit(net, source, X_val, y_val, config, callback=lambda record: stamps.append(clocks()))
            return stamps[1][0] - stamps[0][0], stamps[1][1] - stamps[0][1]

        return run

    # ---------------------------------------------------------------- torch
    def torch_epoch(batch: int, fused: bool = False, step: bool = True) -> callable:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(sizes[0], sizes[1]),
            torch.nn.ReLU(),
            torch.nn.Linear(sizes[1], sizes[2]),
            torch.nn.ReLU(),
            torch.nn.Linear(sizes[2], 1),
        )
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        gen = torch.Generator().manual_seed(0)

        def run() -> None:
            perm = torch.randperm(N, generator=gen)
            for start in range(0, N, batch):
                if step:
                    idx = perm[start : start + batch]
                    xb, yb = Xt[idx], yt[idx]
                else:  # forward + backward alone: contiguous batches, no optimizer
                    xb, yb = Xt[start : start + batch], yt[start : start + batch]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb).squeeze(1), yb)
                loss.backward()
                if step:
                    opt.step()

        return run

    # ---------------------------------------------------------------- sklearn
    def sklearn_epoch(batch: int) -> callable:
        clf = MLPClassifier(
            hidden_layer_sizes=sizes[1:-1],
            activation="relu",
            solver="adam",
            alpha=0.0,
            batch_size=batch,
            learning_rate_init=1e-3,
            shuffle=True,
            random_state=0,
        )
        clf.partial_fit(X[:batch], y[:batch], classes=np.array([0.0, 1.0]))  # initialise outside the timing

        def run() -> None:
            clf.partial_fit(X, y)

        return run

    # ---------------------------------------------------------------- matmul floor
    def floor_epoch(batch: int) -> callable:
        W = [rng.standard_normal((a, b), dtype=np.float32) * 0.01 for a, b in zip(sizes[:-1], sizes[1:])]
        # Filled with ordinary numbers: uninitialised memory may hold denormals that slow BLAS.
        A = [rng.standard_normal((batch, n), dtype=np.float32) for n in sizes[1:]]  # layer outputs
        D = [rng.standard_normal((batch, n), dtype=np.float32) for n in sizes[1:]]  # deltas
        G = [np.empty_like(w) for w in W]

        def run() -> None:
            for start in range(0, N, batch):
                x = X[start : start + batch]
                B = x.shape[0]
                np.matmul(x, W[0], out=A[0][:B])
                np.matmul(A[0][:B], W[1], out=A[1][:B])
                np.matmul(A[1][:B], W[2], out=A[2][:B])
                np.matmul(A[1][:B].T, D[2][:B], out=G[2])
                np.matmul(D[2][:B], W[2].T, out=D[1][:B])
                np.matmul(A[0][:B].T, D[1][:B], out=G[1])
                np.matmul(D[1][:B], W[1].T, out=D[0][:B])
                np.matmul(x.T, D[0][:B], out=G[0])

        return run

    cases = {
        "ann adam b256": ann_epoch(256, "adam"),
        "torch adam b256": torch_epoch(256),
        "torch fused-adam b256": torch_epoch(256, fused=True),
        "ann adam b2048": ann_epoch(2048, "adam"),
        "torch adam b2048": torch_epoch(2048),
        "torch fused-adam b2048": torch_epoch(2048, fused=True),
        "sklearn adam b256": sklearn_epoch(256),
        "ann sgd b2048": ann_epoch(2048, "sgd"),
        "matmul floor b2048": floor_epoch(2048),
        # For reading the b2048 ratio: torch's forward + backward alone (MKL's sgemm), no
        # shuffle and no optimizer, next to NumPy's eight bare products (OpenBLAS) above.
        "torch fwd+bwd only b2048": torch_epoch(2048, step=False),
    }
    def timed(run: callable) -> tuple[float, float]:
        start = clocks()
        inner = run()
        end = clocks()
        return inner if inner is not None else (end[0] - start[0], end[1] - start[1])

    for run in cases.values():  # warm-up: first-touch pages, BLAS buffers, torch kernels
        run()
    wall = {name: float("inf") for name in cases}
    best = {name: float("inf") for name in cases}  # CPU seconds
    for _ in range(args.rounds):
        for name, run in cases.items():
            w, c = timed(run)
            wall[name], best[name] = min(wall[name], w), min(best[name], c)

    print(f"one epoch of {N} examples, network {' -> '.join(map(str, sizes))}, float32, 1 thread, best of {args.rounds}")
    print(f"{'case':<26}{'cpu s':>10}{'wall s':>10}{'cpu ms/step':>13}")
    for name, t in best.items():
        batch = int(name.rsplit("b", 1)[1])
        print(f"{name:<26}{t:>10.4f}{wall[name]:>10.4f}{1e3 * t / -(-N // batch):>13.2f}")
    ratios = {
        "epoch_time_vs_torch_b256": best["ann adam b256"] / best["torch adam b256"],
        "epoch_time_vs_torch_b2048": best["ann adam b2048"] / best["torch adam b2048"],
        "epoch_time_vs_sklearn": best["ann adam b256"] / best["sklearn adam b256"],
        "epoch_time_vs_matmul_floor": best["ann sgd b2048"] / best["matmul floor b2048"],
    }
    print(
        "ann vs torch fused-adam: b256 %.3f, b2048 %.3f"
        % (best["ann adam b256"] / best["torch fused-adam b256"], best["ann adam b2048"] / best["torch fused-adam b2048"])
    )
    for k, v in ratios.items():
        print(f"{k:<30}{v:>8.3f}")
    print(json.dumps({k: round(v, 4) for k, v in ratios.items()}))


if __name__ == "__main__":
    main()
