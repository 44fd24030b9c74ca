"""Feature standardization: each feature shifted to mean 0 and scaled to standard deviation 1.

Raw tile features mix units (reflectances in 0–255, indices in -1–1, texture variances in the
thousands); a network whose inputs differ in scale by 10⁴ trains slowly and unevenly. A
:class:`Standardizer` holds the mean and scale of every feature *measured on the training set*
and applies ``(x - mean) / scale`` to any later features (validation, detection), so the model
file must carry these statistics. A feature constant on the training set (variance 0) gets
scale 1: it stays constant (0) instead of dividing by zero.

For pixel windows ``X (N, H, W, C)`` (channels last, :mod:`ann.convnet`) the statistics are *per
channel*: mean and scale have length C and are taken over every pixel of every window, and
``transform`` applies them over the last axis. A feature table (N, F) is the same rule with
F "channels" of one pixel each.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ann.errors import AnnError, ConfigError

__all__ = ["Standardizer"]


class Standardizer:
    """``transform(X) = (X - mean) / scale`` over the last axis; mean and scale are float64 (F,) or (C,)."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray) -> None:
        mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        scale = np.asarray(scale, dtype=np.float64).reshape(-1)
        if mean.shape != scale.shape or mean.size == 0:
            raise ConfigError(f"standardizer mean has {mean.size} values and scale {scale.size}; need the same, > 0")
        if not (np.isfinite(mean).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise ConfigError("standardizer mean and scale must be finite, and scale > 0 for every feature")
        self.mean = mean
        self.scale = scale

    @property
    def n_features(self) -> int:
        return int(self.mean.size)

    @classmethod
    def fit(cls, X: np.ndarray) -> "Standardizer":
        """Statistics of the training features X (N, F) or windows (N, H, W, C), in float64.

        For windows, per channel over all N H W pixels.
        """
        X = np.asarray(X)
        if X.ndim < 2 or X.shape[0] == 0:
            raise ConfigError(f"standardizer needs training features (N, F) or windows (N, H, W, C) with N > 0, got {X.shape}")
        X = X.reshape(-1, X.shape[-1])  # (N [H W], F)
        if not np.isfinite(X).all():
            bad = np.flatnonzero(~np.isfinite(X).all(axis=0))[:10]
            raise AnnError(
                f"training features contain NaN or infinity in columns {bad.tolist()}; drop tiles with "
                "nodata (valid_fraction) or fill them before training"
            )
        mean = X.mean(axis=0, dtype=np.float64)
        var = X.var(axis=0, dtype=np.float64)
        return cls.from_moments(mean, var)

    @classmethod
    def from_moments(cls, mean: np.ndarray, var: np.ndarray) -> "Standardizer":
        """From per-feature mean and (population) variance, e.g. combined across shards."""
        var = np.asarray(var, dtype=np.float64)
        return cls(mean, np.where(var > 0, np.sqrt(np.maximum(var, 0)), 1.0))

    def transform(self, X: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
        """Standardized copy of X (N, F) or (..., C) in ``dtype`` (the network's), over the last axis.

        The arithmetic runs in ``dtype`` itself: two in-place passes over one copy. (A float64
        detour cost several times the network's own forward pass when scoring float32 tiles.)
        """
        X = np.asarray(X)
        if X.ndim < 2 or X.shape[-1] != self.n_features:
            raise ConfigError(
                f"input of shape {X.shape} does not fit a standardizer of {self.n_features} features/channels (last axis)"
            )
        dtype = np.dtype(dtype)
        out = np.array(X, dtype=dtype, copy=True)  # (N, F) or (..., C)
        out -= self.mean.astype(dtype)
        out /= self.scale.astype(dtype)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Standardizer":
        if not isinstance(d, dict) or set(d) != {"mean", "scale"}:
            raise ConfigError(f"standardizer must be a dict with keys 'mean' and 'scale', got {type(d).__name__} {list(d) if isinstance(d, dict) else ''}")
        try:
            mean = np.asarray(d["mean"], dtype=np.float64)
            scale = np.asarray(d["scale"], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"standardizer mean/scale must be lists of numbers: {e}") from e
        if mean.ndim != 1 or scale.ndim != 1:
            raise ConfigError("standardizer mean/scale must be flat lists of numbers")
        return cls(mean, scale)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Standardizer)
            and np.array_equal(self.mean, other.mean)
            and np.array_equal(self.scale, other.scale)
        )

    def __repr__(self) -> str:
        return f"Standardizer(n_features={self.n_features})"
