"""Errors of the network package that a user can cause (a bad model file, a wrong feature spec).

``ann`` does not import ``pipeline``, so it has its own base class; the command line treats
:class:`AnnError` like ``pipeline.errors.DamwatchError``: message printed, no traceback, exit 2.
"""

__all__ = ["AnnError", "ModelFileError", "FeatureSpecMismatch", "ConfigError"]


class AnnError(Exception):
    """Base class of the user-facing errors raised by ``ann``."""


class ModelFileError(AnnError):
    """A model file is missing, truncated, malformed or inconsistent with its JSON."""


class FeatureSpecMismatch(AnnError):
    """Features were made with another feature spec than the one the model was trained on."""


class ConfigError(AnnError):
    """An unknown or out-of-range training or architecture setting."""
