"""The balanced layout: an evaluation area with as many dams in each context, and many look-alikes.

References: counts made here from the truth GeoJSON alone (a dam stands on the dates its
``dates`` lists; a look-alike on every date), the layout's stated densities worked out by hand
for the test area, and distances measured here after reprojecting the truth to UTM.
"""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
from rasterio.warp import transform

from pipeline.synthetic import generate_area

DATES = ["2023-06-01", "2024-06-01"]
CONTEXTS = ("main_stream", "side_channel", "lake_outlet")
KINDS = ("road_crossing", "culvert", "fallen_tree", "narrows", "pond_without_dam")
# 1536 px at 2 m: a 3.07 km square, 9.44 km^2. Balanced places round(9.44 x 1.55) = 15 dams in
# each context, with the status mix of every context (of 15: 7 persisting, 4 new, 4 gone), so
# 11 stand on each date; 10 leaves room for a context that falls one short of its target.
# Look-alikes on channels: round(9.44 x 2.4) = 23 in turn over three kinds, so at least 7 each;
# culverts: one per farm track, round(9.44 x 0.9) = 8. Road crossings depend on where roads meet
# channels (three roads here): at least 5.
SIZE, SEED, PIXEL = 1536, 2, 2.0
MIN_DAMS_PER_CONTEXT = 10
MIN_LOOK_ALIKES = {"road_crossing": 5, "culvert": 7, "fallen_tree": 7, "narrows": 7, "pond_without_dam": 7}


@pytest.fixture(scope="module")
def balanced(tmp_path_factory):
    out = tmp_path_factory.mktemp("balanced") / "b"
    return generate_area(out, "heldout", DATES, SIZE, SEED, pixel_size=PIXEL, workers=2, progress=False, layout="balanced")


@pytest.fixture(scope="module")
def truth(balanced):
    return json.loads(balanced.truth.read_text())["features"]


def _count(features):
    """Standing dams per (date, context) and look-alikes per (date, kind), from the truth alone."""
    dams, look_alikes = collections.Counter(), collections.Counter()
    for f in features:
        p = f["properties"]
        for date in p["dates"]:
            if p["class"] == "dam":
                dams[date, p["context"]] += 1
            else:
                look_alikes[date, p["kind"]] += 1
    return dams, look_alikes


def test_every_context_and_look_alike_kind_stands_often_enough_on_each_date(truth):
    dams, look_alikes = _count(truth)
    for date in DATES:
        for context in CONTEXTS:
            assert dams[date, context] >= MIN_DAMS_PER_CONTEXT, (date, context, dams)
        for kind in KINDS:
            assert look_alikes[date, kind] >= MIN_LOOK_ALIKES[kind], (date, kind, look_alikes)
    # About equally represented: the contexts differ by at most two on any date.
    for date in DATES:
        per_context = [dams[date, c] for c in CONTEXTS]
        assert max(per_context) - min(per_context) <= 2, (date, per_context)


def test_the_manifest_counts_what_the_truth_holds(balanced, truth):
    manifest = json.loads(balanced.manifest.read_text())
    assert manifest["layout"] == "balanced"
    dams, look_alikes = _count(truth)
    by_date = manifest["counts"]["standing_by_date"]
    assert by_date == {
        date: {
            "dams": {c: dams[date, c] for c in CONTEXTS},
            "hard_negatives": {k: look_alikes[date, k] for k in KINDS},
        }
        for date in DATES
    }


def _utm(features, epsg=32618):
    lon, lat = np.array([f["geometry"]["coordinates"] for f in features]).T
    return np.stack(transform("EPSG:4326", f"EPSG:{epsg}", lon, lat), axis=1)  # (n, 2) m


def test_objects_keep_minimum_distances_only(truth):
    dams = _utm([f for f in truth if f["properties"]["class"] == "dam"])
    look_alikes = _utm([f for f in truth if f["properties"]["class"] == "hard_negative"])
    between_dams = np.hypot(*(dams[:, None] - dams[None]).transpose(2, 0, 1))
    np.fill_diagonal(between_dams, np.inf)
    nearest_dam = between_dams.min(axis=1)
    assert nearest_dam.min() >= 99.9  # separate objects at 2 m in 128 m windows
    assert np.percentile(nearest_dam, 90) > 1.5 * np.percentile(nearest_dam, 10)  # no fixed spacing
    to_dam = np.hypot(*(look_alikes[:, None] - dams[None]).transpose(2, 0, 1)).min(axis=1)
    assert to_dam.min() >= 49.9
    assert (to_dam < 64).any() and (to_dam > 200).any()  # some share a window with a dam, some are far


def test_an_unknown_layout_is_refused_before_anything_is_written(tmp_path):
    from pipeline.errors import InputError

    with pytest.raises(InputError, match="'grid'.*natural, balanced"):
        generate_area(tmp_path / "x", layout="grid", size=512, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def _water(pixels: np.ndarray) -> np.ndarray:
    """Open water from the pixels alone: NDWI > 0 and a dark near-infrared (as in test_synthetic)."""
    green, nir = pixels[1].astype(np.int32), pixels[3].astype(np.int32)
    return (green > nir) & (nir < 45)


def test_at_2_m_each_standing_dam_shows_its_barrier_and_its_pond(balanced, truth):
    import rasterio
    from rasterio.features import rasterize

    shapes = json.loads(balanced.shapes.read_text())["features"]
    ponds = {f["properties"]["id"]: f for f in shapes if f["properties"]["part"] == "pond"}
    with rasterio.open(balanced.surveys[DATES[0]]) as ds:  # date 0: not misregistered
        pixels, grid = ds.read(), ds.transform
    water = _water(pixels)
    standing = [f for f in truth if f["properties"]["class"] == "dam" and DATES[0] in f["properties"]["dates"]]
    for f, (east, north) in zip(standing, _utm(standing)):
        row, col = rasterio.transform.rowcol(grid, east, north)
        # The barrier, 1-2 px wide at 2 m: the truth point's pixel is not water.
        assert not water[row, col], (f["id"], pixels[:, row, col])
        ring = _utm([{"geometry": {"coordinates": c}} for c in ponds[f["id"]]["geometry"]["coordinates"][0]])
        inside = rasterize([({"type": "Polygon", "coordinates": [ring.tolist()]}, 1)], out_shape=water.shape, transform=grid)
        inside = inside.astype(bool)
        # The pond: tens of pixels, most of them water.
        assert inside.sum() >= 25 and water[inside].mean() > 0.6, (f["id"], int(inside.sum()), water[inside].mean())
