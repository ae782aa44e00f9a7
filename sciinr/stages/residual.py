"""Residual stage: a quantized correction that bounds the error at every voxel.

The stored networks predict the field; this stage stores the residual ``original -
prediction``, quantized with a step of about ``2 E``, so that decoding gives, at every voxel,
``|original - decoded| <= E``, for a full, time-step or region decode alike.

The rule (also in benchmarks/README.md, "Error bounds"):

1. **The prediction is evaluated in float64.** ``decode.decode(..., dtype=numpy.float64)``
   runs the stored networks (the float32 parameters of the file, widened) in float64, on
   any device, so the prediction the decoder adds the residual to is the encoder's
   prediction up to float64 rounding. A
   rigorous forward-error bound of the float64 evaluation (:func:`forward_error_bound`: any
   summation order, FMA or not, ``sin`` within 4 ulp) is ~1e-12 of a block's half range on
   our networks. (The same bound for a float32 evaluation, i.e. ``decode.decode``, is ~7e-4
   of a block's half range on a real 37 dB fit, where the measured float32 error is ~1e-6:
   too loose to certify a bound of 1e-4 of the value range, so float32 is not used here.)
2. **Step and float32 rounding.** ``step = 2 E - S`` where ``S`` is one float32 ulp at the
   field's largest magnitude; every coding below reconstructs the residual within
   ``step / 2``, so ``|original - float32(prediction + residual)| <= E`` unless an integer
   clips (``|code| >= 2**31``).
3. **Verification at encode time.** The encoder decodes its own coded bytes exactly as the
   decoder does and checks ``|original - decoded| <= E`` at every voxel; where the float64
   sum lies so close to a float32 rounding boundary that another device could round it the
   other way (within :func:`prediction_margin`), both roundings are checked.
4. **Exact voxels.** Any voxel that fails 3 (or whose code clips) is stored exactly (its
   float32 value) and overrides the reconstruction. In practice there are none, or a few.
5. **Missing values.** With a mask (``valid``) the bound holds at the valid voxels; the
   residual of a masked voxel is coded as 0 and never checked, so it costs (almost) nothing.

Coding. The residual is cut into chunks (the model's blocks; larger ones for a file without
networks), each decodable alone, so a region decode reads only its chunks. Per chunk the
encoder keeps the cheaper (smallest ``sum log2(1 + 2|code|)``) of

- a fixed grid ``q = round(residual / step)`` whose integers go through a Lorenzo predictor
  (differences along the axes of one of :data:`TRANSFORMS`; lossless), or
- error-feedback interpolation (:func:`interpolate`, as in SZ3): values predicted coarse to
  fine from already reconstructed neighbours, the prediction errors quantized,

and codes the integers with ANS (``constriction``) against its group's table, or with zstd,
whichever is smaller. Sections:

- ``residual_index`` zstd: a record per chunk (``_INDEX``): code length, method, group,
  transform, escapes, exact voxels.
- ``residual_tables`` zstd: one byte per symbol and group of chunks, ``1 + 8 log2(count)``.
- ``residual_codes``  per chunk, ANS code words (uint32, ``constriction``) or a zstd frame.
- ``residual_escapes`` zstd: int64 values of symbols beyond the table's alphabet.
- ``residual_exact``   zstd: (uint32 index in chunk, float32 value) of exact voxels.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from ..errors import FormatError
from ..payloads import Model
from . import budget
from .decode import touched
from .entropy import unzip_exact

logger = logging.getLogger(__name__)

VERSION = 1
SECTION_NAMES = (
    "residual_index",
    "residual_tables",
    "residual_codes",
    "residual_escapes",
    "residual_exact",
)
QMAX = 2**31 - 1  # larger |q| -> the voxel is stored exactly
MAX_CHUNKS = 1 << 24
MAX_HALF_ALPHABET = 1 << 14
MAX_GROUPS = 16
ZSTD_LEVEL = 19
_INDEX = np.dtype(
    [
        ("words", "<u4"),  # length of the chunk's code (bytes for zstd, uint32 words for ANS)
        ("method", "u1"),  # 0: all zero (no code), 1: ANS, 2: zstd
        ("group", "u1"),  # ANS table row
        ("transform", "u1"),  # index into TRANSFORMS
        ("width", "u1"),  # zstd: bytes per zig-zag integer (1, 2, 4, 8)
        ("escapes", "<u4"),
        ("exact", "<u4"),
    ]
)
METHOD_ZERO, METHOD_ANS, METHOD_ZSTD = 0, 1, 2
# lossless transforms of a chunk's integers: differences along these (t, z, y, x) axes
TRANSFORMS = ((), (0,), (3,), (1, 2, 3), (2, 3), (0, 1, 2, 3))
# error-feedback interpolation over these axes (transform len(TRANSFORMS) + i)
INTERP_AXES = ((0, 1, 2, 3), (1, 2, 3), (2, 3))
N_TRANSFORMS = len(TRANSFORMS) + len(INTERP_AXES)


# ----------------------------------------------------------------------------- the rule


def float32_spacing(magnitude: float) -> float:
    """One float32 ulp at ``magnitude`` (the float32 rounding of a decoded value)."""
    return float(np.spacing(np.float32(min(abs(magnitude), 3.0e38))))


def step_for(max_error: float, peak: float) -> float:
    """Quantizer step that guarantees ``max_error`` after float32 rounding at ``|x| <= peak``."""
    s = float32_spacing(peak + max_error)
    return 2.0 * max_error - s if s <= max_error else max_error


def max_error_for(step: float, peak: float) -> float:
    """The bound a given step guarantees (inverse of :func:`step_for`)."""
    err = step / 2
    for _ in range(3):  # fixed point of step = 2 E - spacing(peak + E)
        err = (step + float32_spacing(peak + err)) / 2
    return err


def forward_error_bound(model: Model, unit_roundoff: float = 2.0**-53) -> np.ndarray:
    """Rigorous bound, per network, on ``|computed - exact|`` of a network's normalized output.

    Holds for any evaluation in a floating-point format of this unit roundoff: any summation
    order, with or without FMA, ``sin`` correct to 4 ulp. Propagates the rounding of every
    layer through the worst case of the next (``|W|``, ``omega0``), inputs in [-1, 1].

    Returns
    -------
    numpy.ndarray
        ``(n_nets,)`` float64, in normalized units (multiply by a block's half range).
    """
    net = model.net
    if net.n_nets == 0 or net.n_blocks == 0:
        return np.zeros(net.n_nets)
    u = unit_roundoff

    def gamma(n: int) -> float:
        return n * u / (1 - n * u)

    a = {k: np.abs(v.astype(np.float64)) for k, v in model.arrays.items()}
    w0 = float(net.omega0)
    lat = np.zeros((net.n_nets, net.latent_dim))
    if net.latent_dim:
        np.maximum.at(lat, model.block_net, a["latents"])
    w_in = a["w_in"].sum(axis=1)  # (N, W)
    mag = w_in + a["b_in"][:, 0] + np.einsum("nj,njk->nk", lat, a["w_lat"])
    ez = gamma(4 + net.latent_dim + 3) * mag + 2 * u * w_in  # + coordinate rounding
    e = w0 * ez * (1 + u) + u * w0 * mag + 4 * u
    for i in range(net.depth):
        w, b = a[f"w_h{i}"], a[f"b_h{i}"][:, 0]
        mag = b + np.einsum("nj,njk->nk", 1 + e, w)
        ez = np.einsum("nj,njk->nk", e, w) + gamma(net.width + 3) * mag
        e = w0 * ez * (1 + u) + u * w0 * mag + 4 * u
    w, b = a["w_out"][:, :, 0], a["b_out"][:, 0, 0]
    out = np.einsum("nj,nj->n", e, w) + gamma(net.width + 3) * (b + np.einsum("nj,nj->n", 1 + e, w))
    return out * 1.01  # the bound's own float64 rounding


def prediction_margin(model: Model) -> float:
    """Largest possible difference (original units) between two float64 predictions.

    Two devices each err by at most :func:`forward_error_bound`; denormalizing and adding
    ``q * step`` add a few float64 roundings, covered by a relative ``2**-48`` of the field's
    magnitude.
    """
    lo, hi = model.lo.astype(np.float64), model.hi.astype(np.float64)
    peak = float(np.abs(np.concatenate([lo, hi])).max()) if lo.size else 0.0
    bound = forward_error_bound(model)
    fitted = np.flatnonzero(~model.trivial)
    net_part = 0.0
    if fitted.size and bound.size:
        half = (hi[fitted] - lo[fitted]) / 2
        net_part = float((2.0 * half * bound[model.block_net]).max())
    return net_part + 2.0**-48 * (4 * peak + 1e-300)


# ----------------------------------------------------------------------------- quantizer


def quantize(residual: np.ndarray, step: float) -> np.ndarray:
    """``round(residual / step)`` as int64, clipped to ``[-QMAX, QMAX]``."""
    return np.clip(np.rint(residual / step), -QMAX, QMAX).astype(np.int64)


def reconstruct(prediction: np.ndarray, q: np.ndarray, step: float) -> np.ndarray:
    """The decoded values: ``float32(prediction + q * step)`` (float64 arithmetic)."""
    return (prediction + q.astype(np.float64) * step).astype(np.float32)


def interpolate(
    shape: tuple[int, ...],
    axes: tuple[int, ...],
    step: float,
    residual: np.ndarray | None = None,
    codes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Error-feedback interpolation of one chunk: encode (``residual`` given) or decode.

    Coarse to fine (strides ``2**k`` ... 1), one axis of ``axes`` at a time, each value is
    predicted from already *reconstructed* neighbours along that axis (cubic where four
    exist, else linear, else the left one) and the prediction error is quantized with
    ``step``. Returns (codes, reconstruction); the reconstruction is within ``step / 2`` of
    ``residual`` and the decoder recomputes it bit for bit from the codes (same float64
    operations in the same order).
    """
    encode = residual is not None
    out = np.zeros(shape, np.int64) if encode else codes
    rec = np.zeros(shape, np.float64)
    top = 1
    while 2 * top < max(shape[a] for a in axes):
        top *= 2
    anchor = tuple(slice(0, None, 2 * top) if a in axes else slice(None) for a in range(4))
    if encode:
        out[anchor] = quantize(residual[anchor], step)
    rec[anchor] = out[anchor] * step
    s = top
    while s >= 1:
        for k in axes:
            if shape[k] <= s:
                continue

            def at(start: int, k: int = k, s: int = s) -> tuple[slice, ...]:
                return tuple(
                    slice(None)
                    if a not in axes
                    else slice(start, None, 2 * s)
                    if a == k
                    else slice(0, None, s if a < k else 2 * s)
                    for a in range(4)
                )

            def along(arr: np.ndarray, a0: int, n: int, k: int = k) -> np.ndarray:
                return arr[tuple(slice(a0, a0 + n) if a == k else slice(None) for a in range(4))]

            target = at(s)
            left, right = rec[at(0)], rec[at(2 * s)]
            n = len(range(s, shape[k], 2 * s))
            pred = along(left, 0, n).copy()
            nr = min(right.shape[k], n)
            if nr:
                along(pred, 0, nr)[...] = (along(left, 0, nr) + along(right, 0, nr)) / 2
            nc = min(n - 1, right.shape[k] - 2)
            if nc > 0:
                along(pred, 1, nc)[...] = (
                    -along(left, 0, nc)
                    + 9 * along(left, 1, nc)
                    + 9 * along(right, 1, nc)
                    - along(right, 2, nc)
                ) / 16
            if encode:
                out[target] = quantize(residual[target] - pred, step)
            rec[target] = pred + out[target] * step
        s //= 2
    return out, rec


def squared_error(
    original: np.ndarray,
    prediction: np.ndarray,
    step: float,
    valid: np.ndarray | None = None,
) -> float:
    """Sum of squared errors (float64) of the reconstruction with this step (for searches).

    With ``valid`` (True = holds data) only the valid voxels count.
    """
    total = 0.0
    flat_o, flat_p = original.reshape(-1), prediction.reshape(-1)
    flat_v = None if valid is None else valid.reshape(-1)
    n = 1 << 22
    for s in range(0, flat_o.size, n):
        o, p = flat_o[s : s + n], flat_p[s : s + n]
        d = o.astype(np.float64) - reconstruct(p, quantize(o - p, step), step)
        if flat_v is not None:
            d = d[flat_v[s : s + n]]
        total += float(d @ d)
    return total


# ----------------------------------------------------------------------------- encode


@dataclass(frozen=True)
class Correction:
    """Output of :func:`encode`: the header entry and the sections of a residual layer."""

    meta: dict[str, Any]  # goes to header["residual"]
    sections: dict[str, bytes]
    max_error: float  # guaranteed |original - decoded| at every voxel
    step: float
    n_exact: int  # voxels stored exactly
    sse: float  # squared error of the decoded field (float64)

    @property
    def n_bytes(self) -> int:
        return sum(len(v) for v in self.sections.values())


def chunk_shape(shape4: tuple[int, ...], block: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The chunk of a field: the model's block, grown (x, then y, ...) while too many chunks."""
    chunk = [max(1, min(int(b), int(s))) for b, s in zip(block, shape4, strict=True)]
    while math.prod(-(-s // c) for s, c in zip(shape4, chunk, strict=True)) > MAX_CHUNKS:
        axis = next(a for a in (3, 2, 1, 0) if chunk[a] < shape4[a])
        chunk[axis] = min(2 * chunk[axis], int(shape4[axis]))
    return tuple(chunk)  # type: ignore[return-value]


def chunk_slices(shape4: tuple[int, ...], chunk: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """Slices of every chunk (C order of the chunk grid), clipped to the field."""
    grid = [-(-s // c) for s, c in zip(shape4, chunk, strict=True)]
    return [
        tuple(
            slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(cell, chunk, shape4, strict=True)
        )
        for cell in np.ndindex(*grid)
    ]


def encode(
    original: np.ndarray,
    prediction: np.ndarray,
    chunk: tuple[int, int, int, int],
    max_error: float,
    margin: float = 0.0,
    *,
    step: float | None = None,
    verify: bool = True,
    valid: np.ndarray | None = None,
) -> Correction:
    """Quantize, verify and code the residual of ``prediction`` so every voxel is within bounds.

    With ``valid`` (True = the voxel holds data) the bound holds on the valid voxels; the
    residual of a masked voxel is coded as zero (it costs nothing and is never exact).

    Parameters
    ----------
    original : numpy.ndarray
        (T, Z, Y, X) float32, the field.
    prediction : numpy.ndarray
        (T, Z, Y, X) float64, the prediction it corrects (any array of that shape).
    chunk : tuple of 4 int
        Chunk shape (the model's block), the unit of region decoding; grown where a field
        would have more than ``MAX_CHUNKS`` chunks.
    max_error : float
        The bound ``E`` (original units, > 0).
    margin : float, default: 0
        Largest difference between this prediction and another device's
        (:func:`prediction_margin`).
    step : float, optional
        Quantizer step; default :func:`step_for`. A given step must not exceed ``2 E``.
    verify : bool, default: True
        Decode the coded bytes and check the bound at every voxel (off only for size probes).
    valid : numpy.ndarray, optional
        (T, Z, Y, X) bool mask of the voxels that hold data; default: all.

    Returns
    -------
    Correction
    """
    if not (max_error > 0 and math.isfinite(max_error)):
        raise ValueError(f"max_error must be positive and finite, got {max_error}")
    vals = original if valid is None else original[valid]
    peak = float(np.abs(vals).max()) + max_error if vals.size else max_error
    if step is None:
        step = step_for(max_error, peak)
    if not 0 < step <= 2 * max_error:
        raise ValueError(f"step {step} does not fit max_error {max_error}")
    chunk = chunk_shape(original.shape, chunk)
    slices = chunk_slices(original.shape, chunk)
    q_chunks, exact_idx, exact_val = [], [], []
    sse = 0.0
    for sl in slices:
        o, p = original[sl], prediction[sl]
        r = o.astype(np.float64) - p
        if valid is not None:  # masked voxels: residual zero, checked nowhere
            r[~valid[sl]] = 0.0
        transform, codes, rhat, clipped = _choose(r, step)
        y = p + rhat
        out = y.astype(np.float32)
        bad = _unsafe(o, y, out, max_error, margin) | clipped
        if valid is not None:
            bad &= valid[sl]
        idx = np.flatnonzero(bad)
        if transform < len(TRANSFORMS) and idx.size:  # exact voxels: code 0 (cheapest)
            q = np.rint(rhat / step).astype(np.int64)
            q.reshape(-1)[idx] = 0
            codes = _transforms(q)[transform]
        q_chunks.append((transform, codes))
        exact_idx.append(idx.astype("<u4"))
        exact_val.append(o.reshape(-1)[idx].astype("<f4"))
        d = o.astype(np.float64) - out
        d.reshape(-1)[idx] = 0.0
        if valid is not None:
            d[~valid[sl]] = 0.0
        sse += float(np.square(d).sum())
    meta, sections = _code(q_chunks, exact_idx, exact_val, chunk)
    n_exact = int(sum(len(i) for i in exact_idx))
    meta.update(
        {
            "version": VERSION,
            "predict": "float64",
            "max_error": float(max_error),
            "step": float(step),
            "chunk": [int(c) for c in chunk],
            "margin": float(margin),
            "exact_voxels": n_exact,
        }
    )
    corr = Correction(meta, sections, float(max_error), float(step), n_exact, sse)
    if verify:
        _verify(original, prediction, corr, valid)
    return corr


def _unsafe(
    original: np.ndarray, y: np.ndarray, out: np.ndarray, bound: float, margin: float
) -> np.ndarray:
    """Voxels whose decoded value may break the bound (on this device or another)."""
    o = original.astype(np.float64)
    bad = np.abs(o - out) > bound
    if margin > 0:  # another device's y may round to the neighbouring float32
        up = np.nextafter(out, np.float32(np.inf))
        dn = np.nextafter(out, np.float32(-np.inf))
        mid_up = (out.astype(np.float64) + up) / 2
        mid_dn = (out.astype(np.float64) + dn) / 2
        bad |= (mid_up - y <= margin) & (np.abs(o - up) > bound)
        bad |= (y - mid_dn <= margin) & (np.abs(o - dn) > bound)
    return bad


def _verify(
    original: np.ndarray,
    prediction: np.ndarray,
    corr: Correction,
    valid: np.ndarray | None = None,
) -> None:
    """Decode the coded bytes as a decoder would and check the bound at every (valid) voxel."""
    layer = Layer(corr.meta, corr.sections, original.shape)
    region = tuple((0, s) for s in original.shape)
    out = layer.apply(prediction, region)
    err = np.abs(original.astype(np.float64) - out)
    if valid is not None:
        err = err[valid]
    worst = float(err.max()) if err.size else 0.0
    if worst > corr.max_error:  # a bug, not bad input: keep the traceback
        raise AssertionError(
            f"residual layer breaks its bound: {worst} > {corr.max_error} after coding"
        )
    logger.debug("residual verified: max error %.6g <= %.6g", worst, corr.max_error)


def _transforms(q: np.ndarray) -> list[np.ndarray | None]:
    """Candidate lossless transforms of one chunk (index = ``transform`` of its record).

    Each is a Lorenzo predictor: differences along the axes of :data:`TRANSFORMS`
    (none; t; x; z, y, x; y, x; t, z, y, x). None where one of its axes has a single voxel.
    """
    out: list[np.ndarray | None] = []
    for axes in TRANSFORMS:
        if any(q.shape[a] < 2 for a in axes):
            out.append(None)
            continue
        d = q
        for axis in axes:
            d = np.diff(d, axis=axis, prepend=0)
        out.append(d)
    return out


def _choose(r: np.ndarray, step: float) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Pick a chunk's coding: a Lorenzo transform of the quantized residual, or interpolation.

    Returns (transform, codes, reconstruction of the residual, voxels whose code is clipped).
    """
    q = quantize(r, step)
    options = _transforms(q)
    costs = [_cost(d) if d is not None else math.inf for d in options]
    best = int(np.argmin(costs))
    result = (best, options[best], q.astype(np.float64) * step, np.abs(q) >= QMAX)
    if not q.any():
        return result
    for i, axes in enumerate(INTERP_AXES):
        if all(r.shape[a] < 2 for a in axes):
            continue
        codes, rec = interpolate(r.shape, axes, step, residual=r)
        cost = _cost(codes)
        if cost < costs[best]:
            costs[best] = cost
            result = (len(TRANSFORMS) + i, codes, rec, np.abs(codes) >= QMAX)
    return result


def _untransform(d: np.ndarray, transform: int) -> np.ndarray:
    """Inverse of :func:`_transforms` (cumulative sums; exact on integers)."""
    for axis in TRANSFORMS[transform]:
        d = np.cumsum(d, axis=axis)
    return d


def _cost(d: np.ndarray) -> float:
    """Proxy of the coded size: sum of log2(1 + 2|d|)."""
    return float(np.log2(1.0 + 2.0 * np.abs(d)).sum())


def _zigzag(d: np.ndarray) -> np.ndarray:
    return ((d << 1) ^ (d >> 63)).astype(np.uint64)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.uint64)
    return ((z >> np.uint64(1)).astype(np.int64)) ^ -((z & np.uint64(1)).astype(np.int64))


def _zstd_width(z: np.ndarray) -> int:
    top = int(z.max()) if z.size else 0
    return next(w for w in (1, 2, 4, 8) if top < 1 << (8 * w))


def _code(
    q_chunks: list[tuple[int, np.ndarray]],
    exact_idx: list[np.ndarray],
    exact_val: list[np.ndarray],
    chunk: tuple[int, ...],
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Entropy-code every chunk's (transform, codes); returns header entries and sections."""
    import constriction

    n = len(q_chunks)
    index = np.zeros(n, _INDEX)
    symbols: list[np.ndarray | None] = [None] * n
    for c, (transform, codes) in enumerate(q_chunks):
        if not codes.any():
            index[c]["method"] = METHOD_ZERO
            continue
        index[c]["transform"] = transform
        index[c]["method"] = METHOD_ANS
        symbols[c] = codes.reshape(-1)
    coded = [c for c in range(n) if symbols[c] is not None]
    # alphabet: -K..K plus an escape symbol; K covers 99.9 % of the values
    if coded:
        mags = np.concatenate([np.abs(symbols[c]) for c in coded])
        half = int(min(MAX_HALF_ALPHABET, max(1, np.quantile(mags, 0.999))))
    else:
        half = 1
    alphabet = 2 * half + 2
    # groups of chunks by mean |symbol| (similar statistics share one table); a table costs
    # about a byte per symbol of the alphabet, kept under ~1/256 of the symbols coded
    n_symbols = sum(symbols[c].size for c in coded)
    n_groups = int(np.clip(min(len(coded) // 4, n_symbols // (256 * alphabet)), 1, MAX_GROUPS))
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
    models = [_categorical(tables[g]) for g in range(n_groups)]
    codes: list[bytes] = []
    escapes: list[np.ndarray] = []
    zc = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    for c in range(n):
        if index[c]["method"] == METHOD_ZERO:
            codes.append(b"")
            continue
        s, m = symbols[c], mapped[c]
        esc = s[m == alphabet - 1]
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(m, models[index[c]["group"]])
        ans = coder.get_compressed().astype("<u4").tobytes()
        z = _zigzag(s)
        width = _zstd_width(z)
        zs = zc.compress(z.astype(f"<u{width}").tobytes())
        if len(zs) < len(ans) + 8 * len(esc):
            index[c]["method"], index[c]["width"] = METHOD_ZSTD, width
            index[c]["words"] = len(zs)
            codes.append(zs)
        else:
            index[c]["words"] = len(ans) // 4
            index[c]["escapes"] = len(esc)
            codes.append(ans)
            escapes.append(esc.astype("<i8"))
    index["exact"] = [len(i) for i in exact_idx]
    sections = {
        "residual_index": zc.compress(index.tobytes()),
        "residual_tables": zc.compress(tables.tobytes()),
        "residual_codes": b"".join(codes),
        "residual_escapes": zc.compress(np.concatenate(escapes).tobytes() if escapes else b""),
        "residual_exact": zc.compress(
            np.concatenate(exact_idx).astype("<u4").tobytes()
            + np.concatenate(exact_val).astype("<f4").tobytes()
        ),
    }
    meta = {"alphabet_half": half, "groups": n_groups, "chunks": n}
    return meta, sections


def _log_counts(counts: np.ndarray) -> np.ndarray:
    """Counts -> one byte each: 0 for unseen, else ``1 + round(8 log2(count))`` (<= 255)."""
    logs = np.round(8 * np.log2(np.maximum(counts, 1)))
    return np.where(counts > 0, np.minimum(1 + logs, 255), 0).astype(np.uint8)


def _categorical(table: np.ndarray):
    """The ANS model of one table row (encoder and decoder build it from the same bytes)."""
    import constriction

    b = table.astype(np.float64)
    p = np.where(b > 0, np.exp2((b - 1) / 8), 0.0)
    if p.sum() == 0:
        p[:] = 1.0
    return constriction.stream.model.Categorical(p / p.sum(), perfect=False)


# ----------------------------------------------------------------------------- decode


def _unzip(data: bytes, n_bytes: int, what: str) -> bytes:
    # the declared content size is checked before zstandard allocates it
    return unzip_exact(data, n_bytes, what)


def _meta_int(meta: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = meta.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise FormatError(f"corrupted header (residual {key} = {v!r} not in {lo}..{hi})")
    return v


def _meta_float(meta: dict[str, Any], key: str) -> float:
    v = meta.get(key)
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
        raise FormatError(f"corrupted header (residual {key} = {v!r})")
    return float(v)


class Layer:
    """A residual layer read from a file: validates the header entry, decodes chunks on demand.

    Parameters
    ----------
    meta : dict
        ``header["residual"]``.
    sections : dict of bytes
        The file's sections (the ``residual_*`` ones are used).
    shape4 : tuple of 4 int
        The field's (T, Z, Y, X).
    n_bytes : int, optional
        Size of the file: the index and a decoded chunk must fit its decode budget
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
        if meta.get("version") != VERSION or meta.get("predict") != "float64":
            raise FormatError(
                f"residual layer version {meta.get('version')!r} is not supported; upgrade sciinr"
            )
        missing = [s for s in SECTION_NAMES if s not in sections]
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
        if n > MAX_CHUNKS or _meta_int(meta, "chunks", 0, MAX_CHUNKS) != n:
            raise FormatError("corrupted header (residual chunk count)")
        self.step = _meta_float(meta, "step")
        self.max_error = _meta_float(meta, "max_error")
        if not 0 < self.step <= 2 * self.max_error:
            raise FormatError("corrupted header (residual step)")
        self.half = _meta_int(meta, "alphabet_half", 1, MAX_HALF_ALPHABET)
        self.n_groups = _meta_int(meta, "groups", 1, MAX_GROUPS)
        self.alphabet = 2 * self.half + 2
        self.sections = sections
        if n_bytes is not None:
            budget.check_residual(n, self.chunk, n_bytes)
        idx = np.frombuffer(
            _unzip(sections["residual_index"], n * _INDEX.itemsize, "residual_index"), _INDEX
        )
        per_chunk = self._voxels()
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
        self._tables: list[Any] | None = None
        self._escapes: np.ndarray | None = None
        self._exact: tuple[np.ndarray, np.ndarray] | None = None

    def _voxels(self) -> np.ndarray:
        """Voxels of every chunk (C order), without a Python object per chunk."""
        sizes = [
            np.minimum(c, s - np.arange(g, dtype=np.int64) * c)
            for s, c, g in zip(self.shape4, self.chunk, self.grid, strict=True)
        ]
        t, z, y, x = sizes
        return (
            t[:, None, None, None] * z[None, :, None, None] * y[None, None, :, None] * x
        ).reshape(-1)

    def _chunk_shape(self, c: int) -> tuple[int, ...]:
        """In-field shape of chunk ``c`` (clipped at the field's edge)."""
        cell = np.unravel_index(c, self.grid)
        return tuple(
            int(min(k, s - int(i) * k))
            for i, k, s in zip(cell, self.chunk, self.shape4, strict=True)
        )

    def _models(self) -> list[Any]:
        if self._tables is None:
            raw = _unzip(
                self.sections["residual_tables"], self.n_groups * self.alphabet, "residual_tables"
            )
            t = np.frombuffer(raw, np.uint8).reshape(self.n_groups, self.alphabet)
            self._tables = [_categorical(t[g]) for g in range(self.n_groups)]
        return self._tables

    def _escape_values(self) -> np.ndarray:
        if self._escapes is None:
            raw = _unzip(self.sections["residual_escapes"], 8 * self.n_escapes, "residual_escapes")
            self._escapes = np.frombuffer(raw, "<i8").astype(np.int64)
        return self._escapes

    def _exact_values(self) -> tuple[np.ndarray, np.ndarray]:
        if self._exact is None:
            raw = _unzip(self.sections["residual_exact"], 8 * self.n_exact, "residual_exact")
            idx = np.frombuffer(raw[: 4 * self.n_exact], "<u4").astype(np.int64)
            val = np.frombuffer(raw[4 * self.n_exact :], "<f4").astype(np.float32)
            self._exact = (idx, val)
        return self._exact

    def chunk_residual(self, c: int, shape: tuple[int, ...]) -> np.ndarray:
        """The decoded residual (float64) of chunk ``c`` (its in-field shape)."""
        rec = self.index[c]
        n = int(self.voxels[c])
        method = int(rec["method"])
        if method == METHOD_ZERO:
            return np.zeros(shape, np.float64)
        data = self.sections["residual_codes"][int(self.code_start[c]) : int(self.code_end[c])]
        if method == METHOD_ZSTD:
            width = int(rec["width"])
            z = np.frombuffer(_unzip(data, n * width, "residual_codes"), f"<u{width}")
            d = _unzigzag(z)
        else:
            d = self._ans(c, data, n)
        if np.abs(d).max() > 16 * QMAX:
            raise FormatError("corrupted section 'residual_codes' (value out of range)")
        transform = int(rec["transform"])
        if transform >= len(TRANSFORMS):
            axes = INTERP_AXES[transform - len(TRANSFORMS)]
            return interpolate(shape, axes, self.step, codes=d.reshape(shape))[1]
        q = _untransform(d.reshape(shape), transform)
        if np.abs(q).max() > QMAX:
            raise FormatError("corrupted section 'residual_codes' (value out of range)")
        return q.astype(np.float64) * self.step

    def _ans(self, c: int, data: bytes, n: int) -> np.ndarray:
        import constriction

        rec = self.index[c]
        try:
            coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, "<u4").astype(np.uint32))
            sym = coder.decode(self._models()[int(rec["group"])], n).astype(np.int64)
            leftover = not coder.is_empty()
        except (ValueError, RuntimeError, AssertionError):
            raise FormatError("corrupted section 'residual_codes' (ANS stream)") from None
        if leftover:
            raise FormatError("corrupted section 'residual_codes' (ANS stream)")
        d = sym - self.half
        esc = np.flatnonzero(sym == self.alphabet - 1)
        if len(esc) != int(rec["escapes"]):
            raise FormatError("corrupted section 'residual_codes' (escape count)")
        start = int(self.esc_start[c])
        d[esc] = self._escape_values()[start : start + len(esc)]
        return d

    def apply(self, prediction: np.ndarray, region: tuple[tuple[int, int], ...]) -> np.ndarray:
        """Decoded float32 values of ``region`` from its float64 ``prediction``."""
        out = np.empty(prediction.shape, np.float32)
        if out.size == 0:
            return out
        for c, local, dest in touched(self.chunk, self.grid, region):
            shape = self._chunk_shape(c)
            rhat = self.chunk_residual(c, shape)
            n_ex = int(self.index[c]["exact"])
            vals_full = None
            if n_ex:
                idx, val = self._exact_values()
                start = int(self.exact_start[c])
                ex_i, ex_v = idx[start : start + n_ex], val[start : start + n_ex]
                if np.any(ex_i >= rhat.size):
                    raise FormatError("corrupted section 'residual_exact' (index out of range)")
                vals_full = (ex_i, ex_v)
            lsl = tuple(slice(a, e) for a, e in local)
            part = (prediction[dest] + rhat[lsl]).astype(np.float32)
            if vals_full is not None:
                mask = np.zeros(rhat.size, bool)
                mask[vals_full[0]] = True
                full = np.zeros(rhat.size, np.float32)
                full[vals_full[0]] = vals_full[1]
                m = mask.reshape(shape)[lsl]
                part[m] = full.reshape(shape)[lsl][m]
            out[dest] = part
        return out
