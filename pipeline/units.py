"""Ground units: sizes in map units said in metres too.

A survey in a geographic CRS (WGS84, NAD83 longitude/latitude) has pixels measured in degrees,
and "0.0000129 degrees" tells a field scientist nothing; a projected survey may be in feet.
:func:`ground_size` turns a size in map units into metres; for degrees it does so at a given
latitude (a survey's centre), on the WGS84 ellipsoid: one degree of latitude spans
``pi / 180 * M(phi)`` metres and one of longitude ``pi / 180 * N(phi) * cos(phi)``, with
``M`` and ``N`` the meridional and prime-vertical radii of curvature. Over a survey a few km
across the error of using the centre's latitude is far below a pixel; other datums differ by
less than 1e-5.

:func:`describe_size` is the phrase the command line prints: "5 x 5 metre" for a projected
survey in metres, "0.0000129 x 0.0000090 degrees (1.00 x 1.00 m at the survey's centre)" for a
geographic one.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["WGS84_A", "WGS84_F", "metres_per_degree", "ground_size", "describe_size", "cell_area_m2"]

WGS84_A = 6378137.0  # semi-major axis, metres
WGS84_F = 1 / 298.257223563  # flattening


def _crs(crs: Any) -> Any:
    from rasterio.crs import CRS

    return crs if isinstance(crs, CRS) else CRS.from_user_input(crs)


def metres_per_degree(latitude: float) -> tuple[float, float]:
    """Metres spanned by one degree of (longitude, latitude) at ``latitude`` degrees (WGS84)."""
    phi = math.radians(latitude)
    e2 = WGS84_F * (2 - WGS84_F)
    w = math.sqrt(1 - e2 * math.sin(phi) ** 2)
    prime_vertical = WGS84_A / w  # N(phi)
    meridional = WGS84_A * (1 - e2) / w**3  # M(phi)
    return math.pi / 180 * prime_vertical * math.cos(phi), math.pi / 180 * meridional


def ground_size(crs: Any, size_x: float, size_y: float, centre: tuple[float, float] | None = None) -> tuple[float, float]:
    """(x, y) sizes in map units of ``crs`` as metres on the ground.

    Projected CRS: by its linear unit (a foot is 0.3048 m). Geographic CRS: at the latitude of
    ``centre`` (x, y in the CRS, i.e. longitude, latitude), which is then required. ``crs``: a
    rasterio CRS or anything ``CRS.from_user_input`` reads ("EPSG:32614", WKT).
    """
    crs = _crs(crs)
    if crs.is_geographic:
        if centre is None:
            raise ValueError("a size in degrees needs the latitude it is measured at")
        per_lon, per_lat = metres_per_degree(centre[1])
        return abs(size_x) * per_lon, abs(size_y) * per_lat
    factor = float(crs.linear_units_factor[1])
    return abs(size_x) * factor, abs(size_y) * factor


def _length(metres: float) -> str:
    return f"{metres / 1000:.3g} km" if metres >= 1000 else f"{metres:.3g} m"


def _pair(x: str, y: str) -> str:
    return x if x == y else f"{x} x {y}"


def describe_size(crs: Any, size_x: float, size_y: float | None = None, centre: tuple[float, float] | None = None,
                  where: str = "the survey's centre") -> str:
    """A size in map units as a person reads it, in metres beside degrees (module docstring)."""
    crs = _crs(crs)
    size_y = size_x if size_y is None else size_y
    if crs.is_geographic:
        mx, my = ground_size(crs, size_x, size_y, centre)
        degrees = _pair(f"{abs(size_x):.7g}", f"{abs(size_y):.7g}")
        return f"{degrees} degrees ({_pair(_length(mx), _length(my))} at {where})"
    unit = crs.linear_units or "map units"
    text = f"{_pair(f'{abs(size_x):g}', f'{abs(size_y):g}')} {unit}"
    if unit not in ("metre", "meter", "metres", "meters", "m"):
        mx, my = ground_size(crs, size_x, size_y)
        text += f" ({_pair(_length(mx), _length(my))})"
    return text


def cell_area_m2(crs: Any, size_x: float, size_y: float, centre: tuple[float, float] | None = None) -> float:
    """Ground area of one cell of ``size_x`` x ``size_y`` map units, square metres."""
    mx, my = ground_size(crs, size_x, size_y, centre)
    return mx * my
