"""Entropy coding: integer streams of the model, and the residual layer's chunk codes.

One ANS coder (``constriction``; :func:`ans_encode`, :func:`ans_decode`) and one zstd reader
(:func:`unzip_exact`, which checks every size before it allocates) serve both.

**Integer streams** (quantization indices, latents, block constants: :func:`encode_ints`).
Each stream is self-describing and is coded both ways; the smaller wins:

- method 0, ``zstd``: the integers (offset to start at 0) in the narrowest unsigned dtype,
  zstd-compressed.
- method 1, ``ans``: range/ANS coding (the ``constriction`` library) with a categorical model
  whose frequencies (uint16, scaled) are stored in front of the stream.
- method 2, ``constant``: every integer equals ``min`` (no body).

Layout: ``u8 method | i32 min | u32 alphabet`` then, for zstd: the zstd frame; for ans:
``u32 table_bytes | zstd(uint16 freqs) | u32 words...``. Decoding is told how many integers to
expect and checks every length before allocating.

**Residual layer** (:func:`encode_residual`, :class:`ResidualCodes`): the integers of every
chunk of a :class:`~sciinr.stages.residual.Correction`, ANS-coded against the table of their
group of chunks (one byte per symbol, ``1 + 8 log2(count)``) or zstd-coded (zig-zag, the
narrowest width), whichever is smaller. Sections:

- ``residual_index`` zstd: a record per chunk (``CHUNK_RECORD``): code length, method,
  group, transform, escapes, exact voxels.
- ``residual_tables`` zstd: one byte per symbol and group of chunks.
- ``residual_codes``  per chunk, ANS code words (uint32) or a zstd frame.
- ``residual_escapes`` zstd: int64 values of symbols beyond the table's alphabet.
- ``residual_exact``   zstd: (uint32 index in chunk, float32 value) of exact voxels.

The two table formats (uint16 frequencies, log-count bytes) are both in format 1.0 files.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import zstandard

from ..errors import FormatError
from . import budget
from .container import header_float, header_int
from .residual import MAX_CHUNKS, N_TRANSFORMS, Correction

MAX_ALPHABET = 1 << 16
_HEAD = struct.Struct("<BiI")
ZSTD_LEVEL = 19  # every zstd frame sciinr writes (the format does not depend on it)


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
    return categorical(freqs.astype(np.float64))


def categorical(weights: np.ndarray):
    """The ANS model of non-negative symbol weights (all zero: uniform).

    Encoder and decoder build it from the same stored table, so both see the same model.
    """
    import constriction

    p = np.asarray(weights, np.float64)
    if p.sum() == 0:
        p = np.ones_like(p)
    return constriction.stream.model.Categorical(p / p.sum(), perfect=False)


def ans_encode(symbols: np.ndarray, model: Any) -> bytes:
    """ANS code words (little-endian uint32) of ``symbols`` (int32, C order) under ``model``."""
    import constriction

    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(np.asarray(symbols, np.int32), model)
    return coder.get_compressed().astype("<u4").tobytes()


def ans_decode(words: bytes, model: Any, count: int, what: str) -> np.ndarray:
    """Inverse of :func:`ans_encode`: exactly ``count`` symbols (int64) and no word left over."""
    import constriction

    if len(words) % 4:
        raise FormatError(f"corrupted section {what!r} (ans stream length)")
    try:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(words, "<u4").astype(np.uint32))
        sym = np.asarray(coder.decode(model, count), dtype=np.int64)
        leftover = not coder.is_empty()
    except (ValueError, RuntimeError, AssertionError):
        raise FormatError(f"corrupted section {what!r} (ans stream does not decode)") from None
    if leftover or sym.size != count:
        raise FormatError(f"corrupted section {what!r} (ans stream does not decode)")
    return sym


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
        freqs = _freqs(sym, alphabet)
        table = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(freqs.tobytes())
        words = ans_encode(sym, _model(freqs))
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
        sym = ans_decode(body[4 + tlen :], _model(freqs), count, what)
        if sym.size and (sym.min() < 0 or sym.max() >= alphabet):
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


# ----------------------------------------------------------------------------- residual layer

RESIDUAL_VERSION = 1
RESIDUAL_SECTIONS = (
    "residual_index",
    "residual_tables",
    "residual_codes",
    "residual_escapes",
    "residual_exact",
)
MAX_HALF_ALPHABET = 1 << 14  # symbols -K..K of a residual table (plus one escape)
MAX_GROUPS = 16  # tables of one residual layer
ESCAPE_QUANTILE = 0.999  # the table's alphabet covers this fraction of the |codes|
TABLE_SHARE = 256  # a table costs at most ~1/TABLE_SHARE of the symbols it codes
CHUNK_RECORD = np.dtype(
    [
        ("words", "<u4"),  # length of the chunk's code (bytes for zstd, uint32 words for ANS)
        ("method", "u1"),  # 0: all zero (no code), 1: ANS, 2: zstd
        ("group", "u1"),  # ANS table row
        ("transform", "u1"),  # index into residual.TRANSFORMS (+ interpolations)
        ("width", "u1"),  # zstd: bytes per zig-zag integer (1, 2, 4, 8)
        ("escapes", "<u4"),
        ("exact", "<u4"),
    ]
)
METHOD_ZERO, METHOD_ANS, METHOD_ZSTD = 0, 1, 2


def _zigzag(d: np.ndarray) -> np.ndarray:
    return ((d << 1) ^ (d >> 63)).astype(np.uint64)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.uint64)
    return ((z >> np.uint64(1)).astype(np.int64)) ^ -((z & np.uint64(1)).astype(np.int64))


def _zstd_width(z: np.ndarray) -> int:
    top = int(z.max()) if z.size else 0
    return next(w for w in (1, 2, 4, 8) if top < 1 << (8 * w))


def _log_counts(counts: np.ndarray) -> np.ndarray:
    """Counts -> one byte each: 0 for unseen, else ``1 + round(8 log2(count))`` (<= 255)."""
    logs = np.round(8 * np.log2(np.maximum(counts, 1)))
    return np.where(counts > 0, np.minimum(1 + logs, 255), 0).astype(np.uint8)


def _table_model(table: np.ndarray) -> Any:
    """The ANS model of one row of log-count bytes."""
    b = table.astype(np.float64)
    return categorical(np.where(b > 0, np.exp2((b - 1) / 8), 0.0))


def encode_residual(corr: Correction) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Entropy-code a residual layer; returns its header entry and its sections."""
    zc = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    n = len(corr.codes)
    index = np.zeros(n, CHUNK_RECORD)
    symbols: list[np.ndarray | None] = [None] * n
    for c, (transform, codes) in enumerate(corr.codes):
        if not codes.any():
            index[c]["method"] = METHOD_ZERO
            continue
        index[c]["transform"] = transform
        index[c]["method"] = METHOD_ANS
        symbols[c] = codes.reshape(-1)
    coded = [c for c in range(n) if symbols[c] is not None]
    # alphabet: -K..K plus an escape symbol
    if coded:
        mags = np.concatenate([np.abs(symbols[c]) for c in coded])
        half = int(min(MAX_HALF_ALPHABET, max(1, np.quantile(mags, ESCAPE_QUANTILE))))
    else:
        half = 1
    alphabet = 2 * half + 2
    # groups of chunks by mean |symbol| (similar statistics share one table); a table costs
    # about a byte per symbol of the alphabet
    n_symbols = sum(symbols[c].size for c in coded)
    n_groups = int(
        np.clip(min(len(coded) // 4, n_symbols // (TABLE_SHARE * alphabet)), 1, MAX_GROUPS)
    )
    scale = np.array([np.abs(symbols[c]).mean() for c in coded])
    order = np.argsort(scale, kind="stable")
    for rank, pos in enumerate(order):
        index[coded[pos]]["group"] = rank * n_groups // max(1, len(coded))
    mapped: dict[int, np.ndarray] = {}
    counts = np.zeros((n_groups, alphabet), np.int64)
    for c in coded:
        s = symbols[c]
        m = np.where(np.abs(s) <= half, s + half, alphabet - 1).astype(np.int32)
        mapped[c] = m
        counts[index[c]["group"]] += np.bincount(m, minlength=alphabet)
    tables = _log_counts(counts)
    models = [_table_model(tables[g]) for g in range(n_groups)]
    streams: list[bytes] = []
    escapes: list[np.ndarray] = []
    for c in range(n):
        if index[c]["method"] == METHOD_ZERO:
            streams.append(b"")
            continue
        s, m = symbols[c], mapped[c]
        esc = s[m == alphabet - 1]
        ans = ans_encode(m, models[index[c]["group"]])
        z = _zigzag(s)
        width = _zstd_width(z)
        zs = zc.compress(z.astype(f"<u{width}").tobytes())
        if len(zs) < len(ans) + 8 * len(esc):
            index[c]["method"], index[c]["width"] = METHOD_ZSTD, width
            index[c]["words"] = len(zs)
            streams.append(zs)
        else:
            index[c]["words"] = len(ans) // 4
            index[c]["escapes"] = len(esc)
            streams.append(ans)
            escapes.append(esc.astype("<i8"))
    index["exact"] = [len(i) for i in corr.exact_index]
    sections = {
        "residual_index": zc.compress(index.tobytes()),
        "residual_tables": zc.compress(tables.tobytes()),
        "residual_codes": b"".join(streams),
        "residual_escapes": zc.compress(np.concatenate(escapes).tobytes() if escapes else b""),
        "residual_exact": zc.compress(
            np.concatenate(corr.exact_index).astype("<u4").tobytes()
            + np.concatenate(corr.exact_value).astype("<f4").tobytes()
        ),
    }
    meta = {
        "alphabet_half": half,
        "groups": n_groups,
        "chunks": n,
        "version": RESIDUAL_VERSION,
        "predict": "float64",
        "max_error": float(corr.max_error),
        "step": float(corr.step),
        "chunk": [int(c) for c in corr.chunk],
        "margin": float(corr.margin),
        "exact_voxels": corr.n_exact,
    }
    return meta, sections


class ResidualCodes:
    """The residual layer of a file: validates its header entry, decodes chunks on demand.

    A :class:`sciinr.stages.residual.Source`: :func:`sciinr.stages.residual.apply` turns it
    and a float64 prediction into decoded values.

    Parameters
    ----------
    meta : dict
        ``header["residual"]``.
    sections : dict of bytes
        The file's sections (the ``residual_*`` ones are used).
    shape4 : tuple of 4 int
        The field's (T, Z, Y, X).
    n_bytes : int, optional
        Size of the file: the index and one decoded chunk must fit its decode budget
        (:func:`~sciinr.stages.budget.check_residual`), checked before the index is read.

    Raises
    ------
    FormatError
        A header entry or section that is inconsistent with the field.
    """

    def __init__(
        self,
        meta: Any,
        sections: dict[str, bytes],
        shape4: tuple[int, ...],
        n_bytes: int | None = None,
    ):
        if not isinstance(meta, dict):
            raise FormatError("corrupted header (residual entry is not a mapping)")
        if meta.get("version") != RESIDUAL_VERSION or meta.get("predict") != "float64":
            raise FormatError(
                f"residual layer version {meta.get('version')!r} is not supported; upgrade sciinr"
            )
        missing = [s for s in RESIDUAL_SECTIONS if s not in sections]
        if missing:
            raise FormatError(f"missing sections: {', '.join(missing)}")
        chunk = meta.get("chunk")
        if not (
            isinstance(chunk, list)
            and len(chunk) == 4
            and all(type(c) is int and 1 <= c <= s for c, s in zip(chunk, shape4, strict=True))
        ):
            raise FormatError(f"corrupted header (residual chunk = {chunk!r})")
        self.shape4 = tuple(int(s) for s in shape4)
        self.chunk = tuple(chunk)
        self.grid = tuple(-(-s // c) for s, c in zip(self.shape4, self.chunk, strict=True))
        n = math.prod(self.grid)
        if n > MAX_CHUNKS or header_int(meta, "chunks", 0, MAX_CHUNKS, "residual ") != n:
            raise FormatError("corrupted header (residual chunk count)")
        self.step = header_float(meta, "step", 0.0, what="residual ")
        self.max_error = header_float(meta, "max_error", 0.0, what="residual ")
        if not 0 < self.step <= 2 * self.max_error:
            raise FormatError("corrupted header (residual step)")
        self.half = header_int(meta, "alphabet_half", 1, MAX_HALF_ALPHABET, "residual ")
        self.n_groups = header_int(meta, "groups", 1, MAX_GROUPS, "residual ")
        self.alphabet = 2 * self.half + 2
        self.sections = sections
        if n_bytes is not None:
            budget.check_residual(n, self.chunk, n_bytes)
        raw = unzip_exact(sections["residual_index"], n * CHUNK_RECORD.itemsize, "residual_index")
        idx = np.frombuffer(raw, CHUNK_RECORD)
        cells = np.indices(self.grid).reshape(4, -1).T  # C order of the chunk grid
        sizes = np.minimum(np.array(self.chunk), np.array(self.shape4) - cells * self.chunk)
        per_chunk = sizes.prod(axis=1) if n else np.zeros(0, np.int64)
        if (
            np.any(idx["method"] > METHOD_ZSTD)
            or np.any(idx["group"] >= self.n_groups)
            or np.any(idx["transform"] >= N_TRANSFORMS)
            or np.any(idx["escapes"] > per_chunk)
            or np.any(idx["exact"] > per_chunk)
            or np.any((idx["method"] == METHOD_ZSTD) & ~np.isin(idx["width"], (1, 2, 4, 8)))
        ):
            raise FormatError("corrupted section 'residual_index' (bad chunk record)")
        self.index = idx
        self.voxels = per_chunk
        nbytes = np.where(idx["method"] == METHOD_ANS, 4, 1) * idx["words"].astype(np.int64)
        nbytes[idx["method"] == METHOD_ZERO] = 0
        self.code_end = np.cumsum(nbytes)
        if (self.code_end[-1] if n else 0) != len(sections["residual_codes"]):
            raise FormatError("corrupted section 'residual_codes' (length)")
        self.code_start = self.code_end - nbytes
        self.esc_start = np.cumsum(idx["escapes"].astype(np.int64)) - idx["escapes"]
        self.exact_start = np.cumsum(idx["exact"].astype(np.int64)) - idx["exact"]
        self.n_escapes = int(idx["escapes"].astype(np.int64).sum())
        self.n_exact = int(idx["exact"].astype(np.int64).sum())
        if meta.get("exact_voxels") != self.n_exact:
            raise FormatError("corrupted header (residual exact_voxels)")
        self._models: list[Any] | None = None
        self._escapes: np.ndarray | None = None
        self._exact: tuple[np.ndarray, np.ndarray] | None = None

    def describe(self, meta: dict[str, Any], value_range: Any) -> dict[str, Any]:
        """``sciinr.info`` entries: the guarantee and the network/residual split."""
        vr = value_range
        span_ok = (
            isinstance(vr, list)
            and len(vr) == 2
            and all(isinstance(v, int | float) for v in vr)
            and vr[1] > vr[0]
        )
        return {
            "max_error": self.max_error,
            "rel_error": self.max_error / (vr[1] - vr[0]) if span_ok else None,
            "residual": {
                "mode": meta.get("mode"),
                "step": self.step,
                "exact_voxels": self.n_exact,
                "network_bytes": meta.get("network_bytes"),
                "residual_bytes": meta.get("residual_bytes"),
                "network_psnr": meta.get("network_psnr"),
                "split": meta.get("split"),
            },
        }

    def codes(self, c: int) -> tuple[int, np.ndarray] | None:
        """(transform, int64 codes) of chunk ``c``, None when all are zero."""
        rec = self.index[c]
        method = int(rec["method"])
        if method == METHOD_ZERO:
            return None
        n = int(self.voxels[c])
        data = self.sections["residual_codes"][int(self.code_start[c]) : int(self.code_end[c])]
        if method == METHOD_ZSTD:
            width = int(rec["width"])
            z = np.frombuffer(unzip_exact(data, n * width, "residual_codes"), f"<u{width}")
            d = _unzigzag(z)
        else:
            d = self._ans(c, data, n)
        return int(rec["transform"]), d

    def exact(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices in chunk ``c``, float32 values) of its exact voxels."""
        n_ex = int(self.index[c]["exact"])
        if not n_ex:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if self._exact is None:
            raw = unzip_exact(self.sections["residual_exact"], 8 * self.n_exact, "residual_exact")
            idx = np.frombuffer(raw[: 4 * self.n_exact], "<u4").astype(np.int64)
            val = np.frombuffer(raw[4 * self.n_exact :], "<f4").astype(np.float32)
            self._exact = (idx, val)
        start = int(self.exact_start[c])
        return self._exact[0][start : start + n_ex], self._exact[1][start : start + n_ex]

    def _tables(self) -> list[Any]:
        if self._models is None:
            raw = unzip_exact(
                self.sections["residual_tables"], self.n_groups * self.alphabet, "residual_tables"
            )
            t = np.frombuffer(raw, np.uint8).reshape(self.n_groups, self.alphabet)
            self._models = [_table_model(t[g]) for g in range(self.n_groups)]
        return self._models

    def _escape_values(self) -> np.ndarray:
        if self._escapes is None:
            raw = unzip_exact(
                self.sections["residual_escapes"], 8 * self.n_escapes, "residual_escapes"
            )
            self._escapes = np.frombuffer(raw, "<i8").astype(np.int64)
        return self._escapes

    def _ans(self, c: int, data: bytes, n: int) -> np.ndarray:
        rec = self.index[c]
        sym = ans_decode(data, self._tables()[int(rec["group"])], n, "residual_codes")
        d = sym - self.half
        esc = np.flatnonzero(sym == self.alphabet - 1)
        if len(esc) != int(rec["escapes"]):
            raise FormatError("corrupted section 'residual_codes' (escape count)")
        start = int(self.esc_start[c])
        d[esc] = self._escape_values()[start : start + len(esc)]
        return d
