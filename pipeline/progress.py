"""Progress bars for long work: a tqdm bar over Dask futures as they finish.

A bar is drawn only on a terminal: in a log file (a scheduled run, CI, ``2> log``) it would be
a stream of carriage-return fragments. A bar whose work fails is erased, so an unfinished
"40%|████" is never left above the error.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

__all__ = ["EpochBar", "cancel_and_drain", "progress_bar", "shows_progress", "wait_with_progress"]


class _Bar(tqdm):
    def __exit__(self, exc_type, exc_value, traceback):
        if exc_type is not None:
            self.leave = False  # erase it: the error says what happened
        return super().__exit__(exc_type, exc_value, traceback)


def shows_progress() -> bool:
    """Whether progress bars are drawn: stderr is a terminal and ``DAMWATCH_NO_PROGRESS`` is unset."""
    if os.environ.get("DAMWATCH_NO_PROGRESS"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def progress_bar(total: int, desc: str, unit: str = "task", disable: bool | None = None):
    """A tqdm bar on stderr; ``disable=None`` draws it only when :func:`shows_progress`."""
    if disable is None:
        disable = not shows_progress()
    return _Bar(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True)


def wait_with_progress(futures: Sequence, desc: str, unit: str = "chunk", stop: Callable[[Any], bool] | None = None) -> list:
    """Wait for Dask ``futures`` with a progress bar; return their results in the given order.

    The first failure is raised as soon as it arrives, with the other futures cancelled and
    once the tasks already running have ended (:func:`cancel_and_drain`): a task that writes
    into a staging directory must not go on writing after the caller removed it. ``stop``: a
    result for which the rest is not worth computing (a task reporting a full disk); the others
    are then cancelled and drained the same way, and come back as None.
    """
    from distributed import as_completed  # here: ~0.4 s, and only Dask runs need it

    with progress_bar(len(futures), desc, unit) as bar:
        try:
            for future in as_completed(futures):
                if future.status == "error":
                    future.result()  # raises the task's exception here, on the driver
                bar.update(1)
                if stop is not None and stop(future.result()):
                    results = [f.result() if f.status == "finished" else None for f in futures]
                    cancel_and_drain(futures)
                    return results
        except BaseException:
            cancel_and_drain(futures)
            raise
    return [future.result() for future in futures]


_SETTLED_STATES = ("memory", "error", "released", "forgotten")


def _running_keys(dask_worker) -> list:
    """On a worker: the keys of the tasks that run there or may still start (cancelled ones too)."""
    return [key for key, ts in dask_worker.state.tasks.items() if ts.state not in _SETTLED_STATES]


def cancel_and_drain(futures: Sequence, timeout: float = 60.0) -> None:
    """Cancel ``futures`` and wait (up to ``timeout`` s) until none of their tasks still runs.

    Cancelling a future does not stop a task a worker is executing: it runs to its end, and
    its writes land after the caller has moved on. Waiting for them lets the caller clean up
    for good. Best effort: a worker that cannot be asked (lost) is not waited for.
    """
    futures = [f for f in futures if f is not None]
    if not futures:
        return
    client = futures[0].client
    keys = {f.key for f in futures}
    for future in futures:
        future.cancel()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            running = client.run(_running_keys, on_error="ignore")
        except Exception:  # noqa: BLE001 - the cluster is gone: nothing runs there any more
            return
        if not any(key in keys for found in running.values() if isinstance(found, list) for key in found):
            return
        time.sleep(0.05)


class EpochBar:
    """One progress bar over the epochs of a training, showing the training loss and the
    validation metric; pass it as ``ann.train.fit``'s ``callback``."""

    def __init__(self, total: int, desc: str, metric: str, disable: bool | None = None) -> None:
        self.bar = progress_bar(total, desc, unit="epoch", disable=disable)
        self.metric = metric

    def __call__(self, record) -> None:
        value = record.get(f"val_{self.metric}")
        self.bar.set_postfix(loss=f"{record.get('train_loss', float('nan')):.4f}",
                             **{self.metric: f"{value:.3f}" if value is not None else "n/a"}, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
