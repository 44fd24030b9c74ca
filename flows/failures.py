"""Failures: which ones a stage retries, and how a user's mistake reaches the user.

A stage fails either because of its input (a :class:`pipeline.errors.DamwatchError` or an
:class:`ann.errors.AnnError`: a missing survey, a bad file, a refused overwrite) or because of a
*transient* fault (an I/O error, a lost Dask worker or connection, a timeout). Retrying cannot
fix bad input, nor a full disk (:class:`pipeline.errors.DiskFull`, and any ``ENOSPC`` /
``EDQUOT``), so only transient faults are retried (:func:`retry_transient`, the
``retry_condition_fn`` of every stage task; each task states its retry policy in its
decorator). A user error is shown as its one-paragraph message, without the traceback Prefect
would log (:func:`hide_user_error_tracebacks`).
"""

from __future__ import annotations

import errno
import logging

from ann.errors import AnnError
from pipeline.errors import DamwatchError, ResourceError

__all__ = ["is_transient", "retry_transient", "hide_user_error_tracebacks"]


def is_transient(exc: BaseException) -> bool:
    """True for failures that may succeed on a second try; never for bad input or a full disk."""
    if isinstance(exc, ResourceError):
        return exc.transient
    if isinstance(exc, (DamwatchError, AnnError)):
        return False
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return False  # space is not freed by waiting 10 s
    transient: tuple[type[BaseException], ...] = (OSError, TimeoutError, ConnectionError)
    try:
        from distributed.client import ClosedClientError, FutureCancelledError
        from distributed.scheduler import KilledWorker

        # A closed client is retried: the cluster session reconnects (flows/session.py).
        transient += (KilledWorker, FutureCancelledError, ClosedClientError)
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, transient)


def retry_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry only when the task failed with a transient error."""
    try:
        state.result(raise_on_failure=True)
    except BaseException as exc:  # noqa: BLE001 - we classify, not handle
        return is_transient(exc)
    return False


class _UserErrorTracebacks(logging.Filter):
    """Drop the traceback from console log records of user errors (the message stays)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (DamwatchError, AnnError)):
            record.exc_info, record.exc_text = None, None
        return True


def hide_user_error_tracebacks() -> None:
    """Keep Prefect's console from printing tracebacks for bad input (the CLI's contract).

    Prefect logs every exception that fails a task or flow with its traceback; for a
    :class:`DamwatchError` / :class:`AnnError` the one-paragraph message says everything, and
    the command line prints it once more itself. Applies to the console handlers only.
    """
    # Here, not at the top: prefect costs ~1 s to import and the command line checks its input
    # first. Importing prefect's flow machinery sets up its logging handlers, which the filter
    # then goes on (a bare `import prefect` is lazy and sets up nothing).
    import prefect.main  # noqa: F401
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, _UserErrorTracebacks) for f in handler.filters
        ):
            handler.addFilter(_UserErrorTracebacks())
