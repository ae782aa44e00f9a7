"""Mask stage: the valid-voxel mask of a field <-> one lossless section, and its use on decode.

A field with missing values (a masked array, a ``_FillValue``/``missing_value``, NaN) keeps
them as a mask, 1 = valid. Each (y, x) slab of the (T, Z, Y, X) field is one row of
``ceil(Y X / 8)`` bytes (``numpy.packbits``, most significant bit first, C order inside the
slab, zero padding), rows in (t, z) order; the rows are zstd-compressed into the section
``mask``, either as they are (coding ``"bits"``) or as differences (coding ``"delta"``): each
row XOR the row of the previous time step at the same level, and at time 0 XOR the previous
level. A land mask repeats from slab to slab, so its differences are all zero and cost zstd a
few bytes; a mask that changes (sea ice, missing records) keeps what changes. The encoder
keeps the smaller coding. A field without missing values has no mask section at all.

The header entry ``"mask"`` is ``{"valid": number of valid voxels, "fill_value": the
original's fill or null, "coding": "bits" | "delta"}``. The decoded size of the section is
fixed by the shape (``T Z ceil(Y X / 8)`` bytes) and checked before anything is
decompressed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from ..errors import FormatError
from .entropy import ZSTD_LEVEL, unzip_exact

SECTION = "mask"
VERSION = (2, 0)  # format version of a file with a mask (a 1.x reader would ignore it)
CODINGS = ("bits", "delta")


def slab_bytes(shape4: tuple[int, ...]) -> int:
    """Bytes of one packed (y, x) slab."""
    return -(-int(shape4[2]) * int(shape4[3]) // 8)


def pack(mask: np.ndarray) -> np.ndarray:
    """(T, Z, Y, X) bool -> (T, Z, slab_bytes) uint8 rows of packed bits."""
    t, z, y, x = mask.shape
    return np.packbits(np.ascontiguousarray(mask, dtype=bool).reshape(t, z, y * x), axis=-1)


def delta(rows: np.ndarray) -> np.ndarray:
    """Rows XOR the previous time step's (time 0: the previous level's)."""
    out = rows.copy()
    out[1:] ^= rows[:-1]
    out[0, 1:] ^= rows[0, :-1]
    return out


def undelta(diff: np.ndarray) -> np.ndarray:
    """Inverse of :func:`delta` (in place on a copy)."""
    out = diff.copy()
    np.bitwise_xor.accumulate(out[0], axis=0, out=out[0])
    np.bitwise_xor.accumulate(out, axis=0, out=out)
    return out


def encode(
    mask: np.ndarray, fill_value: float | None, coding: str | None = None
) -> tuple[dict[str, Any], bytes]:
    """(T, Z, Y, X) bool mask (True = valid) -> (header entry, section bytes).

    ``coding`` forces one of :data:`CODINGS`; default: the smaller.
    """
    rows = pack(mask)
    zc = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    options = {"bits": zc.compress(rows.tobytes()), "delta": zc.compress(delta(rows).tobytes())}
    if coding is None:
        coding = min(CODINGS, key=lambda c: len(options[c]))  # ties: "bits"
    fill = float(fill_value) if fill_value is not None and math.isfinite(fill_value) else None
    meta = {"valid": int(np.count_nonzero(mask)), "fill_value": fill, "coding": coding}
    return meta, options[coding]


@dataclass(frozen=True)
class Mask:
    """The mask of an opened file: validated header entry, bits decoded on first use."""

    shape4: tuple[int, int, int, int]
    valid: int
    fill_value: float | None
    coding: str
    data: bytes

    @classmethod
    def from_header(cls, meta: Any, sections: dict[str, bytes], shape4: tuple[int, ...]) -> Mask:
        """Check ``header["mask"]`` against the field; the bits are checked on first decode.

        Raises
        ------
        FormatError
            Not a mapping, a bad count, fill value or coding, or no ``mask`` section.
        """
        n = math.prod(shape4)
        if not isinstance(meta, dict):
            raise FormatError("corrupted header (mask entry is not a mapping)")
        valid, fill, coding = meta.get("valid"), meta.get("fill_value"), meta.get("coding")
        if type(valid) is not int or not 0 <= valid <= n:
            raise FormatError(f"corrupted header (mask valid = {valid!r} not in 0..{n})")
        if fill is not None and type(fill) not in (int, float):
            raise FormatError(f"corrupted header (mask fill_value = {fill!r})")
        if coding not in CODINGS:
            raise FormatError(f"corrupted header (mask coding = {coding!r})")
        if SECTION not in sections:
            raise FormatError(f"missing sections: {SECTION}")
        shape = tuple(int(s) for s in shape4)
        fill_value = float(fill) if fill is not None else None
        return cls(shape, valid, fill_value, coding, sections[SECTION])  # type: ignore[arg-type]

    @property
    def n_bytes(self) -> int:
        """Bytes of the packed rows (fixed by the shape): what decoding the mask holds."""
        return int(self.shape4[0]) * int(self.shape4[1]) * slab_bytes(self.shape4)

    def bits(self) -> np.ndarray:
        """The packed rows ``(T, Z, slab_bytes)``, checked against the header's count."""
        t, z, y, x = self.shape4
        raw = unzip_exact(self.data, self.n_bytes, SECTION)
        rows = np.frombuffer(raw, np.uint8).reshape(t, z, slab_bytes(self.shape4))
        if self.coding == "delta":
            rows = undelta(rows)
        tail = (y * x) % 8
        if tail and np.any(rows[:, :, -1] & ((1 << (8 - tail)) - 1)):
            raise FormatError("corrupted section 'mask' (bits set past the last voxel)")
        if int(np.bitwise_count(rows).sum(dtype=np.int64)) != self.valid:
            raise FormatError("corrupted section 'mask' (its count of valid voxels disagrees)")
        return rows

    def region(self, rows: np.ndarray, region: tuple[tuple[int, int], ...]) -> np.ndarray:
        """(region shape) bool, True = valid, from :meth:`bits`."""
        (t0, t1), (z0, z1), (y0, y1), (x0, x1) = region
        sub = rows[t0:t1, z0:z1]  # (t, z, slab_bytes)
        idx = (np.arange(y0, y1)[:, None] * self.shape4[3] + np.arange(x0, x1)[None, :]).ravel()
        shift = (7 - (idx & 7)).astype(np.uint8)
        out = (sub[:, :, idx >> 3] >> shift) & 1
        return out.astype(bool).reshape(t1 - t0, z1 - z0, y1 - y0, x1 - x0)


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
