"""Progress bars for long work: a tqdm bar over Dask futures as they finish.

A bar is drawn only on a terminal: in a log file (a scheduled run, CI, ``2> log``) it would be
a stream of carriage-return fragments. A bar whose work fails is erased, so an unfinished
"40%|████" is never left above the error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from tqdm.auto import tqdm

__all__ = ["progress_bar", "shows_progress", "wait_with_progress"]


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


def wait_with_progress(futures: Sequence, desc: str, unit: str = "chunk") -> list:
    """Wait for Dask ``futures`` with a progress bar; return their results in the given order.

    The first failure is raised as soon as it arrives, with the other futures cancelled.
    """
    from distributed import as_completed  # here: ~0.4 s, and only Dask runs need it

    with progress_bar(len(futures), desc, unit) as bar:
        try:
            for future in as_completed(futures):
                if future.status == "error":
                    future.result()  # raises the task's exception here, on the driver
                bar.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return [future.result() for future in futures]
