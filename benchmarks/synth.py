"""Synthetic survey generation: throughput and peak memory at two sizes (16 x the area apart).

Each measurement runs `generate_area` (two dates, NIR, default block 1024) in a fresh Python
process, so peak resident memory is that run's alone:

1. One process (workers=1): rendering and writing in the same process; its peak RSS is
   `ru_maxrss` of that process. This is the memory figure: the large run's peak over the small
   run's must stay near 1 (target <= 1.2), since memory may depend on block size and worker
   count but never on the survey's size.
2. Default workers (one per core): the throughput figure, in megapixels per second of written
   survey (size^2 x dates / wall time). The RSS of every process of the tree (writer,
   forkserver, render workers) is sampled with psutil every 20 ms; the table shows the largest
   single process's peak and the sum of the per-process peaks (a small survey may not need
   every worker the pool could start, so compare the largest process between sizes).
3. The baseline, in this process: `render_block` alone over the same blocks of the small size
   (no file, no compression, no parallelism), so the table shows what writing and the process
   pool cost or gain.

The machine is shared, so throughput is noisy; memory is not. The last line printed is JSON.

Run: .venv/bin/python benchmarks/synth.py [--small 1024] [--large 4096] [--pixel-size 1] [--layout natural]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATES = ["2023-06-01", "2024-06-01"]


def child(size: int, workers: int, out: str, pixel_size: float, layout: str) -> None:
    """Runs in the measured process: generate, then report time and own peak RSS as JSON."""
    import resource

    from pipeline.synthetic import generate_area

    started = time.perf_counter()
    generate_area(out, "bench", DATES, size, 7, pixel_size=pixel_size, workers=workers, progress=False, layout=layout)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "self_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure(size: int, workers: int, pixel_size: float, layout: str) -> dict:
    """Run `child` in a fresh interpreter; sample the RSS of its whole process tree meanwhile."""
    import psutil

    with tempfile.TemporaryDirectory(prefix="synth-bench-") as tmp:
        cmd = [sys.executable, __file__, "--child", str(size), str(workers), str(Path(tmp) / "out"), str(pixel_size), layout]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        peaks: dict[int, int] = {}
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                for p in [root, *root.children(recursive=True)]:
                    peaks[p.pid] = max(peaks.get(p.pid, 0), p.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.02)
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"generation of size {size} failed with status {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["tree_peak_rss_mib"] = sum(peaks.values()) / 2**20
    result["largest_process_mib"] = max(peaks.values(), default=0) / 2**20
    result["processes"] = len(peaks)
    result["mpix_per_s"] = size * size * len(DATES) / result["seconds"] / 1e6
    return result


def render_only(size: int, pixel_size: float, layout: str) -> float:
    """Baseline: Mpix/s of render_block alone over every block of both dates, this process."""
    from pipeline.synthetic import build_scene, morton_blocks, render_block

    scene = build_scene("bench", DATES, size, 7, pixel_size, layout)
    started = time.perf_counter()
    for k in range(len(DATES)):
        for r0, c0, h, w in morton_blocks(size, 1024):
            render_block(scene, k, r0, c0, h, w)
    return size * size * len(DATES) / (time.perf_counter() - started) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=1024, help="edge of the small survey, px (default 1024)")
    parser.add_argument("--large", type=int, default=4096, help="edge of the large survey, px (default 4096: 16 x the area)")
    parser.add_argument("--pixel-size", type=float, default=1.0, help="pixel size in metres (default 1)")
    parser.add_argument("--layout", default="natural", help="natural (default) or balanced")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), int(args.child[1]), args.child[2], float(args.child[3]), args.child[4])
        return
    if (args.large / args.small) ** 2 < 16:
        raise SystemExit("--large must cover at least 16 x the area of --small")
    import os

    cores = os.cpu_count() or 1
    rows = []
    for size in (args.small, args.large):
        for workers in (1, cores):
            r = measure(size, workers, args.pixel_size, args.layout)
            rows.append((size, workers, r))
    baseline = render_only(args.small, args.pixel_size, args.layout)

    print(
        f"{'size':>7} {'workers':>7} {'seconds':>8} {'Mpix/s':>8} {'writer maxrss MiB':>18} "
        f"{'largest process MiB':>20} {'sum of peaks MiB':>17} {'processes':>9}"
    )
    for size, workers, r in rows:
        print(
            f"{size:>7} {workers:>7} {r['seconds']:>8.2f} {r['mpix_per_s']:>8.2f} {r['self_maxrss_mib']:>18.0f} "
            f"{r['largest_process_mib']:>20.0f} {r['tree_peak_rss_mib']:>17.0f} {r['processes']:>9}"
        )
    print(f"baseline: render_block alone, one process, {args.small} px: {baseline:.2f} Mpix/s")
    one = {size: r for size, w, r in rows if w == 1}
    many = {size: r for size, w, r in rows if w == cores}
    ratio = one[args.large]["self_maxrss_mib"] / one[args.small]["self_maxrss_mib"]
    largest = many[args.large]["largest_process_mib"] / many[args.small]["largest_process_mib"]
    print(f"peak RSS large/small: {ratio:.3f} (one process), {largest:.3f} (largest process with {cores} workers)")
    print(
        f"end-to-end at {args.large} px with {cores} workers: {many[args.large]['mpix_per_s']:.2f} Mpix/s "
        f"({many[args.large]['mpix_per_s'] / baseline:.2f} x render-only in one process)"
    )
    print(json.dumps({"synth_mpix_per_s": round(many[args.large]["mpix_per_s"], 3), "peak_rss_ratio_large_vs_small": round(ratio, 3)}))


if __name__ == "__main__":
    main()
