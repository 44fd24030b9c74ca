"""Run damwatch end to end on built-in data (interim: ingest only, until the demo flow lands).

Writes a small georeferenced raster of its own, ingests it into ./damwatch-data and prints the
survey's summary. Needs nothing outside the repository.
"""

from __future__ import annotations

import argparse

from flows.commands._common import add_store_argument, open_store

NAME = "demo"
HELP = "run the whole pipeline on built-in synthetic data (start here)"
ORDER = 1


def configure(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)


def run(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from pipeline.store import ingest

    store = open_store(args)
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo.tif"
        pixels = rng.integers(1, 255, size=(3, 512, 512), dtype=np.uint8)
        with rasterio.open(path, "w", driver="GTiff", width=512, height=512, count=3, dtype="uint8",
                           crs="EPSG:32614", transform=from_origin(500000, 5200000, 1, 1),
                           tiled=True, blockxsize=256, blockysize=256, compress="deflate") as ds:
            ds.write(pixels)
        result = ingest(path, "demo", "2024-06-01", store, overwrite=True)
    for key, value in result.survey.summary().items():
        print(f"{key:>10}: {value}")
    return 0
