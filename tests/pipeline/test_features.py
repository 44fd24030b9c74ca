"""Per-tile features: hand-worked tiles, the Dask layer against NumPy on the whole array, real NAIP."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import InputError, StoreError
from pipeline.features import (
    D4_TRANSFORMS,
    FeatureSpec,
    block_features,
    compute_features,
    features_dask,
    get_spec,
    open_features,
    pixel_scale,
    spec_band_indices,
    tile_features,
)
from pipeline.tiling import TileGrid

# A small spec (4 × 4 thumbnail) so hand-worked tiles stay 8 × 8 pixels.
RGB4 = FeatureSpec("test-rgb", 1, ("red", "green", "blue"), thumbnail=4)
RGBN4 = FeatureSpec("test-rgbn", 1, ("red", "green", "blue", "nir"), thumbnail=4)


def feature(spec: FeatureSpec, values: np.ndarray, name: str):
    return values[..., spec.names.index(name)]


def one_tile(bands: list[np.ndarray]) -> np.ndarray:
    return np.stack(bands)[None].astype(np.float32)  # (1, B, S, S)


def test_spec_names_and_registry():
    spec = get_spec("default")
    assert spec.id == "default-v1" and get_spec("default-v1") is spec
    assert spec.n_features == 32 * 32 + 2 * 3 + 3 + 8
    assert spec.names[:2] == ("gray_00_00", "gray_00_01") and spec.names[-1] == "edge_orient_158"
    rgbn = get_spec("rgbn")
    assert {"mean_nir", "ndvi_mean", "ndwi_std"} <= set(rgbn.names)
    assert FeatureSpec.from_dict(rgbn.to_dict()) == rgbn
    with pytest.raises(InputError, match="unknown feature spec 'nope'.*default"):
        get_spec("nope")
    changed = rgbn.to_dict() | {"names": rgbn.to_dict()["names"][:-1]}
    with pytest.raises(InputError, match="another version"):
        FeatureSpec.from_dict(changed)


def test_bands_are_chosen_by_name():
    assert spec_band_indices(get_spec("rgbn"), ("nir", "blue", "green", "red")) == [3, 2, 1, 0]
    with pytest.raises(InputError, match=r"survey creek-2024-06-01 has bands \['red', 'green', 'blue'\].*missing: nir"):
        spec_band_indices(get_spec("rgbn"), ("red", "green", "blue"), "survey creek-2024-06-01")


def test_pixel_scale():
    assert pixel_scale("uint8") == 1 / 255 and pixel_scale("uint16") == 1 / 65535 and pixel_scale("float32") == 1.0


def test_constant_tile():
    tile = np.full((1, 3, 8, 8), 51, dtype=np.uint8)  # 51/255 = 0.2 in every band
    f = tile_features(tile, None, RGB4, pixel_scale("uint8"))[0]
    np.testing.assert_allclose(f[:16], 0.2, rtol=1e-6)  # thumbnail: luma weights sum to 1
    for band in RGB4.bands:
        assert feature(RGB4, f, f"mean_{band}") == pytest.approx(0.2, rel=1e-6)
        assert feature(RGB4, f, f"std_{band}") == pytest.approx(0.0, abs=1e-7)
    for name in ["gray_std", "texture_cell_std", "edge_strength", *[n for n in RGB4.names if n.startswith("edge_orient")]]:
        assert feature(RGB4, f, name) == pytest.approx(0.0, abs=1e-7), name


def test_vertical_step_edge():
    g = np.zeros((8, 8), np.float32)
    g[:, 4:] = 1.0  # dark left half, bright right half: one vertical edge
    f = tile_features(one_tile([g, g, g]), None, RGB4)[0]
    thumb = f[:16].reshape(4, 4)
    np.testing.assert_allclose(thumb, [[0, 0, 1, 1]] * 4, atol=1e-6)
    assert feature(RGB4, f, "mean_red") == pytest.approx(0.5)
    assert feature(RGB4, f, "std_green") == pytest.approx(0.5)
    assert feature(RGB4, f, "gray_std") == pytest.approx(0.5)
    assert feature(RGB4, f, "texture_cell_std") == pytest.approx(0.0, abs=1e-7)  # each 2×2 cell is flat
    # forward differences over the 7 × 7 interior: 7 pixels with |gx| = 1
    assert feature(RGB4, f, "edge_strength") == pytest.approx(7 / 49)
    assert feature(RGB4, f, "edge_orient_000") == pytest.approx(1.0)  # gradient along x


@pytest.mark.parametrize("top, bottom", [(0.0, 1.0), (1.0, 0.0)])  # both polarities: same edge
def test_horizontal_step_edge_either_polarity(top, bottom):
    g = np.full((8, 8), bottom, np.float32)
    g[:4] = top
    f = tile_features(one_tile([g, g, g]), None, RGB4)[0]
    assert feature(RGB4, f, "edge_orient_090") == pytest.approx(1.0)
    assert feature(RGB4, f, "edge_strength") == pytest.approx(7 / 49)


def test_checkerboard_texture_and_diagonal_gradients():
    y, x = np.mgrid[:8, :8]
    g = ((x + y) % 2).astype(np.float32)  # 1-pixel checkerboard
    f = tile_features(one_tile([g, g, g]), None, RGB4)[0]
    np.testing.assert_allclose(f[:16], 0.5, atol=1e-6)  # every 2 × 2 cell averages to 0.5
    assert feature(RGB4, f, "texture_cell_std") == pytest.approx(0.5)  # values 0,1,0,1 in each cell
    assert feature(RGB4, f, "gray_std") == pytest.approx(0.5)
    # gx = gy = ±1 everywhere: magnitude √2 at 45° (or −135°, the same edge)
    assert feature(RGB4, f, "edge_strength") == pytest.approx(np.sqrt(2))
    assert feature(RGB4, f, "edge_orient_045") == pytest.approx(1.0)


def _smooth_tiles(n: int, bands: int, s: int, seed: int) -> np.ndarray:
    """(n, bands, s, s) float32 in [0, 1]: blurred noise plus a bright disc, like a pond in a field."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, bands, s + 4, s + 4), dtype=np.float32)
    for axis in (-1, -2):  # 5-pixel box blur: gradients of a few percent, as in aerial imagery
        x = sum(np.take(x, range(i, x.shape[axis] - 4 + i), axis=axis) for i in range(5)) / 5
    yy, xx = np.mgrid[:s, :s]
    for i in range(n):
        cy, cx, r = rng.uniform(0.2 * s, 0.8 * s, 2).tolist() + [rng.uniform(0.1 * s, 0.3 * s)]
        x[i, :, (yy - cy) ** 2 + (xx - 0.6 * cx) ** 2 < r * r] += 0.5
    return (x / x.max()).astype(np.float32)


def _transformed(tiles: np.ndarray, transpose: bool, flip_rows: bool, flip_cols: bool) -> np.ndarray:
    """The reference transform, written independently of pipeline.features: NumPy's own flips."""
    if transpose:
        tiles = np.swapaxes(tiles, -1, -2)
    if flip_rows:
        tiles = np.flip(tiles, -2)
    if flip_cols:
        tiles = np.flip(tiles, -1)
    return np.ascontiguousarray(tiles)


@pytest.mark.parametrize("spec", [RGBN4, get_spec("rgbn")], ids=["thumb4", "rgbn"])
def test_symmetry_permutations_equal_the_features_of_the_transformed_tiles(spec):
    size = 8 if spec.thumbnail == 4 else 128
    tiles = _smooth_tiles(6, len(spec.bands), size, seed=3)
    f = tile_features(tiles, None, spec)
    perms = spec.symmetry_permutations()
    assert len(perms) == 8 and np.array_equal(perms[0], np.arange(spec.n_features))
    assert len({tuple(p) for p in perms}) == 8  # eight distinct elements
    edge = np.array([n.startswith("edge_") for n in spec.names])
    for perm, g in zip(perms, D4_TRANSFORMS):
        assert sorted(perm) == list(range(spec.n_features))
        expected = tile_features(_transformed(tiles, *g), None, spec)
        # everything but the edge features: exact up to float32 summation order
        np.testing.assert_allclose(f[:, perm][:, ~edge], expected[:, ~edge], rtol=1e-5, atol=1e-6, err_msg=str(g))
        if size == 8:
            continue  # a 7 × 7 interior is too small for the edge features' stencil to average out
        # edge features: the forward-difference stencil is an L whose corner points up-left; a
        # transposition or a half turn keeps that orientation (equal to ~0.5 %), a single flip
        # turns it, and noise then leans to the other diagonal bin (see the docstring)
        atol = 0.005 if g[1] == g[2] else 0.1
        np.testing.assert_allclose(f[:, perm][:, edge], expected[:, edge], atol=atol, err_msg=str(g))


@pytest.mark.parametrize("g, bin_name", [
    ((False, False, False), "edge_orient_000"),  # identity: gradient along x stays there
    ((True, False, False), "edge_orient_090"),   # transposed: the edge becomes horizontal
    ((False, False, True), "edge_orient_000"),   # mirrored left-right: still a vertical edge
])
def test_symmetry_permutation_of_a_step_edge(g, bin_name):
    gray = np.zeros((8, 8), np.float32)
    gray[:, 4:] = 1.0  # vertical edge: all gradient in bin 000 (test_vertical_step_edge)
    f = tile_features(one_tile([gray, gray, gray]), None, RGB4)[0]
    permuted = f[RGB4.symmetry_permutations()[D4_TRANSFORMS.index(g)]]
    assert feature(RGB4, permuted, bin_name) == pytest.approx(1.0)
    np.testing.assert_allclose(permuted[:16], tile_features(_transformed(one_tile([gray] * 3), *g), None, RGB4)[0][:16])


def test_diagonal_edge_bins_swap_under_a_mirror():
    y, x = np.mgrid[:16, :16]
    gray = (x + y >= 16).astype(np.float32)  # edge along the anti-diagonal: gradient at 45°
    spec = FeatureSpec("test-rgb8", 1, ("red", "green", "blue"), thumbnail=4)
    f = tile_features(one_tile([gray] * 3), None, spec)[0]
    mirrored = f[spec.symmetry_permutations()[D4_TRANSFORMS.index((False, False, True))]]
    assert feature(spec, f, "edge_orient_045") == pytest.approx(1.0)
    assert feature(spec, mirrored, "edge_orient_135") == pytest.approx(1.0)  # 180° − 45°


def test_normalized_difference_indices():
    red = np.full((8, 8), 0.2, np.float32)
    green = np.full((8, 8), 0.4, np.float32)
    nir = np.full((8, 8), 0.6, np.float32)
    nir[:, 4:] = 0.2  # right half: nir = red → NDVI 0; NDWI (0.4-0.2)/0.6 = 1/3
    f = tile_features(one_tile([red, green, red, nir]), None, RGBN4)[0]
    # left NDVI (0.6-0.2)/0.8 = 0.5, right 0 → mean 0.25, std 0.25
    assert feature(RGBN4, f, "ndvi_mean") == pytest.approx(0.25, rel=1e-6)
    assert feature(RGBN4, f, "ndvi_std") == pytest.approx(0.25, rel=1e-6)
    # left NDWI (0.4-0.6)/1.0 = -0.2, right 1/3
    assert feature(RGBN4, f, "ndwi_mean") == pytest.approx((-0.2 + 1 / 3) / 2, rel=1e-5)
    assert feature(RGBN4, f, "ndwi_std") == pytest.approx((1 / 3 + 0.2) / 2, rel=1e-5)
    zero = np.zeros((8, 8), np.float32)  # 0/0 is defined as 0, never NaN
    f0 = tile_features(one_tile([zero, zero, zero, zero]), None, RGBN4)[0]
    assert feature(RGBN4, f0, "ndvi_mean") == 0 and feature(RGBN4, f0, "ndwi_mean") == 0


def test_nodata_pixels_are_excluded():
    g = np.ones((8, 8), np.float32)
    g[:, :4] = 0.3  # values under the nodata mask must not matter
    valid = np.ones((1, 8, 8), bool)
    valid[0, :, :4] = False
    f = tile_features(one_tile([g, g, g]), valid, RGB4)[0]
    assert feature(RGB4, f, "mean_red") == pytest.approx(1.0)
    assert feature(RGB4, f, "std_red") == pytest.approx(0.0, abs=1e-7)
    np.testing.assert_allclose(f[:16], 1.0)  # nodata filled with the valid mean: no fake edge
    assert feature(RGB4, f, "edge_strength") == pytest.approx(0.0, abs=1e-7)
    nan = g.copy()
    nan[:, :4] = np.nan  # a float survey's NaN nodata gives the same features
    np.testing.assert_array_equal(tile_features(one_tile([nan, nan, nan]), valid, RGB4)[0], f)
    nothing = tile_features(one_tile([g, g, g]), np.zeros((1, 8, 8), bool), RGB4)
    assert np.isnan(nothing).all()  # an all-nodata tile has no features


def test_block_features_equal_per_tile_features():
    rng = np.random.default_rng(1)
    block = rng.integers(0, 256, (4, 20, 27), dtype=np.uint8)
    valid = rng.random((20, 27)) > 0.2
    grid = TileGrid(20, 27, 8, 5)
    values, fraction = block_features(block, valid, grid.row_offsets, grid.col_offsets, 8, RGB4, [0, 1, 2], 1 / 255)
    assert values.shape == (*grid.shape, RGB4.n_features)
    for row, col in [(0, 0), (1, 2), (grid.n_rows - 1, grid.n_cols - 1)]:
        w = grid.window(row, col)
        ys, xs = slice(w.row_off, w.row_off + 8), slice(w.col_off, w.col_off + 8)
        expected = tile_features(block[None, :3, ys, xs], valid[None, ys, xs], RGB4, 1 / 255)[0]
        np.testing.assert_allclose(values[row, col], expected, rtol=1e-6, atol=1e-7)
        assert fraction[row, col] == pytest.approx(valid[ys, xs].mean())


def _scene(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A structured 4-band uint8 image (gradients, a pond, noise) with a nodata corner."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    base = 80 + 60 * np.sin(x / 17.0) * np.cos(y / 23.0)
    pond = (y - height / 2) ** 2 + (x - width / 3) ** 2 < (min(height, width) / 5) ** 2
    bands = []
    for k, offset in enumerate([0, 10, -10, 40]):
        band = base + offset + rng.normal(0, 8, (height, width))
        if k == 3:
            band[pond] = 15  # water is dark in near-infrared
        bands.append(band)
    image = np.clip(np.stack(bands), 1, 255).astype(np.uint8)
    valid = np.ones((height, width), bool)
    valid[: height // 4, : width // 5] = False  # a nodata corner, as at a survey's edge
    valid[:, -3:] = False
    image[:, ~valid] = 0
    return image, valid


@pytest.mark.parametrize(
    "size, stride, chunks, tiles_per_block",
    [
        (32, 32, (64, 64), None),  # chunks hold whole tiles, no overlap: one block per chunk
        (32, 16, (64, 64), None),  # stride 16: tiles straddle chunks, halo read from neighbours
        (32, 20, (50, 70), None),  # nothing aligns with anything
        (32, 32, (50, 70), (3, 2)),  # chunks cut tiles; blocks of 3 × 2 tiles
        (32, 32, (300, 410), None),  # a single chunk
    ],
)
def test_dask_features_equal_numpy_on_the_whole_array(dask_client, size, stride, chunks, tiles_per_block):
    import dask.array as da

    spec = FeatureSpec("test-rgbn8", 1, ("red", "green", "blue", "nir"), thumbnail=8)
    image, valid = _scene(300, 410)
    grid = TileGrid(300, 410, size, stride)
    expected, expected_fraction = block_features(
        image, valid, grid.row_offsets, grid.col_offsets, size, spec, [0, 1, 2, 3], 1 / 255
    )
    lazy = features_dask(
        da.from_array(image, chunks=(4, *chunks)),
        da.from_array(valid, chunks=chunks),
        grid,
        spec,
        [0, 1, 2, 3],
        1 / 255,
        tiles_per_block,
    )
    packed = dask_client.compute(lazy).result()
    np.testing.assert_allclose(packed[..., :-1], expected, rtol=1e-6, atol=1e-7, equal_nan=True)
    np.testing.assert_array_equal(packed[..., -1], expected_fraction)
    assert np.isnan(expected[0, 0]).all() and expected_fraction[0, 0] == 0  # the nodata corner


@pytest.fixture(scope="module")
def naip_store(tmp_path_factory, naip_files):
    """The 2009 and 2015 NAIP surveys in a store, chunked at 256 px so tiles straddle chunks."""
    from pipeline.ingest import ingest
    from pipeline.store import Store

    store = Store(tmp_path_factory.mktemp("features") / "damwatch-data")
    for path, date in [(naip_files[0], "2009-08-18"), (naip_files[4], "2015-09-26")]:
        ingest(path, "naip", date, store, bands=("red", "green", "blue", "nir"), chunk_edge=256)
    return store


@pytest.mark.naip
@pytest.mark.parametrize("stride", [128, 64])
def test_naip_features_match_numpy_on_the_file(naip_store, naip_files, dask_client, stride):
    import rasterio

    result = compute_features(naip_store, "naip-2009-08-18", spec="rgbn", stride=stride, client=dask_client)
    with rasterio.open(naip_files[0]) as src:
        pixels = src.read()  # (4, 724, 934) uint8, the reference straight from the file
        valid = np.all(pixels != src.nodata, axis=0)
    grid = TileGrid(src.height, src.width, 128, stride, src.transform, src.crs)
    spec = get_spec("rgbn")
    expected, fraction = block_features(pixels, valid, grid.row_offsets, grid.col_offsets, 128, spec, [0, 1, 2, 3], 1 / 255)
    assert result.grid == grid and result.spec == spec
    values = np.asarray(result.values[...])
    np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-7, equal_nan=True)
    np.testing.assert_array_equal(result.valid_fraction, fraction)
    assert np.isfinite(values[fraction > 0]).all()
    X, rows, cols = result.as_table(min_valid=0.5)
    assert X.shape == (int((fraction >= 0.5).sum()), spec.n_features) and np.isfinite(X).all()
    np.testing.assert_array_equal(X[0], values[rows[0], cols[0]])


@pytest.mark.naip
def test_stored_features_layout_reuse_and_overwrite(naip_store, dask_client):
    import zarr

    first = compute_features(naip_store, "naip-2015-09-26", spec="default", client=dask_client)
    assert first.path == "features/naip-2015-09-26/default-v1/size128_stride128"
    group = zarr.open_group(store=str(naip_store.zarr_path), path=first.path, mode="r")
    assert group.attrs["complete"] is True
    assert group.attrs["feature_spec"]["id"] == "default-v1"
    assert TileGrid.from_dict(group.attrs["grid"]) == first.grid
    assert group["features"].metadata.dimension_names == ("y", "x", "feature")
    values_file = naip_store.zarr_path / first.path / "features" / "zarr.json"
    stamp = values_file.stat().st_mtime_ns
    again = compute_features(naip_store, "naip-2015-09-26", spec="default", client=dask_client)
    assert values_file.stat().st_mtime_ns == stamp  # same survey, spec, grid: reused
    np.testing.assert_array_equal(np.asarray(again.values[...]), np.asarray(first.values[...]))
    replaced = compute_features(naip_store, "naip-2015-09-26", spec="default", client=dask_client, overwrite=True)
    np.testing.assert_array_equal(np.asarray(replaced.values[...]), np.asarray(first.values[...]))
    siblings = sorted(p.name for p in (naip_store.zarr_path / first.path).parent.iterdir())
    assert siblings == ["size128_stride128", "zarr.json"]  # no temporary or trash groups left behind


@pytest.mark.naip
def test_missing_features_and_missing_bands_are_clear_errors(naip_store):
    with pytest.raises(StoreError, match="damwatch features naip-2009-08-18 --spec default --size 128 --stride 96"):
        open_features(naip_store, "naip-2009-08-18", "default", stride=96)
    with pytest.raises(InputError, match="multiple of the 32-cell thumbnail"):
        compute_features(naip_store, "naip-2009-08-18", size=100, stride=100)


@pytest.mark.naip
def test_features_command(naip_store, dask_client, prefect, capsys):
    from flows.cli import main

    store_dir = str(naip_store.root)
    address = dask_client.scheduler.address
    argv = ["features", "naip-2009-08-18", "--spec", "rgbn", "--stride", "64", "--store", store_dir, "--cluster", address]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # 724 × 934 px at stride 64: 11 × 14 tiles; rgbn-v1 has 1047 features
    assert "features naip-2009-08-18" in out and "rgbn-v1 (1047 features), 11 x 14 tiles of 128 px at stride 64" in out
    stored = open_features(naip_store, "naip-2009-08-18", "rgbn", stride=64)
    api = compute_features(naip_store, "naip-2009-08-18", "rgbn", stride=64, client=dask_client)
    assert api.status == "reused"
    np.testing.assert_array_equal(np.asarray(api.values[...]), np.asarray(stored.values[...]))

    assert main(["features", "naip-2009-08-18", "--spec", "nope", "--store", store_dir, "--cluster", address]) == 2
    err = capsys.readouterr().err
    assert "error: unknown feature spec 'nope'" in err and "Traceback" not in err


@pytest.mark.naip
def test_features_command_refuses_a_survey_without_the_spec_bands(tmp_path, naip_files, capsys):
    from flows.cli import main
    from pipeline.ingest import ingest
    from pipeline.store import Store

    store = Store(tmp_path / "damwatch-data")
    ingest(naip_files[0], "naip", "2009-08-18", store)  # no --bands: band1..band4
    assert main(["features", "naip-2009-08-18", "--store", str(store.root)]) == 2
    err = capsys.readouterr().err
    assert "needs bands ['red', 'green', 'blue']" in err and "band1" in err


def test_local_threads_without_a_cluster_equal_numpy():
    import dask.array as da

    from pipeline.blocks import compute_with_progress

    spec = FeatureSpec("test-rgbn8", 1, ("red", "green", "blue", "nir"), thumbnail=8)
    image, valid = _scene(200, 150, seed=3)
    grid = TileGrid(200, 150, 32, 24)
    expected, fraction = block_features(image, valid, grid.row_offsets, grid.col_offsets, 32, spec, [0, 1, 2, 3], 1 / 255)
    lazy = features_dask(da.from_array(image, chunks=(4, 64, 64)), da.from_array(valid, chunks=(64, 64)), grid, spec, [0, 1, 2, 3], 1 / 255)
    packed = compute_with_progress(lazy, None, "test", "tile-features")  # None: local threads
    assert isinstance(packed, np.ndarray)
    np.testing.assert_allclose(packed[..., :-1], expected, rtol=1e-6, atol=1e-7, equal_nan=True)
    np.testing.assert_array_equal(packed[..., -1], fraction)


@pytest.mark.naip
def test_features_of_a_replaced_survey_are_recomputed(tmp_path, naip_files, dask_client):
    from pipeline.ingest import ingest
    from pipeline.store import Store

    store = Store(tmp_path / "damwatch-data")
    bands = ("red", "green", "blue", "nir")
    ingest(naip_files[0], "naip", "2009-08-18", store, bands=bands)
    first = compute_features(store, "naip-2009-08-18", client=dask_client)
    first_values = np.asarray(first.values[...])  # .values reads the store lazily: keep a copy
    ingest(naip_files[1], "naip", "2009-08-18", store, bands=bands, overwrite=True)  # another file, same id
    second = compute_features(store, "naip-2009-08-18", client=dask_client)
    assert (first.status, second.status) == ("computed", "computed")
    assert not np.array_equal(first_values, np.asarray(second.values[...]), equal_nan=True)
    assert second.grid.height == store.survey("naip-2009-08-18").height
