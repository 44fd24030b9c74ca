"""Per-tile features: what the network sees of each tile.

A *feature vector* describes one tile of a survey (see :mod:`pipeline.tiling`) as a fixed
list of numbers. A *feature spec* (:class:`FeatureSpec`) names that list: which features, in
which order, computed from which bands, under a name and a version (``"default-v1"``). Bands
are chosen **by name** (``"red"``, ``"nir"``), never by position, so a survey whose bands come
in another order gives the same features, and a survey lacking a band the spec needs is refused
with :class:`~pipeline.errors.InputError` instead of silently using the wrong band. A trained
model records the spec it was trained with and refuses features made with another.

The features of a tile, in spec order (pixel values are first scaled to [0, 1] by the dtype's
range: ``/255`` for uint8, ``/65535`` for uint16, floats unchanged):

- ``gray_RR_CC`` (``thumbnail``² values): the classic input layer: the tile in grayscale
  (ITU-R 601 luma ``0.299 red + 0.587 green + 0.114 blue``) averaged over
  ``size/thumbnail``-pixel cells down to ``thumbnail × thumbnail`` (32 × 32), in [0, 1].
- ``mean_<band>``, ``std_<band>``: per-band mean and standard deviation over the valid pixels.
- ``ndvi_mean``, ``ndvi_std``, ``ndwi_mean``, ``ndwi_std`` (only in specs with a ``nir`` band):
  NDVI = (nir − red)/(nir + red) (vegetation), NDWI = (green − nir)/(green + nir) (open water
  where > 0), per pixel, 0 where the denominator is 0, then mean/std over valid pixels.
- ``gray_std``: standard deviation of the grayscale tile (contrast).
- ``texture_cell_std``: the local texture measure: the standard deviation of grayscale inside
  each thumbnail cell (4 × 4 pixels for 128-px tiles), averaged over the cells. High for fine
  texture (canopy, rows), low for smooth surfaces (water, bare soil), unlike ``gray_std``,
  which a single large edge also makes high.
- ``edge_strength``: mean grayscale gradient magnitude, with forward differences
  ``gx = g[y, x] − g[y, x−1]``, ``gy = g[y, x] − g[y−1, x]`` over the (size−1)² pixels
  that have both neighbours inside the tile (units: grayscale per pixel).
- ``edge_orient_DDD`` (``orientation_bins`` values): an edge-orientation histogram: the
  gradient direction folded to [0°, 180°) (a dark-to-light and a light-to-dark edge are the same
  edge), in bins *centred* on 0°, 22.5°, … (so horizontal and vertical gradients sit mid-bin),
  weighted by gradient magnitude and divided by the total magnitude: the fractions sum to 1,
  or are all 0 in a tile without any gradient. Bin 000 holds gradients along x (vertical edges).

Every feature is a function of the tile's own pixels only, so a tile's features do not depend
on its neighbours, on the chunking or on the stride. Nodata pixels are excluded: statistics
use valid pixels only, and before the spatial features (thumbnail, texture, edges) each nodata
pixel is replaced by its tile's valid mean for that band, so a nodata collar creates no edge.
A tile with no valid pixel at all gets NaN features and valid fraction 0 (skip it downstream).

Features are stored raw (not standardized): normalization statistics come from the training
data when a model is trained (:mod:`ann.standardize`).

Layers: :func:`tile_features` and :func:`block_features` are pure NumPy over tiles / a block
of pixels; :func:`features_dask` applies :func:`block_features` with :func:`map_tile_blocks`,
one Dask task per group of tiles spanning about one Zarr chunk (8 × 8 tiles of 128 px per
1024-px chunk at stride 128: ~50–150 ms of arithmetic per task), each reading its own pixel
window, with the halo from neighbouring chunks when a stride makes tiles straddle them;
:func:`compute_features` runs it on a survey in the store and writes
``features/<survey_id>/<spec_id>/size<S>_stride<T>`` (arrays ``features`` (y, x, feature)
and ``valid_fraction`` (y, x), with tile-centre coordinates ``y``/``x``, feature names
``feature`` and the grid mapping ``spatial_ref`` of :mod:`pipeline.coords`, consolidated, so
``xarray.open_zarr(group, decode_coords="all")`` opens it georeferenced; attrs
``feature_spec``, ``grid``, ``survey_id``, ``source_sha256``, ``complete``), into a temporary
group renamed into place when complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.bands import LUMA, band_positions, normalized_difference, pixel_scale
from pipeline.blocks import map_tile_blocks, resolve_client, store_blocks
from pipeline.coords import TILE_DIMS, add_tile_coordinates, grid_mapping_attrs
from pipeline.errors import InputError, command
from pipeline.tiling import DEFAULT_TILE_SIZE, TRAINING_STRIDE, TileGrid, gather_tiles

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.store import Store

__all__ = [
    "FeatureSpec",
    "D4_TRANSFORMS",
    "SPECS",
    "get_spec",
    "spec_band_indices",
    "tile_features",
    "block_features",
    "features_dask",
    "compute_features",
    "open_features",
    "features_path",
    "TileFeatures",
]

TILES_PER_BATCH = 16  # tiles computed together inside a block: ~4 MB of float32, stays in cache
# Every Dask task should carry >= ~100 ms of work (DESIGN decision 6): a 128-px tile costs about
# 0.7 ms of feature arithmetic (rgbn, measured), so a task takes whole chunks holding >= 128 tiles
# (at stride 128 two 1024-px chunks of 64 tiles; at stride 64 one chunk holds 256).
MIN_TILES_PER_TASK = 128


@dataclass(frozen=True)
class FeatureSpec:
    """A named, versioned list of features and the bands (by name) they are computed from.

    ``names`` is derived from the other fields (see the module docstring for each feature);
    bump ``version`` whenever the computation changes, so models refuse stale features.
    """

    name: str
    version: int
    bands: tuple[str, ...]  # survey band names, in the order of the mean_/std_ features
    thumbnail: int = 32  # grayscale thumbnail edge, cells; must divide the tile size
    orientation_bins: int = 8  # edge-orientation histogram bins over [0°, 180°)
    names: tuple[str, ...] = field(default=(), compare=True)

    def __post_init__(self) -> None:
        missing = [b for b in LUMA if b not in self.bands]
        if missing:
            raise InputError(
                f"feature spec {self.name!r} lists bands {list(self.bands)}, which lack {missing}: "
                f"the grayscale features need red, green and blue"
            )
        expected = _feature_names(self.bands, self.thumbnail, self.orientation_bins)
        if not self.names:
            object.__setattr__(self, "names", expected)
        elif tuple(self.names) != expected:
            raise InputError(
                f"feature spec {self.id} lists {len(self.names)} feature names that differ from the "
                f"{len(expected)} this version of damwatch computes for it; the spec was written by "
                f"another version: recompute the features (damwatch features --overwrite)"
            )
        object.__setattr__(self, "bands", tuple(self.bands))
        object.__setattr__(self, "names", tuple(self.names))

    @property
    def id(self) -> str:
        """``<name>-v<version>``, e.g. ``default-v1``: the key under which features are stored."""
        return f"{self.name}-v{self.version}"

    @property
    def n_features(self) -> int:
        return len(self.names)

    @property
    def has_indices(self) -> bool:
        """Whether NDVI/NDWI are part of the spec (it has a ``nir`` band)."""
        return "nir" in self.bands

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "bands": list(self.bands),
            "thumbnail": self.thumbnail,
            "orientation_bins": self.orientation_bins,
            "names": list(self.names),
        }

    def symmetry_permutations(self) -> list[np.ndarray]:
        """Feature permutations of the 8 tile symmetries (D4: flips, transposition, 90° rotations).

        Element ``g`` (``(transpose, flip_rows, flip_cols)`` bits of ``g`` = 4, 2, 1 of
        :data:`D4_TRANSFORMS`, identity first) is an (F,) index array ``perm`` such that the
        features of the transformed tile are ``features[..., perm]``: the thumbnail cells move
        with the pixels; band statistics, indices, contrast, texture and edge strength do not
        change; the edge-orientation bins follow the gradient direction (a column flip takes
        direction θ to 180° − θ, a transposition to 90° − θ). Why: a dam seen mirrored or
        rotated is still a dam, so each labelled tile is worth eight training examples.

        Exact (to float32 summation order) for everything but the edge features, whose forward
        differences ``gx``, ``gy`` share the pixel ``(y, x)``: an L-shaped stencil. A
        transposition or a half turn keeps its orientation (the edge features then agree to
        ~0.5 %); a single flip or a quarter turn mirrors it, and in fine noise, where ``gx`` and
        ``gy`` correlate through their shared pixel, up to ~8 % of the gradient weight moves
        between the 45° and 135° bins (tests/pipeline/test_features.py measures both). Dams and
        ponds are larger than that stencil, so the permuted features are the right example of
        a mirrored dam. The orientation bins must be even in number for a transposition to map
        bin centres onto bin centres.
        """
        t, bins = self.thumbnail, self.orientation_bins
        if bins % 2:
            raise InputError(
                f"feature spec {self.id} has {bins} edge-orientation bins; the tile symmetries map "
                f"bin centres onto bin centres only for an even number of bins (e.g. 8)"
            )
        cells = np.arange(t * t).reshape(t, t)
        n_thumb = t * t
        centres = np.arange(bins) * (np.pi / bins)  # bin k's direction, radians in [0, π)
        perms = []
        for transpose, flip_rows, flip_cols in D4_TRANSFORMS:
            perm = np.arange(self.n_features)
            perm[:n_thumb] = _apply_d4(cells, transpose, flip_rows, flip_cols).ravel()
            # the transformed tile's bin k holds the original gradients whose direction maps to
            # centre k; the map is an involution up to the order of its parts, so invert it
            gx, gy = np.cos(centres), np.sin(centres)  # (bins,) unit gradients (x = column, y = row)
            if transpose:
                gx, gy = gy, gx
            if flip_rows:
                gy = -gy
            if flip_cols:
                gx = -gx
            image_of = np.round(np.mod(np.arctan2(gy, gx), np.pi) / (np.pi / bins)).astype(int) % bins
            source = np.empty(bins, dtype=int)
            source[image_of] = np.arange(bins)  # transformed bin image_of[k] comes from bin k
            perm[self.n_features - bins :] = self.n_features - bins + source
            perms.append(perm)
        return perms

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(
            name=d["name"],
            version=int(d["version"]),
            bands=tuple(d["bands"]),
            thumbnail=int(d.get("thumbnail", 32)),
            orientation_bins=int(d.get("orientation_bins", 8)),
            names=tuple(d.get("names", ())),
        )


#: The 8 tile symmetries as (transpose, flip_rows, flip_cols), applied in that order; identity first.
D4_TRANSFORMS: tuple[tuple[bool, bool, bool], ...] = tuple(
    (bool(g & 4), bool(g & 2), bool(g & 1)) for g in range(8)
)


def _apply_d4(a: np.ndarray, transpose: bool, flip_rows: bool, flip_cols: bool) -> np.ndarray:
    """``a`` (..., S, S) transposed, then flipped along rows, then along columns (a D4 element)."""
    if transpose:
        a = np.swapaxes(a, -1, -2)
    if flip_rows:
        a = a[..., ::-1, :]
    if flip_cols:
        a = a[..., ::-1]
    return a


def _feature_names(bands: tuple[str, ...], thumbnail: int, bins: int) -> tuple[str, ...]:
    names = [f"gray_{r:02d}_{c:02d}" for r in range(thumbnail) for c in range(thumbnail)]
    for band in bands:
        names += [f"mean_{band}", f"std_{band}"]
    if "nir" in bands:
        names += ["ndvi_mean", "ndvi_std", "ndwi_mean", "ndwi_std"]
    names += ["gray_std", "texture_cell_std", "edge_strength"]
    names += [f"edge_orient_{round(k * 180 / bins):03d}" for k in range(bins)]
    return tuple(names)


SPECS: dict[str, FeatureSpec] = {
    # Works on every survey with visible bands (synthetic RGB, NAIP): the demo's spec.
    "default": FeatureSpec("default", 1, ("red", "green", "blue")),
    # Adds near-infrared statistics and NDVI/NDWI: surveys with a nir band (NAIP).
    "rgbn": FeatureSpec("rgbn", 1, ("red", "green", "blue", "nir")),
}


def get_spec(spec: str | FeatureSpec | dict[str, Any] = "default") -> FeatureSpec:
    """A registered spec by name (``"default"``) or id (``"default-v1"``); specs/dicts pass through."""
    if isinstance(spec, FeatureSpec):
        return spec
    if isinstance(spec, dict):
        return FeatureSpec.from_dict(spec)
    for s in SPECS.values():
        if spec in (s.name, s.id):
            return s
    known = ", ".join(f"{s.name} ({s.id}: bands {', '.join(s.bands)})" for s in SPECS.values())
    raise InputError(f"unknown feature spec {spec!r}; known specs: {known}")


def spec_band_indices(spec: FeatureSpec, band_names: tuple[str, ...] | list[str], survey_id: str = "the survey") -> list[int]:
    """Position in ``band_names`` of each band of ``spec`` (InputError naming any missing band)."""
    choices = ", ".join(s.name + ": " + "/".join(s.bands) for s in SPECS.values())
    return band_positions(
        spec.bands, band_names, f"feature spec {spec.id}", survey_id,
        f"choose a spec whose bands the survey has ({choices}) with --spec",
    )


# ----------------------------------------------------------------------------------------------
# Pure NumPy
# ----------------------------------------------------------------------------------------------
def _mean_std(x: np.ndarray, w: np.ndarray | None, n_valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over the last two axes, weighting pixels by ``w`` (1 valid, 0 nodata)."""
    # float32 sums over contiguous pixels use NumPy's pairwise summation: relative error ~1e-7
    axes = (-2, -1)
    if w is None:
        mean = x.mean(axis=axes)
        d = x - mean[..., None, None]
        var = (d * d).mean(axis=axes)
    else:
        mean = (x * w).sum(axis=axes) / n_valid
        d = (x - mean[..., None, None].astype(x.dtype)) * w
        var = (d * d).sum(axis=axes) / n_valid
    return mean, np.sqrt(var)


def _cell_sums(a: np.ndarray, k: int) -> np.ndarray:
    """Sums over k × k cells of the last two axes: (..., S, S) → (..., S/k, S/k).

    k strided additions per axis: an order of magnitude faster than ``reshape(...).sum(axis=(2, 4))``,
    whose reduction runs over short non-contiguous axes.
    """
    cols = a[..., 0::k].copy()
    for i in range(1, k):
        cols += a[..., i::k]
    rows = cols[..., 0::k, :].copy()
    for i in range(1, k):
        rows += cols[..., i::k, :]
    return rows


def tile_features(tiles: np.ndarray, valid: np.ndarray | None, spec: FeatureSpec, scale: float = 1.0) -> np.ndarray:
    """Features of ``N`` tiles: ``tiles`` (N, len(spec.bands), S, S) in spec band order → (N, F) float32.

    ``valid`` (N, S, S) bool marks non-nodata pixels (None: all valid); ``scale`` takes pixel
    values to [0, 1] (see :func:`pixel_scale`). ``S`` must be a multiple of ``spec.thumbnail``.
    """
    n, n_bands, s, s2 = tiles.shape
    if s != s2 or n_bands != len(spec.bands):
        raise ValueError(f"tiles must be (N, {len(spec.bands)}, S, S), got {tiles.shape}")
    if s % spec.thumbnail:
        raise InputError(
            f"tile size {s} is not a multiple of the {spec.thumbnail}-cell thumbnail of feature spec "
            f"{spec.id}; use a tile size such as {spec.thumbnail * max(1, round(s / spec.thumbnail))}"
        )
    out = np.full((n, spec.n_features), np.nan, dtype=np.float32)
    if n == 0:
        return out
    x = tiles.astype(np.float32)  # (N, B, S, S) raw values; ``scale`` is applied to results below

    # -- nodata: statistics over valid pixels, spatial features on mean-filled tiles ----------
    if valid is not None and not valid.all():
        w = valid[:, None].astype(np.float32)  # (N, 1, S, S)
        x = np.where(w > 0, x, np.float32(0))  # nodata values (NaN in float surveys) never enter sums
        n_valid = w.sum(axis=(-2, -1), dtype=np.float64)  # (N, 1)
        empty = n_valid[:, 0] == 0
        n_valid = np.where(n_valid == 0, 1.0, n_valid)
    else:
        w, n_valid, empty = None, np.full((n, 1), float(s * s)), np.zeros(n, dtype=bool)
    band_mean, band_std = _mean_std(x, w, n_valid)  # (N, B) each
    if w is not None:
        x = np.where(w > 0, x, band_mean[..., None, None].astype(np.float32))

    col = 0
    t, k = spec.thumbnail, s // spec.thumbnail
    bi = {b: i for i, b in enumerate(spec.bands)}
    luma = {b: np.float32(w * scale) for b, w in LUMA.items()}  # scaling folded into the weights
    gray = luma["red"] * x[:, bi["red"]] + luma["green"] * x[:, bi["green"]] + luma["blue"] * x[:, bi["blue"]]  # (N, S, S) in [0, 1]

    thumb = _cell_sums(gray, k) / np.float32(k * k)  # (N, t, t) cell means
    out[:, col : col + t * t] = thumb.reshape(n, t * t)
    col += t * t

    stats = np.stack([band_mean, band_std], axis=-1).reshape(n, -1) * scale  # mean_b0, std_b0, mean_b1, ...
    out[:, col : col + stats.shape[1]] = stats
    col += stats.shape[1]

    if spec.has_indices:
        red, green, nir = x[:, bi["red"]], x[:, bi["green"]], x[:, bi["nir"]]
        wv = None if w is None else w[:, 0]
        for index in (normalized_difference(nir, red), normalized_difference(green, nir)):  # NDVI, NDWI
            m, sd = _mean_std(index, wv, n_valid[:, 0])
            out[:, col], out[:, col + 1] = m, sd
            col += 2

    _, gray_std = _mean_std(gray, None, None)  # type: ignore[arg-type]
    out[:, col] = gray_std
    cell_var = _cell_sums(gray * gray, k) / np.float32(k * k) - thumb * thumb  # (N, t, t)
    out[:, col + 1] = np.sqrt(np.maximum(cell_var, 0.0)).mean(axis=(1, 2))
    col += 2

    gx = gray[:, 1:, 1:] - gray[:, 1:, :-1]  # (N, S-1, S-1)
    gy = gray[:, 1:, 1:] - gray[:, :-1, 1:]
    magnitude = np.sqrt(gx * gx + gy * gy)  # values in [0, 1]: no overflow, hypot not needed
    total = magnitude.sum(axis=(1, 2), dtype=np.float64)  # (N,)
    out[:, col] = total / ((s - 1) * (s - 1))
    col += 1

    bins = spec.orientation_bins
    angle = np.arctan2(gy, gx)  # (-π, π]; folding to [0, π) below ignores the edge's polarity
    # centred bins: round(angle / bin width) mod bins, via truncation of a positive number
    # (ties go to the upper bin); angle ∈ (−π, π] so the argument lies in (0.5, 2 bins + 0.5]
    bin_index = (angle * np.float32(bins / np.pi) + np.float32(bins + 0.5)).astype(np.int32) % bins
    bin_index += (np.arange(n, dtype=np.int32) * bins)[:, None, None]
    hist = np.bincount(bin_index.ravel(), weights=magnitude.ravel(), minlength=n * bins).reshape(n, bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, col : col + bins] = np.where(total[:, None] > 0, hist / total[:, None], 0.0)
    col += bins
    assert col == spec.n_features

    out[empty] = np.nan
    return out


def block_features(
    block: np.ndarray,
    valid: np.ndarray | None,
    row_offsets: np.ndarray,
    col_offsets: np.ndarray,
    size: int,
    spec: FeatureSpec,
    band_indices: list[int],
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Features of the tiles of an in-memory block of pixels.

    ``block`` (n_survey_bands, H, W) pixel values; ``valid`` (H, W) bool or None (all valid);
    ``row_offsets``/``col_offsets`` the pixel offsets of the tiles inside the block;
    ``band_indices`` the survey band of each spec band (:func:`spec_band_indices`).
    Returns ``(values (n_rows, n_cols, F) float32, valid_fraction (n_rows, n_cols) float32)``.
    """
    ro, co = np.asarray(row_offsets), np.asarray(col_offsets)
    nr, nc = len(ro), len(co)
    values = np.empty((nr, nc, spec.n_features), dtype=np.float32)
    fraction = np.ones((nr, nc), dtype=np.float32)
    valid_tiles = None
    if valid is not None and not np.all(valid):
        valid_tiles = gather_tiles(np.asarray(valid, dtype=bool), ro, co, size).reshape(nr * nc, size, size)
        fraction = (np.count_nonzero(valid_tiles, axis=(1, 2)) / float(size * size)).astype(np.float32).reshape(nr, nc)
    # tiles of one row of the grid at a time, in batches: bounded memory whatever the block size
    bands = np.asarray(block)[band_indices]
    flat = values.reshape(nr * nc, spec.n_features)
    for r in range(nr):
        row_tiles = gather_tiles(bands, ro[r : r + 1], co, size)[0]  # (nc, B, S, S)
        for c0 in range(0, nc, TILES_PER_BATCH):
            c1 = min(c0 + TILES_PER_BATCH, nc)
            v = None if valid_tiles is None else valid_tiles[r * nc + c0 : r * nc + c1]
            flat[r * nc + c0 : r * nc + c1] = tile_features(row_tiles[c0:c1], v, spec, scale)
    return values, fraction


# ----------------------------------------------------------------------------------------------
# Dask
# ----------------------------------------------------------------------------------------------
def _features_block(block, valid, ro, co, size, spec_dict, band_indices, scale) -> np.ndarray:
    """Features + valid fraction of one block's tiles, packed as (n_rows, n_cols, F + 1)."""
    spec = FeatureSpec.from_dict(spec_dict)
    values, fraction = block_features(block, valid, ro, co, size, spec, band_indices, scale)
    return np.concatenate([values, fraction[..., None]], axis=-1)


def features_dask(
    image: Any,
    valid: Any,
    grid: TileGrid,
    spec: FeatureSpec,
    band_indices: list[int],
    scale: float,
    tiles_per_block: tuple[int, int] | None = None,
) -> Any:
    """Dask array (n_rows, n_cols, F + 1) float32: features, then the valid fraction as the last column.

    :func:`block_features` applied by :func:`map_tile_blocks`; ``image`` (bands, H, W) and
    ``valid`` (H, W, or None) are Dask or Zarr arrays over the whole survey.
    """
    args = (spec.to_dict(), list(band_indices), scale)
    return map_tile_blocks(_features_block, image, valid, grid, spec.n_features + 1, args, tiles_per_block, "tile-features")


# ----------------------------------------------------------------------------------------------
# The store
# ----------------------------------------------------------------------------------------------
#: The name of the features array in a features group (stores written before 2026-12 call it
#: "values", which xarray's Dataset.values hides; both are read).
FEATURES_ARRAY = "features"


def features_path(survey_id: str, spec: str | FeatureSpec = "default", stride: int = TRAINING_STRIDE, size: int = DEFAULT_TILE_SIZE) -> str:
    """Path inside ``store.zarr`` of a survey's features: ``features/<survey>/<spec_id>/size<S>_stride<T>``."""
    return f"features/{survey_id}/{get_spec(spec).id}/size{int(size)}_stride{int(stride)}"


@dataclass
class TileFeatures:
    """The features of every tile of a survey on one grid.

    ``values`` (n_rows, n_cols, F) float32, raw (unnormalized), NaN for tiles without a valid
    pixel; ``valid_fraction`` (n_rows, n_cols) float32 in [0, 1] (0 = all nodata: skip).
    ``values`` is a Zarr array when opened from the store (index it, or ``np.asarray`` it).
    """

    survey_id: str
    spec: FeatureSpec
    grid: TileGrid
    values: Any
    valid_fraction: np.ndarray
    path: str | None = None
    status: str = "opened"  # compute_features: "computed" or "reused"

    def as_table(self, min_valid: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(X (N, F) float32, rows (N,), cols (N,))`` for tiles whose valid fraction ≥ ``min_valid`` (row-major)."""
        keep = (self.valid_fraction >= min_valid) & (self.valid_fraction > 0)
        rows, cols = np.nonzero(keep)
        values = np.asarray(self.values[...])
        return values[rows, cols].astype(np.float32, copy=False), rows, cols


def compute_features(
    store: "Store",
    survey_id: str,
    spec: str | FeatureSpec = "default",
    stride: int = TRAINING_STRIDE,
    size: int = DEFAULT_TILE_SIZE,
    client: Any = None,
    overwrite: bool = False,
) -> TileFeatures:
    """Compute and store the features of every tile of ``survey_id`` (see the module docstring).

    Runs on ``client`` (a ``distributed.Client``), else on the current default client, else on
    local threads. Features already stored for the same survey content, spec and grid are
    reused unless ``overwrite``; features computed from an earlier version of the survey (a
    re-ingested file) are replaced. Written to a temporary group renamed into place last, so an
    interrupted run never leaves features that look complete.
    """
    import zarr  # here, not at the top: the command line imports this module to check its input


    spec = get_spec(spec)
    survey = store.survey(survey_id)
    band_indices = spec_band_indices(spec, survey.bands, f"survey {survey_id}")
    grid = TileGrid.for_survey(survey, size=size, stride=stride)
    if size % spec.thumbnail:
        raise InputError(
            f"tile size {size} is not a multiple of the {spec.thumbnail}-cell thumbnail of feature spec "
            f"{spec.id}; use a multiple of {spec.thumbnail} such as 128"
        )
    path = features_path(survey_id, spec, stride, size)
    if store.is_complete(path) and not overwrite:
        existing = open_features(store, survey_id, spec, stride, size)
        if store.open_group(path).attrs.get("source_sha256") == survey.source_sha256 and existing.grid == grid:
            existing.status = "reused"
            return existing

    image = survey.image()  # Zarr arrays: each task reads its own window, halo included
    valid = survey.valid()
    tiles_per_block = grid.tiles_per_chunk(survey.chunk_edge, MIN_TILES_PER_TASK)
    packed = features_dask(image, valid, grid, spec, band_indices, pixel_scale(survey.dtype), tiles_per_block)
    client = resolve_client(client)

    attributes = {
        "survey_id": survey_id,
        "source_sha256": survey.source_sha256,
        "feature_spec": spec.to_dict(),
        "grid": grid.to_dict(),
    }
    with store.new_group(path, attributes, consolidate=True) as group:  # consolidated: xarray opens it in one read
        chunks = (tiles_per_block[0], tiles_per_block[1])
        common = dict(compressors=zarr.codecs.ZstdCodec(level=3))
        values = group.create_array(
            FEATURES_ARRAY,
            shape=(*grid.shape, spec.n_features),
            chunks=(*chunks, spec.n_features),
            dtype=np.float32,
            fill_value=np.nan,
            dimension_names=[*TILE_DIMS, "feature"],
            attributes={"feature_names": list(spec.names), "units": "see the feature spec",
                        "long_name": f"tile features ({spec.id})", **grid_mapping_attrs(grid)},
            **common,
        )
        fraction = group.create_array(
            "valid_fraction",
            shape=grid.shape,
            chunks=chunks,
            dtype=np.float32,
            fill_value=0.0,
            dimension_names=list(TILE_DIMS),
            attributes={"description": "fraction of the tile's pixels that are not nodata", **grid_mapping_attrs(grid)},
            **common,
        )
        names = group.create_array("feature", shape=(spec.n_features,), dtype=str, dimension_names=["feature"])
        names[:] = np.array(spec.names)
        add_tile_coordinates(group, grid)
        # Each task computes one block of tiles and writes its own Zarr chunks: nothing is
        # gathered on the driver or persisted whole on the workers.
        store_blocks(packed, _unpack, [values, fraction], client, f"features {survey_id}")
    result = open_features(store, survey_id, spec, stride, size)
    result.status = "computed"
    return result


def _unpack(packed: np.ndarray) -> list[np.ndarray]:
    """A packed block (rows, cols, F + 1) as [features (rows, cols, F), valid fraction (rows, cols)]."""
    return [packed[..., :-1], packed[..., -1]]


def open_features(
    store: "Store",
    survey_id: str,
    spec: str | FeatureSpec = "default",
    stride: int = TRAINING_STRIDE,
    size: int = DEFAULT_TILE_SIZE,
) -> TileFeatures:
    """Open stored features (StoreError naming what exists if they were never computed)."""
    spec = get_spec(spec)
    path = features_path(survey_id, spec, stride, size)
    available = store.complete_groups(f"features/{survey_id}", "*/size*_stride*")
    group = store.open_complete(
        path,
        f"no complete features for survey {survey_id} with spec {spec.id}, tile size {size} and "
        f"stride {stride} in the store at {store.root} (available for this survey: "
        f"{', '.join(available) or 'none'}); compute them with "
        f"{command('features', survey_id, '--spec', spec.name, '--size', size, '--stride', stride, store=store)}",
    )
    stored_spec = FeatureSpec.from_dict(dict(group.attrs["feature_spec"]))
    grid = TileGrid.from_dict(dict(group.attrs["grid"]))
    return TileFeatures(
        survey_id=survey_id,
        spec=stored_spec,
        grid=grid,
        values=group[FEATURES_ARRAY] if FEATURES_ARRAY in group else group["values"],  # "values": stores before 2026-12
        valid_fraction=np.asarray(group["valid_fraction"][...]),
        path=path,
    )
