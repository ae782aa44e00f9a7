"""Entropy coding of integer streams: exact round trips, ANS near the entropy, bad streams."""

import numpy as np
import pytest

from sciinr import FormatError
from sciinr.stages.entropy import decode_ints, encode_ints


@pytest.mark.parametrize("method", ["best", "zstd", "ans"])
@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(0).integers(0, 64, 3000),
        np.where(
            np.random.default_rng(1).random(3000) < 0.7,
            0,
            np.random.default_rng(2).integers(-40, 40, 3000),
        ),
        np.array([7]),
        np.zeros(0, np.int64),
        np.full(10, -3),
        np.random.default_rng(3).integers(-(2**20), 2**20, 50),
    ],
)
def test_entropy_roundtrip_exact(values, method):
    data = encode_ints(values, method=method)
    np.testing.assert_array_equal(decode_ints(data, values.size), values)


def test_entropy_ans_near_entropy_and_best_is_smallest():
    rng = np.random.default_rng(0)
    values = np.where(rng.random(20000) < 0.5, 0, rng.integers(1, 32, 20000))
    ans, zst = encode_ints(values, method="ans"), encode_ints(values, method="zstd")
    p = np.bincount(values) / values.size
    entropy_bytes = -(p[p > 0] * np.log2(p[p > 0])).sum() * values.size / 8
    assert len(ans) < 1.01 * entropy_bytes + 100
    assert len(encode_ints(values)) == min(len(ans), len(zst))


def test_entropy_rejects_bad_streams():
    data = encode_ints(np.arange(100) % 7, method="ans")
    with pytest.raises(FormatError):
        decode_ints(data[:5], 100)
    with pytest.raises(FormatError):
        decode_ints(b"\x09" + data[1:], 100)
    with pytest.raises(FormatError):
        decode_ints(encode_ints(np.arange(10), method="zstd"), 11)
