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

import pipeline
from flows.inbox import Ledger
from pipeline.files import file_sha256
from pipeline.store import Store

# The source tree under test (the one Python imports `pipeline` from), for child processes.
REPO = Path(pipeline.__file__).resolve().parents[1]


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


_BATCH = """
import json, os, sys, tempfile
from flows.cli import main
out = os.dup(1)
results = []
for argv in json.loads(sys.argv[1]):
    with tempfile.TemporaryFile() as o, tempfile.TemporaryFile() as e:
        sys.stdout.flush(); sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(o.fileno(), 1); os.dup2(e.fileno(), 2)
        try:
            status = main(argv)
        except SystemExit as exc:
            status = exc.code
        except BaseException as exc:
            import traceback; traceback.print_exc(); status = "raised"
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        o.seek(0); e.seek(0)
        results.append([status, o.read().decode(errors="replace"), e.read().decode(errors="replace")])
os.write(out, json.dumps(results).encode())
"""


def run_cli(argvs: list[list[str]], prefect_url: str | None = None, **env: str) -> list[tuple[int, str, str]]:
    """Run ``damwatch ARGV`` for each ARGV in one fresh process (real stdout/stderr, as a user
    sees them); returns (exit status, stdout, stderr) of each."""
    extra = {"PREFECT_API_URL": prefect_url} if prefect_url else {}
    done = subprocess.run(
        [sys.executable, "-c", _BATCH, json.dumps(argvs)], capture_output=True, text=True, timeout=600,
        env=python_env(**extra, **env),
    )
    assert done.returncode == 0, done.stderr
    return [tuple(r) for r in json.loads(done.stdout)]


def one_paragraph(command: str, status: int, err: str, expected_status: int = 2) -> str:
    """Check a refusal: ``expected_status``, one paragraph naming the problem, no traceback;
    return the paragraph unwrapped (the CLI wraps it at 100 columns)."""
    assert status == expected_status, err
    assert "Traceback" not in err, err
    marker = f"damwatch {command}: error: "
    assert err.count(marker) == 1, err
    tail = err[err.index(marker):].strip()
    assert "\n\n" not in tail, err
    return " ".join(tail.split())


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


# ---------------------------------------------------------------------------------------------
# Two real processes started together (a file barrier), each running a snippet of Python


def race(snippets: list[str], tmp_path: Path, timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Run each snippet in its own Python process; all start their work at the same instant."""
    go = tmp_path / f"go-{time.monotonic_ns()}"
    prelude = (
        "import os, sys, time\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.001)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", prelude + code], env=python_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for code in snippets
    ]
    time.sleep(1.0)  # every process has imported what it needs and waits at the barrier
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


# ---------------------------------------------------------------------------------------------
# 3. Two ingests under one survey id at once: one wins, the other is refused, nothing replaced


def test_two_concurrent_ingests_under_one_survey_id_never_replace_each_other(tmp_path, write_survey):
    for seed in (1, 2):
        write_survey(tmp_path / f"m_{seed}.tif", height=1500, width=1500, seed=seed)
    store = tmp_path / "st"
    Store(store).ensure()
    snippet = (
        "from pipeline.errors import StoreError\n"
        "from pipeline.ingest import ingest\n"
        "from pipeline.store import Store\n"
        "try:\n"
        "    r = ingest({path!r}, 'creek', '2018-07-16', Store({store!r}))\n"
        "    print('OK', r.status, r.survey.source_name)\n"
        "except StoreError as e:\n"
        "    print('REFUSED', e)\n"
    )
    # The copy (~0.3 s) lies between the existence check and the rename: two processes started
    # together always overlap in it.
    results = race([snippet.format(path=str(tmp_path / f"m_{s}.tif"), store=str(store)) for s in (1, 2)], tmp_path)
    outcomes = [r.stdout.split()[0] if r.stdout else r.stderr for r in results]
    assert sorted(outcomes) == ["OK", "REFUSED"], [r.stdout + r.stderr for r in results]
    winner = results[outcomes.index("OK")].stdout.split()[2]
    loser = results[outcomes.index("REFUSED")].stdout
    survey = Store(store).survey("creek-2018-07-16")
    assert survey.source_name == winner  # the winner's file is what the store holds
    assert survey.source_sha256 == file_sha256(tmp_path / winner)
    assert "another process" in loser and "--overwrite" in loser
    assert list((store / ".staging").iterdir()) == []


def test_two_concurrent_ingests_of_the_same_file_both_succeed(tmp_path, write_survey):
    write_survey(tmp_path / "m.tif", height=1500, width=1500, seed=3)
    store = tmp_path / "st"
    Store(store).ensure()
    snippet = (
        "from pipeline.ingest import ingest\n"
        "from pipeline.store import Store\n"
        f"r = ingest({str(tmp_path / 'm.tif')!r}, 'creek', '2018-07-16', Store({str(store)!r}))\n"
        "print(r.status)\n"
    )
    results = race([snippet, snippet], tmp_path)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert sorted(r.stdout.strip() for r in results) == ["ingested", "unchanged"]


# ---------------------------------------------------------------------------------------------
# 7. A full disk: one paragraph, not retried, nothing left in staging; the next ingest works


@pytest.fixture
def small_disk(tmp_path):
    """A real 20 MB filesystem (tmpfs), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to mount a tmpfs (it runs as root): {done.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_paragraph_not_retried_and_leaves_no_staging(
    prefect, small_disk, tmp_path, write_survey, dask_client
):
    write_survey(tmp_path / "big.tif", height=3000, width=3000, seed=5)  # 26 MB of noise: incompressible
    write_survey(tmp_path / "small.tif", height=256, width=256, seed=6)
    store = small_disk / "st"
    cluster = dask_client.scheduler.address
    started = time.monotonic()
    (full, small) = run_cli(
        [
            ["ingest", str(tmp_path / "big.tif"), "--area", "creek", "--date", "2024-06-01", "--store", str(store),
             "--cluster", cluster],
            # The next, small ingest has the room it needs.
            ["ingest", str(tmp_path / "small.tif"), "--area", "creek", "--date", "2024-06-01", "--store", str(store),
             "--cluster", cluster],
        ],
        prefect,
    )
    assert time.monotonic() - started < 20  # no retry after 2 s and 10 s
    tail = one_paragraph("ingest", full[0], full[2], expected_status=1)
    assert f"the disk holding {store}" in tail and "is full" in tail and "needs up to 34.3 MB" in tail
    assert f"old run folders in {store / 'runs'}" in tail and "--store" in tail  # what to delete, or where else
    assert small[0] == 0, small[2]
    assert Store(store).survey_ids() == ["creek-2024-06-01"]
    assert Store(store).survey("creek-2024-06-01").source_name == "small.tif"
    assert list((store / ".staging").iterdir()) == []


def test_a_full_disk_in_the_watch_flow_releases_the_file_and_fails_the_run(
    prefect, small_disk, tmp_path, write_survey, dask_client
):
    from flows.watch import watch_flow

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_survey(inbox / "creek_2024-06-01.tif", height=3000, width=3000, seed=7)
    store = Store(small_disk / "st")
    with pytest.raises(RuntimeError, match="is full"):
        watch_flow(str(inbox), store=str(store.root), settle_seconds=0, stride=128, cluster=dask_client.scheduler.address)
    ledger = Ledger(store.root / "state" / "watch")
    assert ledger.status(file_sha256(inbox / "creek_2024-06-01.tif")) is None  # not blacklisted
    assert os.listdir(ledger.claims) == []
    (watch_run,) = [d for d in (store.root / "runs").iterdir() if "-watch-" in d.name]
    provenance = json.loads((watch_run / "provenance.json").read_text())
    summary = json.loads((watch_run / "summary.json").read_text())
    assert provenance["status"] == "failed" and "is full" in provenance["error"]  # 4: not "completed"
    assert summary["status"] == "failed" and [e["file"] for e in summary["errors"]] == ["creek_2024-06-01.tif"]
    assert list((store.root / ".staging").iterdir()) == []


def test_features_on_a_full_disk_are_one_paragraph_and_leave_no_staging(
    prefect, small_disk, tmp_path, write_survey, dask_client
):
    import shutil

    from pipeline.ingest import ingest

    write_survey(tmp_path / "creek.tif", height=1024, width=1024, seed=16)
    store = Store(small_disk / "st")
    ingest(tmp_path / "creek.tif", "creek", "2024-06-01", store, client=dask_client)
    # Something else fills the disk but for 150 KB; 29 x 29 tiles of features take ~400 KB.
    filler = small_disk / "other-data"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 150_000))
    ((status, _, err),) = run_cli(
        [["features", "creek-2024-06-01", "--stride", "32", "--store", str(store.root),
          "--cluster", dask_client.scheduler.address]],
        prefect,
    )
    tail = one_paragraph("features", status, err, expected_status=1)
    assert f"the disk holding {store.root}" in tail and "is full" in tail
    assert list(store.staging_dir.iterdir()) == []
    assert store.complete_groups("features/creek-2024-06-01", "*/*") == []


# ---------------------------------------------------------------------------------------------
# 11. A store that cannot be written: refused before any work, even for detect


def test_a_read_only_store_is_refused_before_any_work(prefect, small_disk, tmp_path, write_survey, dask_client):
    write_survey(tmp_path / "creek.tif", height=256, width=256, seed=8)
    store = small_disk / "st"
    from pipeline.ingest import ingest

    ingest(tmp_path / "creek.tif", "creek", "2024-06-01", Store(store), client=dask_client)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    before = store_files(store)
    commands = [
        ["features", "creek-2024-06-01", "--store", str(store)],
        ["ingest", str(tmp_path / "creek.tif"), "--area", "pond", "--date", "2024-06-01", "--store", str(store)],
    ]
    for argv, (status, _, err) in zip(commands, run_cli(commands, prefect)):
        tail = one_paragraph(argv[0], status, err)
        assert f"store {store} cannot be written (it is on a read-only filesystem" in tail
    assert store_files(store) == before


# ---------------------------------------------------------------------------------------------
# 8. A killed run: its Prefect server and workers die with it; the next run sweeps what it left


def _dead_process() -> tuple[int, int]:
    """(pid, start time) of a real process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "import os; print(open(f'/proc/{os.getpid()}/stat').read())"],
                             stdout=subprocess.PIPE, text=True)
    stat, _ = child.communicate()
    return child.pid, int(stat.rsplit(")", 1)[1].split()[19])


def test_staging_is_swept_only_when_its_owner_is_dead_on_this_host(tmp_path):
    from pipeline.files import owned_name, process_start_time

    store = Store(tmp_path / "st")
    store.ensure()
    host = owned_name("x", "partial").split("~")[1]
    pid, start = _dead_process()
    me, my_start = os.getpid(), process_start_time(os.getpid())
    entries = {
        f".creek-2024-06-01.partial~{host}~{pid}~{start}~0123abcd": False,  # owner dead: swept
        f".creek-2024-06-01.partial~{host}~{me}~{my_start + 1}~0123abce": False,  # our pid, reused: swept
        f".creek-2024-06-01.partial~{host}~{me}~{my_start}~0123abcf": True,  # owner alive (this process)
        f".creek-2024-06-01.partial~otherhost~{pid}~{start}~0123abd0": True,  # another host: never judged
        ".creek-2024-06-01.partial-0123abd1": True,  # not ours to judge (no owner recorded)
    }
    for name in entries:
        (store.staging_dir / name / "image").mkdir(parents=True)
        (store.staging_dir / name / "image" / "c").write_bytes(b"x" * 1000)
    old = time.time() - 30 * 86400  # a month old: age alone never decides
    for p in store.staging_dir.rglob("*"):
        os.utime(p, (old, old))
    store.sweep()
    assert {p.name for p in store.staging_dir.iterdir()} == {n for n, kept in entries.items() if kept}


def _children(pid: int) -> list[int]:
    found = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in found.split()]


def _descendants(pid: int) -> list[int]:
    out = []
    for child in _children(pid):
        out += [child, *_descendants(child)]
    return out


@pytest.mark.slow
def test_a_killed_run_leaves_no_server_and_the_next_run_sweeps_its_debris(prefect, tmp_path, write_survey, dask_client):
    write_survey(tmp_path / "big.tif", height=3000, width=3000, seed=9)
    write_survey(tmp_path / "small.tif", height=128, width=128, seed=10)
    store = Store(tmp_path / "st")
    env = python_env()
    env.pop("PREFECT_API_URL", None)  # a user's run: Prefect starts its temporary server
    victim = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "ingest", str(tmp_path / "big.tif"), "--area", "creek", "--date",
         "2024-06-01", "--store", str(store.root), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (store.staging_dir.is_dir() and any(store.staging_dir.iterdir())):
            assert victim.poll() is None, "the ingest ended before it could be killed"
            time.sleep(0.01)
        helpers = _descendants(victim.pid)
        servers = [p for p in helpers if b"uvicorn" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert servers, "no temporary Prefect server among the children"
        victim.send_signal(signal.SIGKILL)  # mid-ingest: staging half-written, run record open
        victim.wait()
    finally:
        if victim.poll() is None:
            victim.kill()
    deadline = time.time() + 15
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in helpers):
        time.sleep(0.1)
    left = [p for p in helpers if Path(f"/proc/{p}").exists()]
    for p in left:
        os.kill(p, signal.SIGKILL)  # never leave them to the rest of the suite
    assert left == [], "processes of the killed run are still alive"
    assert any(store.staging_dir.iterdir())  # the debris the next run must sweep
    (killed_run,) = [p for p in store.runs_dir.glob("*-ingest-*") if not p.name.startswith(".")]

    ((status, _, err),) = run_cli(
        [["ingest", str(tmp_path / "small.tif"), "--area", "pond", "--date", "2024-06-01", "--store", str(store.root),
          "--cluster", dask_client.scheduler.address]],
        prefect,
    )
    assert status == 0, err
    assert list(store.staging_dir.iterdir()) == []
    assert not killed_run.exists()  # it wrote nothing but its record: nothing to keep
    assert store.survey_ids() == ["pond-2024-06-01"]
    assert [p.name for p in store.runs_dir.iterdir() if p.name.startswith(".")] == []


# ---------------------------------------------------------------------------------------------
# 5. Claims: exactly one taker of a stale claim; empty and foreign claims expire; leases renew


def _write_claim(ledger: Ledger, sha: str, **record) -> Path:
    path = ledger.claims / f"{sha}.json"
    path.write_text(json.dumps(record))
    return path


def test_two_processes_racing_on_a_stale_claim_exactly_one_wins(tmp_path):
    pid, start = _dead_process()
    sha = "ab" * 32
    ledger = Ledger(tmp_path / "ledger")
    # A slow taker: it read the stale claim, then stalls 0.5 s before each link or rename (as a
    # process descheduled at the worst moment would), while the other takes the claim over.
    slow = (
        "import os, time\n"
        "for name in ('rename', 'link', 'replace'):\n"
        "    real = getattr(os, name)\n"
        "    setattr(os, name, lambda *a, _real=real, **k: (time.sleep(0.5), _real(*a, **k))[1])\n"
    )
    snippet = (
        "from flows.inbox import Ledger\n"
        f"won = Ledger({str(ledger.root)!r}).claim({sha!r}, 'f.tif', run=str(os.getpid()))\n"
        "print(os.getpid(), won)\n"
        "time.sleep(1.0)  # the winner stays alive while the others try: a dead winner's claim is stale\n"
    )
    for contenders in ([slow + snippet, snippet], [snippet, slow + snippet]):
        _write_claim(ledger, sha, pid=pid, start=start, host=socket.gethostname(), run="crashed")
        results = race(contenders, tmp_path)
        outcomes = [r.stdout.split() for r in results]
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
        winners = [int(pid_) for pid_, won in outcomes if won == "True"]
        assert len(winners) == 1, outcomes
        assert ledger.holder(sha)["pid"] == winners[0]
        assert os.listdir(ledger.claims) == [f"{sha}.json"]  # no takeover or temporary file left
        ledger.release(sha)


@pytest.mark.parametrize(
    "age, taken",
    [
        (5, False),  # empty just now: maybe an older version writing it; not yet
        (3600, True),  # empty for an hour: the crash of a writer; taken over
    ],
)
def test_an_empty_claim_is_stale_after_a_grace(tmp_path, age, taken):
    ledger = Ledger(tmp_path)
    sha = "cd" * 32
    claim = ledger.claims / f"{sha}.json"
    claim.write_bytes(b"")
    os.utime(claim, (time.time() - age, time.time() - age))
    assert ledger.claim(sha, tmp_path / "f.tif", run="new") is taken
    assert (ledger.holder(sha) or {}).get("run") == ("new" if taken else None)


@pytest.mark.parametrize(
    "expires_in, taken",
    [
        (600, False),  # another host's live lease: cannot be checked, so it is respected
        (-1, True),  # expired: that host's run died or froze; taken over
    ],
)
def test_a_claim_of_another_host_is_stale_once_its_lease_expired(tmp_path, expires_in, taken):
    ledger = Ledger(tmp_path)
    sha = "ef" * 32
    _write_claim(ledger, sha, pid=os.getpid(), host="another-machine", run="remote", expires=time.time() + expires_in)
    assert ledger.claim(sha, tmp_path / "f.tif", run="here") is taken
    assert ledger.holder(sha)["run"] == ("here" if taken else "remote")


def test_a_takeover_whose_taker_died_midway_is_taken_over_in_turn(tmp_path):
    from flows.inbox import _digest

    pid, start = _dead_process()
    ledger = Ledger(tmp_path)
    sha = "12" * 32
    claim = _write_claim(ledger, sha, pid=pid, start=start, host=socket.gethostname(), run="crashed")
    # A taker (also dead now) created its takeover file, then died before renaming it.
    marker = ledger.claims / f".{sha}.json.takeover-{_digest(claim.read_bytes())}"
    marker.write_text(json.dumps({"pid": pid, "start": start, "host": socket.gethostname(), "run": "dead-taker"}))
    assert ledger.claim(sha, tmp_path / "f.tif", run="new")
    assert ledger.holder(sha)["run"] == "new"
    assert os.listdir(ledger.claims) == [f"{sha}.json"]


def test_a_held_claim_is_renewed_and_a_renewed_claim_is_not_taken(tmp_path):
    ledger = Ledger(tmp_path, lease=0.6)
    sha = "34" * 32
    assert ledger.claim(sha, tmp_path / "f.tif", run="holder")
    first = ledger.holder(sha)["expires"]
    with ledger.hold(sha):
        time.sleep(1.0)
        renewed = ledger.holder(sha)
    assert renewed["expires"] > first + 0.1 and renewed["token"] == ledger.holder(sha)["token"]
    assert renewed["expires"] > time.time() - 0.3  # still within its lease while held
    # Seen from another host (the record says so), a renewed claim is live.
    record = json.loads((ledger.claims / f"{sha}.json").read_text())
    _write_claim(ledger, sha, **{**record, "host": "another-machine", "expires": time.time() + 60})
    assert not Ledger(tmp_path).claim(sha, tmp_path / "f.tif", run="thief")


# ---------------------------------------------------------------------------------------------
# The catalogue of bad inputs: exit 2, one paragraph, no traceback, store unchanged outside runs/


@pytest.fixture(scope="module")
def catalogue_store(tmp_path_factory, dask_client):
    """A store holding one small 4-band survey (UTM 14N, 1 m pixels), and its GeoTIFF."""
    from pipeline.ingest import ingest

    from .conftest import make_geotiff

    root = tmp_path_factory.mktemp("catalogue")
    make_geotiff(root / "creek.tif", height=256, width=256, seed=11, bands=4)
    store = Store(root / "st")
    ingest(root / "creek.tif", "creek", "2024-06-01", store, bands=["red", "green", "blue", "nir"], client=dask_client)
    return store, root


def _truth(path: Path, *geometries: dict, crs: str | None = None) -> str:
    doc = {"type": "FeatureCollection",
           "features": [{"type": "Feature", "properties": {"name": f"dam {i}"}, "geometry": g}
                        for i, g in enumerate(geometries)]}
    if crs:
        doc["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(doc))
    return str(path)


def _square(x0, y0, d):
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x0 + d, y0], [x0 + d, y0 - d], [x0, y0 - d], [x0, y0]]]}


def test_the_catalogue_of_bad_inputs_is_refused_in_one_paragraph(catalogue_store, prefect, dask_client):
    store, root = catalogue_store
    sid, cluster = "creek-2024-06-01", dask_client.scheduler.address
    utm = _square(500_050, 4_999_950, 20)  # inside the survey, in its own CRS (metres)
    cases = [
        # 10. a truth file in projected coordinates with no crs member: the most common mistake
        (["labels", sid, "--from", _truth(root / "utm.geojson", utm)],
         "outside longitude/latitude range", "--crs EPSG:32614"),
        # 10. NaN and text coordinates
        (["labels", sid, "--from", _truth(root / "nan.geojson", {"type": "Point", "coordinates": [float("nan"), 45.0]})],
         "feature 0 (name 'dam 0') has coordinates [NaN, 45.0]", "not two finite numbers"),
        (["labels", sid, "--from", _truth(root / "text.geojson", {"type": "Point", "coordinates": ["-97.5", "45.1"]})],
         "has coordinates", "not two finite numbers"),
        # 13. a self-intersecting polygon (a bow tie), named
        (["labels", sid, "--from", _truth(root / "bowtie.geojson", utm, {"type": "Polygon", "coordinates": [
            [[500_000, 4_999_900], [500_040, 4_999_860], [500_040, 4_999_900], [500_000, 4_999_860], [500_000, 4_999_900]]]},
            crs="EPSG:32614")],
         "feature 1 (name 'dam 1') is a self-intersecting polygon", "Fix Geometries"),
        # 13. expressions that are true or false everywhere without a word
        (["labels", sid, "--expr", "1e309 > 0"], "1e309", "too large to be a finite number"),
        (["labels", sid, "--expr", "red / 0 > 1"], "divides by zero", "red / 0"),
        # 12. an area name with a trailing newline would become a directory name
        (["ingest", str(root / "creek.tif"), "--area", "creek\n", "--date", "2024-06-02"], "area name 'creek\\n'",
         "lower-case letters"),
    ]
    before = store_files(store.root)
    argvs = [[*argv, "--store", str(store.root), "--cluster", cluster] for argv, *_ in cases]
    for (argv, *expected), (status, _, err) in zip(cases, run_cli(argvs, prefect)):
        tail = one_paragraph(argv[0], status, err)
        for text in expected:
            assert text in tail, tail
    assert store_files(store.root) == before
    assert not any("\n" in p.name for p in store.root.rglob("*"))


def test_truth_coordinates_are_checked_when_a_truth_file_is_read(tmp_path):
    """detect --truth, change --truth and evaluate read their truth with read_features, before any work."""
    from pipeline.errors import InputError
    from pipeline.geojson import read_features

    with pytest.raises(InputError, match=r"outside longitude/latitude range.*\"crs\": \{\"type\": \"name\""):
        read_features(_truth(tmp_path / "utm.geojson", _square(500_050, 4_999_950, 20)), what="truth file")
    with pytest.raises(InputError, match=r"feature 0 \(name 'dam 0'\) has coordinates \[NaN, 45.1\]"):
        read_features(_truth(tmp_path / "nan.geojson", {"type": "Point", "coordinates": [float("nan"), 45.1]}))
    # The same square named in its CRS, a valid WGS84 one, or one read with --crs, are accepted.
    read_features(_truth(tmp_path / "named.geojson", _square(500_050, 4_999_950, 20), crs="EPSG:32614"))
    read_features(_truth(tmp_path / "wgs84.geojson", _square(-97.5, 45.1, 0.001)))
    read_features(tmp_path / "utm.geojson", crs="EPSG:32614")


def test_labels_from_a_truth_file_named_in_its_crs_match_the_pixels_it_covers(catalogue_store):
    """The accepted case of the catalogue: the 20 m square at (50, 50) px labels its tiles."""
    from pipeline.labels import labels_from_vector
    from pipeline.tiling import TileGrid

    store, root = catalogue_store
    survey = store.survey("creek-2024-06-01")
    grid = TileGrid.for_survey(survey, size=128, stride=128)
    labels = labels_from_vector(store, survey.id, _truth(root / "ok.geojson", _square(500_050, 4_999_950, 20)),
                                grid, crs="EPSG:32614", save=False)
    # Pixels 50..70 in x and y: wholly in tile (0, 0), and more than half of the polygon there.
    np.testing.assert_array_equal(labels.values, [[1, 0], [0, 0]])


# ---------------------------------------------------------------------------------------------
# 12, 18. The inbox sidecar: area names are checked; band names can be given


def test_a_sidecar_area_with_a_newline_is_refused_and_the_file_left_alone(tmp_path):
    from flows.inbox import scan_inbox

    (tmp_path / "flight.tif").write_bytes(b"x")
    (tmp_path / "flight.json").write_text(json.dumps({"area": "creek\n", "date": "2024-06-01"}))
    (found,) = scan_inbox(tmp_path)
    assert not found.understood and "area name 'creek\\n' is not usable" in found.source


def test_inbox_files_get_band_names_from_their_sidecar_or_the_deployment(prefect, tmp_path, write_survey, dask_client):
    from flows.watch import watch_flow

    inbox, store = tmp_path / "inbox", Store(tmp_path / "st")
    inbox.mkdir()
    # NAIP-like: four unnamed bands (the fourth's colour interpretation is undefined)
    write_survey(inbox / "m_4709963_se_14_1_20090818.tif", height=128, width=128, seed=12, bands=4)
    (inbox / "m_4709963_se_14_1_20090818.json").write_text(
        json.dumps({"area": "pothole", "date": "2009-08-18", "bands": "nir,red,green,blue"}))
    write_survey(inbox / "pothole_2010-08-18.tif", height=128, width=128, seed=13, bands=4)  # no sidecar
    result = watch_flow(str(inbox), store=str(store.root), settle_seconds=0, stride=128,
                        cluster=dask_client.scheduler.address, bands=["red", "green", "blue", "nir"])
    assert result["failed"] == [] and len(result["processed"]) == 2
    assert store.survey("pothole-2009-08-18").bands == ("nir", "red", "green", "blue")  # the sidecar's
    assert store.survey("pothole-2010-08-18").bands == ("red", "green", "blue", "nir")  # the deployment's default


# ---------------------------------------------------------------------------------------------
# 13. Quieter but wrong


def test_infinite_pixels_are_not_valid_and_leave_the_tile_s_features_finite(tmp_path, dask_client):
    import rasterio
    from rasterio.transform import from_origin

    from pipeline.features import compute_features
    from pipeline.ingest import ingest

    pixels = np.random.default_rng(14).uniform(0, 1, size=(3, 256, 256)).astype(np.float32)
    pixels[0, 10, 10:20] = np.inf  # ten infinite pixels and two -inf in tile (0, 0)
    pixels[2, 30, 30:32] = -np.inf
    with rasterio.open(tmp_path / "f.tif", "w", driver="GTiff", width=256, height=256, count=3, dtype="float32",
                       crs="EPSG:32614", transform=from_origin(500000, 5000000, 1, 1)) as dst:
        dst.write(pixels)
        dst.descriptions = ("red", "green", "blue")
    store = Store(tmp_path / "st")
    survey = ingest(tmp_path / "f.tif", "creek", "2024-06-01", store, client=dask_client).survey
    valid = np.asarray(survey.valid()[...])
    np.testing.assert_array_equal(valid, np.isfinite(pixels).all(axis=0))
    features = compute_features(store, survey.id, "default", stride=128, size=128, client=dask_client)
    assert features.valid_fraction[0, 0] == pytest.approx(1 - 12 / 128**2)
    assert np.isfinite(np.asarray(features.values[...])).all()


def test_change_with_before_later_than_after_says_which_is_which(catalogue_store):
    from pipeline.change import date_order_note
    from pipeline.store import Survey

    store, _ = catalogue_store
    earlier = store.survey("creek-2024-06-01")
    later = Survey(**{**earlier.__dict__, "id": "creek-2025-06-01", "date": earlier.date.replace(year=2025)})
    assert date_order_note(earlier, later) is None
    note = date_order_note(later, earlier)
    assert "BEFORE creek-2025-06-01 is dated 2025-06-01, later than AFTER creek-2024-06-01" in note
    assert "'new' means present in creek-2024-06-01 (the earlier survey) but not in creek-2025-06-01" in note


# ---------------------------------------------------------------------------------------------
# 14. Features and expression labels stream: a block's result is written by its own task


def _peak_blocks_held(dask_client, prefix: str):
    """A scheduler plugin counting how many blocks named ``prefix``-… are held in memory at once."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class Held(SchedulerPlugin):
        name = f"held-{prefix}"

        def __init__(self):
            self.now, self.peak = set(), 0

        def transition(self, key, start, finish, *args, **kwargs):
            if not (isinstance(key, tuple) and str(key[0]).startswith(prefix)):
                return
            if finish == "memory":
                self.now.add(key)
            elif start == "memory":
                self.now.discard(key)
            self.peak = max(self.peak, len(self.now))

    plugin = Held()
    dask_client.cluster.scheduler.add_plugin(plugin)  # the fixture's scheduler runs in this process
    return plugin


def test_features_and_labels_never_hold_every_block_at_once(tmp_path, write_survey, dask_client):
    from pipeline.features import compute_features, get_spec
    from pipeline.ingest import ingest
    from pipeline.labels import labels_from_expression
    from pipeline.tiling import TileGrid

    write_survey(tmp_path / "wide.tif", height=2048, width=2048, seed=15)
    store = Store(tmp_path / "st")
    survey = ingest(tmp_path / "wide.tif", "creek", "2024-06-01", store, client=dask_client, chunk_edge=256).survey
    n_workers = len(dask_client.scheduler_info()["workers"])

    held = _peak_blocks_held(dask_client, "tile-features")
    try:
        features = compute_features(store, survey.id, "default", stride=32, size=128, client=dask_client)
    finally:
        dask_client.cluster.scheduler.remove_plugin(name=held.name)
    (rows, cols, _), (chunk_rows, chunk_cols, _) = features.values.shape, features.values.chunks
    n_blocks = -(-rows // chunk_rows) * -(-cols // chunk_cols)
    assert n_blocks >= 16
    assert held.peak <= 2 * n_workers + 1, (held.peak, n_blocks)  # persisting held all n_blocks

    # The stored features are those of the NumPy function on the whole array (tile by tile).
    from pipeline.features import tile_features
    from pipeline.tiling import gather_tiles

    pixels = np.asarray(survey.image()[...])
    grid = features.grid
    r, c = grid.row_offsets[[0, -1]], grid.col_offsets[[0, -1]]
    tiles = gather_tiles(pixels, r, c, grid.size)  # (2, 2, bands, size, size): corner tiles
    expected = tile_features(tiles.reshape(4, *tiles.shape[2:]).astype(np.float32) / 255, None, get_spec("default"))
    got = np.asarray(features.values[...])[np.ix_([0, -1], [0, -1])].reshape(4, -1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

    held = _peak_blocks_held(dask_client, "tile-labels")
    grid = TileGrid.for_survey(survey, size=32, stride=16)
    try:
        labels = labels_from_expression(store, survey.id, "red > 127", grid, client=dask_client)
    finally:
        dask_client.cluster.scheduler.remove_plugin(name=held.name)
    assert held.peak <= 2 * n_workers + 1
    red = gather_tiles(pixels[0], grid.row_offsets, grid.col_offsets, grid.size) > 127
    expected = np.where(red.mean(axis=(-2, -1)) >= 0.2, 1, 0)
    np.testing.assert_array_equal(labels.values, expected)
