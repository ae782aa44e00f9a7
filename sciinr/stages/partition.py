"""Partition stage: :class:`Volume` -> :class:`Blocks`, and ``assemble`` back.

The (t, z, y, x) field is cut into equal blocks (the block size is clipped to the field's
size; edge blocks are padded by repeating the last value). Each block is min-max normalized
to [-1, 1]; a block whose half-range is within the tolerance is *trivial*: stored as its
mid-value and never fitted.

With a mask (``Volume.mask``) the block ranges are those of the valid voxels; masked voxels
take their block's mean of valid values (so they sit inside the block's range and do not
disturb clustering), are marked in ``Blocks.mask`` and count in no error. A block without a
valid voxel is trivial.
"""

from __future__ import annotations

import numpy as np

from ..config import PartitionConfig
from ..payloads import BlockConstants, Blocks, Volume


def block_shape(shape4: tuple[int, ...], block: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The block size actually used for a field of this 4-D shape."""
    return tuple(min(int(b), int(s)) for b, s in zip(block, shape4, strict=True))  # type: ignore[return-value]


def grid_shape(shape4: tuple[int, ...], block: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Number of blocks along each axis."""
    return tuple(-(-int(s) // int(b)) for s, b in zip(shape4, block, strict=True))  # type: ignore[return-value]


def to_blocks(data: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
    """(T, Z, Y, X) -> (n_blocks, bt*bz*by*bx), edge-padded; block order is C order of the grid."""
    grid = grid_shape(data.shape, block)
    pad = [(0, g * b - s) for g, b, s in zip(grid, block, data.shape, strict=True)]
    if any(p[1] for p in pad):
        data = np.pad(data, pad, mode="edge")
    g0, g1, g2, g3 = grid
    b0, b1, b2, b3 = block
    v = data.reshape(g0, b0, g1, b1, g2, b2, g3, b3).transpose(0, 2, 4, 6, 1, 3, 5, 7)
    return v.reshape(g0 * g1 * g2 * g3, b0 * b1 * b2 * b3)


def partition(volume: Volume, cfg: PartitionConfig, tolerance: float) -> Blocks:
    """Cut a volume into normalized blocks.

    Parameters
    ----------
    volume : Volume
        The field.
    cfg : PartitionConfig
        Block size and trivial-block rule.
    tolerance : float
        Target RMS error in original units; a block is trivial when its half-range is at
        most ``cfg.trivial_fraction * tolerance`` (so its error is bounded by that).
    """
    block = block_shape(volume.data.shape, cfg.block)
    grid = grid_shape(volume.data.shape, block)
    flat = to_blocks(volume.data, block)
    fmask = None if volume.mask is None else to_blocks(volume.mask, block)
    if fmask is None:
        raw_lo = flat.min(axis=1).astype(np.float64)
        raw_hi = flat.max(axis=1).astype(np.float64)
    else:
        flat, raw_lo, raw_hi = _masked_ranges(flat, fmask)
    trivial = (raw_hi - raw_lo) / 2 <= cfg.trivial_fraction * tolerance
    consts = quantize_constants(raw_lo, raw_hi, cfg.const_step * tolerance)
    lo, hi = consts.lo, consts.hi
    fit = flat[~trivial]
    valid = valid_mask(volume.data.shape, block, np.flatnonzero(trivial))
    if fmask is not None:
        valid &= fmask[trivial]
    mid = (lo[trivial, None].astype(np.float64) + hi[trivial, None]) / 2
    trivial_sse = float((((flat[trivial] - mid) ** 2) * valid).sum())
    lo_f = lo[~trivial, None].astype(np.float64)
    scale = (hi[~trivial, None].astype(np.float64) - lo_f) / 2
    values = np.clip((fit - lo_f) / scale - 1.0, -1.0, 1.0).astype(np.float32)
    return Blocks(
        block=block,
        grid=grid,
        consts=consts,
        trivial=trivial,
        values=values,
        shape4=tuple(volume.data.shape),
        trivial_sse=trivial_sse,
        mask=None if fmask is None else fmask[~trivial],
        n_valid=None if fmask is None else volume.n_valid,
    )


def _masked_ranges(
    flat: np.ndarray, fmask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blocks with masked voxels set to the block's mean of valid values, and valid lo/hi.

    A block with no valid voxel keeps its values (the volume's filler) and gets lo = hi.
    """
    count = fmask.sum(axis=1)
    total = np.where(fmask, flat, 0).sum(axis=1, dtype=np.float64)
    mean = np.where(count > 0, total / np.maximum(count, 1), flat[:, 0]).astype(np.float32)
    filled = np.where(fmask, flat, mean[:, None])
    return filled, filled.min(axis=1).astype(np.float64), filled.max(axis=1).astype(np.float64)


def quantize_constants(lo: np.ndarray, hi: np.ndarray, step: float) -> BlockConstants:
    """Put block ranges on an integer grid (lo rounded down, hi up) of spacing ``step``."""
    base = float(lo.min()) if lo.size else 0.0
    span = float(hi.max()) - base if hi.size else 0.0
    if not step > 0 or span / step > 2**30:  # constant field, or a step too fine for int32
        step = max(span / 2**30, abs(base) * 2**-20, 2**-126) if span > 0 else 1.0
    lo_q = np.floor((lo - base) / step).astype(np.int64)
    hi_q = np.ceil((hi - base) / step).astype(np.int64)
    consts = BlockConstants(base=base, step=float(step), lo_q=lo_q, hi_q=hi_q)
    # float32 rounding of base + q * step may land inside the range: widen until it covers it
    for _ in range(4):
        bad_lo = consts.lo > lo.astype(np.float32)
        bad_hi = consts.hi < hi.astype(np.float32)
        if not (bad_lo.any() or bad_hi.any()):
            break
        lo_q = lo_q - bad_lo
        hi_q = hi_q + bad_hi
        consts = BlockConstants(base=base, step=float(step), lo_q=lo_q, hi_q=hi_q)
    return consts


def valid_mask(shape4: tuple[int, ...], block: tuple[int, ...], ids: np.ndarray) -> np.ndarray:
    """(len(ids), voxels per block) bool: which voxels of these blocks lie inside the field."""
    grid = grid_shape(shape4, block)
    cells = np.stack(np.unravel_index(np.asarray(ids, np.int64), grid), axis=1)  # (n, 4)
    mask = np.ones((len(ids), *block), bool)
    for axis in range(4):
        inside = cells[:, axis, None] * block[axis] + np.arange(block[axis]) < shape4[axis]
        shp = [len(ids), 1, 1, 1, 1]
        shp[axis + 1] = block[axis]
        mask &= inside.reshape(shp)
    return mask.reshape(len(ids), int(np.prod(block)))


def denormalize(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Normalized block values back to original units (broadcasting lo/hi per block)."""
    lo64 = lo.astype(np.float64)
    return lo64 + (values.astype(np.float64) + 1.0) * ((hi.astype(np.float64) - lo64) / 2)
