"""Benchmark: detection of a >= 1 GiB survey end to end, against reading it, and scoring against its matmuls.

What is measured, in one run, on the same Dask workers:

1. **raw read**: every chunk of the survey's Zarr image read and summed (a Dask reduction over
   ``survey.image_dask()``): the floor for any pass over the survey.
2. **detect end to end**: features with the model's spec (recomputed, not reused), scoring of
   every tile (Dask tasks reading the features from Zarr, standardizing, forward pass, stored
   predictions) and map writing (COG, GeoJSON, quicklook with its strided read of the
   imagery, provenance). ``detect_vs_raw_read`` = (bytes / detect time) / (bytes / raw read
   time): the fraction of raw-read throughput that detection keeps.
3. **scoring vs matmuls**: tiles scored per second by the scoring stage alone (features
   already stored) against the forward matrix products alone (``X @ W1``, ``@ W2``, ...) on the
   same batch of feature rows in memory, with as many BLAS threads as there are workers (the
   same cores). ``scoring_vs_matmul`` = scoring tiles/s / matmul tiles/s.

The survey is the NAIP 2009 quarter-quad (../shared/data/naip) mosaicked to ``--size`` pixels
square, 4 bands uint8 (16384 px = 1 GiB), written as an uncompressed tiled GeoTIFF and ingested
into a scratch store. The model is a small ann MLP trained in seconds on the original NAIP
tile's ``rgbn`` features (weak labels: mean NDWI > 0).

    .venv/bin/python benchmarks/detect.py                 # 16384 px, 2 workers
    .venv/bin/python benchmarks/detect.py --size 4096     # a quick look (64 MiB)

The last line printed is JSON: ``{"detect_vs_raw_read": r, "scoring_vs_matmul": r}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
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
    reps = (1, -(-size // tile.shape[1]), -(-size // tile.shape[2]))
    profile.update(width=size, height=size, compress=None, tiled=True, blockxsize=512, blockysize=512,
                   nodata=0, BIGTIFF="YES")
    with rasterio.open(dst, "w", **profile) as out:
        strip_rows = 1024
        for r0 in range(0, size, strip_rows):
            rows = min(strip_rows, size - r0)
            ys = (np.arange(r0, r0 + rows) % tile.shape[1])
            strip = np.tile(tile[:, ys, :], (1, 1, reps[2]))[:, :, :size]
            out.write(strip, window=Window(0, r0, size, rows))
    return 4 * size * size


def train_model(store, client):
    """A small ann model on the original NAIP tile's rgbn features (stride 128)."""
    from ann.io import Classifier, save_model
    from ann.network import MLP
    from ann.standardize import Standardizer
    from ann.train import InMemorySource, TrainConfig, fit
    from pipeline.features import compute_features, get_spec
    from pipeline.ingest import ingest

    sid = ingest(NAIP, "naip", "2009-08-18", store, bands=RGBN, client=client).survey.id
    spec = get_spec("rgbn")
    X, _, _ = compute_features(store, sid, spec, stride=64, size=128, client=client).as_table()
    y = (X[:, spec.names.index("ndwi_mean")] > 0).astype(np.int8)
    standardizer = Standardizer.fit(X)
    Xs = standardizer.transform(X)
    net = MLP(X.shape[1], hidden=(64, 32), seed=0)
    fit(net, InMemorySource(net, Xs, y, batch_size=64), Xs, y, TrainConfig(max_epochs=20, patience=20))
    return save_model(Classifier(net, standardizer, spec.to_dict(), 0.5, {"tile_size": 128}), store.models_dir)


def matmul_floor(classifier, X: np.ndarray, threads: int, repeats: int = 3) -> float:
    """Seconds of the forward matrix products alone over X (best of ``repeats``)."""
    from threadpoolctl import threadpool_limits

    weights = [np.ascontiguousarray(w) for w in classifier.network.params[0::2]]  # W1, W2, ..., W_out
    Xf = np.ascontiguousarray(X, dtype=weights[0].dtype)
    outs = []
    batch = 8192  # the classifier's own batch size: the same products, the same shapes
    best = np.inf
    with threadpool_limits(threads):
        for _ in range(repeats):
            t = time.perf_counter()
            for s in range(0, len(Xf), batch):
                h = Xf[s:s + batch]
                for w in weights:
                    h = h @ w
                outs.append(h[0, 0])
            best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=16384, help="survey edge in pixels (16384 = 1 GiB with 4 bands)")
    parser.add_argument("--stride", type=int, default=64, help="detection stride in pixels")
    parser.add_argument("--workers", type=int, default=2, help="local Dask workers (1 thread each)")
    parser.add_argument("--scratch", default=None, help="scratch directory (default: a temporary one, removed)")
    args = parser.parse_args()
    os.environ.setdefault("DAMWATCH_NO_PROGRESS", "1")


    from ann.io import load_model
    from pipeline.cluster import dask_client
    from pipeline.detect import detect_survey
    from pipeline.features import compute_features
    from pipeline.ingest import ingest
    from pipeline.results import write_detection_maps
    from pipeline.store import Store

    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="damwatch-bench-detect-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        tif = scratch / "mosaic.tif"
        nbytes = write_mosaic(NAIP, tif, args.size)
        print(f"survey: {args.size} x {args.size} px x 4 bands uint8 = {nbytes / 2**30:.2f} GiB "
              f"(mosaic written in {time.perf_counter() - t:.1f} s)")
        store = Store(scratch / "store")
        with dask_client(n_workers=args.workers, threads_per_worker=1) as client:
            t = time.perf_counter()
            survey = ingest(tif, "bench", "2009-08-18", store, bands=RGBN, client=client).survey
            tif.unlink()
            print(f"ingested in {time.perf_counter() - t:.1f} s; chunks {survey.chunk_edge} px")
            model_id = train_model(store, client)
            classifier = load_model(store.models_dir / f"{model_id}.json")
            spec = classifier.feature_spec

            # 1. raw read: every chunk read and summed, on the same workers
            t = time.perf_counter()
            client.compute(survey.image_dask().sum(dtype=np.uint64), sync=True)
            t_raw = time.perf_counter() - t

            # 2. detect end to end = features + scoring + maps (features timed apart, then reused)
            t = time.perf_counter()
            features = compute_features(store, survey.id, spec, stride=args.stride, size=128, client=client, overwrite=True)
            t_features = time.perf_counter() - t
            t = time.perf_counter()
            predictions = detect_survey(store, survey.id, classifier, stride=args.stride, client=client, reuse=False)
            t_scoring = time.perf_counter() - t
            t = time.perf_counter()
            write_detection_maps(store, predictions, scratch / "maps", client=client)
            t_maps = time.perf_counter() - t
            t_detect = t_features + t_scoring + t_maps
            n_scored = int(np.isfinite(predictions.probabilities).sum())

            # 3. the forward matrix products alone on the same batch of tiles
            values = np.asarray(features.values[...])
            keep = np.isfinite(predictions.probabilities)
            X = classifier.standardizer.transform(values[keep])
            t_matmul = matmul_floor(classifier, X, threads=args.workers)

        gib = nbytes / 2**30
        rows = [
            ("raw read of the Zarr survey", t_raw, f"{gib / t_raw:8.3f} GiB/s"),
            ("features (spec " + spec["name"] + f", stride {args.stride})", t_features, f"{gib / t_features:8.3f} GiB/s"),
            ("scoring (Dask, from stored features)", t_scoring, f"{n_scored / t_scoring:8.0f} tiles/s"),
            ("maps (COG, GeoJSON, quicklook, provenance)", t_maps, ""),
            ("detect end to end", t_detect, f"{gib / t_detect:8.3f} GiB/s"),
            (f"forward matmuls alone ({args.workers} BLAS threads)", t_matmul, f"{n_scored / t_matmul:8.0f} tiles/s"),
        ]
        print(f"\n{n_scored} tiles scored of {predictions.grid.n_rows} x {predictions.grid.n_cols}; "
              f"network {classifier.network.sizes}; {args.workers} workers x 1 thread")
        print(f"{'stage':48s} {'seconds':>9s}  throughput")
        for name, seconds, rate in rows:
            print(f"{name:48s} {seconds:9.2f}  {rate}")
        detect_vs_raw = t_raw / t_detect
        scoring_vs_matmul = (n_scored / t_scoring) / (n_scored / t_matmul)
        print(f"\ndetect throughput / raw read throughput = {detect_vs_raw:.3f}")
        print(f"scoring tiles/s / matmul tiles/s        = {scoring_vs_matmul:.3f}")
        print(json.dumps({"detect_vs_raw_read": round(detect_vs_raw, 4), "scoring_vs_matmul": round(scoring_vs_matmul, 4)}))
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
