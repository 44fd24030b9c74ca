"""Prefect's temporary server dies with the damwatch process that started it.

Without ``PREFECT_API_URL``, Prefect runs a flow against a *temporary* local server: a uvicorn
subprocess it starts on first use and stops at interpreter exit (``atexit``). A damwatch process
killed with SIGKILL runs no ``atexit``, so the server lived on, orphaned, holding its port and
database. :func:`tie_to_this_process` makes the server's process ask the kernel for SIGTERM
when its parent dies (``prctl(PR_SET_PDEATHSIG)``, Linux): the server is started through this
module's small launcher (``python -m flows.prefect_server PID uvicorn ...``), which sets the
signal and then ``exec``s uvicorn (the setting survives ``exec``). The signal follows the
*thread* that started the child, so the server is started here, from the main thread, rather
than lazily from whichever thread first needs it.

Nothing changes when ``PREFECT_API_URL`` points at a real server, nor off Linux.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import types

__all__ = ["tie_to_this_process"]

_PR_SET_PDEATHSIG = 1


class _LaunchingSubprocess(types.ModuleType):
    """``subprocess`` as Prefect's server module sees it: ``Popen`` of uvicorn goes through the launcher."""

    def __init__(self, real):
        super().__init__("subprocess")
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def Popen(self, args, *rest, **kwargs):  # noqa: N802 - the name Prefect calls
        args = list(args)
        if args[1:3] == ["-m", "uvicorn"]:
            args = [args[0], "-m", "flows.prefect_server", str(os.getpid()), *args[2:]]
        return self._real.Popen(args, *rest, **kwargs)


def tie_to_this_process() -> None:
    """Start Prefect's temporary server now, from the main thread, tied to this process's life.

    A no-op when a Prefect API URL is configured (a real server), when ephemeral servers are
    disabled, off Linux, or outside the main thread.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    import prefect.server.api.server as server_module

    if not isinstance(server_module.subprocess, _LaunchingSubprocess):
        server_module.subprocess = _LaunchingSubprocess(server_module.subprocess)
    try:
        server_module.SubprocessASGIServer().start()
    except RuntimeError as exc:  # "Timed out while attempting to connect to ephemeral Prefect API server"
        from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

        from pipeline.errors import ResourceError

        raise ResourceError(
            f"Prefect's temporary server did not answer within "
            f"{PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()} s ({exc}); the machine is probably busy. "
            f"Start a persistent server once with `damwatch server start` (every later command then uses it and "
            f"starts in about a second), or wait longer: `export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120`"
        ) from None


def _launch(parent: int, argv: list[str]) -> None:
    """In the server's process: ask for SIGTERM when ``parent`` dies, then become ``python -m ARGV``."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the server only stops at the parent's exit
        pass
    if os.getppid() != parent:  # the parent died before prctl: nobody to serve
        sys.exit(0)
    os.execv(sys.executable, [sys.executable, "-m", *argv])


if __name__ == "__main__":  # pragma: no cover - runs as the server's launcher
    _launch(int(sys.argv[1]), sys.argv[2:])
