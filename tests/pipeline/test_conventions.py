"""Outputs as GIS tools see them: gdalinfo, rio-cogeo, stac-validator, the rendered PNG.

References: GDAL's own ``gdalinfo -json`` for band descriptions, units, category names and the
raster attribute table; pyproj's geodesic on the WGS84 ellipsoid for ground sizes; the pixels of
the rendered quicklook.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from pipeline import render
from pipeline.change import CLASS_COLOURS, CLASS_NAMES, NODATA
from pipeline.maps import cells_beyond
from pipeline.units import describe_size, ground_size, metres_per_degree

UTM = CRS.from_epsg(32614)


def gdalinfo(path) -> dict:
    if shutil.which("gdalinfo") is None:
        pytest.skip("gdalinfo not installed (.ci/run installs Debian's gdal-bin)")
    done = subprocess.run(["gdalinfo", "-json", str(path)], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(done.stdout)


def test_probability_cog_says_what_its_band_is(tmp_path):
    from rio_cogeo.cogeo import cog_validate

    from pipeline.results import PROBABILITY_BAND

    values = np.random.default_rng(0).random((70, 90)).astype(np.float32)
    path = render.write_cog(tmp_path / "p.tif", values, Affine(16, 0, 500000, 0, -16, 5000000), UTM, float("nan"),
                            **PROBABILITY_BAND)
    band = gdalinfo(path)["bands"][0]
    assert band["description"] == "probability" and band["unit"] == "0-1"
    assert band["metadata"][""]["valid_min"] == "0" and band["metadata"][""]["valid_max"] == "1"
    assert cog_validate(str(path), quiet=True)[0]


def test_change_cog_names_its_classes_for_qgis_and_gdal(tmp_path):
    classes = np.random.default_rng(1).integers(0, 5, (60, 50)).astype(np.uint8)
    classes[:3] = NODATA
    path = render.write_cog(tmp_path / "change.tif", classes, Affine(32, 0, 500000, 0, -32, 5000000), UTM, NODATA,
                            colormap=CLASS_COLOURS, resampling="nearest", band_description="change class",
                            categories=CLASS_NAMES)
    info = gdalinfo(path)
    band = info["bands"][0]
    assert band["description"] == "change class"
    assert band["categories"] == ["none", "new", "gone", "persisting", "uncertain"]
    rat = info.get("rat") or band.get("rat")
    names = [f["name"] for f in rat["fieldDefn"]]
    rows = {row["f"][names.index("Value")]: row["f"] for row in rat["row"]}
    for code, name in CLASS_NAMES.items():  # class name, pixel count and colour per code
        assert rows[code][names.index("Class")] == name
        assert rows[code][names.index("Count")] == int((classes == code).sum())
        assert rows[code][names.index("Red")] == CLASS_COLOURS[code][0]
    # Writing the same file again without categories leaves no stale names behind.
    render.write_cog(path, classes, Affine(32, 0, 500000, 0, -32, 5000000), UTM, NODATA)
    assert "categories" not in gdalinfo(path)["bands"][0]


@pytest.mark.parametrize(
    "shape, transform, bounds, expected_outside",
    [
        # 9 x 9 px survey, cells of 4 px: centres at 2, 6, 10 -> the third row/column (centre 10) is out
        ((3, 3), Affine(4, 0, 0, 0, -4, 9), (0, 0, 9, 9), {(r, 2) for r in range(3)} | {(2, c) for c in range(3)}),
        # 12 x 12 px survey, cells of 4 px: every cell inside
        ((3, 3), Affine(4, 0, 0, 0, -4, 12), (0, 0, 12, 12), set()),
        # a cell more than half inside (centre 9 < 9.5) keeps its value
        ((3, 3), Affine(3, 0, 0, 0, -3, 9.5), (0, 0, 9.5, 9.5), set()),
    ],
)
def test_cells_whose_centre_lies_beyond_the_survey_are_flagged(shape, transform, bounds, expected_outside):
    outside = cells_beyond(transform, shape, bounds)
    assert {tuple(map(int, rc)) for rc in zip(*np.nonzero(outside))} == expected_outside


def test_ground_sizes_match_the_geodesic_on_wgs84():
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    for lat in (0.0, 30.0, 47.0, 70.0):
        per_lon, per_lat = metres_per_degree(lat)
        assert per_lon * 1e-4 == pytest.approx(geod.inv(0, lat, 1e-4, lat)[2], rel=1e-6)
        assert per_lat * 1e-4 == pytest.approx(geod.inv(0, lat - 5e-5, 0, lat + 5e-5)[2], rel=1e-6)
    text = describe_size(CRS.from_epsg(4326), 0.0129357, centre=(-99.2, 47.0))
    assert text.startswith("0.0129357 degrees (") and "km at the survey's centre" in text
    assert describe_size(UTM, 5, 5) == "5 metre"
    assert ground_size(CRS.from_epsg(2236), 1, 1) == pytest.approx((0.3048006, 0.3048006), rel=1e-6)  # US survey foot


def _longest_run(flags: np.ndarray) -> int:
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] -> CIELAB (D65)."""
    c = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = c @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def test_quicklook_of_a_geographic_survey_reads_as_a_map(tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.image import imread
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    wgs84 = CRS.from_epsg(4326)
    transform = Affine(1e-4, 0, -99.2, 0, -1e-4, 47.01)  # 0.0001 degree pixels near 47 N
    image = np.random.default_rng(2).random((100, 150, 3)).astype(np.float32) * 0.4 + 0.3
    ramp = np.tile(np.linspace(0, 1, 10), (6, 1)).astype(np.float32)  # probabilities across the map
    panels = [{"title": "probability", "image": image, "image_transform": transform, "grey": True,
               "overlay": ramp, "overlay_transform": transform * Affine.scale(15, 100 / 6), "vmin": 0.0, "vmax": 1.0,
               "alpha": 0.7, "colorbar": "probability"}]
    fig = render.quicklook_figure(panels, "a survey", crs=wgs84)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "longitude (°E)" and ax.get_ylabel() == "latitude (°N)"
    assert "CRS: WGS 84 (EPSG:4326)" in fig._suptitle.get_text()
    bars = [a for a in ax.artists if isinstance(a, AnchoredSizeBar)]
    assert len(bars) == 1
    label = bars[0].txt_label.get_text()  # e.g. "200 m": its length in degrees of longitude at 47 N
    metres = float(label.split()[0]) * (1000 if label.endswith("km") else 1)
    bar_degrees = bars[0].size_bar.get_children()[0].get_width()
    assert bar_degrees * metres_per_degree(47.005)[0] == pytest.approx(metres, rel=1e-3)
    assert any(t.get_text() == "N" for t in ax.texts)
    plt.close(fig)

    png = render.render_quicklook(tmp_path / "q.png", panels, "a survey", crs=wgs84)
    pixels = imread(png)[..., :3]
    white = np.all(pixels > 0.99, axis=-1)
    # No large blank margins: no band of blank rows or columns wider than 5 % of the picture
    # (between lines of text there are a few).
    for blank, n in ((white.all(axis=1), white.shape[0]), (white.all(axis=0), white.shape[1])):
        assert _longest_run(blank) < 0.05 * n, (_longest_run(blank), n)
    # Mid-range probabilities are distinct colours: 0.3, 0.5, 0.7 at least 15 CIELAB units apart.
    cmap = plt.get_cmap(render.PROBABILITY_CMAP)
    grey = np.array([0.6, 0.6, 0.6])
    seen = [_lab(0.7 * np.array(cmap(p)[:3]) + 0.3 * grey) for p in (0.3, 0.5, 0.7)]
    assert min(np.linalg.norm(a - b) for a, b in ((seen[0], seen[1]), (seen[1], seen[2]))) > 15
