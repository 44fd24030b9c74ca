"""Fixtures for the flow tests.

The Prefect test harness (``prefect``) and the test session's own PREFECT_HOME live in
tests/conftest.py, shared with the command-line tests that run flows. ``write_survey`` writes a
small georeferenced GeoTIFF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


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
