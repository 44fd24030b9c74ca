"""Tiling + features throughput over a survey of at least 1 GiB, against a plain read of the same Zarr array.

1. Survey: a 4-band uint8 GeoTIFF of at least 1 GiB (16384 x 16384 by default) mosaicked from
   the real NAIP 2009 survey (mirrored copies, so texture and compressibility are real
   imagery's), ingested into a store (chunks 4 x 1024 x 1024, zstd). Both cached in
   benchmarks/out/ between runs.
2. Raw read (the baseline): every chunk of the survey's image array read and summed
   (`survey.image_dask().sum()`), on the same LocalCluster.
3. Features: `compute_features(spec="rgbn", stride=128)`: tiling, reading the image and valid
   mask, all features, and writing them to the store, on the same cluster.
   Throughput = image bytes / wall time; ratio = features / raw read (target >= 0.7).
4. The same with 1 and with 2 single-threaded worker processes: speed-up = time(1) / time(2).
5. The arithmetic alone, in this process on one chunk, in CPU time: read + decompress + sum vs
   `block_features`, which bounds the ratio achievable whatever the parallel layer does.

The machine is shared, so each measurement is repeated (--rounds, alternating raw and features)
and the best wall time is kept; the workers' CPU seconds are printed beside it, so a reader can
tell waiting for a shared CPU from work. The last line printed is JSON.

Run: .venv/bin/python benchmarks/features.py [--gib 1.0] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"
NAIP = Path(os.environ.get("DAMWATCH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "naip"


def make_geotiff(path: Path, gib: float) -> Path:
    """A NAIP mosaic of at least ``gib`` GiB (4 bands uint8), written once and cached."""
    import rasterio
    from rasterio.windows import Window

    edge = int(np.ceil(np.sqrt(gib * 2**30 / 4) / 1024) * 1024)
    if path.exists():
        with rasterio.open(path) as ds:
            if ds.width == edge:
                return path
    source = sorted(NAIP.glob("*2009*.tif"))[0]
    with rasterio.open(source) as src:
        naip = src.read()  # (4, 724, 934)
        crs, t = src.crs, src.transform
    # a mirrored 2 x 2 unit tiles seamlessly; repeat it across the mosaic
    unit = np.concatenate([naip, naip[:, :, ::-1]], axis=2)
    unit = np.concatenate([unit, unit[:, ::-1, :]], axis=1)
    unit[unit == 0] = 1  # no nodata inside the mosaic
    print(f"writing a {edge} x {edge} x 4 uint8 NAIP mosaic ({edge * edge * 4 / 2**30:.2f} GiB) ...", flush=True)
    profile = dict(driver="GTiff", width=edge, height=edge, count=4, dtype="uint8", crs=crs,
                   transform=t, tiled=True, blockxsize=512, blockysize=512, nodata=0)
    tmp = path.with_suffix(".partial.tif")
    cols = np.arange(edge) % unit.shape[2]
    with rasterio.open(tmp, "w", **profile) as ds:
        for r0 in range(0, edge, 512):
            rows = np.arange(r0, r0 + 512) % unit.shape[1]
            ds.write(unit[:, rows][:, :, cols], window=Window(0, r0, edge, 512))
    tmp.rename(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="survey size in GiB (default 1.0)")
    parser.add_argument("--rounds", type=int, default=2, help="repetitions; best kept (default 2)")
    args = parser.parse_args()
    os.environ.setdefault("DAMWATCH_NO_PROGRESS", "1")

    from pipeline.cluster import dask_client
    from pipeline.features import block_features, compute_features, get_spec, spec_band_indices
    from pipeline.ingest import ingest
    from pipeline.store import Store
    from pipeline.tiling import TileGrid

    OUT.mkdir(parents=True, exist_ok=True)
    tif = make_geotiff(OUT / f"features-{args.gib:g}gib.tif", args.gib)
    store = Store(OUT / "features-store")
    with dask_client(n_workers=2) as client:
        t0 = time.perf_counter()
        result = ingest(tif, "bench", "2009-08-18", store, bands=("red", "green", "blue", "nir"), client=client)
        print(f"survey {result.survey.id}: {result.status} in {time.perf_counter() - t0:.1f} s")
    survey = result.survey
    image = survey.image()
    nbytes = survey.height * survey.width * len(survey.bands) * survey.dtype.itemsize
    n_chunks = int(np.prod([int(np.ceil(s / c)) for s, c in zip(image.shape, image.chunks)]))
    spec = get_spec("rgbn")
    grid = TileGrid.for_survey(survey, 128, 128)
    print(f"{survey.height} x {survey.width} px x {len(survey.bands)} bands = {nbytes / 2**30:.2f} GiB, "
          f"{n_chunks} chunks of {image.chunks}, {grid.n_rows * grid.n_cols} tiles, spec {spec.id}")

    # -- the arithmetic alone, one chunk, this process (CPU time: immune to other processes) ---------
    edge = survey.chunk_edge
    chunk = image[:, :edge, :edge]
    sub = TileGrid(edge, edge, 128, 128)
    indices = spec_band_indices(spec, survey.bands)
    t_read = best_cpu(5, lambda: image[:, :edge, :edge].sum())
    t_feat = best_cpu(5, lambda: block_features(chunk, None, sub.row_offsets, sub.col_offsets, 128, spec, indices, 1 / 255))
    ceiling = t_read / (t_read + t_feat)

    # -- the parallel passes ----------------------------------------------------------------------
    def raw_pass(client) -> None:
        client.compute(survey.image_dask().sum(dtype="uint64")).result()

    def features_pass(client, stride: int = 128) -> None:
        compute_features(store, survey.id, spec, stride=stride, client=client, overwrite=True)

    rows = []
    best: dict[tuple[int, str], tuple[float, float]] = {}
    for workers in (1, 2):
        with dask_client(n_workers=workers, memory_limit="4GiB") as client:
            client.compute(survey.image_dask()[:, :256, :256].sum()).result()  # warm up the workers
            for _ in range(args.rounds):  # alternate, keep each side's best (least disturbed) run
                for name, fn in (("raw", raw_pass), ("features", features_pass)):
                    wall, cpu = timed(client, fn)
                    if (workers, name) not in best or wall < best[(workers, name)][0]:
                        best[(workers, name)] = (wall, cpu)
            if workers == 2:
                best[(2, "features64")] = timed(client, lambda c: features_pass(c, 64))
        label = f"{workers} worker{'s' if workers > 1 else ''}"
        rows.append((f"{label}: raw read + sum", *best[(workers, "raw")]))
        rows.append((f"{label}: tiles + features (stride 128)", *best[(workers, "features")]))
    rows.append(("2 workers: tiles + features (stride 64, 4x the tiles)", *best[(2, "features64")]))

    print()
    print(f"{'pass':<55} {'wall s':>7} {'MB/s':>7} {'worker CPU s':>13}")
    for name, wall, cpu in rows:
        print(f"{name:<55} {wall:7.2f} {nbytes / wall / 1e6:7.1f} {cpu:13.2f}")
    ratio = best[(2, "raw")][0] / best[(2, "features")][0]
    ratio_1 = best[(1, "raw")][0] / best[(1, "features")][0]
    speedup = best[(1, "features")][0] / best[(2, "features")][0]
    print()
    print(f"features / raw read throughput, 2 workers: {ratio:.2f}  (target >= 0.7); 1 worker: {ratio_1:.2f}")
    print(f"speed-up of 2 workers over 1: features {speedup:.2f}, raw read "
          f"{best[(1, 'raw')][0] / best[(2, 'raw')][0]:.2f}")
    print(f"features CPU / wall with 2 workers: {best[(2, 'features')][1] / best[(2, 'features')][0]:.2f} cores busy "
          f"(2.0 = both workers computing all the time; less = waiting for a CPU the machine shares)")
    print()
    print(f"the arithmetic alone (CPU time, one {edge} x {edge} chunk, this process): read + decompress + sum "
          f"{t_read * 1e3:.1f} ms, features {t_feat * 1e3:.1f} ms ({t_feat / t_read:.1f} x the read)")
    print(f"  => two passes with no overhead at all would stand at {ceiling:.2f} (read + features vs read): the "
          f"feature arithmetic, not Dask, keeps the ratio far below 0.7 (measured ratios can exceed this figure "
          f"because the raw pass pays Dask's per-task overhead too)")
    print(json.dumps({"features_vs_raw_read": round(ratio, 3), "speedup_2_vs_1_workers": round(speedup, 3)}))


def best_cpu(rounds: int, fn) -> float:
    """Least CPU time (user + system, this process) of ``rounds`` calls."""
    times = []
    for _ in range(rounds):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def timed(client, fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds summed over the workers) of ``fn(client)``."""
    import resource

    def cpu() -> float:
        usage = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF))
        return sum(u[0] + u[1] for u in usage.values())

    c0, t0 = cpu(), time.perf_counter()
    fn(client)
    wall = time.perf_counter() - t0
    return wall, cpu() - c0


if __name__ == "__main__":
    main()
