"""Run a persistent local Prefect server that every damwatch command then uses.

  damwatch server start              # a free port on 127.0.0.1; prints the UI's address
  damwatch server start --port 4299
  damwatch server status
  damwatch server stop

Without a Prefect server, each command starts Prefect's temporary one (several seconds) and its
run history ends with it. `server start` runs `prefect server start` in the background, on
127.0.0.1 only, with its SQLite database under the damwatch home ($DAMWATCH_HOME, default
~/.damwatch: server/prefect/), and returns once the server answers (the first start takes
10-30 s while Prefect creates its database). While it runs, every damwatch command whose
environment has no PREFECT_API_URL records its runs there; an exported PREFECT_API_URL always
wins. Runs stay in its history across restarts. For schedules (`damwatch serve`) it is the server
to use on one machine; deploy/README.md covers servers shared between machines.
"""

from __future__ import annotations

import argparse

NAME = "server"
HELP = "start, stop or show a persistent local Prefect server used by every command"
ORDER = 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("start", "stop", "status"), help="start, stop or status")
    parser.add_argument("--port", type=int, default=None,
                        help="with start: TCP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                        help="with start: how long to wait for the server to answer (default: 120)")


def run(args: argparse.Namespace) -> int:
    import os

    from flows.server import running_server, server_state, start_server, stop_server

    if args.action == "start":
        state = start_server(port=args.port, timeout=args.timeout)
        verb = "already running" if state.get("already") else "started"
        print(f"damwatch server {verb} (pid {state['pid']}): UI {state['ui']}, API {state['url']}")
        print(f"  database and settings in {state['prefect_home']}; log {state['log']}")
        explicit = os.environ.get("PREFECT_API_URL")
        if explicit and explicit != state["url"]:
            print(f"  note: PREFECT_API_URL={explicit} is exported in this shell and wins over it; "
                  f"`unset PREFECT_API_URL` to use this server")
        else:
            print("  every damwatch command now records its runs here; `damwatch server stop` stops it")
        return 0
    if args.action == "stop":
        state = stop_server()
        print(f"damwatch server stopped (was pid {state['pid']}, {state['url']})" if state
              else "no damwatch server was running")
        return 0
    state = running_server()
    if state is not None:
        print(f"damwatch server running (pid {state['pid']}): UI {state['ui']}, API {state['url']}, "
              f"since {state['started']}; log {state['log']}")
        return 0
    recorded = server_state()
    if recorded is not None:
        print(f"damwatch server not answering at {recorded['url']} (pid {recorded['pid']}); "
              f"`damwatch server stop` clears it, `damwatch server start` starts a new one; log {recorded['log']}")
        return 1
    print("no damwatch server running; `damwatch server start` starts one")
    return 1
