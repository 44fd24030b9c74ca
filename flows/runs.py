"""Run records: what one flow run did, on disk (``runs/<run_id>/``) and as Prefect artifacts.

A *run* is one execution of a damwatch flow. Its directory ``<store>/runs/<run_id>/`` holds the
maps and reports the run wrote, ``summary.json`` (the run's figures) and ``provenance.json``
(flow, parameters, Prefect flow-run id, package versions, and every stage with its input
fingerprint, whether it ran or was skipped, and its seconds). The run id is
``<UTC start, YYYYmmddTHHMMSSZ>-<flow>-<last 8 hex digits of the Prefect flow-run id>``: it
sorts by time, says what ran, and leads back to the run in the Prefect UI.

A run that is killed (SIGKILL, a power cut) cannot write its end. While it runs, a hidden
marker ``runs/.<run_id>.run~<host>~<pid>~<start>~…`` names its process; the next run on this
host whose marker's process is dead sweeps it: an interrupted run that wrote nothing but its
record is removed, one that wrote outputs keeps them with ``"status": "interrupted"`` in its
``provenance.json``. Before any of this, the store is checked writable, and the staging that
dead processes left is removed (:meth:`pipeline.store.Store.sweep`).

The same facts go to Prefect as artifacts, keyed by flow so the UI shows their history:
``<flow>-summary`` (markdown), ``<flow>-top-detections`` (table) and ``<flow>-maps``
(markdown list of links to the output files and the run folder, ``file://`` URIs).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from pipeline import __version__
from pipeline.files import disk_full, is_disk_full, owned_name, owner_gone, owner_of, sweep_owned
from pipeline.stac import write_run_catalog
from pipeline.store import Store

__all__ = ["RunRecord", "artifact_key", "markdown_table", "top_detections"]


def artifact_key(flow: str, what: str) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    return f"{flow}-{what}".lower().replace("_", "-")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "_none_"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def top_detections(geojson_paths: Iterable[str | os.PathLike], n: int = 10) -> list[dict]:
    """The ``n`` most probable detections across detection GeoJSON files.

    Each row: survey, detection id (its rank in its file), probability, confidence class and
    longitude/latitude (see :func:`pipeline.results.write_detection_maps`).
    """
    rows = []
    for path in geojson_paths:
        for feature in json.loads(Path(path).read_text()).get("features", []):
            p = feature["properties"]
            rows.append(
                {
                    "survey": p.get("survey_id", ""),
                    "id": p["id"],
                    "probability": float(p["probability"]),
                    "confidence": p["confidence"],
                    "lon": p["lon"],
                    "lat": p["lat"],
                }
            )
    rows.sort(key=lambda r: (-r["probability"], r["survey"], r["id"]))
    return rows[:n]


def _prefect_run() -> tuple[str | None, str | None]:
    try:
        return flow_run.get_id(), flow_run.get_name()
    except Exception:  # outside a flow run
        return None, None


def _versions() -> dict[str, str]:
    found = {"damwatch": __version__, "python": platform.python_version()}
    for name in ("prefect", "dask", "distributed", "zarr", "numpy", "rasterio"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _link(path: str | os.PathLike) -> str:
    """A markdown link to a file or folder (file:// URI of its absolute path), which the Prefect
    UI shows as a link, named by the file."""
    target = Path(path).resolve()
    return f"[{target.name}]({target.as_uri()})"


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


class RunRecord:
    """The record of one flow run; create it at the start of the flow, ``finish`` it at the end."""

    def __init__(self, store: Store, flow: str, parameters: Mapping[str, Any]):
        self.store = store
        self.flow = flow
        self.parameters = dict(parameters)
        self.started = dt.datetime.now(dt.timezone.utc)
        self._t0 = time.perf_counter()
        self.prefect_id, self.prefect_name = _prefect_run()
        # The last 8 hex digits: Prefect's ids are time-ordered (UUIDv7), their first digits repeat.
        short = (self.prefect_id or uuid.uuid4().hex).replace("-", "")[-8:]
        self.run_id = f"{self.started:%Y%m%dT%H%M%SZ}-{flow.replace('_', '-')}-{short}"
        self.dir = store.runs_dir / self.run_id
        self.stages: list[dict] = []
        store.check_writable()  # before any work: one paragraph, not a traceback halfway
        store.sweep()
        sweep_interrupted_runs(store)
        self._marker = store.runs_dir / owned_name(self.run_id, "run")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._marker.touch()
            self._write_provenance("running")
        except OSError as exc:
            if is_disk_full(exc):  # one paragraph, not a traceback: see pipeline.files
                self._marker.unlink(missing_ok=True)
                raise disk_full(exc, self.dir) from None
            raise

    def add(self, outcome: Mapping[str, Any]) -> dict:
        """Note a stage outcome (the dict a stage task returns); returns it."""
        self.stages.append(dict(outcome))
        return dict(outcome)

    @contextlib.contextmanager
    def failing(self) -> Iterator[None]:
        """On an exception inside the block, write ``provenance.json`` with the error, re-raise."""
        try:
            yield
        except BaseException as exc:
            try:
                self._write_provenance("failed", error=f"{type(exc).__name__}: {exc}")
            except OSError:  # a full disk: the error itself matters more than its record
                pass
            self._marker.unlink(missing_ok=True)
            raise

    def seconds(self) -> dict[str, float]:
        """Seconds per stage name, summed over subjects (skipped stages count 0)."""
        totals: dict[str, float] = {}
        for s in self.stages:
            totals[s["stage"]] = round(totals.get(s["stage"], 0.0) + float(s.get("seconds", 0.0)), 3)
        return totals

    def finish(
        self,
        summary: Mapping[str, Any],
        headline: Sequence[str] = (),
        detections: Sequence[Mapping[str, Any]] = (),
        maps: Mapping[str, str] | None = None,
        error: str | None = None,
    ) -> dict:
        """Write ``summary.json`` and ``provenance.json`` and create the Prefect artifacts.

        ``headline`` lines open the markdown summary (surveys, tiles, detections, change
        counts, metrics); ``detections`` are rows for the top-detections table; ``maps`` names
        output paths (label -> path). ``error``: the run is failing with this message after
        summing up what it did (the watch flow with files released for the next run); both
        files then say ``"status": "failed"``.
        """
        maps = dict(maps or {})
        full = {
            "run_id": self.run_id,
            "flow": self.flow,
            "status": "failed" if error else "completed",
            "error": error,
            "run_dir": str(self.dir),
            **dict(summary),
            "stages": [
                {k: s.get(k) for k in ("stage", "subject", "status", "seconds")} for s in self.stages
            ],
            "seconds": {**self.seconds(), "total": round(time.perf_counter() - self._t0, 3)},
            "maps": maps,
        }
        self._write_provenance("failed" if error else "completed", error=error)
        if not error:
            write_run_catalog(self.dir, maps.values(), self.run_id, f"Outputs of damwatch {self.flow} run {self.run_id}")
        _write_json(self.dir / "summary.json", full)  # last: a run with a summary is complete
        self._marker.unlink(missing_ok=True)
        self._artifacts(full, headline, detections, maps)
        return full

    def _write_provenance(self, status: str, error: str | None = None) -> None:
        _write_json(
            self.dir / "provenance.json",
            {
                "run_id": self.run_id,
                "flow": self.flow,
                "status": status,
                "error": error,
                "parameters": self.parameters,
                "prefect_flow_run_id": self.prefect_id,
                "prefect_flow_run_name": self.prefect_name,
                "started": self.started.isoformat(timespec="milliseconds"),
                "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
                "host": socket.gethostname(),
                "store": str(self.store.root.resolve()),
                "versions": _versions(),
                "stages": self.stages,
            },
        )

    def _artifacts(self, summary, headline, detections, maps) -> None:
        if self.prefect_id is None:
            return
        stage_rows = [
            {
                "stage": s["stage"],
                "subject": s.get("subject", ""),
                "status": s.get("status", ""),
                "seconds": float(s.get("seconds", 0.0)),
            }
            for s in self.stages
        ]
        lines = [f"# {self.flow} — run `{self.run_id}`", ""]
        lines += [f"- {line}" for line in headline]
        lines += ["", "## Stages", "", markdown_table(stage_rows)]
        lines += ["", f"Outputs and provenance: {_link(self.dir)}"]
        create_markdown_artifact(
            "\n".join(lines), key=artifact_key(self.flow, "summary"), description=f"{self.flow} run summary"
        )
        create_table_artifact(
            [dict(d) for d in detections] or [{"detections": "none"}],
            key=artifact_key(self.flow, "top-detections"),
            description="Detections with the highest peak probability",
        )
        map_lines = [f"# Outputs of run `{self.run_id}`", "", f"- run directory: {_link(self.dir)}"]
        map_lines += [f"- {label}: {_link(path)}" for label, path in maps.items()]
        create_markdown_artifact(
            "\n".join(map_lines), key=artifact_key(self.flow, "maps"), description="Paths of the maps and reports"
        )


def sweep_interrupted_runs(store: Store) -> list[str]:
    """Close the records of runs whose process died on this host (see the module docstring).

    Returns the ids of the runs swept. A run of another host, or of a live process, is left.
    """
    swept = []
    try:
        markers = [p for p in store.runs_dir.iterdir() if p.name.startswith(".") and ".run~" in p.name]
    except OSError:
        return swept
    for marker in markers:
        owner = owner_of(marker)
        if owner is None or not owner_gone(*owner):
            continue
        run_id = marker.name[1:].split(".run~", 1)[0]
        run_dir = store.runs_dir / run_id
        for folder in [root for root, _, _ in os.walk(run_dir)]:
            sweep_owned(folder)  # the output folders it was writing
        record = run_dir / "provenance.json"
        kept = [p for p in run_dir.rglob("*") if p.is_file() and p != record] if run_dir.is_dir() else []
        if not kept:  # nothing but its own record: nothing to keep
            shutil.rmtree(run_dir, ignore_errors=True)
        elif record.is_file():
            try:
                provenance = json.loads(record.read_text())
            except ValueError:
                provenance = {"run_id": run_id}
            if provenance.get("status") == "running":
                provenance.update(status="interrupted", error=f"its process (pid {owner[1]} on {owner[0]}) died")
                _write_json(record, provenance)
        marker.unlink(missing_ok=True)
        swept.append(run_id)
    return swept
