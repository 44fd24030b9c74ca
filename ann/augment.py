"""The 8 symmetries of the square (the dihedral group D4) applied to batches of pixel windows.

A window seen from above has no preferred orientation: a dam rotated by 90° or mirrored is
still a dam. Training on every window under a random one of the 8 symmetries (4 rotations,
each with or without a mirror) shows the network each example in all orientations over the
epochs, at no cost in reading.

Symmetry ``k`` (0..7) of a window ``x (H, W, C)``: mirror left-right if ``k >= 4``, then rotate
counter-clockwise by ``90° × (k % 4)`` (``np.rot90`` over the row and column axes). 0 is the
identity. Odd rotations swap rows and columns, so windows must be square.

Which symmetry an example gets is a pure function of ``(seed, epoch, example id)``
(:func:`d4_codes`, a SplitMix64 hash), not of a random generator's state: the batch an example
is in, the shard that holds it and the worker that computes it do not matter, so 1, 2 or 4
workers see the very same pixels (DESIGN decision 5).
"""

from __future__ import annotations

import numpy as np

from ann.errors import ConfigError

__all__ = ["N_SYMMETRIES", "apply_d4", "d4_codes", "d4_transform"]

N_SYMMETRIES = 8
_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)


def d4_transform(x: np.ndarray, k: int) -> np.ndarray:
    """Symmetry ``k`` of windows x (..., H, W, C) (a view, no copy): mirror if k >= 4, then rotate k % 4 times."""
    if not 0 <= k < N_SYMMETRIES:
        raise ConfigError(f"symmetry {k} does not exist; D4 has symmetries 0..7")
    row_axis, col_axis = x.ndim - 3, x.ndim - 2
    if k >= 4:
        x = np.flip(x, axis=col_axis)
    return np.rot90(x, k % 4, axes=(row_axis, col_axis))


def apply_d4(X: np.ndarray, codes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Each window ``X[i]`` (B, H, W, C) under its own symmetry ``codes[i]`` -> (B, H, W, C).

    Written into ``out`` when given (must not be X). One copy per symmetry present.
    """
    X = np.asarray(X)
    codes = np.asarray(codes).reshape(-1)
    if X.ndim != 4 or codes.shape[0] != X.shape[0]:
        raise ConfigError(f"apply_d4 needs windows (B, H, W, C) and B codes; got {X.shape} and {codes.shape}")
    if X.shape[1] != X.shape[2] and np.any(codes % 2 == 1):
        raise ConfigError(f"rotating {X.shape[1]} x {X.shape[2]} windows by 90° needs square windows")
    if out is None:
        out = np.empty_like(X)
    for k in range(N_SYMMETRIES):
        rows = np.flatnonzero(codes == k)
        if rows.size == X.shape[0]:  # the whole batch under one symmetry: one copy, no gather
            np.copyto(out, d4_transform(X, k))
        elif rows.size:
            out[rows] = d4_transform(X[rows], k)
    return out


def _splitmix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on uint64 arrays (wrapping arithmetic): a well-mixed hash."""
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def d4_codes(seed: int, epoch: int, example_ids: np.ndarray) -> np.ndarray:
    """Symmetry (0..7, uint8) of each example in ``epoch``: a hash of (seed, epoch, example id).

    Example ids are global (the example's index in the training set), so the choice does not
    depend on batches, shards or workers.
    """
    ids = np.asarray(example_ids, dtype=np.int64).astype(_U64)
    with np.errstate(over="ignore"):
        key = _splitmix(np.array([(int(seed) & 0xFFFFFFFFFFFFFFFF)], _U64) + _GOLDEN)
        key = _splitmix(key ^ np.array([int(epoch) & 0xFFFFFFFFFFFFFFFF], _U64))
        return (_splitmix(key ^ (ids + _GOLDEN)) >> _U64(61)).astype(np.uint8)  # top 3 bits: 0..7


#: Photometric jitter of ``"d4+photometric"``: each channel of each window is scaled by a factor
#: in [1 - CONTRAST, 1 + CONTRAST] and shifted by up to ±BRIGHTNESS (standardized units), as
#: sun, haze, season and sensor change them between flights.
CONTRAST = 0.2
BRIGHTNESS = 0.25


def _uniform(seed: int, epoch: int, example_ids: np.ndarray, salt: int, channels: int) -> np.ndarray:
    """(N, channels) numbers in [-1, 1): a hash of (seed, epoch, example id, salt, channel)."""
    ids = np.asarray(example_ids, dtype=np.int64).astype(_U64)
    with np.errstate(over="ignore"):
        key = _splitmix(np.array([(int(seed) & 0xFFFFFFFFFFFFFFFF)], _U64) + _GOLDEN)
        key = _splitmix(key ^ np.array([(int(epoch) * 1_000_003 + salt) & 0xFFFFFFFFFFFFFFFF], _U64))
        base = _splitmix(key ^ (ids + _GOLDEN))[:, None]
        h = _splitmix(base ^ (np.arange(channels, dtype=_U64)[None, :] * _GOLDEN + _U64(salt)))
    return (h >> _U64(11)).astype(np.float64) / float(1 << 53) * 2.0 - 1.0


def augment_windows(
    X: np.ndarray, kind: str | None, seed: int, epoch: int, example_ids: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """Windows (B, H, W, C) under the augmentation ``kind``: None (as they are), ``"d4"`` (a
    symmetry each, :func:`d4_codes`) or ``"d4+photometric"`` (and a per-channel contrast and
    brightness jitter: ``x · (1 + CONTRAST u) + BRIGHTNESS v``, u, v in [-1, 1) hashed from
    (seed, epoch, example id, channel)). Like the symmetries, the jitter depends on no batch,
    shard or worker."""
    if kind is None:
        return X
    out = apply_d4(X, d4_codes(seed, epoch, example_ids), out=out)
    if kind == "d4+photometric":
        c = X.shape[-1]
        gain = (1.0 + CONTRAST * _uniform(seed, epoch, example_ids, 1, c)).astype(out.dtype)
        shift = (BRIGHTNESS * _uniform(seed, epoch, example_ids, 2, c)).astype(out.dtype)
        out *= gain[:, None, None, :]
        out += shift[:, None, None, :]
    return out
