"""The README's definitions: PSNR, compression ratio, bits per value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sciinr import metrics


def test_psnr_of_a_known_error():
    original = np.array([0.0, 1.0, 0.5, 0.25], np.float32)
    decoded = original + np.float32(0.1)  # MSE 0.01 over a range of 1
    assert metrics.mse(original, decoded) == pytest.approx(0.01, rel=1e-6)
    assert metrics.psnr(original, decoded) == pytest.approx(20.0, abs=1e-4)
    # range 10: +20 dB
    assert metrics.psnr(10 * original, 10 * original + 1.0) == pytest.approx(20.0, abs=1e-4)


def test_psnr_edge_cases():
    assert metrics.psnr_from_mse(0.0, 1.0) == math.inf  # lossless
    assert metrics.psnr_from_mse(1.0, 0.0) == -math.inf  # constant field, wrong values
    x = np.full(5, 3.0, np.float32)
    assert metrics.psnr(x, x) == math.inf


def test_rmse_for_psnr_inverts_psnr():
    for target, vr in ((40.0, 2.5), (60.0, 1e-3), (25.0, 1e4)):
        rmse = metrics.rmse_for_psnr(target, vr)
        assert metrics.psnr_from_mse(rmse**2, vr) == pytest.approx(target, abs=1e-9)


def test_ratio_and_bits_per_value():
    assert metrics.ratio(1000, 400) == 10.0  # 4000 bytes of float32 in 400
    assert metrics.bits_per_value(1000, 400) == 3.2
    assert metrics.ratio(1000, 0) == 4000.0  # an empty file does not divide by zero
    assert metrics.bits_per_value(0, 10) == 80.0
