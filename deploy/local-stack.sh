#!/usr/bin/env bash
# Start or stop a Prefect server and a Dask cluster on this machine for damwatch (see README.md).
#
#   deploy/local-stack.sh start     # server on 127.0.0.1:4200, scheduler on :8786, N workers
#   deploy/local-stack.sh status
#   deploy/local-stack.sh stop
#   source <(deploy/local-stack.sh env)   # PREFECT_API_URL and DAMWATCH_CLUSTER for this shell
#
# Settings (environment): DAMWATCH_STACK_DIR (logs, PIDs, Prefect home; ./damwatch-stack),
# PREFECT_PORT (4200), DASK_PORT (8786), DASK_WORKERS (number of cores), DASK_MEMORY (4GiB).
# Then run `damwatch serve ...` or a Prefect worker (README.md, steps 3a/3b).
set -euo pipefail

STACK_DIR=${DAMWATCH_STACK_DIR:-./damwatch-stack}
PREFECT_PORT=${PREFECT_PORT:-4200}
DASK_PORT=${DASK_PORT:-8786}
DASK_WORKERS=${DASK_WORKERS:-$(nproc 2>/dev/null || echo 2)}
DASK_MEMORY=${DASK_MEMORY:-4GiB}
API_URL="http://127.0.0.1:${PREFECT_PORT}/api"
SCHEDULER="tcp://127.0.0.1:${DASK_PORT}"

mkdir -p "$STACK_DIR"
STACK_DIR=$(cd "$STACK_DIR" && pwd)

start_one() {  # name, command...
  local name=$1; shift
  if [[ -f "$STACK_DIR/$name.pid" ]] && kill -0 "$(cat "$STACK_DIR/$name.pid")" 2>/dev/null; then
    echo "$name already running (pid $(cat "$STACK_DIR/$name.pid"))"; return
  fi
  # setsid: own process group, so `stop` ends the piece and the processes it started.
  setsid "$@" >"$STACK_DIR/$name.log" 2>&1 < /dev/null &
  echo $! >"$STACK_DIR/$name.pid"
  echo "$name started (pid $!, log $STACK_DIR/$name.log)"
}

wait_for() {  # description, command
  for _ in $(seq 1 120); do
    if eval "$2" >/dev/null 2>&1; then echo "$1: up"; return 0; fi
    sleep 0.5
  done
  echo "$1: not up after 60 s; see the logs in $STACK_DIR" >&2; return 1
}

case "${1:-}" in
  start)
    export PREFECT_HOME="$STACK_DIR/prefect-home" PREFECT_SERVER_ANALYTICS_ENABLED=false
    # Before the server starts: its UI asks PREFECT_API_URL for the API, and Prefect would
    # otherwise build that address from port 4200 whatever --port says.
    export PREFECT_API_URL="$API_URL"
    unset PREFECT_UI_API_URL
    export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
    start_one prefect-server prefect server start --host 127.0.0.1 --port "$PREFECT_PORT"
    start_one dask-scheduler dask scheduler --host 127.0.0.1 --port "$DASK_PORT" --dashboard-address "127.0.0.1:$((DASK_PORT + 1))"
    start_one dask-workers dask worker "$SCHEDULER" --nworkers "$DASK_WORKERS" --nthreads 1 --memory-limit "$DASK_MEMORY"
    wait_for "Prefect server ($API_URL)" "python -c \"import urllib.request; urllib.request.urlopen('$API_URL/health', timeout=2)\""
    wait_for "Dask scheduler ($SCHEDULER)" "python -c \"import distributed; distributed.Client('$SCHEDULER', timeout=2).close()\""
    echo
    echo "Now, in your shell:"
    echo "  export PREFECT_API_URL=$API_URL DAMWATCH_CLUSTER=$SCHEDULER"
    ;;
  env)
    echo "export PREFECT_API_URL=$API_URL DAMWATCH_CLUSTER=$SCHEDULER PREFECT_SERVER_ANALYTICS_ENABLED=false"
    ;;
  status)
    for name in prefect-server dask-scheduler dask-workers; do
      if [[ -f "$STACK_DIR/$name.pid" ]] && kill -0 "$(cat "$STACK_DIR/$name.pid")" 2>/dev/null; then
        echo "$name: running (pid $(cat "$STACK_DIR/$name.pid"))"
      else
        echo "$name: stopped"
      fi
    done
    ;;
  stop)
    for name in dask-workers dask-scheduler prefect-server; do
      pidfile="$STACK_DIR/$name.pid"
      [[ -f "$pidfile" ]] || continue
      pid=$(cat "$pidfile")
      if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        echo "$name stopped"
      fi
      rm -f "$pidfile"
    done
    ;;
  *)
    sed -n '2,12p' "$0"; exit 2
    ;;
esac
