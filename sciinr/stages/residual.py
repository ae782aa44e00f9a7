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

and stores the integers (and the exact voxels) through
:func:`sciinr.stages.entropy.encode_residual`, which also names the sections. This module
is the maths only: :func:`fit` makes a :class:`Correction`, :func:`apply` inverts it from any
:class:`Source` of chunk codes (the decoded sections of a file), :func:`check` verifies the
bound on the coded result.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import FormatError
from ..payloads import Model
from .decode import Region, touched

logger = logging.getLogger(__name__)

QMAX = 2**31 - 1  # larger |q| -> the voxel is stored exactly
MAX_CHUNKS = 1 << 24  # chunks of one field at most (chunks grow beyond it)
DEFAULT_CHUNK = (8, 64, 64, 64)  # chunk of a prediction without blocks of its own
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


# ----------------------------------------------------------------------------- fit


@dataclass(frozen=True, eq=False)
class Correction:
    """Output of :func:`fit`: per chunk the integers to store, and the voxels stored exactly."""

    chunk: tuple[int, int, int, int]  # chunk shape (grown from the one asked for if needed)
    step: float
    max_error: float  # guaranteed |original - decoded| at every voxel
    margin: float  # prediction difference between devices it allows for
    codes: tuple[tuple[int, np.ndarray], ...]  # (transform, int64 codes) per chunk
    exact_index: tuple[np.ndarray, ...]  # per chunk, uint32 indices (C order) of exact voxels
    exact_value: tuple[np.ndarray, ...]  # per chunk, their float32 values
    sse: float  # squared error of the decoded field (float64)

    @property
    def n_exact(self) -> int:
        """Voxels stored exactly."""
        return int(sum(len(i) for i in self.exact_index))


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


def fit(
    original: np.ndarray,
    prediction: np.ndarray,
    max_error: float,
    *,
    chunk: tuple[int, ...] = DEFAULT_CHUNK,
    margin: float = 0.0,
    step: float | None = None,
    valid: np.ndarray | None = None,
) -> Correction:
    """Quantize the residual of ``prediction`` so that every voxel decodes within ``max_error``.

    With ``valid`` (True = the voxel holds data) the bound holds on the valid voxels; the
    residual of a masked voxel is coded as zero (it costs nothing and is never exact).

    Parameters
    ----------
    original : numpy.ndarray
        (T, Z, Y, X) float32, the field.
    prediction : numpy.ndarray
        (T, Z, Y, X) float64, the prediction it corrects (any array of that shape).
    max_error : float
        The bound ``E`` (original units, > 0).
    chunk : tuple of 4 int, default: DEFAULT_CHUNK
        Chunk shape (e.g. the model's block), the unit of region decoding; grown where a
        field would have more than ``MAX_CHUNKS`` chunks.
    margin : float, default: 0
        Largest difference between this prediction and another device's
        (:func:`prediction_margin`).
    step : float, optional
        Quantizer step; default :func:`step_for`. A given step must not exceed ``2 E``.
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
    return Correction(
        chunk=chunk,
        step=float(step),
        max_error=float(max_error),
        margin=float(margin),
        codes=tuple(q_chunks),
        exact_index=tuple(exact_idx),
        exact_value=tuple(exact_val),
        sse=sse,
    )


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


# ----------------------------------------------------------------------------- inverse


class Source(Protocol):
    """Chunk codes of a residual layer, e.g. :class:`sciinr.stages.entropy.ResidualCodes`."""

    shape4: tuple[int, ...]
    chunk: tuple[int, ...]
    grid: tuple[int, ...]
    step: float
    max_error: float

    def codes(self, c: int) -> tuple[int, np.ndarray] | None:
        """(transform, int64 codes in C order) of chunk ``c``; None when all are zero."""

    def exact(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices in the chunk, float32 values) of the exact voxels of chunk ``c``."""


def chunk_residual(
    transform: int, d: np.ndarray, shape: tuple[int, ...], step: float
) -> np.ndarray:
    """The residual (float64, ``shape``) a chunk's codes stand for (inverse of :func:`fit`)."""
    if d.size and np.abs(d).max() > 16 * QMAX:
        raise FormatError("corrupted section 'residual_codes' (value out of range)")
    if transform >= len(TRANSFORMS):
        axes = INTERP_AXES[transform - len(TRANSFORMS)]
        return interpolate(shape, axes, step, codes=d.reshape(shape))[1]
    q = _untransform(d.reshape(shape), transform)
    if q.size and np.abs(q).max() > QMAX:
        raise FormatError("corrupted section 'residual_codes' (value out of range)")
    return q.astype(np.float64) * step


def apply(prediction: np.ndarray, source: Source, region: Region) -> np.ndarray:
    """Decoded float32 values of ``region`` from its float64 ``prediction`` and the codes."""
    out = np.empty(prediction.shape, np.float32)
    if out.size == 0:
        return out
    for c, local, dest in touched(source.chunk, source.grid, region):
        cell = np.unravel_index(c, source.grid)
        shape = tuple(
            min(k, s - i * k) for i, k, s in zip(cell, source.chunk, source.shape4, strict=True)
        )
        coded = source.codes(c)
        if coded is None:
            rhat = np.zeros(shape, np.float64)
        else:
            rhat = chunk_residual(coded[0], coded[1], shape, source.step)
        lsl = tuple(slice(a, e) for a, e in local)
        part = (prediction[dest] + rhat[lsl]).astype(np.float32)
        ex_i, ex_v = source.exact(c)
        if ex_i.size:
            if np.any(ex_i >= rhat.size):
                raise FormatError("corrupted section 'residual_exact' (index out of range)")
            mask = np.zeros(rhat.size, bool)
            mask[ex_i] = True
            full = np.zeros(rhat.size, np.float32)
            full[ex_i] = ex_v
            m = mask.reshape(shape)[lsl]
            part[m] = full.reshape(shape)[lsl][m]
        out[dest] = part
    return out


def check(
    original: np.ndarray,
    prediction: np.ndarray,
    source: Source,
    valid: np.ndarray | None = None,
) -> None:
    """Decode the coded layer as a decoder would and check its bound at every (valid) voxel."""
    out = apply(prediction, source, tuple((0, s) for s in original.shape))
    err = np.abs(original.astype(np.float64) - out)
    if valid is not None:
        err = err[valid]
    worst = float(err.max()) if err.size else 0.0
    if worst > source.max_error:  # a bug, not bad input: keep the traceback
        raise AssertionError(
            f"residual layer breaks its bound: {worst} > {source.max_error} after coding"
        )
    logger.debug("residual verified: max error %.6g <= %.6g", worst, source.max_error)
