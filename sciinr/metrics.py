"""The definitions used everywhere (README): PSNR, compression ratio, bits per value."""

from __future__ import annotations

import math

import numpy as np


def mse(original: np.ndarray, decoded: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error over all values (or the valid ones, ``mask`` True), in float64."""
    a = np.asarray(original, dtype=np.float64)
    b = np.asarray(decoded, dtype=np.float64)
    if mask is not None:
        a, b = a[mask], b[mask]
    return float(np.mean((a - b) ** 2)) if a.size else 0.0


def psnr_from_mse(mse_value: float, value_range: float) -> float:
    """PSNR in dB for a given MSE and value range; ``inf`` for a lossless result."""
    if mse_value <= 0:
        return math.inf
    if value_range <= 0:
        return -math.inf
    return 20 * math.log10(value_range) - 10 * math.log10(mse_value)


def psnr(original: np.ndarray, decoded: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR = 20 log10(max - min of the original) - 10 log10(MSE), over all values.

    With ``mask`` (True = valid), range and MSE are those of the valid values only.
    """
    orig = np.asarray(original)
    vals = orig if mask is None else orig[mask]
    vr = float(vals.max()) - float(vals.min()) if vals.size else 0.0
    return psnr_from_mse(mse(orig, decoded, mask), vr)


def rmse_for_psnr(target_db: float, value_range: float) -> float:
    """The RMS error that gives ``target_db`` for a field of this value range."""
    return value_range * 10 ** (-target_db / 20)


def ratio(n_values: int, n_bytes: int) -> float:
    """Bytes of the values in float32 divided by the compressed bytes."""
    return 4.0 * n_values / max(n_bytes, 1)


def bits_per_value(n_values: int, n_bytes: int) -> float:
    """8 * compressed bytes / number of values."""
    return 8.0 * n_bytes / max(n_values, 1)
