"""The ground truth of a synthetic area: where every dam and every look-alike is, as GeoJSON.

The *truth* is an RFC 7946 FeatureCollection (WGS84 longitude/latitude, no ``crs`` member):
one Point per dam at the middle of its barrier, properties ``class="dam"``, ``id``, ``status``
(``new``, ``gone``, ``persisting``: relative to the first date), ``context`` (``main_stream``
-- the main channel of any stream, ``side_channel``, ``lake_outlet``), ``dates`` (ISO dates
on which it stands), ``barrier_length_m``, ``pond_length_m``, ``pond_width_m``; one Point per
hard negative with ``class="hard_negative"``, ``id``, ``kind`` (``road_crossing``,
``culvert``, ``fallen_tree``, ``narrows``, ``pond_without_dam``), ``dates``.

The *shapes* (:func:`shapes_geojson`, same conventions) are each dam's parts, for explaining
a detection: its barrier as a LineString along the curved arc (properties ``id``,
``part="barrier"``), passing through the truth point at its middle; and its pond as a Polygon
(``id``, ``part="pond"``, ``dates`` on which the pond stands), an approximate outline of the
flooded channel without the shore's noise.

Coordinates are the objects' true positions (scene coordinates through the area's UTM
projection), rounded to 8 decimals of a degree (~1 mm). :func:`standing_counts` counts what
stands on each date, per dam context and per look-alike kind.
"""

from __future__ import annotations

import numpy as np
from rasterio.crs import CRS
from rasterio.warp import transform_geom

from pipeline.synthetic.geometry import tangents
from pipeline.synthetic.layout import DAM_CONTEXTS, LOOK_ALIKE_KINDS
from pipeline.synthetic.objects import Dam, Scene

__all__ = ["truth_geojson", "shapes_geojson", "standing_counts", "barrier_line", "pond_outline"]

ARC_VERTICES = 9  # vertices of a barrier's LineString (odd: the middle one is the truth point)
POND_STATIONS = 6  # cross-sections of a pond's outline, from the barrier to its upstream end


def truth_geojson(scene: Scene) -> dict:
    """The ground truth as an RFC 7946 FeatureCollection (WGS84 lon/lat, no ``crs`` member)."""
    src = CRS.from_epsg(scene.epsg)
    dates = [d.isoformat() for d in scene.dates]

    def point(x: float, y: float) -> dict:
        e, n = scene.to_map(x, y)
        geom = transform_geom(src, "EPSG:4326", {"type": "Point", "coordinates": (float(e), float(n))})
        return {"type": "Point", "coordinates": [round(c, 8) for c in geom["coordinates"]]}

    features = []
    for dam in scene.dams:
        features.append(
            {
                "type": "Feature",
                "id": dam.id,
                "geometry": point(dam.x, dam.y),
                "properties": {
                    "class": "dam",
                    "id": dam.id,
                    "status": dam.status,
                    "context": dam.context,
                    "dates": [d for d, e in zip(dates, dam.exists) if e],
                    "barrier_length_m": round(2 * dam.barrier_half, 1),
                    "pond_length_m": round(dam.pond_length, 1),
                    "pond_width_m": round(2 * dam.pond_half, 1),
                },
            }
        )
    for neg in scene.negatives:
        features.append(
            {
                "type": "Feature",
                "id": neg.id,
                "geometry": point(neg.x, neg.y),
                "properties": {"class": "hard_negative", "id": neg.id, "kind": neg.kind, "dates": dates},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _to_wgs84(scene: Scene, geometry: dict) -> dict:
    """A GeoJSON geometry in scene metres -> WGS84 lon/lat rounded to 8 decimals (~1 mm)."""

    def project(coords):
        if isinstance(coords[0], (int, float)):
            e, n = scene.to_map(coords[0], coords[1])
            return (float(e), float(n))
        return [project(c) for c in coords]

    geom = transform_geom(CRS.from_epsg(scene.epsg), "EPSG:4326", {**geometry, "coordinates": project(geometry["coordinates"])})

    def rounded(coords):
        if isinstance(coords[0], (int, float)):
            return [round(c, 8) for c in coords]
        return [rounded(c) for c in coords]

    return {"type": geometry["type"], "coordinates": rounded(geom["coordinates"])}


def barrier_line(dam: Dam, n: int = ARC_VERTICES) -> np.ndarray:
    """The barrier's centreline (n, 2) in scene metres: u = curve (v / barrier_half)^2 for v
    from -barrier_half to +barrier_half, in the dam's frame (u downstream, v to its left)."""
    v = np.linspace(-dam.barrier_half, dam.barrier_half, n)
    u = dam.curve * (v / dam.barrier_half) ** 2
    return np.stack([dam.x + u * dam.ux - v * dam.uy, dam.y + u * dam.uy + v * dam.ux], axis=1)


def pond_outline(dam: Dam, n: int = POND_STATIONS) -> np.ndarray:
    """The pond's outline (2 n + 1, 2) in scene metres, closed: the flooded channel's two banks
    at ``n`` cross-sections from the barrier to ``pond_length`` upstream, where the pond meets
    the channel. Cross-sections are square to the channel, at its half-width there."""
    pts = np.stack([dam.pond.ax, dam.pond.ay], axis=1)  # from the barrier upstream, STEP_M apart
    half = dam.pond.ha
    dist = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    stations = np.linspace(0.0, min(dam.pond_length, dist[-1]), n)
    j = np.minimum(np.searchsorted(dist, stations), len(pts) - 1)
    t = tangents(pts, 2)[j]
    normal = np.stack([-t[:, 1], t[:, 0]], axis=1) * half[j][:, None]
    left, right = pts[j] + normal, pts[j] - normal
    ring = np.concatenate([left, right[::-1], left[:1]])
    return ring


def _counter_clockwise(ring: list) -> list:
    """RFC 7946's right-hand rule: an exterior ring runs counter-clockwise (lon east, lat north)."""
    xy = np.asarray(ring)
    area2 = float(np.sum(xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1]))
    return ring if area2 > 0 else ring[::-1]


def shapes_geojson(scene: Scene) -> dict:
    """Each dam's barrier (LineString) and pond (Polygon) as an RFC 7946 FeatureCollection."""
    dates = [d.isoformat() for d in scene.dates]
    features = []
    for dam in scene.dams:
        barrier = _to_wgs84(scene, {"type": "LineString", "coordinates": barrier_line(dam).tolist()})
        features.append({"type": "Feature", "id": f"{dam.id}-barrier", "geometry": barrier, "properties": {"id": dam.id, "part": "barrier"}})
        pond = _to_wgs84(scene, {"type": "Polygon", "coordinates": [pond_outline(dam).tolist()]})
        pond["coordinates"] = [_counter_clockwise(pond["coordinates"][0])]
        standing = [d for d, e in zip(dates, dam.exists) if e]
        features.append({"type": "Feature", "id": f"{dam.id}-pond", "geometry": pond, "properties": {"id": dam.id, "part": "pond", "dates": standing}})
    return {"type": "FeatureCollection", "features": features}


def standing_counts(scene: Scene) -> dict[str, dict[str, dict[str, int]]]:
    """Per ISO date: standing dams per context and look-alikes per kind.

    A dam stands on date k if ``exists[k]``; a look-alike stands on every date.
    """
    out = {}
    for k, date in enumerate(scene.dates):
        dams = {c: sum(d.exists[k] and d.context == c for d in scene.dams) for c in DAM_CONTEXTS}
        look_alikes = {kind: sum(n.kind == kind for n in scene.negatives) for kind in LOOK_ALIKE_KINDS}
        out[date.isoformat()] = {"dams": dams, "hard_negatives": look_alikes}
    return out
