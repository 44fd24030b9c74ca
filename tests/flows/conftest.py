"""Fixtures for the flow tests.

Prefect gets its own home in a temporary directory (set before Prefect is first imported, so a
user's profiles and database are never touched), and one test harness — a temporary SQLite
database behind a local API server, which takes several seconds to start — serves the whole
session: the ``prefect`` fixture. ``write_survey`` writes a small georeferenced GeoTIFF.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="damwatch-test-prefect-")
atexit.register(functools.partial(shutil.rmtree, _PREFECT_HOME, ignore_errors=True))
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("DAMWATCH_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def prefect():
    """Prefect's test harness, started once per session; yields the harness API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield PREFECT_API_URL.value()


def make_geotiff(path: Path, height: int = 300, width: int = 400, seed: int = 0, bands: int = 3) -> np.ndarray:
    """Write a tiled uint8 GeoTIFF (UTM 14N, 1 m pixels) of random pixels; return the pixels."""
    import rasterio
    from rasterio.transform import from_origin

    pixels = np.random.default_rng(seed).integers(0, 256, size=(bands, height, width), dtype=np.uint8)
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=bands, dtype="uint8",
        crs="EPSG:32614", transform=from_origin(500000, 5000000, 1.0, 1.0),
        tiled=True, blockxsize=256, blockysize=256,
    ) as dst:
        dst.write(pixels)
        if bands >= 3:
            from rasterio.enums import ColorInterp

            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue] + [ColorInterp.undefined] * (bands - 3)
    return pixels


@pytest.fixture
def write_survey():
    return make_geotiff
