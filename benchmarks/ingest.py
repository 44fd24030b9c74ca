"""Ingest throughput and memory, against writing the same pixels from memory into Zarr.

1. Writes a 4-band uint8 GeoTIFF of at least 1 GiB (tiled 512, deflate, as NAIP is), with
   aerial-like content (smooth fields plus texture) so that compression costs what it costs
   on real imagery. Cached in benchmarks/out/ between runs.
2. Raw write (the ceiling): the same pixels, already in memory, written into a Zarr array with
   the same chunks and codec by the same number of worker processes, each writing whole chunks.
3. Ingest: `pipeline.store.ingest` of the file on a LocalCluster of the same size.
   Throughput ratio = ingest MB/s / raw-write MB/s (target >= 0.6).
4. Memory: ingest of the same file on ONE worker whose memory limit is a quarter of the raster,
   sampling the resident memory of every process (driver, scheduler, nanny, worker) every 50 ms.
   Figure = peak - limit, in GiB (target <= 0.5).

Run: .venv/bin/python benchmarks/ingest.py [--gib 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"
BANDS = 4


def make_geotiff(path: Path, gib: float) -> Path:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    edge = int(np.sqrt(gib * 2**30 / BANDS) // 512 * 512)
    if path.exists():
        with rasterio.open(path) as ds:
            if ds.width == edge:
                return path
    print(f"writing a {edge} x {edge} x {BANDS} uint8 GeoTIFF ({edge * edge * BANDS / 2**30:.2f} GiB) ...", flush=True)
    rng = np.random.default_rng(0)
    profile = dict(driver="GTiff", width=edge, height=edge, count=BANDS, dtype="uint8", crs="EPSG:32614",
                   transform=from_origin(500000, 5300000, 1.0, 1.0), tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate", nodata=0, num_threads="all_cpus")
    x = np.arange(edge, dtype=np.float32)
    tmp = path.with_suffix(".partial.tif")
    with rasterio.open(tmp, "w", **profile) as ds:
        for r0 in range(0, edge, 512):
            y = np.arange(r0, r0 + 512, dtype=np.float32)[:, None]
            field = 90 + 40 * np.sin(x / 700.0) * np.cos(y / 530.0) + 25 * np.sin((x + 2 * y) / 97.0)
            block = np.empty((BANDS, 512, edge), np.uint8)
            for b in range(BANDS):
                noise = rng.integers(0, 24, size=(512, edge), dtype=np.uint8)
                block[b] = np.clip(field * (0.8 + 0.15 * b) + noise, 1, 255).astype(np.uint8)
            ds.write(block, window=Window(0, r0, edge, 512))
    tmp.rename(path)
    return path


def _write_chunks(zarr_path: str, pixels: np.ndarray, rows: list[int], edge: int) -> None:
    import zarr

    arr = zarr.open_array(zarr_path, mode="r+")
    for r0 in rows:
        arr[:, r0 : r0 + edge, :] = pixels[:, r0 : r0 + edge, :]


def raw_write(pixels: np.ndarray, workdir: Path, n_workers: int, edge: int) -> float:
    """Seconds to write ``pixels`` into Zarr with the ingest's chunks and codec, by ``n_workers``
    processes writing disjoint chunk rows (the pixels are shared copy-on-write after fork)."""
    import multiprocessing as mp

    import zarr
    from zarr.codecs import ZstdCodec

    path = workdir / "raw.zarr"
    shutil.rmtree(path, ignore_errors=True)
    zarr.create_array(store=str(path), shape=pixels.shape, chunks=(BANDS, edge, edge), dtype=pixels.dtype,
                      compressors=ZstdCodec(level=3), fill_value=0, zarr_format=3)
    rows = list(range(0, pixels.shape[1], edge))
    ctx = mp.get_context("fork")
    start = time.perf_counter()
    procs = [ctx.Process(target=_write_chunks, args=(str(path), pixels, rows[i::n_workers], edge))
             for i in range(n_workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    return time.perf_counter() - start


def measure_peak(tif: Path, store_dir: Path, limit: int) -> int:
    """Peak summed RSS (bytes) of a child interpreter ingesting ``tif`` on one worker limited to ``limit``."""
    import subprocess

    # Self-contained: this folder is kept off sys.path (benchmarks/ann.py would shadow ann/).
    code = (
        "from pipeline.cluster import dask_client\n"
        "from pipeline.ingest import ingest\nfrom pipeline.store import Store\n"
        "if __name__ == '__main__':\n"
        f"    with dask_client(n_workers=1, threads_per_worker=1, memory_limit={limit}) as client:\n"
        f"        ingest({str(tif)!r}, 'bench', '2024-06-01', Store({str(store_dir)!r}), client=client)\n"
    )
    script = store_dir.parent / "measure_memory.py"
    script.write_text(code)
    child = subprocess.Popen([sys.executable, str(script)], cwd=store_dir.parent)
    with TreeSampler(child.pid) as sampler:
        if child.wait() != 0:
            raise RuntimeError(f"the memory run failed with exit code {child.returncode}")
    return sampler.peak


class TreeSampler:
    """Peak of the summed RSS of process ``pid`` and all its descendants, sampled every 50 ms."""

    def __init__(self, pid: int):
        import psutil

        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                tree = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:  # the child has exited
                break
            for p in tree:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="size of the test raster in GiB (default 1)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("DAMWATCH_NO_PROGRESS", "1")

    import rasterio

    from pipeline.cluster import dask_client
    from pipeline.ingest import DEFAULT_CHUNK_EDGE, ingest
    from pipeline.store import Store

    OUT.mkdir(exist_ok=True)
    tif = make_geotiff(OUT / f"ingest-{args.gib:g}gib.tif", args.gib)
    with rasterio.open(tif) as ds:
        nbytes = ds.width * ds.height * ds.count
        shape = (ds.count, ds.height, ds.width)
    mib = nbytes / 2**20

    workdir = Path(tempfile.mkdtemp(prefix="damwatch-bench-", dir=OUT))
    try:
        # Raw write: the pixels already in memory (read outside the timing).
        with rasterio.open(tif) as ds:
            pixels = ds.read()
        raw_times = [raw_write(pixels, workdir, args.workers, DEFAULT_CHUNK_EDGE) for _ in range(2)]
        del pixels
        raw_s = min(raw_times)

        ingest_times = []
        with dask_client(n_workers=args.workers, threads_per_worker=1) as client:
            for i in range(2):
                store = Store(workdir / f"store-{i}")
                start = time.perf_counter()
                ingest(tif, "bench", "2024-06-01", store, client=client)
                ingest_times.append(time.perf_counter() - start)
                shutil.rmtree(store.root)
        ingest_s = min(ingest_times)

        # Memory: one worker limited to a quarter of the raster, in a fresh interpreter so that
        # nothing this process allocated above counts; the sampler sums its whole process tree.
        limit = nbytes // 4
        peak = measure_peak(tif, workdir / "store-mem", limit)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    ratio = (mib / ingest_s) / (mib / raw_s)
    over = (peak - limit) / 2**30
    print()
    print(f"raster: {shape[2]} x {shape[1]} x {shape[0]} uint8 = {mib:,.0f} MiB, {args.workers} workers")
    print(f"{'measurement':<40}{'seconds':>10}{'MiB/s':>10}")
    print(f"{'raw write from memory (ceiling)':<40}{raw_s:>10.2f}{mib / raw_s:>10.0f}")
    print(f"{'ingest (read GeoTIFF + write Zarr)':<40}{ingest_s:>10.2f}{mib / ingest_s:>10.0f}")
    print(f"{'ingest / raw write throughput':<40}{ratio:>20.2f}   (target >= 0.6)")
    print(f"{'worker memory limit (1 worker)':<40}{limit / 2**30:>18.2f} GiB")
    print(f"{'peak RSS, all processes':<40}{peak / 2**30:>18.2f} GiB")
    print(f"{'peak - limit':<40}{over:>18.2f} GiB (target <= 0.5)")
    print(json.dumps({"ingest_vs_raw_write": round(ratio, 3), "peak_rss_over_limit_gib": round(over, 3)}))


if __name__ == "__main__":
    sys.exit(main())
