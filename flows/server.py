"""The damwatch server: one persistent local Prefect server that every command uses while it runs.

Without a Prefect server, each command starts Prefect's temporary one (6–10 s) and its run
history ends with it. ``damwatch server start`` runs ``prefect server start`` in the background
instead, once: on 127.0.0.1 (loopback only), on a free port or ``--port``, with its own SQLite
database in ``PREFECT_HOME = <damwatch home>/server/prefect`` (the damwatch home is
``$DAMWATCH_HOME``, default ``~/.damwatch``). It writes ``<damwatch home>/server/server.json``
(pid, API URL, log file) and returns once ``/api/health`` answers.

While it answers, every command that runs a flow uses it (:func:`use_running_server`): when
``PREFECT_API_URL`` is not set in the environment, it is set to this server's API before Prefect
is imported. An explicit ``PREFECT_API_URL`` always wins; with neither, Prefect's temporary
server stays the fallback.

The server process is started with ``PREFECT_API_URL`` (and ``PREFECT_SERVER_API_PORT``)
already naming its own address, so the UI it serves asks that address for its API — Prefect
otherwise builds the UI's API address from ``PREFECT_SERVER_API_PORT`` (4200 by default),
whatever port the server listens on.

Nothing here imports Prefect: checking for a running server costs one file read and, when the
file exists, one request to loopback.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.errors import InputError

__all__ = [
    "HOME_ENV",
    "damwatch_home",
    "server_dir",
    "server_state",
    "is_healthy",
    "running_server",
    "start_server",
    "stop_server",
    "use_running_server",
]

HOME_ENV = "DAMWATCH_HOME"
HOST = "127.0.0.1"


def damwatch_home() -> Path:
    """``$DAMWATCH_HOME``, else ``~/.damwatch``: where damwatch keeps per-user state."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".damwatch")


def server_dir() -> Path:
    return damwatch_home() / "server"


def _state_file() -> Path:
    return server_dir() / "server.json"


def server_state() -> dict[str, Any] | None:
    """What ``server.json`` says (pid, url, port, log, prefect_home, started), or None."""
    try:
        state = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and "url" in state and "pid" in state else None


def is_healthy(api_url: str, timeout: float = 1.0) -> bool:
    """Whether the Prefect API at ``api_url`` (ending in ``/api``) answers its health check."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process took the pid
        return False
    return True


def _is_server_process(pid: int) -> bool:
    """Whether ``pid`` lives and is a ``prefect server`` (never signal a reused pid)."""
    if not _alive(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:  # no /proc (macOS): trust the pid
        return True
    return b"prefect" in command and b"server" in command


def running_server(timeout: float = 1.0) -> dict[str, Any] | None:
    """The state of the damwatch server if its process lives and its API answers, else None."""
    state = server_state()
    if state is None or not _is_server_process(int(state["pid"])):
        return None
    return state if is_healthy(state["url"], timeout) else None


def use_running_server() -> str | None:
    """Point this process at the damwatch server when ``PREFECT_API_URL`` is unset; its URL or None.

    Call before Prefect is imported: Prefect reads its settings once.
    """
    if os.environ.get("PREFECT_API_URL"):
        return None
    state = running_server(timeout=0.5)
    if state is None:
        return None
    os.environ["PREFECT_API_URL"] = state["url"]
    return state["url"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_server(port: int | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """Start the damwatch server (module docstring) and wait until it answers; its state.

    A server already running is left as it is and its state returned (``"already": True``).
    """
    current = running_server()
    if current is not None:
        return {**current, "already": True}
    if port is not None and not 0 < port < 65536:
        raise InputError(f"--port must be a TCP port between 1 and 65535, got {port}")
    if port is not None and _port_in_use(port):
        raise InputError(
            f"port {port} on {HOST} is already in use; give another --port, or leave it out to take a free one"
        )
    port = port or _free_port()
    url = f"http://{HOST}:{port}/api"
    directory = server_dir()
    prefect_home = directory / "prefect"
    prefect_home.mkdir(parents=True, exist_ok=True)
    log = directory / "server.log"
    env = {
        **os.environ,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_API_URL": url,  # before the server starts: the UI asks this address for its API
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_UI_API_URL", None)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # its own process group: `stop` ends it and what it started
        )
    state = {
        "pid": process.pid,
        "url": url,
        "ui": url.removesuffix("/api"),
        "port": port,
        "prefect_home": str(prefect_home),
        "log": str(log),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    deadline = time.monotonic() + timeout
    while not is_healthy(url, timeout=1.0):
        if process.poll() is not None:
            raise InputError(
                f"the Prefect server stopped while starting (exit status {process.returncode}); "
                f"the end of its log {log}:\n{_log_tail(log)}"
            )
        if time.monotonic() > deadline:
            _terminate(process.pid)
            raise InputError(
                f"the Prefect server did not answer at {url} within {timeout:.0f} s and was stopped; "
                f"see its log {log}"
            )
        time.sleep(0.25)
    tmp = _state_file().with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, _state_file())
    return state


def _terminate(pid: int, grace: float = 15.0) -> None:
    """SIGTERM the process group ``pid`` leads (the server and its workers), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child: reap it
                    return
            except ChildProcessError:  # started by another damwatch process
                if not _alive(pid):
                    return
            time.sleep(0.1)


def stop_server() -> dict[str, Any] | None:
    """Stop the damwatch server; its former state, or None if none was recorded."""
    state = server_state()
    if state is None:
        return None
    if _is_server_process(int(state["pid"])):
        _terminate(int(state["pid"]))
    _state_file().unlink(missing_ok=True)
    return state
