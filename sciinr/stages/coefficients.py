"""Context-adaptive coding of integer coefficient arrays (the whole-field base level's coder).

An integer ``q`` is split into a *magnitude class* ``c`` (0 for zero, else
``floor(log2 |q|) + 1``), a sign bit and ``c - 1`` mantissa bits. Only the classes are
entropy-coded: with a range coder (``constriction``) whose categorical model is chosen per
symbol by a small integer *context* and adapts to what was already coded — a count table per
context, updated after every *step* (a group of symbols whose contexts depend only on earlier
steps). Nothing about the model is stored: encoder and decoder rebuild the same counts. Signs
and mantissas go, uncoded, into one bit string.

Callers describe the order (steps) and the contexts; see :mod:`sciinr.stages.tucker`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from ..errors import FormatError

DIRECT = 16  # magnitudes below this are symbols of their own
MAX_LOG2 = 39  # |q| < 2**39
N_CLASSES = DIRECT + MAX_LOG2 - 3  # then one class per power of two from 2**4 on
PRIOR = 0.1  # count every class starts with (small: most contexts see few classes)
_LOG_DIRECT = 4  # log2(DIRECT)


def classes(q: np.ndarray) -> np.ndarray:
    """Symbol of each integer's magnitude: ``|q|`` itself below 16, else
    ``16 + floor(log2 |q|) - 4`` (its power of two), int64."""
    a = np.abs(np.asarray(q, np.int64))
    out = a.copy()
    big = a >= DIRECT
    if big.any():
        e = np.floor(np.log2(a[big].astype(np.float64))).astype(np.int64)
        # float log2 can round up just below a power of two
        e -= np.left_shift(1, e) > a[big]
        out[big] = DIRECT + e - _LOG_DIRECT
    if out.size and out.max() >= N_CLASSES:
        raise ValueError(f"coefficient magnitude beyond 2**{MAX_LOG2}")
    return out


def log_class(cls: np.ndarray) -> np.ndarray:
    """0 for zero, else ``floor(log2 |q|) + 1`` of the magnitudes a class stands for."""
    lead = _lead(np.asarray(cls, np.int64))
    out = np.zeros(lead.shape, np.int64)
    nz = lead > 0
    out[nz] = np.floor(np.log2(lead[nz].astype(np.float64))).astype(np.int64) + 1
    return out


def _mantissa_bits(cls: np.ndarray) -> np.ndarray:
    """Raw bits below the leading one that a class leaves open (0 for direct symbols)."""
    return np.where(cls >= DIRECT, cls - DIRECT + _LOG_DIRECT, 0)


def _lead(cls: np.ndarray) -> np.ndarray:
    """The magnitude a class stands for before its raw bits are added."""
    return np.where(cls >= DIRECT, np.left_shift(1, np.maximum(cls - DIRECT + _LOG_DIRECT, 0)), cls)


class AdaptiveModel:
    """One count table per context; probabilities are the counts (constriction normalizes)."""

    def __init__(self, n_contexts: int):
        self.counts = np.full((n_contexts, N_CLASSES), PRIOR, np.float64)

    def probabilities(self, ctx: np.ndarray) -> np.ndarray:
        return self.counts[ctx]

    def update(self, ctx: np.ndarray, cls: np.ndarray) -> None:
        np.add.at(self.counts, (ctx, cls), 1.0)


def _family():
    import constriction

    return constriction.stream.model.Categorical(perfect=False)


def encode_classes(steps: Iterable[tuple[np.ndarray, np.ndarray]], n_contexts: int) -> bytes:
    """Range-code ``(contexts, classes)`` step by step; returns the compressed words."""
    import constriction

    enc = constriction.stream.queue.RangeEncoder()
    model = AdaptiveModel(n_contexts)
    family = _family()
    for ctx, cls in steps:
        if cls.size == 0:
            continue
        enc.encode(cls.astype(np.int32), family, model.probabilities(ctx))
        model.update(ctx, cls)
    return enc.get_compressed().astype("<u4").tobytes()


def decode_classes(
    data: bytes,
    n_steps: int,
    context_of: Callable[[int], np.ndarray],
    store: Callable[[int, np.ndarray], None],
    n_contexts: int,
    what: str,
) -> None:
    """Inverse of :func:`encode_classes`.

    ``context_of(k)`` gives the contexts of step ``k`` (from what ``store`` received for the
    steps before it); ``store(k, classes)`` receives the decoded classes of step ``k``.
    """
    import constriction

    if len(data) % 4:
        raise FormatError(f"corrupted section {what!r} (range-coded stream length)")
    words = np.frombuffer(data, "<u4").astype(np.uint32)
    dec = constriction.stream.queue.RangeDecoder(words)
    model = AdaptiveModel(n_contexts)
    family = _family()
    for k in range(n_steps):
        ctx = context_of(k)
        if ctx.size == 0:
            store(k, np.zeros(0, np.int64))
            continue
        try:
            cls = np.asarray(dec.decode(family, model.probabilities(ctx)), np.int64)
        except (ValueError, RuntimeError, AssertionError):
            raise FormatError(f"corrupted section {what!r} (stream does not decode)") from None
        store(k, cls)
        model.update(ctx, cls)


def n_bits(cls: np.ndarray) -> int:
    """Sign and mantissa bits that integers of these classes need."""
    c = np.asarray(cls, np.int64)
    return int((c > 0).sum() + _mantissa_bits(c).sum())


def _starts(n_mant: np.ndarray) -> np.ndarray:
    """Offset of each nonzero integer's sign bit (one sign bit, then its mantissa bits)."""
    return (np.cumsum(1 + n_mant) - (1 + n_mant)).astype(np.int64)


def pack_bits(q: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Sign and raw mantissa bits of the nonzero integers, in order, as a 0/1 uint8 array."""
    q = q.ravel()
    cls = cls.ravel()
    nz = cls > 0
    a = np.abs(q[nz])
    n_mant = _mantissa_bits(cls[nz])
    out = np.empty(int(nz.sum() + n_mant.sum()), np.uint8)
    starts = _starts(n_mant)
    out[starts] = (q[nz] < 0).astype(np.uint8)
    if n_mant.sum():
        # bit j (from the top, below the leading one) of |q|
        owner = np.repeat(np.arange(a.size), n_mant)
        within = np.arange(owner.size) - np.repeat(np.cumsum(n_mant) - n_mant, n_mant)
        shift = n_mant[owner] - 1 - within
        out[np.repeat(starts + 1, n_mant) + within] = (a[owner] >> shift) & 1
    return out


def unpack_bits(bits: np.ndarray, cls: np.ndarray, pos: int, what: str) -> tuple[np.ndarray, int]:
    """Integers from their classes and the bits at ``bits[pos:]``; returns (ints, new pos)."""
    flat = cls.ravel()
    nz = flat > 0
    n_mant = _mantissa_bits(flat[nz])
    need = int(nz.sum() + n_mant.sum())
    if pos + need > bits.size:
        raise FormatError(f"corrupted section {what!r} (too few sign/mantissa bits)")
    chunk = bits[pos : pos + need].astype(np.int64)
    starts = _starts(n_mant)
    sign = chunk[starts]
    mag = _lead(flat[nz]).astype(np.int64)
    if n_mant.sum():
        owner = np.repeat(np.arange(n_mant.size), n_mant)
        within = np.arange(owner.size) - np.repeat(np.cumsum(n_mant) - n_mant, n_mant)
        shift = n_mant[owner] - 1 - within
        np.add.at(mag, owner, chunk[np.repeat(starts + 1, n_mant) + within] << shift)
    out = np.zeros(flat.size, np.int64)
    out[nz] = np.where(sign == 1, -mag, mag)
    return out.reshape(cls.shape), pos + need
