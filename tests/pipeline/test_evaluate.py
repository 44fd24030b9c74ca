"""Evaluation against ground truth. Reference: scikit-learn's metrics on the same arrays."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from pipeline import evaluate
from pipeline.tiling import TileGrid

UTM14 = CRS.from_epsg(26914)


def _grid(height, width, size, stride, res=0.5, x0=500_000.0, y0=5_200_000.0):
    return TileGrid(height, width, size, stride, Affine(res, 0, x0, 0, -res, y0), UTM14)


def _truth(points_lonlat, contexts):
    return {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": list(pt)}, "properties": {"context": ctx, "status": "persisting"}}
            for pt, ctx in zip(points_lonlat, contexts)
        ]
        + [{"type": "Feature", "geometry": {"type": "Point", "coordinates": list(points_lonlat[0])}, "properties": {"kind": "culvert"}}],
    }


def test_detection_metrics_against_sklearn():
    from sklearn.metrics import (
        average_precision_score,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    grid = _grid(512, 512, 128, 128)  # 4 x 4 tiles, no overlap
    rng = np.random.default_rng(3)
    p = rng.random(grid.shape)
    p[3, 3] = np.nan
    xs, ys = grid.tile_centers()
    where = [(0, 0), (1, 2), (2, 1), (3, 0)]
    contexts = ["main_stream", "main_stream", "lake_outlet", "side_channel"]
    lon, lat = warp_transform(UTM14, "EPSG:4326", [xs[w] for w in where], [ys[w] for w in where])
    report = evaluate.detection_metrics(p, grid, _truth(list(zip(lon, lat)), contexts), threshold=0.5)
    y = np.zeros(grid.shape, bool)
    for w in where:
        y[w] = True
    scored = np.isfinite(p)
    yt, ps = y[scored], p[scored]
    overall = report["overall"]
    assert overall["n_positive"] == 4 and overall["n_tiles"] == 15
    assert overall["precision"] == pytest.approx(precision_score(yt, ps >= 0.5, zero_division=0))
    assert overall["recall"] == pytest.approx(recall_score(yt, ps >= 0.5))
    assert overall["f1"] == pytest.approx(f1_score(yt, ps >= 0.5))
    assert overall["roc_auc"] == pytest.approx(roc_auc_score(yt, ps))
    assert overall["average_precision"] == pytest.approx(average_precision_score(yt, ps))
    # per context: its tiles against the tiles holding no object at all
    ms = np.zeros(grid.shape, bool)
    ms[0, 0] = ms[1, 2] = True
    keep = scored & (ms | ~y)
    assert report["by_context"]["main_stream"]["roc_auc"] == pytest.approx(roc_auc_score(ms[keep], p[keep]))
    assert set(report["by_context"]) == {"main_stream", "lake_outlet", "side_channel"}
