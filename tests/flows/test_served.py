"""Scheduled detection against a real Prefect server.

Starts ``prefect server start`` on 127.0.0.1 (free port, own PREFECT_HOME), runs
``damwatch serve`` with a short interval schedule, drops a survey in the inbox, and checks in the
server's run history that a *scheduled* run of the deployment processed it and that a later
scheduled run skipped it. Every wait is bounded; both processes are always stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# The whole scenario, including the server's first start (database migrations). It takes
# ~25 s on an idle 2-core machine; the bound is generous for a loaded one.
DEADLINE_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop a process we started (and its process group: the server's and the runner's children)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_for(what: str, check, deadline: float, every: float = 0.5, procs=()):
    while time.monotonic() < deadline:
        for proc, log in procs:
            if proc.poll() is not None:
                pytest.fail(f"{what}: a process exited early ({proc.args[:4]}...):\n{Path(log).read_text()[-3000:]}")
        value = check()
        if value:
            return value
        time.sleep(every)
    logs = "\n".join(f"--- {log}\n{Path(log).read_text()[-3000:]}" for _, log in procs)
    pytest.fail(f"timed out waiting for {what}\n{logs}")


def _flow_run(api: str, flow_run_id: str) -> dict:
    import httpx

    return httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()


def _watch_summaries(store: Path) -> list[dict]:
    found = []
    for path in sorted((store / "runs").glob("*-watch-*/summary.json")):
        summary = json.loads(path.read_text())  # written last, after provenance.json
        summary["_provenance"] = json.loads((path.parent / "provenance.json").read_text())
        found.append(summary)
    return found


def test_a_scheduled_run_processes_a_new_survey_and_the_next_one_skips_it(tmp_path, write_survey):
    deadline = time.monotonic() + DEADLINE_S
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    inbox, store = tmp_path / "inbox", tmp_path / "store"
    inbox.mkdir()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")
    } | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "DAMWATCH_NO_PROGRESS": "1",
    }
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env | {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"},
        stdout=open(server_log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    serve = None
    try:
        import httpx

        def healthy():
            try:
                return httpx.get(f"{api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for("the Prefect server to answer", healthy, deadline, procs=[(server, server_log)])
        serve = subprocess.Popen(
            [
                sys.executable, "-m", "flows.cli", "serve", "--inbox", str(inbox), "--interval", "4",
                "--settle", "0", "--store", str(store), "--workers", "1", "--limit", "2",
            ],
            env=env | {"PREFECT_API_URL": api, "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
            stdout=open(serve_log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        # Drop the survey atomically: a hidden file is ignored until it is renamed into view.
        write_survey(inbox / ".incoming.tif", height=200, width=260, seed=11)
        os.rename(inbox / ".incoming.tif", inbox / "creek_2024-06-01.tif")
        procs = [(server, server_log), (serve, serve_log)]

        def processed_run():
            return next((s for s in _watch_summaries(store) if s["processed"]), None)

        first = _wait_for("a watch run to process the survey", processed_run, deadline, procs=procs)
        (item,) = first["processed"]
        assert item["survey_id"] == "creek-2024-06-01" and item["file"] == "creek_2024-06-01.tif"

        def later_skipping_run():
            return next(
                (
                    s for s in _watch_summaries(store)
                    # ISO times to the millisecond: strictly after the first run had finished.
                    if s["_provenance"]["started"] > first["_provenance"]["finished"]
                    and not s["processed"] and any(x["sha256"] == item["sha256"] for x in s["skipped"])
                ),
                None,
            )

        second = _wait_for("a later watch run that skips it", later_skipping_run, deadline, procs=procs)
        assert second["skipped"][0]["reason"] == "done"

        # Both were scheduled runs of the served deployment, completed, in the server's history.
        for summary in (first, second):
            run = _flow_run(api, summary["_provenance"]["prefect_flow_run_id"])
            assert run["deployment_id"] is not None
            assert run["auto_scheduled"] is True
            assert _wait_for(
                "the run's final state", lambda: _flow_run(api, run["id"])["state"]["type"] in ("COMPLETED", "FAILED"),
                deadline,
            )
            assert _flow_run(api, run["id"])["state"]["type"] == "COMPLETED"
        # The survey is in the store exactly once, from this file.
        from pipeline.store import Store

        assert Store(store).survey_ids() == ["creek-2024-06-01"]
    finally:
        if serve is not None:
            _stop(serve)
        _stop(server)
        shutil.rmtree(tmp_path / "prefect-home", ignore_errors=True)
