"""Coordinates of tile groups: what xarray and rioxarray need to place them on the map.

A *tile group* in the store (features, labels, predictions) holds one value (or vector) per
tile of a survey's tile grid (:mod:`pipeline.tiling`). Opened with
``xarray.open_zarr(path, decode_coords="all")`` it should be a georeferenced raster of tiles,
as a survey is (DESIGN decision 3), so :func:`add_tile_coordinates` writes into the group:

  ``y``, ``x``      (n_rows,), (n_cols,) map coordinates of the tile centres in the survey's CRS
                    (CF ``projection_y_coordinate``/``latitude`` attributes and units)
  ``spatial_ref``   the CF grid mapping: ``crs_wkt``, ``spatial_ref`` and ``GeoTransform``

and the data arrays name ``y``/``x`` as their first two dimensions and carry
``grid_mapping: spatial_ref``. ``rio.crs`` then reads the CRS, and ``rio.transform()`` the
tile raster's affine transform: a cell of ``stride`` pixels centred on each regular tile
centre. The last row and column of tiles are shifted inward to end at the survey's edge, so
their centres (which ``y``/``x`` give exactly) sit closer to their neighbours than the
transform's regular spacing says; everywhere else the two agree.

Only north-up grids get ``y``/``x`` (a rotated survey has no 1-D coordinates); ``spatial_ref``
is written for every grid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine

if TYPE_CHECKING:  # pragma: no cover
    import zarr

    from pipeline.tiling import TileGrid

__all__ = ["TILE_DIMS", "tile_transform", "add_cell_coordinates", "add_tile_coordinates", "grid_mapping_attrs"]

#: Dimension names of a tile group's arrays: tile rows along y, tile columns along x.
TILE_DIMS = ("y", "x")


def tile_transform(grid: "TileGrid") -> Affine:
    """The affine transform of the tile raster: cells of ``stride`` pixels centred on the tile centres."""
    offset = (grid.size - grid.stride) / 2.0  # pixels from a tile's corner to its cell's corner
    return grid.transform * Affine.translation(offset, offset) * Affine.scale(grid.stride)


def add_tile_coordinates(group: "zarr.Group", grid: "TileGrid") -> None:
    """Write ``y``, ``x`` (the tile centres, a shifted last tile included) and ``spatial_ref``
    for ``grid`` into ``group`` (module docstring)."""
    t = grid.transform
    half = grid.size / 2.0
    ys, xs = t.f + t.e * (grid.row_offsets + half), t.c + t.a * (grid.col_offsets + half)
    _write_coordinates(group, ys, xs, grid.crs, tile_transform(grid), t.b == 0 and t.d == 0, "tile centres")


def add_cell_coordinates(group: "zarr.Group", transform: Affine, shape: tuple[int, int], crs: Any) -> None:
    """Write ``y``, ``x`` (the centres of the cells of a raster of ``shape`` on ``transform``)
    and ``spatial_ref`` into ``group``, so xarray/rioxarray open its arrays georeferenced."""
    t = transform
    ys, xs = t.f + t.e * (np.arange(shape[0]) + 0.5), t.c + t.a * (np.arange(shape[1]) + 0.5)
    _write_coordinates(group, ys, xs, crs, t, t.b == 0 and t.d == 0, "cell centres")


def _write_coordinates(group: "zarr.Group", ys: np.ndarray, xs: np.ndarray, crs: Any, transform: Affine,
                       north_up: bool, what: str) -> None:
    from zarr.codecs import ZstdCodec

    if north_up:
        projected = crs is None or not crs.is_geographic
        units = (crs.linear_units if crs is not None and crs.linear_units else "unknown") if projected else None
        for name, values in (("y", ys), ("x", xs)):
            arr = group.create_array(
                name, shape=values.shape, chunks=values.shape, dtype="float64", compressors=ZstdCodec(level=3),
                dimension_names=[name],
                attributes={
                    "standard_name": f"projection_{name}_coordinate" if projected else ("latitude" if name == "y" else "longitude"),
                    "long_name": f"{name} of the {what}",
                    "units": units if projected else ("degrees_north" if name == "y" else "degrees_east"),
                    "axis": name.upper(),
                },
            )
            arr[:] = np.asarray(values, dtype=np.float64)
    if crs is not None:
        ref = group.create_array("spatial_ref", shape=(), dtype="int64", fill_value=0, dimension_names=[])
        ref.attrs.update({
            "crs_wkt": crs.to_wkt(),
            "spatial_ref": crs.to_wkt(),
            "GeoTransform": " ".join(repr(float(v)) for v in transform.to_gdal()),
        })
        ref[()] = 0


def grid_mapping_attrs(grid: "TileGrid") -> dict[str, Any]:
    """Attributes a data array of a tile group carries: ``grid_mapping`` when the grid has a CRS."""
    return {"grid_mapping": "spatial_ref"} if grid.crs is not None else {}
