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

__all__ = ["ClusterUnavailable", "DamwatchError", "DiskFull", "InputError", "ResourceError", "StoreError", "command"]


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


def command(*words: object, store: object = None) -> str:
    """A damwatch command a user can paste, in backticks: ``command("features", sid, "--size", 32)``.

    Words are shell-quoted (an expression such as ``ndwi > 0`` stays one argument), and
    ``--store DIR`` is added when ``store`` (a :class:`pipeline.store.Store` or a path) is not
    the default store, so the command acts on the store the error came from. An error that
    suggests a command must suggest one that works as printed (tests/flows/test_suggestions.py
    runs them).
    """
    import shlex
    from pathlib import Path

    parts = ["damwatch", *(str(w) for w in words)]
    if store is not None:
        import os

        from pipeline.store import default_store_path

        root = Path(store) if isinstance(store, (str, os.PathLike)) else Path(store.root)
        if root.resolve() != default_store_path().resolve():
            parts += ["--store", str(root)]
    return "`" + " ".join(shlex.quote(p) for p in parts) + "`"
