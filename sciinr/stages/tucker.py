"""Whole-field base level: a quantized Tucker (HOSVD) representation of the entire field.

The centred field ``x - mean`` (all of ``(t, z, y, x)``) is written as a core tensor ``G``
multiplied along each axis by a factor matrix: ``x ≈ mean + G ×₀ U₀ ×₁ U₁ ×₂ U₂ ×₃ U₃``. The
factors start as the HOSVD bases (eigenvectors of each unfolding's Gram matrix), so the time
axis gets a basis learned from *all* time steps: a longer series costs little more.

Rate–distortion choices (one step size ``d`` controls both):

- the core is quantized uniformly with step ``d`` and a dead zone (``|g|/d`` is rounded after
  subtracting ``theta``), and dequantized to ``(|q| + rho) d`` with the least-squares ``rho``;
- a factor column carries the energy ``w`` of its core slice, so its entries get the step
  ``d / sqrt(w)``: every stored number then adds the same distortion, whatever it is; a column
  whose entries all round to zero is dropped, with its core slice;
- after the factors are quantized the core is recomputed against them (least squares), then
  quantized;
- everything is coded by :mod:`sciinr.stages.coefficients`: core classes in wavefronts of
  equal index sum, each in the context of its four already-coded neighbours; factor columns
  row by row, raw or as differences along the axis (whichever is smaller), in the context of
  the entry above and the column's step.

The step is searched so that the PSNR of the whole reconstruction lands just above the target.
Decoding a region multiplies the core by the factor rows of that region only; a continuous
sample interpolates the factor rows linearly (multilinear interpolation of the decoded field).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FormatError
from . import budget, entropy
from . import coefficients as cc

logger = logging.getLogger(__name__)

N_CORE_CTX = 16
SECTIONS = ("base_core", "base_factors", "base_bits", "base_columns")
N_FACTOR_CTX = 2 * 6 * 8
MAX_MODE = 8192  # longest axis whose Gram matrix is decomposed
# decode budget (docs/format.md): a range-coded stream of B bytes may declare at most
# SYMBOL_ALLOWANCE + SYMBOLS_PER_BYTE * B coefficients, and each costs at most
# BYTES_PER_COEFFICIENT while the base decodes (measured with tracemalloc, with margin)
SYMBOLS_PER_BYTE = 64
SYMBOL_ALLOWANCE = 1 << 20
BYTES_PER_COEFFICIENT = 48


@dataclass(frozen=True)
class TuckerBase:
    """A quantized Tucker representation: what the file stores, as integers and steps."""

    shape4: tuple[int, int, int, int]
    mean: float
    step: float  # core quantization step d (original units)
    rho: float  # dequantization offset of nonzero core integers
    core_q: np.ndarray  # (R0, R1, R2, R3) int64
    factor_q: tuple[np.ndarray, ...]  # per axis (I_n, R_n) int64 ((1, 1) = [[1]] for I_n = 1)
    factor_exp: tuple[np.ndarray, ...]  # per axis (R_n,) int64: column step 2**(-e/4)
    factor_delta: tuple[np.ndarray, ...]  # per axis (R_n,) bool: coded as differences

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(int(r) for r in self.core_q.shape)

    def core(self) -> np.ndarray:
        """The dequantized core, float64."""
        q = self.core_q
        return np.sign(q) * (np.abs(q) + np.where(q != 0, self.rho, 0.0)) * self.step

    def factors(self) -> list[np.ndarray]:
        """The dequantized factor matrices, float64 (I_n, R_n)."""
        return [
            f.astype(np.float64) * np.exp2(-e.astype(np.float64) / 4)[None, :]
            for f, e in zip(self.factor_q, self.factor_exp, strict=True)
        ]


# ---------------------------------------------------------------------------------------------
# maths


def _unfold(a: np.ndarray, n: int) -> np.ndarray:
    return np.moveaxis(a, n, 0).reshape(a.shape[n], -1)


def _mode_mul(a: np.ndarray, m: np.ndarray, n: int) -> np.ndarray:
    """``a ×ₙ m`` for a matrix ``m`` of shape (J, I_n)."""
    return np.moveaxis(np.tensordot(m, a, axes=(1, n)), 0, n)


def _multiply(core: np.ndarray, mats: list[np.ndarray]) -> np.ndarray:
    """``core ×₀ m₀ ×₁ m₁ ...``, shrinking axes first (cheapest order)."""
    order = sorted(range(len(mats)), key=lambda n: mats[n].shape[0] / max(1, mats[n].shape[1]))
    out = core
    for n in order:
        out = _mode_mul(out, mats[n], n)
    return out


def _gram(x: np.ndarray, n: int) -> np.ndarray:
    """Gram matrix of the mode-``n`` unfolding, from contiguous views (no copy of ``x``)."""
    shape = x.shape
    before = math.prod(shape[:n])
    after = math.prod(shape[n + 1 :])
    v = x.reshape(before, shape[n], after)
    if after == 1:
        m = v.reshape(before, shape[n])
        return m.T @ m
    return np.einsum("aib,ajb->ij", v, v, optimize=True)


def hosvd(x: np.ndarray) -> list[np.ndarray]:
    """Orthonormal factor matrices (full rank, columns by decreasing energy) of a 4-D array."""
    out = []
    for n in range(x.ndim):
        if x.shape[n] == 1:
            out.append(np.ones((1, 1)))
            continue
        _, v = np.linalg.eigh(_gram(x, n))
        v = v[:, ::-1].copy()
        # a fixed sign per column (largest entry positive) makes the result reproducible
        v *= np.where(v[np.abs(v).argmax(0), np.arange(v.shape[1])] < 0, -1.0, 1.0)
        out.append(v)
    return out


def _quantize(g: np.ndarray, d: float, theta: float) -> np.ndarray:
    return (np.sign(g) * np.floor(np.maximum(np.abs(g) / d + 0.5 - theta, 0.0))).astype(np.int64)


def _box(q: np.ndarray) -> tuple[int, ...]:
    nz = np.nonzero(q)
    if nz[0].size == 0:
        return (1,) * q.ndim
    return tuple(int(a.max()) + 1 for a in nz)


def _rho(g: np.ndarray, q: np.ndarray, d: float) -> float:
    nz = q != 0
    if not nz.any():
        return 0.0
    return float(np.clip(np.mean(np.abs(g[nz]) / d - np.abs(q[nz])), -0.5, 0.5))


def _quantize_factors(
    u: list[np.ndarray], core: np.ndarray, d: float
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Integer factor entries and column exponents; a column's step is ``d / sqrt(w)``."""
    fq, fe = [], []
    for n, un in enumerate(u):
        r = core.shape[n]
        if un.shape[0] == 1:
            fq.append(np.ones((1, 1), np.int64))
            fe.append(np.zeros(1, np.int64))
            continue
        w = (_unfold(core, n) ** 2).sum(1)
        e = np.clip(np.round(-4 * np.log2(d / np.sqrt(np.maximum(w, d * d)))), 0, 120)
        e = e.astype(np.int64)
        fq.append(np.round(un[:, :r] / np.exp2(-e / 4)[None, :]).astype(np.int64))
        fe.append(e)
    return fq, fe


@dataclass(frozen=True)
class _Attempt:
    base: TuckerBase
    mse: float  # over valid voxels, original units


def _attempt(
    xc: np.ndarray,
    u: list[np.ndarray],
    g_full: np.ndarray,
    d: float,
    theta: float,
    mean: float,
    mask: np.ndarray | None,
    sq_norm: float,
) -> _Attempt:
    q = _quantize(g_full, d, theta)
    box = _box(q)
    sl = tuple(slice(0, r) for r in box)
    gq = q[sl] * d
    fq, fe = _quantize_factors(u, gq, d)
    # columns whose entries all rounded to zero are dropped with their core slices
    keep = [np.flatnonzero(np.abs(f).sum(0) > 0) for f in fq]
    keep = [k if k.size else np.zeros(1, np.int64) for k in keep]
    fq = [f[:, k] for f, k in zip(fq, keep, strict=True)]
    fe = [e[k] for e, k in zip(fe, keep, strict=True)]
    uq = [f * np.exp2(-e / 4)[None, :] for f, e in zip(fq, fe, strict=True)]
    # least-squares core against the quantized factors: (x ×ₙ Uₙᵀ) ×ₙ (UₙᵀUₙ)⁻¹
    proj = _multiply(xc, [m.T for m in uq])
    grams = [m.T @ m for m in uq]
    core = _multiply(proj, [np.linalg.pinv(gm) for gm in grams])
    q2 = _quantize(core, d, theta)
    box2 = _box(q2)
    sl2 = tuple(slice(0, r) for r in box2)
    q2 = q2[sl2]
    fq = [f[:, :r] for f, r in zip(fq, box2, strict=True)]
    fe = [e[:r] for e, r in zip(fe, box2, strict=True)]
    base = TuckerBase(
        shape4=tuple(xc.shape),
        mean=mean,
        step=d,
        rho=_rho(core[sl2], q2, d),
        core_q=q2,
        factor_q=tuple(fq),
        factor_exp=tuple(fe),
        factor_delta=tuple(_delta_choice(f) for f in fq),
    )
    g = base.core()
    if mask is None:
        # ||x - g×U||² = ||x||² - 2<x ×ₙ Uₙᵀ, g> + <g, g ×ₙ UₙᵀUₙ>, all at the core's size
        sub = [gm[:r, :r] for gm, r in zip(grams, box2, strict=True)]
        sse = sq_norm - 2 * float(np.vdot(proj[sl2], g)) + float(np.vdot(g, _multiply(g, sub)))
        return _Attempt(base, max(sse, 0.0) / xc.size)
    err = (_multiply(g, base.factors()) - xc)[mask]
    return _Attempt(base, float(np.mean(err * err)) if err.size else 0.0)


def fit(
    data: np.ndarray,
    target_mse: float,
    *,
    theta: float = 0.15,
    mask: np.ndarray | None = None,
    tolerance_db: float = 0.1,
) -> TuckerBase:
    """Fit and quantize a Tucker base whose MSE is at most ``target_mse`` (just below it).

    Parameters
    ----------
    data : (T, Z, Y, X) float array
    target_mse : float
        Mean squared error to stay under, in original units squared (over valid voxels).
    theta : float, default: 0.15
        Dead zone of the core quantizer (0 = plain rounding).
    mask : (T, Z, Y, X) bool array, optional
        True where values are valid; the others are filled and ignored.
    tolerance_db : float, default: 0.1
        Stop searching once the MSE is within this many dB below the target.
    """
    if any(s > MAX_MODE for s in data.shape):
        raise ValueError(f"an axis longer than {MAX_MODE} is not decomposed")
    x = np.asarray(data, np.float64)
    valid = None if mask is None or mask.all() else mask
    mean = float(x[valid].mean() if valid is not None else x.mean())
    xc = x - mean
    if valid is not None:
        xc = np.where(valid, xc, 0.0)
    u = hosvd(xc)
    g_full = _multiply(xc, [m.T for m in u])
    scale = float(np.sqrt(np.mean(xc * xc))) or 1.0
    if target_mse <= 0:
        raise ValueError("target_mse must be positive")

    sq_norm = float(np.vdot(xc, xc))

    # first guess from the core alone (orthonormal factors: its error is the field's)
    def core_mse(d: float) -> float:
        return float(np.mean((g_full - _quantize(g_full, d, theta) * d) ** 2))

    lo, hi = 1e-9 * scale, 10 * scale * math.sqrt(xc.size)
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if core_mse(mid) > 0.8 * target_mse:
            hi = mid
        else:
            lo = mid
        if hi / lo < 1.05:
            break
    # then the exact error: secant on log MSE against log step, kept inside a bracket
    aim = math.log(target_mse) - tolerance_db / 2 * math.log(10) / 10
    best: _Attempt | None = None
    ok_d, bad_d = 0.0, math.inf
    tried: list[tuple[float, float]] = []
    d = lo
    for _ in range(16):
        att = _attempt(xc, u, g_full, d, theta, mean, valid, sq_norm)
        tried.append((math.log(d), math.log(max(att.mse, 1e-300))))
        if att.mse <= target_mse:
            if best is None or d > best.base.step:
                best = att
            if 10 * math.log10(target_mse / max(att.mse, 1e-300)) <= tolerance_db:
                break
            ok_d = max(ok_d, d)
        else:
            bad_d = min(bad_d, d)
        if len(tried) >= 2 and tried[-1][0] != tried[-2][0]:
            (x0, y0), (x1, y1) = tried[-2], tried[-1]
            slope = (y1 - y0) / (x1 - x0)
            slope = slope if 0.5 < slope < 4 else 2.0
        else:
            slope = 2.0
        nxt = math.exp(tried[-1][0] + (aim - tried[-1][1]) / slope)
        if not ok_d < nxt < bad_d:  # outside the bracket: bisect it
            nxt = (
                math.sqrt(ok_d * bad_d)
                if ok_d > 0 and bad_d < math.inf
                else (d / 2 if ok_d == 0 else d * 2)
            )
        if abs(math.log(nxt / d)) < 1e-4:
            break
        d = nxt
    if best is None:  # nothing met the target yet: go finer until it is met
        for _ in range(40):
            d /= 2
            best = _attempt(xc, u, g_full, d, theta, mean, valid, sq_norm)
            if best.mse <= target_mse:
                break
    assert best is not None
    logger.info(
        "tucker base: ranks %s, step %.4g, MSE %.4g (target %.4g)",
        best.base.ranks,
        best.base.step,
        best.mse,
        target_mse,
    )
    return best.base


def evaluate(base: TuckerBase, region: tuple[tuple[int, int], ...] | None = None) -> np.ndarray:
    """Decode ``region`` ((start, stop) per t, z, y, x axis; default: all), float64."""
    if region is None:
        region = tuple((0, s) for s in base.shape4)
    mats = [f[a:b] for f, (a, b) in zip(base.factors(), region, strict=True)]
    if any(m.shape[0] == 0 for m in mats):
        return np.zeros(tuple(b - a for a, b in region))
    return _multiply(base.core(), mats) + base.mean


def _interpolated_rows(f: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Rows of a factor matrix at float indices ``c`` (clamped), linearly interpolated."""
    c = np.clip(np.asarray(c, np.float64), 0, f.shape[0] - 1)
    i0 = np.floor(c).astype(np.int64)
    i1 = np.minimum(i0 + 1, f.shape[0] - 1)
    w = (c - i0)[:, None]
    return f[i0] * (1 - w) + f[i1] * w


def evaluate_grid(base: TuckerBase, coords: list[np.ndarray]) -> np.ndarray:
    """Values on the grid of float index coordinates ``coords`` (one 1-D array per t, z, y, x
    axis), float64: multilinear interpolation between the decoded voxels."""
    mats = [_interpolated_rows(f, c) for f, c in zip(base.factors(), coords, strict=True)]
    return _multiply(base.core(), mats) + base.mean


def sample(base: TuckerBase, points: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Values at float ``(t, z, y, x)`` index coordinates ``points`` (P, 4), clamped to the
    grid; factor rows are interpolated linearly, i.e. multilinear interpolation."""
    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 4:
        raise ValueError("points must have shape (P, 4)")
    facs = base.factors()
    core = base.core()
    out = np.empty(pts.shape[0])
    for s in range(0, pts.shape[0], chunk):
        p = pts[s : s + chunk]
        rows = [_interpolated_rows(f, p[:, n]) for n, f in enumerate(facs)]
        v = np.einsum("pa,abcd->pbcd", rows[0], core, optimize=True)
        v = np.einsum("pb,pbcd->pcd", rows[1], v, optimize=True)
        v = np.einsum("pc,pcd->pd", rows[2], v, optimize=True)
        out[s : s + len(p)] = np.einsum("pd,pd->p", rows[3], v) + base.mean
    return out


# ---------------------------------------------------------------------------------------------
# coding


def _delta_choice(f: np.ndarray) -> np.ndarray:
    """Per column: code as differences along the axis when that is cheaper (by entropy)."""
    if f.shape[0] == 1:
        return np.zeros(f.shape[1], bool)
    d = np.diff(f, axis=0, prepend=0)
    return _bits_estimate(d) < _bits_estimate(f)


def _bits_estimate(f: np.ndarray) -> np.ndarray:
    """Per column: zeroth-order entropy of the classes + sign/mantissa bits."""
    c = cc.classes(f)
    out = np.empty(f.shape[1])
    for r in range(f.shape[1]):
        _, counts = np.unique(c[:, r], return_counts=True)
        p = counts / counts.sum()
        out[r] = (
            -(counts * np.log2(p)).sum() + (c[:, r] > 0).sum() + np.maximum(c[:, r] - 1, 0).sum()
        )
    return out


def _wavefronts(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of a C-ordered array sorted by index sum, and the start of each sum."""
    s = np.zeros(shape, np.int32)
    for n, size in enumerate(shape):
        axis = [1] * len(shape)
        axis[n] = size
        s += np.arange(size, dtype=np.int32).reshape(axis)
    order = np.argsort(s.ravel(), kind="stable")
    bounds = np.searchsorted(s.ravel()[order], np.arange(sum(shape) - len(shape) + 2))
    return order, bounds


def _core_context(cls_padded: np.ndarray, idx: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Contexts of core positions (flat, unpadded) from the classes of their causal neighbours."""
    pos = np.unravel_index(idx, shape)
    total = np.zeros(idx.size, np.int64)
    for a in range(len(shape)):
        nb = [p + 1 for p in pos]
        nb[a] = nb[a] - 1
        total += cls_padded[tuple(nb)]
    return _bucket(total, N_CORE_CTX)


def _bucket(total: np.ndarray, n: int) -> np.ndarray:
    """0, 1, 2, 3 as themselves, then about two buckets per doubling, capped at ``n - 1``."""
    t = np.asarray(total, np.int64)
    b = np.where(t < 4, t, np.floor(2 * np.log2(np.maximum(t, 1))).astype(np.int64))
    return np.minimum(b, n - 1)


def _factor_rows(f: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The integers a factor matrix is coded as (differences in the columns that ask)."""
    d = np.diff(f, axis=0, prepend=0)
    return np.where(delta[None, :], d, f)


def _expected_class(e: np.ndarray, rows: int) -> np.ndarray:
    """Rough class of a column's entries from its step exponent (|U| ~ 1/sqrt(rows))."""
    return np.clip(np.round(e / 4 - 0.5 * math.log2(max(rows, 1))), 0, 7).astype(np.int64)


def _factor_context(prev_cls: np.ndarray, expected: np.ndarray, delta: np.ndarray) -> np.ndarray:
    return (np.minimum(cc.log_class(prev_cls), 5) * 8 + expected) * 2 + delta.astype(np.int64)


def encode(base: TuckerBase) -> tuple[dict, dict[str, bytes]]:
    """A Tucker base -> (header entry, sections ``base_core``, ``base_factors``, ...)."""
    q = base.core_q
    cls = cc.classes(q)
    order, bounds = _wavefronts(q.shape)
    padded = np.pad(cls, ((1, 0),) * q.ndim)
    flat = cls.ravel()

    def core_steps():
        for k in range(len(bounds) - 1):
            idx = order[bounds[k] : bounds[k + 1]]
            yield _core_context(padded, idx, q.shape), flat[idx]

    core_words = cc.encode_classes(core_steps(), N_CORE_CTX)
    bits = [cc.pack_bits(q, cls)]

    coded = [n for n, f in enumerate(base.factor_q) if f.shape[0] > 1]
    rows_all = {n: _factor_rows(base.factor_q[n], base.factor_delta[n]) for n in coded}

    def factor_steps():
        for n in coded:
            rows = rows_all[n]
            c = cc.classes(rows)
            expected = _expected_class(base.factor_exp[n], rows.shape[0])
            prev = np.zeros(rows.shape[1], np.int64)
            for i in range(rows.shape[0]):
                yield _factor_context(prev, expected, base.factor_delta[n]), c[i]
                prev = c[i]

    factor_words = cc.encode_classes(factor_steps(), N_FACTOR_CTX)
    for n in coded:
        bits.append(cc.pack_bits(rows_all[n], cc.classes(rows_all[n])))
    columns = np.concatenate(
        [2 * base.factor_exp[n] + base.factor_delta[n] for n in coded] or [np.zeros(0, np.int64)]
    )
    meta = {
        "kind": "tucker",
        "mean": base.mean,
        "step": base.step,
        "rho": base.rho,
        "ranks": list(base.ranks),
    }
    sections = {
        "base_core": core_words,
        "base_factors": factor_words,
        "base_bits": np.packbits(np.concatenate(bits)).tobytes(),
        "base_columns": entropy.encode_ints(columns) if columns.size else b"",
    }
    return meta, sections


def _meta_number(meta: dict, key: str) -> float:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise FormatError(f"corrupted header (base {key!r})")
    return float(v)


def check(meta: Any, sections: dict[str, bytes], shape4: tuple[int, ...], n_bytes: int) -> int:
    """Validate a base's header entry against its sections and the file's decode budget.

    Returns the bytes decoding it will hold at most (its output aside).
    """
    if not isinstance(meta, dict) or meta.get("kind") != "tucker":
        raise FormatError("corrupted header (base kind)")
    ranks = meta.get("ranks")
    if (
        not isinstance(ranks, list)
        or len(ranks) != 4
        or not all(type(r) is int for r in ranks)
        or not all(1 <= r <= s for r, s in zip(ranks, shape4, strict=True))
    ):
        raise FormatError("corrupted header (base ranks)")
    step = _meta_number(meta, "step")
    _meta_number(meta, "mean")
    if not step > 0 or abs(_meta_number(meta, "rho")) > 0.5:
        raise FormatError("corrupted header (base step)")
    for name in SECTIONS:
        if name not in sections:
            raise FormatError(f"missing section {name!r}")
    n_core = math.prod(ranks)
    n_factor = sum(s * r for s, r in zip(shape4, ranks, strict=True) if s > 1)
    for name, count in (("base_core", n_core), ("base_factors", n_factor)):
        if count > SYMBOLS_PER_BYTE * len(sections[name]) + SYMBOL_ALLOWANCE:
            raise FormatError(
                f"corrupted section {name!r} ({len(sections[name])} bytes cannot carry "
                f"{count} coefficients)"
            )
    need = BYTES_PER_COEFFICIENT * (n_core + n_factor)
    budget.check(need, n_bytes, f"a Tucker base of ranks {ranks}")
    return need


def decode(
    meta: dict, sections: dict[str, bytes], shape4: tuple[int, ...], n_bytes: int | None = None
) -> TuckerBase:
    """Inverse of :func:`encode`, after :func:`check` (``n_bytes``: the file's size; default
    the sections' total)."""
    check(meta, sections, shape4, sum(map(len, sections.values())) if n_bytes is None else n_bytes)
    ranks_t = tuple(meta["ranks"])
    mean, step, rho = float(meta["mean"]), float(meta["step"]), float(meta["rho"])
    coded = [n for n in range(4) if shape4[n] > 1]
    n_cols = sum(ranks_t[n] for n in coded)
    columns = (
        entropy.decode_ints(sections["base_columns"], n_cols, "base_columns")
        if n_cols
        else np.zeros(0, np.int64)
    )
    if columns.size and (columns.min() < 0 or columns.max() > 2 * 120 + 1):
        raise FormatError("corrupted section 'base_columns' (column step out of range)")
    exps, deltas, fq = [], [], []
    off = 0
    for n in range(4):
        if n in coded:
            col = columns[off : off + ranks_t[n]]
            off += ranks_t[n]
            exps.append(col // 2)
            deltas.append((col % 2).astype(bool))
        else:
            exps.append(np.zeros(1, np.int64))
            deltas.append(np.zeros(1, bool))
    padded = np.zeros(tuple(r + 1 for r in ranks_t), np.int8)
    order, bounds = _wavefronts(ranks_t)
    inner = tuple(slice(1, None) for _ in ranks_t)

    def core_ctx(k: int) -> np.ndarray:
        return _core_context(padded, order[bounds[k] : bounds[k + 1]], ranks_t)

    def core_store(k: int, c: np.ndarray) -> None:
        idx = order[bounds[k] : bounds[k + 1]]
        pos = np.unravel_index(idx, ranks_t)
        padded[tuple(p + 1 for p in pos)] = c

    cc.decode_classes(
        sections["base_core"],
        len(bounds) - 1,
        core_ctx,
        core_store,
        N_CORE_CTX,
        "base_core",
    )
    cls = padded[inner].astype(np.int64)
    if cls.max() >= cc.N_CLASSES:
        raise FormatError("corrupted section 'base_core' (class out of range)")

    fcls = {n: np.zeros((shape4[n], ranks_t[n]), np.int64) for n in coded}
    plan = [(n, i) for n in coded for i in range(shape4[n])]

    def factor_ctx(k: int) -> np.ndarray:
        n, i = plan[k]
        prev = fcls[n][i - 1] if i else np.zeros(ranks_t[n], np.int64)
        return _factor_context(prev, _expected_class(exps[n], shape4[n]), deltas[n])

    def factor_store(k: int, c: np.ndarray) -> None:
        n, i = plan[k]
        fcls[n][i] = c

    cc.decode_classes(
        sections["base_factors"], len(plan), factor_ctx, factor_store, N_FACTOR_CTX, "base_factors"
    )
    n_bits = cc.n_bits(cls) + sum(cc.n_bits(c) for c in fcls.values())
    raw = sections["base_bits"]
    if len(raw) != (n_bits + 7) // 8:
        raise FormatError(
            f"corrupted section 'base_bits' ({len(raw)} bytes, expected {(n_bits + 7) // 8})"
        )
    bits = np.unpackbits(np.frombuffer(raw, np.uint8))
    core_q, pos = cc.unpack_bits(bits, cls, 0, "base_bits")
    for n in range(4):
        if n not in coded:
            fq.append(np.ones((1, 1), np.int64))
            continue
        rows, pos = cc.unpack_bits(bits, fcls[n], pos, "base_bits")
        f = np.where(deltas[n][None, :], np.cumsum(rows, axis=0), rows)
        fq.append(f)
    return TuckerBase(
        shape4=tuple(shape4),
        mean=mean,
        step=step,
        rho=rho,
        core_q=core_q,
        factor_q=tuple(fq),
        factor_exp=tuple(exps),
        factor_delta=tuple(deltas),
    )
