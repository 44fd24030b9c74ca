"""GeoJSON in and out: vector objects as damwatch reads and writes them.

*GeoJSON* (RFC 7946) holds features: a geometry (point, line, polygon, or multi-parts) and
free properties. damwatch **writes** it as the RFC says: longitude/latitude on WGS84, exterior
rings counter-clockwise and holes clockwise, a ``bbox`` per feature, no ``crs`` member
(:func:`to_wgs84`, :func:`feature`, :func:`feature_collection`). It **reads** what people
actually have (:func:`read_features`): a FeatureCollection, a single Feature or a bare
geometry, in WGS84 unless the legacy ``crs`` member or the caller (``--crs``) names another CRS
(:func:`parse_crs`). Objects are chosen by their properties and by the dates on which they
exist (:func:`select_features`).

Reading refuses, with one clear message naming the file, anything that is not GeoJSON;
:func:`check_geometries` then refuses, naming the feature, coordinates that are not finite
numbers, coordinates outside longitude/latitude range in a file read as WGS84 (the common
mistake: a file in projected metres without a ``crs`` member), and polygons whose rings cross
themselves (their inside is undefined).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform_geom

from pipeline.errors import InputError

__all__ = [
    "GEOMETRY_TYPES",
    "read_features",
    "parse_crs",
    "check_where",
    "matches",
    "select_features",
    "single_parts",
    "polygons",
    "check_geometries",
    "bbox",
    "rfc7946_orient",
    "to_wgs84",
    "from_wgs84",
    "feature",
    "feature_collection",
]

GEOMETRY_TYPES = {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon", "GeometryCollection"}
_CRS84 = {"URN:OGC:DEF:CRS:OGC:1.3:CRS84", "CRS84", "OGC:CRS84"}
_NAME_THE_CRS = 'name their CRS in the file, e.g. "crs": {"type": "name", "properties": {"name": "EPSG:32614"}}'


# --------------------------------------------------------------------------------------------
# Reading


def read_features(
    path: str | Path, what: str = "GeoJSON file", crs: Any = None, fix_crs: str | None = None
) -> tuple[list[dict], str | None]:
    """The features of a GeoJSON file, and the CRS its legacy ``crs`` member names (or None).

    Accepts a FeatureCollection, a Feature or a bare geometry. ``what`` names the file in
    errors ("label file", "truth file"). The geometries are checked
    (:func:`check_geometries`) in the CRS they will be read in: ``crs`` (the caller's, e.g.
    ``--crs``) if given, else the file's ``crs`` member, else WGS84; ``fix_crs`` tells the user
    how to name another CRS (default: the ``crs`` member).
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist; give the path of a GeoJSON file") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a directory; give the path of a GeoJSON file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"{what} {path} is not GeoJSON ({exc}); give a GeoJSON FeatureCollection (export "
            f"other formats with `ogr2ogr -f GeoJSON out.geojson in.shp`)"
        ) from None
    crs_name = None
    if isinstance(doc, dict) and isinstance(doc.get("crs"), dict):
        crs_name = (doc["crs"].get("properties") or {}).get("name")
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "FeatureCollection" and isinstance(doc.get("features", []), list):
        features = doc.get("features") or []
    elif kind == "Feature":
        features = [doc]
    elif kind in GEOMETRY_TYPES:
        features = [{"type": "Feature", "properties": {}, "geometry": doc}]
    else:
        raise InputError(
            f"{what} {path} has GeoJSON type {kind!r}; expected a FeatureCollection, a Feature "
            f"or a geometry"
        )
    if not all(isinstance(f, dict) for f in features):
        raise InputError(f"{what} {path} holds features that are not JSON objects; give a GeoJSON FeatureCollection")
    check_geometries(features, parse_crs(crs, crs_name, path, what), path, what, fix_crs or _NAME_THE_CRS)
    return features, crs_name


def parse_crs(crs: Any, crs_name: str | None, path: str | Path, what: str = "GeoJSON file") -> CRS:
    """The CRS of a file's coordinates: ``crs`` (the caller's, e.g. ``--crs``) if given, else
    the file's legacy ``crs`` member, else WGS84 longitude/latitude as RFC 7946 says."""
    given = crs if crs is not None else crs_name
    if given is None:
        return CRS.from_epsg(4326)
    if isinstance(given, CRS):
        return given
    text = str(given)
    if text.upper() in _CRS84:
        return CRS.from_epsg(4326)
    try:
        return CRS.from_user_input(text)
    except CRSError:
        try:
            return CRS.from_string(text.replace("urn:ogc:def:crs:", "").replace("::", ":"))
        except CRSError:
            raise InputError(
                f"{what} {path} names CRS {text!r}, which PROJ does not know; give it as "
                f"EPSG:<code> (or pass --crs)"
            ) from None


def _iso_date(value: Any) -> str:
    return str(value)[:10]


def check_where(features: Sequence[dict], where: Mapping[str, Any] | None, path: str | Path, what: str = "GeoJSON file") -> None:
    """Refuse a ``where`` key that no feature has: filtering on it would silently select nothing."""
    props = [f.get("properties") or {} for f in features]
    for key in dict(where or {}):
        if not any(key in p for p in props):
            keys = sorted({k for p in props for k in p})
            raise InputError(
                f"{what} {path} has no feature with property {key!r} to filter on; its "
                f"properties are {keys or 'none'}"
            )


def matches(props: Mapping[str, Any], where: Mapping[str, Any] | None) -> bool:
    """Whether properties match ``where``: each key's value is the one given or one of a list
    (compared as given and as text)."""
    for key, wanted in dict(where or {}).items():
        allowed = wanted if isinstance(wanted, (list, tuple, set)) else [wanted]
        if props.get(key) not in allowed and str(props.get(key)) not in {str(a) for a in allowed}:
            return False
    return True


def select_features(
    features: Sequence[dict],
    where: Mapping[str, Any] | None,
    on_date: dt.date | None,
    path: str | Path,
    what: str = "GeoJSON file",
) -> tuple[list[dict], int]:
    """Features whose properties match ``where`` and that exist on ``on_date``; also the number
    of matching features without a geometry (left out).

    ``on_date`` keeps features whose ``dates`` list holds it. A ``where`` key that no feature
    has, or a date filter on a file without ``dates``, is refused: it would silently select
    nothing.
    """
    check_where(features, where, path, what)
    props = [f.get("properties") or {} for f in features]
    if on_date is not None and not any("dates" in p for p in props):
        raise InputError(
            f"{what} {path} has no `dates` property on any feature, so it cannot be filtered "
            f"by date {on_date.isoformat()}; drop the date filter (--on-date) or add to each "
            f"feature a `dates` list of the ISO dates on which it exists"
        )
    selected, no_geometry = [], 0
    for f, p in zip(features, props):
        ok = matches(p, where)
        if ok and on_date is not None:
            ok = on_date.isoformat() in {_iso_date(d) for d in (p.get("dates") or [])}
        if ok:
            if not f.get("geometry"):
                no_geometry += 1
            else:
                selected.append(f)
    return selected, no_geometry


def _feature_name(feature: dict, index: int) -> str:
    props = feature.get("properties") or {}
    for key in ("id", "name"):
        value = feature.get(key) if key == "id" else props.get(key)
        if value is not None:
            return f"feature {index} ({key} {value!r})"
    return f"feature {index}"


def _positions(geometry: dict) -> list:
    """Every position of a geometry (GeometryCollections included), as given."""
    if geometry.get("type") == "GeometryCollection":
        return [p for g in geometry.get("geometries") or [] for p in _positions(g)]

    def walk(c):
        if isinstance(c, (list, tuple)) and c and not isinstance(c[0], (list, tuple)):
            yield c
        elif isinstance(c, (list, tuple)):
            for item in c:
                yield from walk(item)
        else:
            yield c  # not a position at all: reported as such

    return list(walk(geometry.get("coordinates")))


def _segments_cross(ring: np.ndarray) -> tuple[int, int] | None:
    """Indices (i, j) of two non-adjacent edges of a closed ring that touch or cross, or None."""
    a, b = ring[:-1], ring[1:]  # edges a[k] -> b[k]
    n = len(a)

    def orient(p, q, r):  # sign of the turn p -> q -> r
        return np.sign((q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1]) - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0]))

    for i in range(n - 2):
        j = np.arange(i + 2, n if i > 0 else n - 1)  # the last edge is adjacent to the first
        if j.size == 0:
            continue
        o1, o2 = orient(a[i], b[i], a[j]), orient(a[i], b[i], b[j])
        o3, o4 = orient(a[j], b[j], a[i]), orient(a[j], b[j], b[i])
        proper = (o1 * o2 < 0) & (o3 * o4 < 0)
        if proper.any():
            return i, int(j[np.argmax(proper)])
    return None


def check_geometries(features: Sequence[dict], crs: CRS, path: str | Path, what: str = "GeoJSON file",
                     fix_crs: str = _NAME_THE_CRS) -> None:
    """Refuse, naming the feature, geometries that cannot be placed on a map (module docstring).

    ``crs`` is the CRS the file is read in; ``fix_crs`` says how the user names another one.
    """
    geographic = crs.is_geographic
    for index, f in enumerate(features):
        geometry = f.get("geometry")
        if not geometry:
            continue
        name = _feature_name(f, index)
        if not isinstance(geometry, dict) or geometry.get("type") not in GEOMETRY_TYPES:
            raise InputError(f"{what} {path}: {name} has no valid GeoJSON geometry; give a Point, LineString or Polygon")
        for pos in _positions(geometry):
            ok = (
                isinstance(pos, (list, tuple)) and len(pos) >= 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pos[:2])
            )
            if not ok or not all(np.isfinite(pos[:2])):
                raise InputError(
                    f"{what} {path}: {name} has coordinates {json.dumps(pos, default=str)}, which are not "
                    f"two finite numbers; fix or remove that feature"
                )
            x, y = float(pos[0]), float(pos[1])
            if geographic and not (-180 <= x <= 180 and -90 <= y <= 90):
                raise InputError(
                    f"{what} {path}: {name} has coordinates ({x:g}, {y:g}), outside longitude/latitude "
                    f"range, but the file is read as {crs.to_string()} (it has no `crs` member, and RFC 7946 "
                    f"GeoJSON is WGS84). They look projected (metres?): {fix_crs}, or reproject the file "
                    f"with `ogr2ogr -t_srs EPSG:4326 out.geojson {Path(path).name}`"
                )
        for part in single_parts(geometry):
            if part["type"] != "Polygon":
                continue
            for ring in part["coordinates"]:
                xy = np.asarray([p[:2] for p in ring], dtype=np.float64)
                if len(xy) < 4 or not np.array_equal(xy[0], xy[-1]):
                    raise InputError(
                        f"{what} {path}: {name} has a polygon ring of {len(xy)} position(s) that is not "
                        f"closed (at least 4 positions, the last equal to the first); fix that feature"
                    )
                crossing = _segments_cross(xy)
                if crossing is not None:
                    i, j = crossing
                    raise InputError(
                        f"{what} {path}: {name} is a self-intersecting polygon (its edge {i + 1} crosses "
                        f"edge {j + 1}, near ({xy[i][0]:g}, {xy[i][1]:g})), so which pixels it covers is "
                        f"undefined; repair it (QGIS: Vector > Geometry Tools > Fix Geometries, or "
                        f"`ogr2ogr -makevalid out.geojson {Path(path).name}`) or remove it"
                    )


# --------------------------------------------------------------------------------------------
# Geometry helpers


def single_parts(geometry: dict) -> list[dict]:
    """Single-part geometries of ``geometry`` (multi-geometries and collections split)."""
    kind = geometry["type"]
    if kind == "GeometryCollection":
        return [p for g in geometry["geometries"] for p in single_parts(g)]
    if kind.startswith("Multi"):
        single = kind[len("Multi") :]
        return [{"type": single, "coordinates": c} for c in geometry["coordinates"]]
    return [geometry]


def polygons(geometry: dict) -> list:
    """The polygons (lists of rings) of a Polygon or MultiPolygon."""
    return [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]


def _all_positions(coords: Any) -> list:
    if coords and isinstance(coords[0], (int, float)):
        return [coords]
    return [p for c in coords for p in _all_positions(c)]


def bbox(geometry: dict) -> list[float]:
    """[west, south, east, north] of a geometry's positions."""
    parts = single_parts(geometry)
    xy = np.array([p[:2] for part in parts for p in _all_positions(part["coordinates"])], dtype=np.float64)
    return [float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max())]


def _ring_area(ring: Sequence[Sequence[float]]) -> float:
    """Signed area of a closed ring (shoelace); positive when counter-clockwise."""
    xy = np.asarray(ring, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def rfc7946_orient(geometry: dict) -> dict:
    """Exterior rings counter-clockwise, holes clockwise (RFC 7946 section 3.1.6)."""

    def polygon(rings):
        out = []
        for k, ring in enumerate(rings):
            ring = [list(map(float, pt)) for pt in ring]
            ccw = _ring_area(ring) > 0
            if ccw != (k == 0):
                ring = ring[::-1]
            out.append(ring)
        return out

    if geometry["type"] == "Polygon":
        return {"type": "Polygon", "coordinates": polygon(geometry["coordinates"])}
    if geometry["type"] == "MultiPolygon":
        return {"type": "MultiPolygon", "coordinates": [polygon(p) for p in geometry["coordinates"]]}
    return geometry


def to_wgs84(geometry: dict, crs: Any) -> dict:
    """A map-coordinate geometry in ``crs`` as RFC 7946 longitude/latitude, oriented."""
    return rfc7946_orient(dict(transform_geom(crs, "EPSG:4326", geometry, precision=8)))


def from_wgs84(geometry: dict, crs: Any) -> dict:
    """A longitude/latitude geometry in map coordinates of ``crs``."""
    return dict(transform_geom("EPSG:4326", crs, geometry))


# --------------------------------------------------------------------------------------------
# Writing


def feature(geometry: dict, properties: Mapping[str, Any], id: int | str | None = None) -> dict:
    """An RFC 7946 Feature of a WGS84 ``geometry``, with its ``bbox`` (and ``id`` when given)."""
    out: dict[str, Any] = {"type": "Feature"}
    if id is not None:
        out["id"] = id
    out["bbox"] = bbox(geometry)
    out["geometry"] = geometry
    out["properties"] = dict(properties)
    return out


def feature_collection(features: Sequence[dict]) -> dict:
    """An RFC 7946 FeatureCollection (no ``crs`` member: coordinates are WGS84)."""
    return {"type": "FeatureCollection", "features": list(features)}
