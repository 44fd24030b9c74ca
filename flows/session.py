"""The cluster session: one Dask client shared by the stages of a flow run.

A flow opens a session (:func:`cluster_session`); its stage tasks ask it for the client
(:func:`stage_client`), which is started lazily on the first stage that needs one and closed
when the flow ends — a LocalCluster by default, or the scheduler given by ``--cluster`` /
``$DAMWATCH_CLUSTER`` (:mod:`pipeline.cluster`). A flow run in which every stage is skipped
starts no cluster at all. Nested sessions (a subflow inside a flow) reuse the outer one.

A client whose scheduler went away (killed, restarted, a dropped connection) is closed for good;
the next stage, or the retry of the stage that failed, gets a new connection instead of the
closed client.

A session told the size of its work (``work_bytes``: the survey pixels its stages read) runs
small work in this process, on Dask's threaded scheduler, and starts no worker process
(:func:`pipeline.cluster.runs_in_process` states the rule and its measurements); its stages
then get ``None`` for a client, which every pipeline function takes as "local threads".
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from typing import Any

from pipeline.cluster import cluster_address, dask_client, runs_in_process

__all__ = ["cluster_session", "connect", "in_process", "stage_client", "survey_bytes"]


class _Session:
    def __init__(self, address: str | None, workers: int | None, work_bytes: int | None = None):
        self.address = address
        self.workers = workers
        self.threads_only = runs_in_process(work_bytes, address, workers)
        self._stack = contextlib.ExitStack()
        self._client = None

    def client(self):
        if self._client is not None and self._client.status != "running":
            self._reconnect()
        if self._client is None:
            import distributed  # noqa: F401 - configures its loggers on import; quiet them after

            # The scheduler's and nannies' start/stop chatter (INFO) would drown the stage logs.
            quiet = logging.getLogger("distributed")
            level = quiet.level
            quiet.setLevel(logging.WARNING)
            self._stack.callback(quiet.setLevel, level)
            self._client = self._stack.enter_context(dask_client(self.address, n_workers=self.workers))
        return self._client

    def _reconnect(self) -> None:
        """Drop a client that lost its scheduler (closing what is left of it) before a new one."""
        stale, self._stack = self._stack, contextlib.ExitStack()
        self._client = None
        try:
            stale.close()
        except Exception:  # noqa: BLE001 - the old cluster is gone already; its teardown may fail
            logging.getLogger(__name__).debug("closing a lost Dask client failed", exc_info=True)

    def close(self) -> None:
        self._client = None
        self._stack.close()


_SESSION: contextvars.ContextVar[_Session | None] = contextvars.ContextVar("damwatch_cluster", default=None)


@contextlib.contextmanager
def cluster_session(
    address: str | None = None, workers: int | None = None, work_bytes: int | None = None
) -> Iterator[None]:
    """Give the stage tasks inside this block one shared Dask client, started on first use.

    ``work_bytes``: bytes of survey pixels the stages read, when known; small work then runs
    in this process (module docstring).
    """
    if _SESSION.get() is not None:
        yield
        return
    session = _Session(address, workers, work_bytes)
    token = _SESSION.set(session)
    try:
        yield
    finally:
        _SESSION.reset(token)
        session.close()


def in_process() -> bool:
    """True in a session asked for one local worker, or whose work is small: it runs in this process."""
    session = _SESSION.get()
    if session is None:
        return False
    return session.threads_only or (session.workers == 1 and cluster_address(session.address) is None)


def connect() -> None:
    """Connect the session's client now, to fail (ClusterUnavailable) before any work is claimed."""
    session = _SESSION.get()
    if session is not None and not session.threads_only:
        session.client()


@contextlib.contextmanager
def stage_client() -> Iterator[Any]:
    """The session's Dask client; outside a session, a client opened for this call only.

    ``None`` in a session whose work runs in this process (local threads).
    """
    session = _SESSION.get()
    if session is not None:
        yield None if session.threads_only else session.client()
        return
    with dask_client() as client:
        yield client


def survey_bytes(store: Any, survey_ids: list[str] | tuple[str, ...] = (), paths: list[str] | tuple[str, ...] = ()) -> int | None:
    """Bytes of pixels (height × width × bands × bytes per value) of surveys and GeoTIFFs.

    The work size a flow gives :func:`cluster_session`. None when a survey or file cannot be
    read (the stage itself then says why).
    """
    total = 0
    try:
        for survey_id in survey_ids:
            s = store.survey(survey_id)
            total += s.height * s.width * len(s.bands) * s.dtype.itemsize
        if paths:
            import numpy as np
            import rasterio

            for path in paths:
                with rasterio.open(path) as ds:
                    total += ds.height * ds.width * sum(np.dtype(d).itemsize for d in ds.dtypes)
    except Exception:  # noqa: BLE001 - a size is only a hint; the stage reports bad input itself
        return None
    return total
