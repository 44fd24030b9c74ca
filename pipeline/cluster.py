"""Connection to a Dask cluster.

By default damwatch starts a :class:`distributed.LocalCluster` of process workers on this
machine, one single-threaded worker per core. Given a scheduler address (the ``address``
argument, or the ``DAMWATCH_CLUSTER`` environment variable), it connects to that cluster
instead and starts nothing: the same code then runs on a real cluster by configuration alone.

BLAS threads are capped to each worker's thread count (DESIGN decision 7): the environment
variables below are set before the worker processes start, so NumPy in each worker uses one
thread per Dask thread and two workers on two cores never fight over four BLAS threads.

A script that uses the default LocalCluster needs the ``if __name__ == "__main__":`` guard:
worker processes re-import the main module.

**Small work runs in this process** (:func:`runs_in_process`): when no cluster is configured and
no worker count is asked for, a stage whose input is at most :data:`IN_PROCESS_MAX_BYTES`
(pixels × bands × bytes per value of the surveys it reads: 64 MiB, e.g. a 4000 × 4000 survey of
four uint8 bands) runs on Dask's threaded scheduler in this process, and no worker process
starts. Measured on 2 cores (2026-12, dask 2026.8): importing ``distributed``, starting a
LocalCluster of two process workers and closing it costs 2.5–3 s, while a stage's own work on
threads costs about 0.05 s per MiB (features of a 1000 × 1000 × 4 survey: 1.1 s on threads,
1.9 s on a fresh cluster plus its start; 4000 × 4000 × 4, 61 MiB: 3.5 s against 2.6 s plus
2.5–3 s). Under the bound the cluster's fixed cost is always the larger part; above it the
process workers' memory limits and retries of lost work are worth having.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from pipeline.errors import ClusterUnavailable, InputError

__all__ = [
    "BLAS_THREAD_VARIABLES", "CLUSTER_ENV", "CONNECT_TIMEOUT_ENV", "IN_PROCESS_MAX_BYTES", "cluster_address", "dask_client",
    "runs_in_process",
]

CLUSTER_ENV = "DAMWATCH_CLUSTER"
#: Seconds to keep trying to reach an external scheduler (default 10) before giving up.
CONNECT_TIMEOUT_ENV = "DAMWATCH_CLUSTER_TIMEOUT"
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: The most input (bytes of survey pixels) a stage runs on in this process, without workers.
IN_PROCESS_MAX_BYTES = 64 * 2**20


def cluster_address(address: str | None = None) -> str | None:
    """The scheduler address to use: ``address`` if given, else ``$DAMWATCH_CLUSTER``, else None."""
    address = address or os.environ.get(CLUSTER_ENV) or None
    if address is not None and "://" not in address and ":" not in address:
        raise InputError(
            f"cluster address {address!r} has no port; give the scheduler as HOST:PORT or "
            f"tcp://HOST:PORT (the address `dask scheduler` prints), or leave it unset to use "
            f"a local cluster"
        )
    return address


def runs_in_process(work_bytes: int | None, address: str | None = None, workers: int | None = None) -> bool:
    """Whether work on ``work_bytes`` bytes of survey pixels runs in this process (module docstring).

    Only when nothing asks for workers: no scheduler ``address`` (nor ``$DAMWATCH_CLUSTER``),
    no ``workers`` count, and a known size of at most :data:`IN_PROCESS_MAX_BYTES`.
    """
    if cluster_address(address) is not None or workers is not None or work_bytes is None:
        return False
    return 0 <= work_bytes <= IN_PROCESS_MAX_BYTES


@contextlib.contextmanager
def dask_client(
    address: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str | int = "auto",
    processes: bool = True,
) -> Iterator["distributed.Client"]:  # noqa: F821
    """Yield a ``distributed.Client``: to ``address``/``$DAMWATCH_CLUSTER``, or to a new LocalCluster.

    ``n_workers`` defaults to the number of cores; ``memory_limit`` is per worker (bytes or a
    string such as ``"2GiB"``). The LocalCluster is closed on exit; an external cluster is
    left running.
    """
    import distributed

    address = cluster_address(address)
    if address is not None:
        timeout = float(os.environ.get(CONNECT_TIMEOUT_ENV) or 10)
        try:
            client = distributed.Client(address, timeout=f"{timeout}s")
        except OSError as exc:
            # The machine's fault, not the input's: a stage retries it, and the watch flow
            # releases the file for a later run instead of recording it as bad input.
            raise ClusterUnavailable(
                f"cannot reach the Dask scheduler at {address} ({exc}); start one with "
                f"`dask scheduler` and `dask worker {address}`, or unset {CLUSTER_ENV} (and drop "
                f"--cluster) to use a local cluster"
            ) from None
        with client:
            yield client
        return

    n_workers = n_workers or os.cpu_count() or 1
    if n_workers < 1:
        raise InputError(f"--workers must be at least 1, got {n_workers}")
    threads = str(threads_per_worker)
    saved = {name: os.environ.get(name) for name in BLAS_THREAD_VARIABLES}
    os.environ.update({name: threads for name in BLAS_THREAD_VARIABLES})
    try:
        cluster = distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=processes,
            memory_limit=memory_limit,
            host="127.0.0.1",
            dashboard_address=":0",  # any free port: never clash with another cluster
            silence_logs=40,  # logging.ERROR: keep worker chatter out of the user's terminal
        )
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    with cluster, distributed.Client(cluster) as client:
        yield client
