"""The cluster session: one Dask client shared by the stages of a flow run.

A flow opens a session (:func:`cluster_session`); its stage tasks ask it for the client
(:func:`stage_client`), which is started lazily on the first stage that needs one and closed
when the flow ends — a LocalCluster by default, or the scheduler given by ``--cluster`` /
``$DAMWATCH_CLUSTER`` (:mod:`pipeline.cluster`). A flow run in which every stage is skipped
starts no cluster at all. Nested sessions (a subflow inside a flow) reuse the outer one.

A client whose scheduler went away (killed, restarted, a dropped connection) is closed for good;
the next stage, or the retry of the stage that failed, gets a new connection instead of the
closed client.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from typing import Any

from pipeline.cluster import cluster_address, dask_client

__all__ = ["cluster_session", "stage_client", "in_process", "connect"]


class _Session:
    def __init__(self, address: str | None, workers: int | None):
        self.address = address
        self.workers = workers
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
def cluster_session(address: str | None = None, workers: int | None = None) -> Iterator[None]:
    """Give the stage tasks inside this block one shared Dask client, started on first use."""
    if _SESSION.get() is not None:
        yield
        return
    session = _Session(address, workers)
    token = _SESSION.set(session)
    try:
        yield
    finally:
        _SESSION.reset(token)
        session.close()


def in_process() -> bool:
    """True in a session asked for one local worker: work that can, runs in this process."""
    session = _SESSION.get()
    return session is not None and session.workers == 1 and cluster_address(session.address) is None


def connect() -> None:
    """Connect the session's client now, to fail (ClusterUnavailable) before any work is claimed."""
    session = _SESSION.get()
    if session is not None:
        session.client()


@contextlib.contextmanager
def stage_client() -> Iterator[Any]:
    """The session's Dask client; outside a session, a client opened for this call only."""
    session = _SESSION.get()
    if session is not None:
        yield session.client()
        return
    with dask_client() as client:
        yield client
