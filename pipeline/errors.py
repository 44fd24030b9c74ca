"""User-facing errors.

A :class:`DamwatchError` is raised for a user's mistake (bad input, a refused overwrite, a
mismatch between two surveys). Its message is one paragraph that names the input, says what is
wrong with it and what to do. The command line prints it without a traceback and exits with
status 2. Anything else that escapes is a bug and keeps its traceback.

A :class:`ResourceError` is the machine's fault, not the input's: the disk is full, the Dask
cluster cannot be reached. It too is one paragraph without a traceback, but the command line
exits with status 1 (try again once the machine is fixed), and the watch flow releases the
inbox file for a later run instead of recording it as bad input. ``transient`` says whether
retrying the stage at once may help (a scheduler restarting) or not (a full disk).
"""

__all__ = ["DamwatchError", "InputError", "StoreError", "ResourceError", "ClusterUnavailable", "DiskFull"]


class DamwatchError(Exception):
    """Base class of every error caused by user input rather than by a bug."""


class InputError(DamwatchError):
    """An input file, argument or setting is unusable as given."""


class StoreError(DamwatchError):
    """The store is missing something, or an operation on it was refused."""


class ResourceError(DamwatchError):
    """The machine, not the input, failed: shown as one paragraph, never blamed on a file."""

    transient = False


class ClusterUnavailable(ResourceError, ConnectionError):
    """The Dask scheduler cannot be reached, or the connection to it was lost."""

    transient = True


class DiskFull(ResourceError):
    """No space left where damwatch writes: retrying cannot help until space is freed."""
