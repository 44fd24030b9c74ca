"""Failures: which ones a stage retries, and how a user's mistake reaches the user.

A stage fails either because of its input (a :class:`pipeline.errors.DamwatchError` or an
:class:`ann.errors.AnnError`: a missing survey, a bad file, a refused overwrite) or because of a
*transient* fault (an I/O error, a lost Dask worker or connection, a timeout). Retrying cannot
fix bad input, nor a full disk (:class:`pipeline.errors.DiskFull`, and any ``ENOSPC`` /
``EDQUOT``), so only transient faults are retried (:func:`retry_transient`, the
``retry_condition_fn`` of every stage task; each task states its retry policy in its
decorator). On the command line a user error is shown as its one-paragraph message alone,
without Prefect's ERROR lines and traceback repeating it (:func:`hide_user_error_tracebacks`).
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


def _user_error_names() -> tuple[str, ...]:
    """Class names of every user error (DamwatchError, AnnError and their subclasses)."""
    names, todo = set(), [DamwatchError, AnnError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return tuple(sorted(names))


class _UserErrorLines(logging.Filter):
    """Drop Prefect's console lines about a user error: the command line prints its paragraph.

    Prefect reports a failed task or flow three times (the task's "Finished in state Failed(...
    StoreError: ...)", the flow's "Encountered exception during execution" with a traceback, and
    the flow's "Finished in state Failed"), each repeating the message the command then prints
    once, wrapped. The records still reach Prefect's API log (this filter is on the console
    handlers only), so the run's page in the UI keeps them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (DamwatchError, AnnError)):
            return False
        if record.levelno >= logging.INFO and record.name.startswith("prefect"):
            message = record.getMessage()
            if "Failed(" in message or "Encountered exception" in message:
                return not any(f"{n}: " in message or f"{n}(" in message for n in _user_error_names())
        return True


class _DrainNotices(logging.Filter):
    """Drop "Still processing items" from Prefect's event/log workers as a command exits."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Still processing items")


def hide_user_error_tracebacks() -> None:
    """Keep Prefect's console from repeating bad input (the CLI's contract: one paragraph).

    Prefect logs every exception that fails a task or flow with its traceback, and its final
    states with the message again; for a :class:`DamwatchError` / :class:`AnnError` the
    one-paragraph message says everything, and the command line prints it itself. Applies to
    the console handlers only. Also drops the "Still processing items" notices Prefect's
    background workers print while sending the last events of a run at exit.
    """
    # Here, not at the top: prefect costs ~1 s to import and the command line checks its input
    # first. Importing prefect's flow machinery sets up its logging handlers, which the filter
    # then goes on (a bare `import prefect` is lazy and sets up nothing).
    import prefect.main  # noqa: F401
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, _UserErrorLines) for f in handler.filters
        ):
            handler.addFilter(_UserErrorLines())
    for name in ("EventsWorker", "APILogWorker"):
        worker_logger = logging.getLogger(name)
        if not any(isinstance(f, _DrainNotices) for f in worker_logger.filters):
            worker_logger.addFilter(_DrainNotices())
