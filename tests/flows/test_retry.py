"""Which failures the stage tasks retry: transient ones, never bad input or bugs."""

from __future__ import annotations

import pytest

from pipeline.errors import InputError


@pytest.mark.parametrize(
    "exc, transient",
    [
        (OSError("disk hiccup"), True),  # I/O: may work next time
        (ConnectionError("scheduler gone"), True),
        (TimeoutError(), True),
        (InputError("not a raster"), False),  # bad input: never retried
        (FileNotFoundError("x"), True),  # an OSError: a file that vanished may come back (NFS)
        (ValueError("a bug"), False),  # a bug: retrying hides it
    ],
)
def test_only_transient_failures_are_retried(exc, transient):
    from flows.failures import is_transient

    assert is_transient(exc) is transient


def test_dask_lost_workers_are_transient_and_model_errors_are_not():
    from distributed.scheduler import KilledWorker

    from ann.errors import ModelFileError
    from flows.failures import is_transient
    from pipeline.errors import StoreError

    assert is_transient(KilledWorker("task", "worker", 3))
    assert not is_transient(ModelFileError("truncated"))
    assert not is_transient(StoreError("survey exists"))
