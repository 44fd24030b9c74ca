"""Ground truth: the objects really there, as damwatch reads them from GeoJSON.

A *truth file* is a GeoJSON whose features are objects on the ground. Each is one of:

- a **target**, what the detector should find. By default a feature whose ``class`` is
  ``"dam"``, or, in a truth without ``class``, one whose ``kind`` is absent or ``"dam"``
  (:func:`is_target`); ``where`` (``--where class=dam``) chooses them by property instead;
- a **look-alike**, something a careless model takes for a target (a road crossing, a fallen
  tree, a pond without a dam): any other feature that names its ``kind``. The synthetic truth
  writes them as ``class: "hard_negative"``.

Properties damwatch reads: ``dates`` (the ISO dates on which the object exists; without it,
the object exists on every date), ``context`` (the kind of place: ``main_stream``,
``side_channel``, ``lake_outlet``, or any other value), ``status`` (``new``, ``gone``,
``persisting`` relative to the truth's first date) and ``kind`` (of a look-alike). An object is
located at the mean of its vertices (a point for a point; the middle of a short line).

Coordinates are WGS84 longitude/latitude as RFC 7946 says, unless the file's legacy ``crs``
member names another CRS.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rasterio.warp import transform as warp_transform

from pipeline.errors import InputError
from pipeline.geojson import check_where, matches, parse_crs, read_features

__all__ = ["TruthObjects", "read_truth", "is_target", "exists_on", "check_targets", "truth_objects", "change_class"]


def read_truth(path: str | os.PathLike) -> dict:
    """A ground-truth GeoJSON as a FeatureCollection dict (keeping a legacy ``crs`` member)."""
    features, crs_name = read_features(path, what="truth file")
    truth: dict[str, Any] = {"type": "FeatureCollection", "features": features, "source": str(path)}
    if crs_name is not None:
        truth["crs"] = {"type": "name", "properties": {"name": crs_name}}
    return truth


def is_target(props: Mapping[str, Any]) -> bool:
    """The default rule for the objects to find: ``class`` "dam"; or, in a truth without
    ``class``, a feature without a ``kind`` or with ``kind`` "dam"."""
    if "class" in props:
        return props["class"] == "dam"
    return props.get("kind", "dam") in ("dam", None)


def exists_on(props: Mapping[str, Any], date: dt.date | None) -> bool:
    """Whether an object exists on ``date``, from its ``dates`` list when it has one."""
    dates = props.get("dates")
    if date is None or dates is None:
        return True
    return date.isoformat() in {str(d)[:10] for d in dates}


def _representative_point(geometry: Mapping[str, Any]) -> tuple[float, float]:
    """The mean of a geometry's vertices."""

    def flatten(coords):
        if isinstance(coords[0], (int, float)):
            yield coords
        else:
            for c in coords:
                yield from flatten(c)

    pts = np.array([c[:2] for c in flatten(geometry["coordinates"])], dtype=np.float64)
    return float(pts[:, 0].mean()), float(pts[:, 1].mean())


@dataclass(frozen=True)
class TruthObjects:
    """Objects of a truth at their points in map coordinates: ``x``, ``y`` (N,), ``props`` (N dicts)."""

    x: np.ndarray
    y: np.ndarray
    props: tuple[dict, ...]

    def __len__(self) -> int:
        return len(self.props)

    def values(self, key: str, missing: Any = None) -> list:
        """The property ``key`` of every object (``missing`` where absent)."""
        return [p.get(key, missing) for p in self.props]

    def take(self, mask: Sequence[bool] | np.ndarray) -> "TruthObjects":
        keep = np.asarray(mask, dtype=bool)
        return TruthObjects(self.x[keep], self.y[keep], tuple(p for p, k in zip(self.props, keep) if k))


def _target_rule(truth: Mapping[str, Any], where: Mapping[str, Any] | None) -> Callable[[Mapping[str, Any]], bool]:
    if not where:
        return is_target
    check_where(truth["features"], where, truth.get("source", "the truth file"), what="truth file")
    return lambda props: matches(props, where)


def check_targets(truth: Mapping[str, Any], where: Mapping[str, Any] | None) -> None:
    """Refuse a truth in which no feature is a target (by ``where``, or by :func:`is_target`)."""
    rule = _target_rule(truth, where)
    if any(rule(f.get("properties") or {}) for f in truth["features"] if f.get("geometry")):
        return
    source = truth.get("source", "the truth file")
    if where:
        shown = " ".join(f"--where {k}={v if not isinstance(v, list) else ','.join(map(str, v))}" for k, v in where.items())
        values = {k: sorted({str((f.get("properties") or {}).get(k)) for f in truth["features"]}) for k in where}
        raise InputError(
            f"truth file {source}: no feature matches {shown}; the file's values are "
            + "; ".join(f"{k}: {', '.join(v[:8])}" for k, v in values.items())
            + " — choose the targets with one of them"
        )
    raise InputError(
        f"truth file {source} has no target object (a feature with class \"dam\", or without a kind); "
        f"choose the targets with --where KEY=VALUE, e.g. --where class=dam"
    )


def truth_objects(
    truth: Mapping[str, Any],
    crs: Any,
    date: dt.date | None = None,
    where: Mapping[str, Any] | None = None,
    which: str = "targets",
) -> TruthObjects:
    """The truth's ``which`` ("targets" or "lookalikes") objects existing on ``date``, in ``crs``.

    Targets follow ``where`` (a property filter) or :func:`is_target`; look-alikes are the
    other objects that name their ``kind``. Coordinates outside longitude/latitude range in a
    file that names no CRS are refused: they are map coordinates of an unnamed CRS.
    """
    if which not in ("targets", "lookalikes"):
        raise ValueError(f"which={which!r}: 'targets' or 'lookalikes'")
    rule = _target_rule(truth, where)
    points, props = [], []
    for feature in truth["features"]:
        p = feature.get("properties") or {}
        if not feature.get("geometry") or not exists_on(p, date):
            continue
        target = rule(p)
        if (which == "targets" and target) or (which == "lookalikes" and not target and p.get("kind") is not None):
            points.append(_representative_point(feature["geometry"]))
            props.append(p)
    if not points:
        return TruthObjects(np.zeros(0), np.zeros(0), ())
    u, v = np.array(points, dtype=np.float64).T
    crs_name = (truth.get("crs") or {}).get("properties", {}).get("name")
    source = parse_crs(None, crs_name, truth.get("source", "truth"), "truth file")
    if crs_name is None and (np.abs(u).max() > 180 or np.abs(v).max() > 90):
        raise InputError(
            f"truth file {truth.get('source', '')} has coordinates such as ({u[0]:.1f}, {v[0]:.1f}) outside "
            f"longitude/latitude range and names no CRS; GeoJSON is WGS84 longitude/latitude: "
            f"reproject it (ogr2ogr -t_srs EPSG:4326 out.geojson in.geojson) or add a crs member"
        )
    xs, ys = warp_transform(source, crs, u.tolist(), v.tolist())
    return TruthObjects(np.asarray(xs), np.asarray(ys), tuple(props))


def change_class(props: Mapping[str, Any], before: dt.date, after: dt.date) -> str:
    """An object's change class between two dates: ``new``, ``gone``, ``persisting`` or ``absent``.

    From its ``dates`` list when it has one (present after only: new; before only: gone;
    both: persisting), else from its ``status`` (relative to the truth's first date, so
    swapped when ``before`` is the later date).
    """
    dates = props.get("dates")
    if dates is not None:
        days = {str(d)[:10] for d in dates}
        b, a = before.isoformat() in days, after.isoformat() in days
        return "persisting" if a and b else "new" if a else "gone" if b else "absent"
    status = str(props.get("status", "persisting"))
    if before > after:
        return {"new": "gone", "gone": "new"}.get(status, status)
    return status
