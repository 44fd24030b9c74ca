"""User-facing errors.

A :class:`DamwatchError` is raised for a user's mistake (bad input, a refused overwrite, a
mismatch between two surveys). Its message is one paragraph that names the input, says what is
wrong with it and what to do. The command line prints it without a traceback and exits with
status 2. Anything else that escapes is a bug and keeps its traceback.
"""

__all__ = ["DamwatchError", "InputError", "StoreError"]


class DamwatchError(Exception):
    """Base class of every error caused by user input rather than by a bug."""


class InputError(DamwatchError):
    """An input file, argument or setting is unusable as given."""


class StoreError(DamwatchError):
    """The store is missing something, or an operation on it was refused."""
