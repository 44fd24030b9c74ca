"""Rendering: the Cloud-Optimized GeoTIFF writer. Reference: rio-cogeo's validator and rasterio."""

from __future__ import annotations

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from pipeline import maps, render
from pipeline.tiling import TileGrid

UTM14 = CRS.from_epsg(26914)


def _grid(height, width, size, stride, res=0.5, x0=500_000.0, y0=5_200_000.0):
    return TileGrid(height, width, size, stride, Affine(res, 0, x0, 0, -res, y0), UTM14)


def test_write_cog_is_valid_and_georeferenced(tmp_path):
    from rio_cogeo.cogeo import cog_validate

    transform = Affine(32.0, 0, 500_000, 0, -32.0, 5_200_000)
    values = np.random.default_rng(0).random((700, 600)).astype(np.float32)
    values[:50, :50] = np.nan
    path = render.write_cog(tmp_path / "p.tif", values, transform, UTM14, maps.PROBABILITY_NODATA)
    valid, errors, warnings = cog_validate(str(path), quiet=True)
    assert valid, errors
    assert not warnings
    with rasterio.open(path) as ds:
        assert ds.crs == UTM14 and ds.transform == transform
        assert ds.dtypes == ("float32",) and np.isnan(ds.nodata)
        assert ds.block_shapes == [(512, 512)]
        assert ds.overviews(1)
        np.testing.assert_array_equal(ds.read(1), values)
    assert not list(tmp_path.glob(".*"))  # the scratch GeoTIFF is gone
