"""Mask stage: the valid-voxel mask of a field <-> one lossless section, and its use on decode.

A field with missing values (a masked array, a ``_FillValue``/``missing_value``, NaN) keeps
them as a mask: one bit per voxel of the (T, Z, Y, X) field in C order, 1 = valid, packed
most significant bit first (``numpy.packbits``) and zstd-compressed into the section
``mask``. A land mask or a missing region is long runs of equal bits, which zstd codes to a
few bytes per run; a field without missing values has no mask section at all.

The header entry ``"mask"`` is ``{"valid": number of valid voxels, "fill_value": the
original's fill or null}``. The section's decoded size is fixed by the shape
(``ceil(n / 8)`` bytes) and checked before anything is decompressed; decoding a region
reads only that region's bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from ..errors import FormatError
from .entropy import unzip_exact

SECTION = "mask"
VERSION = (2, 0)  # format version of a file with a mask (a 1.x reader would ignore it)
ZSTD_LEVEL = 19


def encode(mask: np.ndarray, fill_value: float | None) -> tuple[dict[str, Any], bytes]:
    """(T, Z, Y, X) bool mask (True = valid) -> (header entry, section bytes)."""
    bits = np.packbits(np.ascontiguousarray(mask, dtype=bool).reshape(-1))
    data = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(bits.tobytes())
    fill = float(fill_value) if fill_value is not None and math.isfinite(fill_value) else None
    return {"valid": int(np.count_nonzero(mask)), "fill_value": fill}, data


@dataclass(frozen=True)
class Mask:
    """The mask of an opened file: validated header entry, bits decoded on first use."""

    shape4: tuple[int, int, int, int]
    valid: int
    fill_value: float | None
    data: bytes

    @classmethod
    def from_header(cls, meta: Any, sections: dict[str, bytes], shape4: tuple[int, ...]) -> Mask:
        """Check ``header["mask"]`` against the field; the bits are checked on first decode.

        Raises
        ------
        FormatError
            Not a mapping, a bad count or fill value, or no ``mask`` section.
        """
        n = math.prod(shape4)
        if not isinstance(meta, dict):
            raise FormatError("corrupted header (mask entry is not a mapping)")
        valid, fill = meta.get("valid"), meta.get("fill_value")
        if type(valid) is not int or not 0 <= valid <= n:
            raise FormatError(f"corrupted header (mask valid = {valid!r} not in 0..{n})")
        if fill is not None and type(fill) not in (int, float):
            raise FormatError(f"corrupted header (mask fill_value = {fill!r})")
        if SECTION not in sections:
            raise FormatError(f"missing sections: {SECTION}")
        fill_value = float(fill) if fill is not None else None
        return cls(tuple(int(s) for s in shape4), valid, fill_value, sections[SECTION])  # type: ignore[arg-type]

    @property
    def n_bytes(self) -> int:
        """Bytes of the packed bits (fixed by the shape): what decoding the mask holds."""
        return -(-math.prod(self.shape4) // 8)

    def bits(self) -> np.ndarray:
        """The packed bits (``ceil(n / 8)`` uint8), checked against the header's count."""
        n = math.prod(self.shape4)
        raw = unzip_exact(self.data, self.n_bytes, SECTION)
        bits = np.frombuffer(raw, np.uint8)
        tail = n % 8
        if tail and bits[-1] & ((1 << (8 - tail)) - 1):
            raise FormatError("corrupted section 'mask' (bits set past the last voxel)")
        if int(np.bitwise_count(bits).sum(dtype=np.int64)) != self.valid:
            raise FormatError("corrupted section 'mask' (its count of valid voxels disagrees)")
        return bits

    def region(self, bits: np.ndarray, region: tuple[tuple[int, int], ...]) -> np.ndarray:
        """(region shape) bool, True = valid, from :meth:`bits`."""
        axes = [np.arange(a, b, dtype=np.int64) for a, b in region]
        strides = np.cumprod((1, *self.shape4[:0:-1]))[::-1]  # C-order strides in voxels
        flat = sum(
            ax.reshape([-1 if i == j else 1 for j in range(4)]) * int(st)
            for i, (ax, st) in enumerate(zip(axes, strides, strict=True))
        )
        flat = np.broadcast_to(flat, tuple(b - a for a, b in region))
        return ((bits[flat >> 3] >> (7 - (flat & 7)).astype(np.uint8)) & 1).astype(bool)


def apply(values: np.ndarray, valid: np.ndarray, fill_value: float | None) -> np.ma.MaskedArray:
    """Decoded values and their valid mask -> a masked array.

    Under the mask the data holds ``fill_value`` (NaN when there is none), which is also the
    array's ``fill_value``, so ``.filled()`` gives what a written file holds.
    """
    fill = np.nan if fill_value is None else fill_value
    data = np.where(valid, values, np.asarray(fill, values.dtype))
    out = np.ma.MaskedArray(data, mask=~valid)
    out.fill_value = fill
    return out


def contiguous(arr: np.ma.MaskedArray, dtype: np.dtype) -> np.ma.MaskedArray:
    """A C-contiguous copy of ``arr`` (data and mask) in ``dtype``, its fill value kept."""
    out = np.ma.MaskedArray(
        np.ascontiguousarray(arr.data).astype(dtype, copy=False),
        mask=np.ascontiguousarray(np.ma.getmaskarray(arr)),
    )
    out.fill_value = arr.fill_value
    return out
