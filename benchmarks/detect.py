"""Benchmark: whole-survey detection by the convolutional detector, against reading and scoring alone.

What is measured, in one run, on the same Dask workers (``--workers``, one thread each, each
with a memory limit of a quarter of the survey's bytes, at least 256 MiB; Dask's pause and
terminate thresholds off, so that memory beyond the limit is measured, not hidden by a
restart), interleaved over ``--rounds``:

1. **read**: every chunk of the survey's Zarr image read and summed (a Dask reduction over
   ``survey.image_dask()``): the floor of any pass over the survey.
2. **forward**: the network's fully convolutional forward pass alone (``ConvNet.score_map``)
   over blocks of the same shapes as detection's (block + halo, standardized float32),
   already in each worker's memory: no read, no write.
3. **detect**: detection end to end: ``detect_survey`` (read each block with its halo from
   Zarr, standardize, score, calibrate, write the probability map to the store) and
   ``write_detection_maps`` (the probability COG, peaks and footprints as GeoJSON, the
   quicklook, provenance, STAC items).

``detect_vs_read_plus_forward`` = detect / (read + forward): what detection costs beyond the
two things it cannot avoid (target ≤ 1.3). Peak memory: the resident set of every worker
process, sampled every 50 ms through the whole detection; ``peak_rss_over_limit_gib`` is the
largest worker's peak minus its limit (target ≤ 0.5 GiB). The driver's peak is printed too.

The survey is the NAIP 2009 quarter-quad (../shared/data/naip, 5 m pixels) mosaicked to
``--size`` pixels square, 4 bands uint8 (16384 px = 1 GiB), ingested into a scratch store. The
model is a cnn trained for a few epochs on the original tile's open water (``ndwi > 0``): its
accuracy does not matter here, its architecture is the default.

    .venv/bin/python benchmarks/detect.py                 # 16384 px, 2 workers
    .venv/bin/python benchmarks/detect.py --size 4096     # a quick look (64 MiB)

The last line printed is JSON: ``{"detect_vs_read_plus_forward": r, "peak_rss_over_limit_gib": g, "mpix_per_s": v}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# Running this file puts benchmarks/ first on sys.path, where benchmarks/ann.py would shadow
# the ann package (here and in the worker processes, which re-import this module).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

NAIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "naip" / "m_4709963_se_14_1_20090818.tif"
RGBN = ["red", "green", "blue", "nir"]


def write_mosaic(src: Path, dst: Path, size: int) -> int:
    """Tile the NAIP image (mirrored on alternate copies, so edges meet) into a size x size GeoTIFF."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(src) as ds:
        pixels = ds.read()  # (4, h, w) uint8, ~2.7 MB
        profile = ds.profile
    pixels[pixels == 0] = 1  # nodata 0 only at the source's collar: keep the mosaic fully valid
    tile = np.concatenate([pixels, pixels[:, :, ::-1]], axis=2)
    tile = np.concatenate([tile, tile[:, ::-1, :]], axis=1)
    reps = -(-size // tile.shape[2])
    profile.update(width=size, height=size, compress=None, tiled=True, blockxsize=512, blockysize=512,
                   nodata=0, BIGTIFF="YES")
    with rasterio.open(dst, "w", **profile) as out:
        for r0 in range(0, size, 1024):
            rows = min(1024, size - r0)
            ys = np.arange(r0, r0 + rows) % tile.shape[1]
            out.write(np.tile(tile[:, ys, :], (1, 1, reps))[:, :, :size], window=Window(0, r0, size, rows))
    return 4 * size * size


def train_cnn_model(store, client) -> str:
    """A default-architecture cnn for open water on the original NAIP tile (a few epochs)."""
    from ann.train import TrainConfig
    from pipeline.ingest import ingest
    from pipeline.labels import labels_from_expression
    from pipeline.tiling import TileGrid
    from pipeline.training import TrainingSettings, train_model

    survey = ingest(NAIP, "naip", "2009-08-18", store, bands=RGBN, client=client).survey
    labels_from_expression(store, survey.id, "ndwi > 0", TileGrid.for_survey(survey, 32, 32), name="water",
                           min_fraction=0.2, client=client)
    settings = TrainingSettings(model_type="cnn", labels="water", size=32, stride=32, gsd_m=5.0, window=40,
                                mining_rounds=0, config=TrainConfig(max_epochs=3, patience=3, batch_size=256))
    _, model_id, _ = train_model(store, [survey.id], settings, client=client, progress=False)
    return model_id


# --------------------------------------------------------------------------------------------
# The forward pass alone: blocks of detection's shapes, held in the workers' memory

_BLOCKS: dict[tuple[int, int, int], np.ndarray] = {}


def _forward_block(classifier, shape: tuple[int, int, int], window: int) -> float:
    """On a worker: score one block of ``shape`` (cached per shape, standardized-like values)."""
    from pipeline.detect import feature_map_budget

    x = _BLOCKS.get(shape)
    if x is None:
        x = _BLOCKS[shape] = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    t = time.perf_counter()
    classifier.score_map(x, window, logits=True, max_bytes=feature_map_budget(x.nbytes))
    return time.perf_counter() - t


def forward_tasks(client, classifier, survey) -> list:
    """One forward task per detection block (the same blocks, the same shapes)."""
    import dask

    from pipeline.detect import BLOCK_PIXELS, _cnn_grid

    grid = _cnn_grid(classifier, survey)
    S, W = grid["S"], grid["W"]
    rows, cols = grid["shape"]
    cells = max(8, BLOCK_PIXELS // S)
    model = dask.delayed(classifier, pure=True)
    C = classifier.network.channels
    return [
        dask.delayed(_forward_block, pure=False)(
            model, ((min(i0 + cells, rows) - i0 - 1) * S + W, (min(j0 + cells, cols) - j0 - 1) * S + W, C), W)
        for i0 in range(0, rows, cells) for j0 in range(0, cols, cells)
    ]


# --------------------------------------------------------------------------------------------
# Peak memory of the workers


class PeakRSS:
    """Samples the resident set of the given process ids every ``every`` seconds in a thread."""

    def __init__(self, pids: dict[str, int], every: float = 0.05) -> None:
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, proc in self.procs.items():
                try:
                    self.peak[name] = max(self.peak[name], proc.memory_info().rss)
                except Exception:  # noqa: BLE001 - a restarted worker: its peak so far stands
                    pass
            time.sleep(self.every)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=16384, help="survey edge in pixels (16384 = 1 GiB with 4 bands)")
    parser.add_argument("--workers", type=int, default=2, help="local Dask workers (1 thread each)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of read / forward / detect")
    parser.add_argument("--scratch", default=None, help="scratch directory (default: a temporary one, removed)")
    args = parser.parse_args()
    os.environ.setdefault("DAMWATCH_NO_PROGRESS", "1")

    import dask

    from ann.io import load_model
    from pipeline.cluster import dask_client
    from pipeline.detect import detect_survey
    from pipeline.ingest import ingest
    from pipeline.results import write_detection_maps
    from pipeline.store import Store

    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="damwatch-bench-detect-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        tif = scratch / "mosaic.tif"
        nbytes = write_mosaic(NAIP, tif, args.size)
        gib = nbytes / 2**30
        print(f"survey: {args.size} x {args.size} px x 4 bands uint8 = {gib:.2f} GiB (mosaic written in "
              f"{time.perf_counter() - t:.1f} s)")
        store = Store(scratch / "store")
        with dask_client(n_workers=args.workers, threads_per_worker=1) as client:  # setup: default limits
            t = time.perf_counter()
            survey = ingest(tif, "bench", "2009-08-18", store, bands=RGBN, client=client).survey
            tif.unlink()
            print(f"ingested in {time.perf_counter() - t:.1f} s; chunks {survey.chunk_edge} px")
            t = time.perf_counter()
            model_id = train_cnn_model(store, client)
            print(f"cnn trained in {time.perf_counter() - t:.1f} s")
        classifier = load_model(store.models_dir / f"{model_id}.json")

        # A quarter of the survey per worker (at least 256 MiB: a worker's imports alone take
        # ~150 MB). Dask's pause (80 %) and terminate (95 %) are switched off so that going over
        # is measured rather than turned into a stalled or restarted worker.
        limit = max(nbytes // 4, 256 * 2**20)
        dask.config.set({"distributed.worker.memory.pause": False, "distributed.worker.memory.terminate": False})
        times: dict[str, list[float]] = {"read": [], "forward": [], "detect": [], "detect_scoring": [], "detect_maps": []}
        peaks_over, driver_peak, compute_seconds = [], 0, []
        with dask_client(n_workers=args.workers, threads_per_worker=1, memory_limit=limit) as client:
            pids = client.run(os.getpid)
            forward = forward_tasks(client, classifier, survey)
            dask.compute(*forward[: args.workers], scheduler=client.get)  # warm: imports, the cached blocks
            for r in range(args.rounds):
                t = time.perf_counter()
                client.compute(survey.image_dask().sum(dtype=np.uint64), sync=True)
                times["read"].append(time.perf_counter() - t)

                t = time.perf_counter()
                compute_seconds.append(sum(dask.compute(*forward, scheduler=client.get)))
                times["forward"].append(time.perf_counter() - t)

                with PeakRSS({**{str(k): v for k, v in pids.items()}, "driver": os.getpid()}) as rss:
                    t = time.perf_counter()
                    pm = detect_survey(store, survey.id, classifier, client=client, reuse=False)
                    t_scoring = time.perf_counter() - t
                    write_detection_maps(store, pm, scratch / f"maps-{r}", client=client, overwrite=True)
                    t_all = time.perf_counter() - t
                times["detect_scoring"].append(t_scoring)
                times["detect_maps"].append(t_all - t_scoring)
                times["detect"].append(t_all)
                peaks_over.append(max(v for k, v in rss.peak.items() if k != "driver") - limit)
                driver_peak = max(driver_peak, rss.peak["driver"])
                print(f"round {r + 1}: read {times['read'][-1]:.1f} s, forward {times['forward'][-1]:.1f} s, "
                      f"detect {t_all:.1f} s (scoring {t_scoring:.1f} s)")

        med = {k: statistics.median(v) for k, v in times.items()}
        mpix = args.size * args.size / 1e6
        cells = int(np.isfinite(pm.values).sum())
        print(f"\nmodel {model_id}: window {pm.footprint_m:g} m, layers "
              + ", ".join(str(layer.get("filters") or layer.get("units") or layer["type"])
                          for layer in classifier.network.architecture()["layers"]))
        print(f"{cells} cells of {pm.cell_m:g} m scored ({pm.values.shape[0]} x {pm.values.shape[1]}); "
              f"{args.workers} workers x 1 thread, memory limit {limit / 2**20:.0f} MiB each; median of {args.rounds} rounds")
        print(f"{'stage':52s} {'seconds':>9s}  {'Mpix/s':>8s}")
        rows = [
            ("read: every Zarr chunk, summed", med["read"]),
            ("forward: score_map over in-memory blocks", med["forward"]),
            ("read + forward", med["read"] + med["forward"]),
            ("detect: read, standardize, score, store the map", med["detect_scoring"]),
            ("detect: COG, GeoJSON, quicklook, provenance, STAC", med["detect_maps"]),
            ("detect end to end", med["detect"]),
        ]
        for name, seconds in rows:
            print(f"{name:52s} {seconds:9.2f}  {mpix / seconds:8.2f}")
        ratio = med["detect"] / (med["read"] + med["forward"])
        over = max(peaks_over) / 2**30
        print(f"\ndetect / (read + forward)             = {ratio:.3f}   (target <= 1.3)")
        print(f"largest worker peak RSS - its limit   = {over:+.3f} GiB (target <= 0.5); driver peak "
              f"{driver_peak / 2**30:.2f} GiB")
        print(f"forward task compute / forward wall   = {statistics.median(compute_seconds) / args.workers / med['forward']:.3f} "
              f"(1.0: both workers busy throughout)")
        print(json.dumps({"detect_vs_read_plus_forward": round(ratio, 4), "peak_rss_over_limit_gib": round(over, 4),
                          "mpix_per_s": round(mpix / med["detect"], 3)}))
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
