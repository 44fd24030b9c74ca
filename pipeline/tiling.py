"""Tile grids over a survey's pixel grid.

A *tile* is a square window of ``size`` × ``size`` pixels of a survey; the network sees one
tile at a time. A *tile grid* places tiles every ``stride`` pixels down and across the survey,
so neighbouring tiles overlap by ``size - stride`` pixels (no overlap when ``stride == size``,
the training default; half a tile with the detection default ``stride = 64``). Tile
``(row, col)`` is the ``row``-th tile from the top and ``col``-th from the left.

Along an axis of ``length`` pixels the grid has::

    n = ceil((length - size) / stride) + 1        tiles (length >= size)

at pixel offsets ``0, stride, 2 * stride, ...``, except the last, which is **shifted inward**
to ``length - size`` so that it ends exactly at the raster's edge. Ceiling rather than floor,
so that no pixel at the right or bottom edge is left out; shifting rather than padding, so that
every tile is a full tile of real pixels lying inside the raster (features never see invented
padding, and :meth:`TileGrid.window` is always a valid read window). The price: the last row
and column overlap their neighbours more than the others do, so tile offsets are regular except
for the last one. Use :attr:`TileGrid.row_offsets` / :attr:`TileGrid.col_offsets` (or
:meth:`TileGrid.window`), never ``row * stride``.

``stride`` must lie in ``1..size``: a stride larger than the tile would leave gaps between
tiles, and a survey smaller than one tile has no tile at all; both are refused with
:class:`~pipeline.errors.InputError`.

Everything here is pure arithmetic on the grid (no pixels are read) except
:func:`gather_tiles` and :func:`tile_valid_fraction`, which cut an in-memory block of pixels
into its tiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from pipeline.errors import InputError

__all__ = [
    "DEFAULT_TILE_SIZE",
    "TRAINING_STRIDE",
    "DETECTION_STRIDE",
    "n_tiles",
    "tile_offsets",
    "TileGrid",
    "TileBlock",
    "gather_tiles",
    "tile_valid_fraction",
]

DEFAULT_TILE_SIZE = 128  # pixels; a multiple of the 32 × 32 thumbnail and divides chunk edges
TRAINING_STRIDE = 128  # no overlap: training examples are independent tiles
DETECTION_STRIDE = 64  # half-tile overlap: an object cut by one tile's edge is whole in another

WGS84 = CRS.from_epsg(4326)


def _check(length: int, size: int, stride: int, what: str = "raster") -> None:
    if size < 1:
        raise InputError(f"tile size must be at least 1 pixel, got {size}")
    if not 1 <= stride <= size:
        raise InputError(
            f"tile stride {stride} is outside 1..{size} (the tile size): a stride larger than the "
            f"tile would leave pixels between tiles uncovered; pass a stride of at most {size}"
        )
    if length < size:
        raise InputError(
            f"the {what} is {length} pixels long, smaller than one tile of {size} pixels; use a "
            f"smaller tile size (--size) or a larger survey"
        )


def n_tiles(length: int, size: int, stride: int) -> int:
    """Number of tiles along an axis of ``length`` pixels: ``ceil((length - size) / stride) + 1``."""
    _check(length, size, stride)
    return -(-(length - size) // stride) + 1


def tile_offsets(length: int, size: int, stride: int) -> np.ndarray:
    """Pixel offsets (int64, shape ``(n,)``) of the tiles along an axis; the last is ``length - size``."""
    n = n_tiles(length, size, stride)
    offsets = np.arange(n, dtype=np.int64) * stride
    offsets[-1] = length - size  # shifted inward: the last tile ends at the raster's edge
    return offsets


@dataclass(frozen=True)
class TileBlock:
    """A rectangular group of tiles processed together (one Dask task).

    ``rows``/``cols`` are slices of tile indices; ``window`` is the pixel window spanning all
    their pixels (it reaches into neighbouring Zarr chunks when tiles straddle them: the halo).
    """

    rows: slice
    cols: slice
    window: Window


@dataclass(frozen=True)
class TileGrid:
    """A grid of ``size`` × ``size`` pixel tiles every ``stride`` pixels over a ``height`` × ``width`` raster.

    ``transform`` (pixel → map coordinates) and ``crs`` are the survey's, so tile bounds are in
    the survey's CRS. Build one with :meth:`for_survey`.
    """

    height: int  # pixels
    width: int  # pixels
    size: int = DEFAULT_TILE_SIZE  # tile edge, pixels
    stride: int = TRAINING_STRIDE  # distance between tile origins, pixels
    transform: Affine = Affine.identity()
    crs: CRS | None = None

    def __post_init__(self) -> None:
        _check(self.height, self.size, self.stride, "raster's height")
        _check(self.width, self.size, self.stride, "raster's width")

    @classmethod
    def for_survey(cls, survey: Any, size: int = DEFAULT_TILE_SIZE, stride: int = TRAINING_STRIDE) -> TileGrid:
        """The grid of a :class:`pipeline.store.Survey` (uses its height, width, transform, CRS)."""
        try:
            return cls(int(survey.height), int(survey.width), int(size), int(stride), survey.transform, survey.crs)
        except InputError as exc:
            raise InputError(f"survey {survey.id}: {exc}") from None

    # -- shape -----------------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        return len(self.row_offsets)

    @property
    def n_cols(self) -> int:
        return len(self.col_offsets)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_rows, n_cols)``: the shape of every per-tile array (features, labels, predictions)."""
        return (self.n_rows, self.n_cols)

    @cached_property
    def row_offsets(self) -> np.ndarray:
        """Pixel row of each tile row's top edge, shape ``(n_rows,)`` (read-only)."""
        return _read_only(tile_offsets(self.height, self.size, self.stride))

    @cached_property
    def col_offsets(self) -> np.ndarray:
        """Pixel column of each tile column's left edge, shape ``(n_cols,)`` (read-only)."""
        return _read_only(tile_offsets(self.width, self.size, self.stride))

    # -- one tile --------------------------------------------------------------------------
    def _check_tile(self, row: int, col: int) -> None:
        if not (0 <= row < self.n_rows and 0 <= col < self.n_cols):
            raise IndexError(f"tile ({row}, {col}) is outside the {self.n_rows} × {self.n_cols} grid")

    def window(self, row: int, col: int) -> Window:
        """Pixel window of tile ``(row, col)``; always a full tile inside the raster."""
        self._check_tile(row, col)
        return Window(int(self.col_offsets[col]), int(self.row_offsets[row]), self.size, self.size)

    def tile_bounds(self, row: int, col: int) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` of tile ``(row, col)`` in the survey's CRS (map units)."""
        self._check_tile(row, col)
        rows, cols = slice(row, row + 1), slice(col, col + 1)
        return tuple(float(v) for v in self.bounds_array(rows=rows, cols=cols)[0, 0])  # type: ignore[return-value]

    def tile_bounds_wgs84(self, row: int, col: int) -> tuple[float, float, float, float]:
        """``(west, south, east, north)`` of tile ``(row, col)`` in WGS84 degrees (densified envelope)."""
        self._check_tile(row, col)
        rows, cols = slice(row, row + 1), slice(col, col + 1)
        return tuple(float(v) for v in self.bounds_array(wgs84=True, rows=rows, cols=cols)[0, 0])  # type: ignore[return-value]

    # -- every tile at once ----------------------------------------------------------------
    def _corner_grid(self, samples: int, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates of ``samples`` points along each tile edge, shape (n_rows, n_cols, 4*samples)."""
        t = np.linspace(0.0, self.size, samples)
        # the outline of a tile at the origin, in pixel units (x = column, y = row)
        px = np.concatenate([t, np.full(samples, self.size), t[::-1], np.zeros(samples)])
        py = np.concatenate([np.zeros(samples), t, np.full(samples, self.size), t[::-1]])
        x = self.col_offsets[cols][None, :, None] + px[None, None, :]
        y = self.row_offsets[rows][:, None, None] + py[None, None, :]
        x, y = np.broadcast_arrays(x, y)
        a, b, c, d, e, f = self.transform[:6]
        return a * x + b * y + c, d * x + e * y + f

    def bounds_array(self, wgs84: bool = False, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """Bounds of every tile (or of ``rows`` × ``cols``), shape ``(n_rows, n_cols, 4)`` as (left, bottom, right, top).

        In the survey's CRS by default; with ``wgs84=True`` in longitude/latitude degrees, the
        envelope of each tile's outline densified to 21 points per edge (a projected square is
        not a square in degrees).
        """
        if not wgs84:
            xs, ys = self._corner_grid(2, rows, cols)
        else:
            if self.crs is None:
                raise InputError("this tile grid has no CRS, so its tiles have no WGS84 bounds")
            xs, ys = self._corner_grid(21, rows, cols)
            shape = xs.shape
            lon, lat = warp_transform(self.crs, WGS84, xs.ravel(), ys.ravel())
            xs, ys = np.asarray(lon).reshape(shape), np.asarray(lat).reshape(shape)
        return np.stack([xs.min(-1), ys.min(-1), xs.max(-1), ys.max(-1)], axis=-1)

    def tile_centers(self) -> tuple[np.ndarray, np.ndarray]:
        """``(xs, ys)``, each ``(n_rows, n_cols)``: map coordinates of tile centres in the survey's CRS."""
        half = self.size / 2.0
        cols, rows = np.meshgrid(self.col_offsets + half, self.row_offsets + half)
        a, b, c, d, e, f = self.transform[:6]
        return a * cols + b * rows + c, d * cols + e * rows + f

    def blocks(self, tiles_per_block: tuple[int, int]) -> list[TileBlock]:
        """Split the grid into blocks of at most ``tiles_per_block`` = (rows, cols) tiles, row-major."""
        rows_per, cols_per = (max(1, int(n)) for n in tiles_per_block)
        ro, co = self.row_offsets, self.col_offsets
        out = []
        for r0 in range(0, self.n_rows, rows_per):
            r1 = min(r0 + rows_per, self.n_rows)
            for c0 in range(0, self.n_cols, cols_per):
                c1 = min(c0 + cols_per, self.n_cols)
                y0, x0 = int(ro[r0]), int(co[c0])
                window = Window(x0, y0, int(co[c1 - 1]) + self.size - x0, int(ro[r1 - 1]) + self.size - y0)
                out.append(TileBlock(slice(r0, r1), slice(c0, c1), window))
        return out

    def tiles_per_chunk(self, chunk_edge: int, min_tiles: int = 1) -> tuple[int, int]:
        """Tiles per block (rows, cols) so that a block spans whole ``chunk_edge`` Zarr chunks (plus halo).

        One chunk's worth of tiles, ``chunk_edge // stride`` each way, widened to ``k`` chunks
        across when one chunk holds fewer than ``min_tiles`` tiles (so a task carries enough work).
        """
        n = max(1, int(chunk_edge) // self.stride)
        k = max(1, -(-int(min_tiles) // (n * n)))
        return (n, n * k)

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (stored in the attrs of features, labels and predictions)."""
        return {
            "height": self.height,
            "width": self.width,
            "size": self.size,
            "stride": self.stride,
            "n_rows": self.n_rows,
            "n_cols": self.n_cols,
            "transform": [float(v) for v in self.transform[:6]],
            "crs_wkt": self.crs.to_wkt() if self.crs is not None else None,
            "epsg": self.crs.to_epsg() if self.crs is not None else None,
            "edge_rule": "last row/column shifted inward to end at the raster edge",
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TileGrid:
        crs = CRS.from_wkt(d["crs_wkt"]) if d.get("crs_wkt") else None
        return cls(int(d["height"]), int(d["width"]), int(d["size"]), int(d["stride"]), Affine(*d["transform"]), crs)


def gather_tiles(block: np.ndarray, row_offsets: np.ndarray, col_offsets: np.ndarray, size: int) -> np.ndarray:
    """Cut ``block`` (..., H, W) into tiles: ``(n_rows, n_cols, ..., size, size)`` (a copy).

    ``row_offsets``/``col_offsets`` are pixel offsets inside the block. With non-overlapping,
    evenly spaced tiles this is a reshape; otherwise a gather through a sliding-window view.
    """
    ro = np.asarray(row_offsets, dtype=np.int64)
    co = np.asarray(col_offsets, dtype=np.int64)
    lead = block.ndim - 2
    if _evenly_spaced(ro, size) and _evenly_spaced(co, size):
        # tiles side by side: a view reshaped, then one contiguous copy
        y0, x0 = int(ro[0]) if len(ro) else 0, int(co[0]) if len(co) else 0
        sub = block[..., y0 : y0 + len(ro) * size, x0 : x0 + len(co) * size]
        sub = sub.reshape(*block.shape[:lead], len(ro), size, len(co), size)
        order = (lead, lead + 2, *range(lead), lead + 1, lead + 3)
        return np.ascontiguousarray(sub.transpose(order))
    windows = np.lib.stride_tricks.sliding_window_view(block, (size, size), axis=(-2, -1))
    tiles = windows[..., ro[:, None], co[None, :], :, :]  # (..., n_rows, n_cols, size, size)
    return np.ascontiguousarray(np.moveaxis(tiles, (lead, lead + 1), (0, 1)))


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _evenly_spaced(offsets: np.ndarray, size: int) -> bool:
    return len(offsets) == 0 or bool(np.all(np.diff(offsets) == size))


def tile_valid_fraction(valid: np.ndarray, row_offsets: np.ndarray, col_offsets: np.ndarray, size: int) -> np.ndarray:
    """Fraction (float32, ``(n_rows, n_cols)``) of each tile's pixels that are valid (not nodata)."""
    tiles = gather_tiles(np.asarray(valid, dtype=bool), row_offsets, col_offsets, size)
    return (np.count_nonzero(tiles, axis=(-2, -1)) / float(size * size)).astype(np.float32)
