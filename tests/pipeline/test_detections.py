"""Detections: confidence classes and footprints, against hand-worked cases.

(Peaks are tested in tests/pipeline/test_evaluate.py beside the matching they feed.)
"""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from pipeline import detections

UTM14 = CRS.from_epsg(26914)


@pytest.mark.parametrize("peak, expected", [(0.95, "high"), (0.9, "high"), (0.89, "medium"), (0.7, "medium"), (0.5, "low")])
def test_confidence_class(peak, expected):
    assert detections.confidence_class(peak) == expected


def test_footprints_split_cells_above_threshold_between_the_nearest_detections():
    # 10 m cells. Two detections in one blob of cells >= 0.5: columns 1-5 of row 1 and row 2.
    transform = Affine(10.0, 0, 1000.0, 0, -10.0, 2000.0)
    values = np.zeros((4, 8))
    values[1:3, 1:6] = 0.6
    values[0, 7] = 0.9  # above the threshold but 20+ m from both detections' reach below
    a, b = transform * (1.5, 1.5), transform * (5.5, 1.5)  # centres of cells (1, 1) and (1, 5)
    points = detections.Points(np.array([a[0], b[0]]), np.array([a[1], b[1]]), np.array([0.6, 0.6]))
    shapes = detections.footprints(values, transform, points, threshold=0.5, radius=25.0)
    # Worked by hand: cell (r, c) belongs to the nearer detection within 25 m; columns 1-2 are
    # nearer a, 4-5 nearer b, column 3 is 20 m from both (a tie: the first, a, keeps it);
    # rows 1-2 are within 25 m (row 2 is 10 m below). Cell (0, 7) lies sqrt(20² + 10²) = 22.4 m
    # from b, in range: it joins b's footprint as a second, separate part.
    assert shapes[0] == {"type": "Polygon", "coordinates": [[(1010.0, 1990.0), (1010.0, 1970.0), (1040.0, 1970.0),
                                                            (1040.0, 1990.0), (1010.0, 1990.0)]]}
    assert shapes[1]["type"] == "MultiPolygon"
    rings = sorted(p[0] for p in shapes[1]["coordinates"])
    assert rings == [[(1040.0, 1990.0), (1040.0, 1970.0), (1060.0, 1970.0), (1060.0, 1990.0), (1040.0, 1990.0)],
                     [(1070.0, 2000.0), (1070.0, 1990.0), (1080.0, 1990.0), (1080.0, 2000.0), (1070.0, 2000.0)]]
    # A detection with no cell above the threshold within reach has no footprint.
    far = detections.Points(np.array([1005.0]), np.array([1965.0]), np.array([0.5]))
    assert detections.footprints(np.where(values > 0.55, 0.0, values), transform, far, 0.5, 5.0) == [None]
