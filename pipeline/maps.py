"""Map maths: from a grid of tile probabilities to map cells.

A *tile probability* is the model's probability that one tile of a survey's tile grid
(:mod:`pipeline.tiling`) holds the target. Tiles overlap when the stride is smaller than the
tile size, so a point of the ground is seen by up to ``ceil(size / stride) ** 2`` tiles. A
*probability map* is a raster of *map cells* of ``cell`` survey pixels (the stride by default,
the finest step at which the tile probabilities change), on the survey's CRS. The rule that
combines overlapping tiles: **a cell's value is the mean probability of every scored tile whose
footprint contains the cell's centre** (nodata where no scored tile does). With stride = size
this is the tile's own probability; with stride = size / 2 it is the mean of the four tiles
around the cell, a 2 × 2 box filter that removes the blocky tile edges.

Everything here takes arrays and a tile grid and returns arrays: no file is read or written.
:class:`TileEdges` gives the pixel extent of every tile row and column, and
:func:`covering_range` finds the tiles containing points, in O(log n) per point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine

from pipeline.errors import InputError

__all__ = [
    "PROBABILITY_NODATA",
    "TileEdges",
    "tile_edges",
    "covering_range",
    "sample_tiles",
    "cell_centres",
    "probability_map",
    "cells_beyond",
]

#: Nodata of probability rasters: NaN, never a valid probability.
PROBABILITY_NODATA = float("nan")


@dataclass(frozen=True)
class TileEdges:
    """Pixel extents of a tile grid's rows and columns (half-open intervals, survey pixels).

    Tile ``(r, c)`` covers rows ``row_starts[r] <= y < row_stops[r]`` and columns
    ``col_starts[c] <= x < col_stops[c]``. Starts and stops never decrease along the grid,
    which is what lets a search find the tiles containing a point.
    """

    row_starts: np.ndarray  # (n_rows,) float64
    row_stops: np.ndarray  # (n_rows,)
    col_starts: np.ndarray  # (n_cols,)
    col_stops: np.ndarray  # (n_cols,)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.row_starts), len(self.col_starts)


def tile_edges(grid: Any) -> TileEdges:
    """The :class:`TileEdges` of a tile grid, read from its windows (whatever its edge rule)."""
    n_rows, n_cols = grid.shape
    rows = [grid.window(r, 0) for r in range(n_rows)]
    cols = [grid.window(0, c) for c in range(n_cols)]
    edges = TileEdges(
        row_starts=np.array([w.row_off for w in rows], dtype=np.float64),
        row_stops=np.array([w.row_off + w.height for w in rows], dtype=np.float64),
        col_starts=np.array([w.col_off for w in cols], dtype=np.float64),
        col_stops=np.array([w.col_off + w.width for w in cols], dtype=np.float64),
    )
    for name in ("row_starts", "row_stops", "col_starts", "col_stops"):
        if np.any(np.diff(getattr(edges, name)) < 0):
            raise ValueError(f"tile grid {name} decrease along the grid; cannot locate tiles")
    return edges


def covering_range(starts: np.ndarray, stops: np.ndarray, points: np.ndarray):
    """Index range [lo, hi) of the intervals ``starts[i] <= p < stops[i]`` containing each point."""
    lo = np.searchsorted(stops, points, side="right")  # first interval ending after p
    hi = np.searchsorted(starts, points, side="right")  # first interval starting after p
    return lo, np.maximum(hi, lo)


def sample_tiles(
    probabilities: np.ndarray, edges: TileEdges, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """Mean probability of the scored tiles containing each point; NaN where none does.

    ``probabilities`` is (n_rows, n_cols), NaN where a tile was not scored; ``rows``/``cols``
    are fractional survey pixel coordinates of the points, any equal shapes. The tiles that
    contain a point form a rectangle of the grid (tiles are sorted along both axes), so its
    sum and count come from summed-area tables in O(1) per point, whatever the overlap.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.shape != edges.shape:
        raise ValueError(f"probabilities have shape {p.shape}, the tile grid {edges.shape}")
    scored = np.isfinite(p)
    # Summed-area tables with a zero first row/column: sum over [r0, r1) x [c0, c1).
    total = np.zeros((p.shape[0] + 1, p.shape[1] + 1))
    count = np.zeros_like(total)
    total[1:, 1:] = np.where(scored, p, 0.0).cumsum(0).cumsum(1)
    count[1:, 1:] = scored.cumsum(0).cumsum(1)

    rows = np.asarray(rows, dtype=np.float64)
    cols = np.asarray(cols, dtype=np.float64)
    r0, r1 = covering_range(edges.row_starts, edges.row_stops, rows.ravel())
    c0, c1 = covering_range(edges.col_starts, edges.col_stops, cols.ravel())

    def box(table):
        return table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]

    n = box(count)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, box(total) / np.maximum(n, 1), np.nan)
    return mean.reshape(rows.shape)


def cell_centres(length: float, cell: float, origin: float = 0.0) -> np.ndarray:
    """Centres of the cells ``[origin + k cell, origin + (k+1) cell)`` covering ``[origin, origin + length)``.

    The last cell is cut at ``origin + length``, and its centre is the centre of the part
    kept, so no sample point ever falls outside the extent.
    """
    n = math.ceil(length / cell - 1e-9)
    starts = origin + np.arange(n) * cell
    stops = np.minimum(starts + cell, origin + length)
    return 0.5 * (starts + stops)


def probability_map(
    probabilities: np.ndarray, grid: Any, cell: int | None = None
) -> tuple[np.ndarray, Affine]:
    """The probability map of a tile grid: (h, w) float32 cells and their affine transform.

    A cell is ``cell`` × ``cell`` survey pixels (default: the grid's stride); the map has
    ``ceil(height / cell)`` × ``ceil(width / cell)`` cells, starting at the survey's origin, so
    the last row/column may reach up to ``cell - 1`` pixels past the survey's edge; such a
    cell is sampled at the centre of its part inside the survey. Each cell holds the mean
    probability of the scored tiles containing its centre (the module's rule).
    """
    cell = int(cell or grid.stride)
    if cell < 1:
        raise InputError(f"map cell must be at least 1 pixel, got {cell}")
    centres_r = cell_centres(grid.height, cell)
    centres_c = cell_centres(grid.width, cell)
    rr, cc = np.meshgrid(centres_r, centres_c, indexing="ij")
    values = sample_tiles(probabilities, tile_edges(grid), rr, cc).astype(np.float32)
    return values, grid.transform * Affine.scale(cell)


def cells_beyond(transform: Affine, shape: tuple[int, int], bounds: tuple[float, float, float, float]) -> np.ndarray:
    """(h, w) bool: the cells of a north-up raster whose centre lies outside ``bounds``.

    ``bounds`` is (left, bottom, right, top) in the raster's CRS, e.g. a survey's extent. Such a
    cell describes ground the survey never saw and must be nodata, however its value was
    sampled: a map of ``ceil(width / cell)`` cells overhangs the survey by up to a cell, and
    without this its last column and row would carry values up to a cell beyond the edge. A
    cell with its centre inside (at least half of it on the survey) keeps its value, so at most
    half a cell of data-bearing raster lies beyond the edge and no edge strip is lost. The
    rule is GDAL's own for rasterizing (a pixel is in a polygon when its centre is).
    """
    h, w = shape
    xs = transform.c + transform.a * (np.arange(w) + 0.5)
    ys = transform.f + transform.e * (np.arange(h) + 0.5)
    left, bottom, right, top = bounds
    outside_x = (xs < left) | (xs > right)
    outside_y = (ys < bottom) | (ys > top)
    return outside_y[:, None] | outside_x[None, :]
