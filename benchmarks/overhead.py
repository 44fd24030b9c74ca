"""What a command costs before and beyond its own work (issue #14's targets).

Three figures, each the median of 5 runs of the real command in a fresh process, as a user
types it (wall time, including Python's start-up):

  refusal_s         `damwatch ingest` of a different file under an existing survey id: refused
                    before Prefect or Dask start (target <= 0.5 s)
  surveys_s         `damwatch surveys` on a store of one survey (target <= 1 s)
  stage_overhead_s  `damwatch features SURVEY --overwrite` on an already-ingested 1000 x 1000 x 4
                    survey with a `damwatch server` running, minus the same work done by a plain
                    Python process through the pipeline API (its imports included): what
                    Prefect, the flow and the run record add (target <= 1.5 s)

For reference it also times the pieces of that overhead: importing Prefect, and starting plus
closing a two-worker LocalCluster (which small work no longer pays). The figures are absolute
times, so the machine's load average is printed beside them. Prints a table, then one JSON line
with exactly the three names above.

  python benchmarks/overhead.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = 5


def _timed(args: list[str], env: dict, cwd: Path, expect: int = 0) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    seconds = time.perf_counter() - t0
    if done.returncode != expect:
        raise SystemExit(f"{' '.join(args)} exited {done.returncode}, expected {expect}:\n{done.stderr[-2000:]}")
    return seconds


def _median(args, env, cwd, expect=0, runs=RUNS) -> tuple[float, list[float]]:
    times = [_timed(args, env, cwd, expect) for _ in range(runs)]
    return statistics.median(times), times


def _geotiff(path: Path, n: int, seed: int) -> None:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    pixels = np.random.default_rng(seed).integers(0, 256, size=(4, n, n), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=4, dtype="uint8", crs="EPSG:32614",
                       transform=from_origin(500000, 5000000, 1.0, 1.0), tiled=True, blockxsize=256,
                       blockysize=256) as dst:
        dst.write(pixels)


WORK = """
from pipeline.store import Store
from pipeline.features import compute_features
compute_features(Store({store!r}), {survey!r}, "default", stride=128, size=128, overwrite=True)
"""


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="damwatch-overhead-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PYTHONPATH=str(REPO), DAMWATCH_HOME=str(work / "home"), DAMWATCH_NO_PROGRESS="1",
               PREFECT_HOME=str(work / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("DAMWATCH_CLUSTER", None)
    cli = [sys.executable, "-m", "flows.cli"]
    store = work / "store"
    _geotiff(work / "a.tif", 1000, 0)
    _geotiff(work / "b.tif", 1000, 1)
    load_before = os.getloadavg()

    server = subprocess.run([*cli, "server", "start"], capture_output=True, text=True, env=env, cwd=work, timeout=300)
    if server.returncode:
        raise SystemExit(f"damwatch server start failed:\n{server.stderr}")
    try:
        _timed([*cli, "ingest", "a.tif", "--area", "bench", "--date", "2024-06-01", "--store", str(store)], env, work)
        survey = "bench-2024-06-01"
        refusal, refusal_all = _median(
            [*cli, "ingest", "b.tif", "--area", "bench", "--date", "2024-06-01", "--store", str(store)], env, work, expect=2)
        surveys, surveys_all = _median([*cli, "surveys", "--store", str(store)], env, work)
        _timed([*cli, "features", survey, "--store", str(store)], env, work)  # warm: the first run creates rows
        command, command_all = _median([*cli, "features", survey, "--store", str(store), "--overwrite"], env, work)
        own, own_all = _median([sys.executable, "-c", WORK.format(store=str(store), survey=survey)], env, work)
        prefect_import, _ = _median([sys.executable, "-c", "import prefect.main"], env, work, runs=3)
        bare, _ = _median([sys.executable, "-c", "pass"], env, work, runs=3)
        cluster, _ = _median([sys.executable, "-c", (
            "if __name__ == '__main__':\n"
            "    from pipeline.cluster import dask_client\n"
            "    with dask_client(n_workers=2) as c: c.submit(int, 1).result()\n")], env, work, runs=3)
    finally:
        subprocess.run([*cli, "server", "stop"], capture_output=True, text=True, env=env, cwd=work, timeout=120)
    load_after = os.getloadavg()

    overhead = command - own
    rows = [
        ("refusal (ingest, survey exists)", refusal, 0.5, refusal_all),
        ("damwatch surveys", surveys, 1.0, surveys_all),
        ("features command, damwatch server", command, None, command_all),
        ("  the same work, plain Python", own, None, own_all),
        ("  stage overhead (difference)", overhead, 1.5, None),
        ("for reference: python -c pass", bare - 0, None, None),
        ("for reference: import prefect.main", prefect_import - bare, None, None),
        ("for reference: LocalCluster(2) start+close", cluster - bare, None, None),
    ]
    print(f"{'measure':46} {'median s':>9} {'target':>7}  runs")
    for name, value, target, runs in rows:
        mark = "" if target is None else (" ok" if value <= target else " MISSED")
        target_text = "" if target is None else f"<= {target:g}"
        runs_text = " ".join(f"{t:.2f}" for t in runs) if runs else ""
        print(f"{name:46} {value:9.3f} {target_text:>7}{mark}  {runs_text}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in load_before)}; after: "
          f"{' '.join(f'{v:.2f}' for v in load_after)} ({os.cpu_count()} cores)")
    print(json.dumps({"refusal_s": round(refusal, 3), "surveys_s": round(surveys, 3),
                      "stage_overhead_s": round(overhead, 3)}))


if __name__ == "__main__":
    main()
