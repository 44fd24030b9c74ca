"""The ground truth of a synthetic area: where every dam and every look-alike is, as GeoJSON.

The *truth* is an RFC 7946 FeatureCollection (WGS84 longitude/latitude, no ``crs`` member):
one Point per dam at the middle of its barrier, properties ``class="dam"``, ``id``, ``status``
(``new``, ``gone``, ``persisting``: relative to the first date), ``context`` (``main_stream``
-- the main channel of any stream, ``side_channel``, ``lake_outlet``), ``dates`` (ISO dates
on which it stands), ``barrier_length_m``, ``pond_length_m``, ``pond_width_m``; one Point per
hard negative with ``class="hard_negative"``, ``id``, ``kind`` (``road_crossing``,
``culvert``, ``fallen_tree``, ``narrows``, ``pond_without_dam``), ``dates``.

Coordinates are the objects' true positions (scene coordinates through the area's UTM
projection), rounded to 8 decimals of a degree (~1 mm).
"""

from __future__ import annotations

from rasterio.crs import CRS
from rasterio.warp import transform_geom

from pipeline.synthetic.objects import Scene

__all__ = ["truth_geojson"]


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
