"""Real Prefect servers on non-default loopback ports: `damwatch server`, deploy/local-stack.sh and
deploy/README.md's steps, each checked through the server's own API (health, the UI's settings
endpoint, flow runs, artifacts).

Each test starts a server (10-30 s on a fresh database); they share one Prefect database
directory, so only the first pays for its migrations.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _post(url: str, body: dict):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def _wait_healthy(api: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if _get(f"{api}/health", timeout=1) is True:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"no Prefect server answered at {api}")


@pytest.fixture(scope="module")
def prefect_db(tmp_path_factory) -> Path:
    """One Prefect home for every server of this module (migrated by the first to start)."""
    return tmp_path_factory.mktemp("prefect-db")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API") and k != "PREFECT_UI_API_URL"}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(REPO), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.update(extra)
    return env


def test_damwatch_server_runs_the_commands_runs_and_links_their_outputs(tmp_path, prefect_db, write_survey):
    home = tmp_path / "home"
    (home / "server").mkdir(parents=True)
    (home / "server" / "prefect").symlink_to(prefect_db)
    env = _env(DAMWATCH_HOME=str(home))
    port = _free_port()

    def damwatch(*args):
        return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True,
                              timeout=300, env=env, cwd=tmp_path)

    started = damwatch("server", "start", "--port", str(port))
    try:
        assert started.returncode == 0, started.stderr
        api = f"http://127.0.0.1:{port}/api"
        assert f"UI http://127.0.0.1:{port}" in started.stdout
        assert _get(f"http://127.0.0.1:{port}/ui-settings")["api_url"] == api  # the UI asks the right port
        assert damwatch("server", "status").returncode == 0

        write_survey(tmp_path / "a.tif")
        ran = damwatch("ingest", str(tmp_path / "a.tif"), "--area", "creek", "--date", "2024-06-01",
                       "--store", str(tmp_path / "store"))
        assert ran.returncode == 0, ran.stderr
        assert "Starting temporary server" not in ran.stderr  # it used the damwatch server
        runs = _post(f"{api}/flow_runs/filter", {"flows": {"name": {"any_": ["ingest"]}}})
        assert len(runs) == 1 and runs[0]["state"]["type"] == "COMPLETED"
        artifacts = _post(f"{api}/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [runs[0]["id"]]}}})
        maps = next(a for a in artifacts if a["key"] == "ingest-maps")
        run_dir = re.search(r"^run record: (.+)$", ran.stdout, re.M).group(1)
        assert f"]({(tmp_path / run_dir).resolve().as_uri()})" in maps["data"]  # a link, not code text
        assert "`" not in maps["data"].split("\n", 1)[1]
    finally:
        stopped = damwatch("server", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert damwatch("server", "status").returncode == 1


def test_local_stack_serves_a_ui_that_asks_its_own_port(tmp_path, prefect_db):
    stack = tmp_path / "stack"
    stack.mkdir()
    (stack / "prefect-home").symlink_to(prefect_db)
    port, dask_port = _free_port(), _free_port()
    # A shell left with the default address exported, as after following the README on 4200.
    env = _env(DAMWATCH_STACK_DIR=str(stack), PREFECT_PORT=str(port), DASK_PORT=str(dask_port), DASK_WORKERS="1",
               DASK_MEMORY="1GiB", PREFECT_API_URL="http://127.0.0.1:4200/api")
    script = REPO / "deploy" / "local-stack.sh"
    try:
        started = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True, timeout=240, env=env)
        assert started.returncode == 0, started.stdout + started.stderr
        settings = _get(f"http://127.0.0.1:{port}/ui-settings")
        assert settings["api_url"] == f"http://127.0.0.1:{port}/api"
    finally:
        subprocess.run(["bash", str(script), "stop"], capture_output=True, text=True, timeout=120, env=env)


def test_the_readme_steps_serve_a_ui_that_asks_their_port(tmp_path, prefect_db):
    readme = (REPO / "deploy" / "README.md").read_text()
    section = readme.split("## 1. Prefect server", 1)[1].split("## 2.", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    assert "export PREFECT_PORT=4200" in block
    assert block.index("export PREFECT_API_URL") < block.index("prefect server start")
    port = _free_port()
    home = tmp_path / "home"
    home.mkdir()
    (home / ".damwatch-prefect").symlink_to(prefect_db)
    script = block.replace("export PREFECT_PORT=4200", f"export PREFECT_PORT={port}")
    server = subprocess.Popen(["bash", "-c", script], env=_env(HOME=str(home)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/api")
        assert _get(f"http://127.0.0.1:{port}/ui-settings")["api_url"] == f"http://127.0.0.1:{port}/api"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
