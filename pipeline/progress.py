"""Progress bars for long work: a tqdm bar over Dask futures as they finish."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from tqdm.auto import tqdm

__all__ = ["progress_bar", "wait_with_progress", "EpochBar"]


def progress_bar(total: int, desc: str, unit: str = "task", disable: bool | None = None):
    """A tqdm bar on stderr; ``disable=None`` shows it unless ``DAMWATCH_NO_PROGRESS`` is set."""
    if disable is None:
        disable = bool(os.environ.get("DAMWATCH_NO_PROGRESS"))
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True)


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
