"""Entropy coding of integer streams (quantization indices, latents, block constants).

Each stream is self-describing and is coded both ways; the smaller wins:

- method 0, ``zstd``: the integers (offset to start at 0) in the narrowest unsigned dtype,
  zstd-compressed.
- method 1, ``ans``: range/ANS coding (the ``constriction`` library) with a categorical model
  whose frequencies (uint16, scaled) are stored in front of the stream.
- method 2, ``constant``: every integer equals ``min`` (no body).

Layout: ``u8 method | i32 min | u32 alphabet`` then, for zstd: the zstd frame; for ans:
``u32 table_bytes | zstd(uint16 freqs) | u32 words...``. Decoding is told how many integers to
expect and checks every length before allocating.
"""

from __future__ import annotations

import struct

import numpy as np
import zstandard

from ..errors import FormatError
from . import budget

MAX_ALPHABET = 1 << 16
_HEAD = struct.Struct("<BiI")
ZSTD_LEVEL = 19


def _uint_dtype(alphabet: int) -> np.dtype:
    if alphabet <= 1 << 8:
        return np.dtype(np.uint8)
    if alphabet <= 1 << 16:
        return np.dtype("<u2")
    return np.dtype("<u4")


def _freqs(sym: np.ndarray, alphabet: int) -> np.ndarray:
    counts = np.bincount(sym, minlength=alphabet).astype(np.float64)
    scaled = np.where(counts > 0, np.maximum(1, np.round(counts * 65535 / counts.max())), 0)
    return scaled.astype("<u2")


def _model(freqs: np.ndarray):
    import constriction

    p = freqs.astype(np.float64)
    return constriction.stream.model.Categorical(p / p.sum(), perfect=False)


def encode_ints(values: np.ndarray, method: str = "best") -> bytes:
    """Code an integer array (any shape; flattened in C order). ``method``: best | zstd | ans."""
    v = np.asarray(values).ravel().astype(np.int64)
    lo = int(v.min()) if v.size else 0
    hi = int(v.max()) if v.size else 0
    if lo < -(1 << 31) or hi >= 1 << 31:
        raise ValueError("integers out of int32 range")
    alphabet = hi - lo + 1
    sym = v - lo
    if alphabet == 1:
        return _HEAD.pack(2, lo, 1)
    head = _HEAD.pack(0, lo, alphabet)
    z = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(
        sym.astype(_uint_dtype(alphabet)).tobytes()
    )
    candidates = []
    if method in ("best", "zstd") or alphabet > MAX_ALPHABET:
        candidates.append(head + z)
    if method in ("best", "ans") and alphabet <= MAX_ALPHABET and v.size:
        import constriction

        freqs = _freqs(sym, alphabet)
        table = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(freqs.tobytes())
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(sym.astype(np.int32), _model(freqs))
        words = coder.get_compressed().astype("<u4").tobytes()
        candidates.append(
            _HEAD.pack(1, lo, alphabet) + struct.pack("<I", len(table)) + table + words
        )
    return min(candidates, key=len)


def decode_ints(data: bytes, count: int, what: str = "stream") -> np.ndarray:
    """Inverse of :func:`encode_ints`: exactly ``count`` int64 values, or :class:`FormatError`."""
    if len(data) < _HEAD.size:
        raise FormatError(f"corrupted section {what!r} (stream too short)")
    method, lo, alphabet = _HEAD.unpack_from(data)
    if not 1 <= alphabet <= (1 << 32) - 1 or lo + alphabet - 1 >= 1 << 31:
        raise FormatError(f"corrupted section {what!r} (alphabet {alphabet})")
    body = data[_HEAD.size :]
    if method == 2:
        if alphabet != 1 or body:
            raise FormatError(f"corrupted section {what!r} (bad constant stream)")
        sym = np.zeros(count, np.int64)
    elif method == 0:
        dt = _uint_dtype(alphabet)
        raw = unzip_exact(body, count * dt.itemsize, what)
        sym = np.frombuffer(raw, dtype=dt).astype(np.int64)
    elif method == 1:
        if alphabet > MAX_ALPHABET or len(body) < 4:
            raise FormatError(f"corrupted section {what!r} (bad ans header)")
        (tlen,) = struct.unpack_from("<I", body)
        if tlen > len(body) - 4:
            raise FormatError(f"corrupted section {what!r} (bad ans table)")
        freqs = np.frombuffer(unzip_exact(body[4 : 4 + tlen], 2 * alphabet, what), dtype="<u2")
        if not freqs.any():
            raise FormatError(f"corrupted section {what!r} (empty ans model)")
        words = body[4 + tlen :]
        if len(words) % 4:
            raise FormatError(f"corrupted section {what!r} (ans stream length)")
        import constriction

        try:  # constriction refuses some word sequences already here (a last zero word)
            coder = constriction.stream.stack.AnsCoder(
                np.frombuffer(words, "<u4").astype(np.uint32)
            )
            sym = np.asarray(coder.decode(_model(freqs), count), dtype=np.int64)
        except (ValueError, RuntimeError, AssertionError):
            raise FormatError(f"corrupted section {what!r} (ans stream does not decode)") from None
        if sym.size != count or (sym.size and (sym.min() < 0 or sym.max() >= alphabet)):
            raise FormatError(f"corrupted section {what!r} (ans symbols out of range)")
    else:
        raise FormatError(f"corrupted section {what!r} (unknown coding method {method})")
    if sym.size and sym.max() >= alphabet:
        raise FormatError(f"corrupted section {what!r} (symbol outside its alphabet)")
    return sym + lo


ZSTD_MAX_RATIO = budget.ZSTD_MAX_RATIO  # largest expansion of a zstd frame


def unzip_exact(data: bytes, n_bytes: int, what: str) -> bytes:
    """A zstd frame that records its size, holding exactly ``n_bytes``, decompressed."""
    budget.check_frame(len(data), n_bytes, what)
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError:
        raise FormatError(f"corrupted section {what!r} (not a zstd frame)") from None
    if declared != n_bytes:  # sciinr always records the size; -1 would mean "unknown"
        holds = f"holds {declared} bytes" if declared >= 0 else "size not recorded"
        raise FormatError(f"corrupted section {what!r} ({holds}, expected {n_bytes} bytes)")
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=max(n_bytes, 1))
    except zstandard.ZstdError:
        raise FormatError(f"corrupted section {what!r} (zstd stream does not decode)") from None
    if len(raw) != n_bytes:
        raise FormatError(f"corrupted section {what!r} ({len(raw)} bytes, expected {n_bytes})")
    return raw
