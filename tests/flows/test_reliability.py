"""Reliability: the catalogue of bad inputs and faults of issue #16, one test (or table) each.

Every bad input must end as one paragraph on stderr, exit status 2, no traceback, and a store
unchanged outside ``runs/``; every fault must end as stated in the issue: nothing lost, nothing
blacklisted, nothing half-written. The references are the store's files themselves, the ledger's
files, real processes (a Dask scheduler killed with SIGKILL, two processes racing on a claim, a
damwatch process killed mid-run) and a real full filesystem (a 20 MB tmpfs).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from flows.inbox import Ledger
from pipeline.files import file_sha256
from pipeline.store import Store

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# Helpers


def store_files(root: Path) -> dict[str, int]:
    """Every file of a store outside ``runs/`` (and the watch ledger), with its size."""
    root = Path(root)
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] not in ("runs",)
    }


def assert_refused(argv: list[str], capsys, status: int = 2, store: Path | None = None) -> str:
    """``damwatch ARGV`` ends with one paragraph naming the problem, ``status``, no traceback."""
    before = store_files(store) if store is not None else None
    assert main(argv) == status
    err = capsys.readouterr().err
    message = [line for line in err.splitlines() if line.startswith(f"damwatch {argv[0]}: error:")]
    assert message, err
    tail = err[err.index(message[0]):]
    assert "Traceback" not in err and "\n\n" not in tail.strip(), err
    if store is not None:
        assert store_files(store) == before
    return tail


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DAMWATCH_NO_PROGRESS": "1", **extra}
    return env


def start_scheduler(port: int) -> subprocess.Popen:
    """A real `dask scheduler` on ``port`` with one worker in it (``--nworkers`` of a scheduler
    process is not a thing: the worker is a second process, returned as ``.worker``)."""
    bin_dir = Path(sys.executable).parent
    scheduler = subprocess.Popen(
        [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=python_env(),
    )
    worker = subprocess.Popen(
        [str(bin_dir / "dask"), "worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1", "--no-dashboard",
         "--memory-limit", "1GiB"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=python_env(),
    )
    scheduler.worker = worker
    return scheduler


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    for p in (getattr(proc, "worker", None), proc):
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# ---------------------------------------------------------------------------------------------
# 1, 4. An unreachable cluster is a fault of the moment: the file is released, the run fails


def test_an_unreachable_scheduler_fails_the_watch_run_and_blacklists_nothing(
    prefect, tmp_path, write_survey, dask_client, monkeypatch
):
    from flows.watch import watch_flow
    from pipeline.errors import ClusterUnavailable

    monkeypatch.setenv("DAMWATCH_CLUSTER_TIMEOUT", "1")
    inbox, store = tmp_path / "inbox", Store(tmp_path / "st")
    inbox.mkdir()
    write_survey(inbox / "creek_2024-06-01.tif", height=128, width=128, seed=1)
    sha = file_sha256(inbox / "creek_2024-06-01.tif")

    with pytest.raises(ClusterUnavailable, match="cannot reach the Dask scheduler at tcp://127.0.0.1:1"):
        watch_flow(str(inbox), store=str(store.root), settle_seconds=0, stride=128, cluster="tcp://127.0.0.1:1")
    ledger = Ledger(store.root / "state" / "watch")
    assert ledger.status(sha) is None and os.listdir(ledger.claims) == []  # released, not failed
    (watch_run,) = [d for d in (store.root / "runs").iterdir() if "-watch-" in d.name]
    provenance = json.loads((watch_run / "provenance.json").read_text())
    assert provenance["status"] == "failed" and "cannot reach" in provenance["error"]
    assert not (watch_run / "summary.json").exists()  # a run with a summary is complete

    # The next run, with a working cluster, processes the file.
    result = watch_flow(str(inbox), store=str(store.root), settle_seconds=0, stride=128,
                        cluster=dask_client.scheduler.address)
    assert [p["survey_id"] for p in result["processed"]] == ["creek-2024-06-01"]
    assert ledger.status(sha)["state"] == "done"


def test_an_unreachable_scheduler_is_a_transient_fault_not_bad_input(monkeypatch):
    from flows.failures import is_transient
    from pipeline.cluster import dask_client
    from pipeline.errors import ClusterUnavailable

    monkeypatch.setenv("DAMWATCH_CLUSTER_TIMEOUT", "0.5")
    with pytest.raises(ClusterUnavailable, match="cannot reach the Dask scheduler at tcp://127.0.0.1:1") as caught:
        with dask_client("tcp://127.0.0.1:1"):
            pass
    assert is_transient(caught.value)


# ---------------------------------------------------------------------------------------------
# 2. A retry after the scheduler died reconnects instead of reusing the closed client


def test_a_session_reconnects_after_its_scheduler_was_killed(monkeypatch):
    from flows.session import cluster_session, stage_client

    monkeypatch.setenv("DAMWATCH_CLUSTER_TIMEOUT", "20")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    first = start_scheduler(port)
    try:
        with cluster_session(address):
            with stage_client() as client:
                assert client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3
            stop(first, signal.SIGKILL)  # the scheduler dies mid-run
            second = start_scheduler(port)  # and comes back (a supervisor restarts it)
            try:
                deadline = time.time() + 20
                while client.status == "running" and time.time() < deadline:
                    time.sleep(0.1)  # the client notices the lost connection
                with stage_client() as again:
                    assert again is not client and again.status == "running"
                    assert again.submit(sum, [3, 4], pure=False).result(timeout=30) == 7
            finally:
                stop(second)
    finally:
        stop(first, signal.SIGKILL)
