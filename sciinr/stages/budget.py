"""The decode budget: what opening and decoding a ``.sinr`` file may cost (docs/format.md, 8).

A file from a stranger must never cost more memory or time than a documented function of its
size and of the output asked for. The counts a header declares (blocks, fitted blocks,
parameters, latents, residual chunks) fix the size of every array a decoder builds, and the
coders of format 1.0 can carry huge counts in a few bytes (a constant stream carries any
count in 9 bytes; an ANS stack decodes runs of its lowest symbol from an empty state for
free; a zstd frame expands up to 32768-fold), so the bytes alone do not bound them. The rule:

1. **Every stream is checked against the bytes that carry it** before it is decoded: a zstd
   frame must record its content size, that size must be the one the header implies, and it
   may be at most :data:`ZSTD_MAX_RATIO` times the frame's length (:func:`check_frame`).
2. **The arrays a header implies must fit the file's allowance**
   :func:`allowance` = ``128 MiB + 64 × file size`` bytes. :func:`model_bytes` and
   :func:`residual_bytes` are upper estimates of what decoding the model, and the residual
   layer's index and largest chunk, hold at their peak; a file whose estimate exceeds its
   allowance is refused with a ``FormatError`` when it is opened, before any of those arrays
   exists.
3. **The output is the caller's choice** and is bounded separately: a decode of *n* values
   needs at most :func:`output_bytes` (the result, its float64 prediction, casts) and is
   refused with an ``InputError`` when that exceeds the memory available.

So a decode holds at most ``allowance(file size) + output_bytes(n)`` bytes, and its work is
linear in that memory plus the network evaluations of the voxels asked for (``n × width² ×
(depth + 1)`` multiply-adds at most).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from ..errors import FormatError

if TYPE_CHECKING:
    from ..nets import NetShape

BASE = 128 << 20  # bytes every file may cost, whatever its size (a default residual chunk)
PER_FILE_BYTE = 64  # more bytes per byte of file
ZSTD_MAX_RATIO = 1 << 15  # largest expansion of a zstd frame (see check_frame)
# peak bytes held while a model decodes, per unit (measured with tracemalloc, with margin):
PER_BLOCK = 64  # trivial bit + byte, lo_q, span, hi_q (int64), lo, hi (float32), temporaries
PER_FITTED = 24  # block_net (int64), its index on the decode device, temporaries
PER_LATENT = 24  # quantized int64 + float32 latent + temporaries, per fitted block and dim
PER_PARAM = 24  # float32 parameter, its folded copy, the int64 indices it is decoded from
PER_CHUNK = 192  # residual index record (16 bytes), chunk sizes and offsets, temporaries
PER_CHUNK_VOXEL = 48  # a residual chunk decodes whole: codes, symbols, float64 residual
PER_OUTPUT_VALUE = 32  # float32 result + float64 prediction + float64 residual + final cast


def allowance(n_bytes: int) -> int:
    """Bytes a file of ``n_bytes`` may cost to open and decode, besides its output."""
    return BASE + PER_FILE_BYTE * max(0, int(n_bytes))


def model_bytes(n_blocks: int, net: NetShape) -> int:
    """Upper estimate of the bytes decoding a model of this shape holds at its peak."""
    return (
        PER_BLOCK * n_blocks
        + (PER_FITTED + PER_LATENT * net.latent_dim) * net.n_blocks
        + PER_PARAM * net.n_params()
    )


def residual_bytes(n_chunks: int, chunk_voxels: int) -> int:
    """Upper estimate of the bytes a residual layer holds: its index and one decoded chunk.

    A region decode decodes each chunk it touches whole, one chunk at a time.
    """
    return PER_CHUNK * n_chunks + PER_CHUNK_VOXEL * chunk_voxels


def check_residual(n_chunks: int, chunk: tuple[int, ...], n_bytes: int) -> None:
    """:func:`check` for a residual layer (before its index is decompressed)."""
    voxels = math.prod(chunk)
    what = f"a residual layer of {n_chunks} chunks of {voxels} voxels"
    check(residual_bytes(n_chunks, voxels), n_bytes, what)


def check(need: int, n_bytes: int, what: str) -> None:
    """Refuse ``what`` (``FormatError``) when ``need`` bytes exceed the file's allowance."""
    if need > allowance(n_bytes):
        raise FormatError(
            f"corrupted header ({what} would need {need / 1e6:.0f} MB to decode, more than "
            f"a {n_bytes}-byte file may cost: {allowance(n_bytes) / 1e6:.0f} MB)"
        )


def check_model(n_blocks: int, net: NetShape, n_bytes: int) -> None:
    """:func:`check` for the model arrays (before any of them exists)."""
    what = (
        f"a model of {n_blocks} blocks and {net.n_nets} networks of width {net.width}, "
        f"depth {net.depth}"
    )
    check(model_bytes(n_blocks, net), n_bytes, what)


def check_frame(n_frame: int, n_out: int, what: str) -> None:
    """A zstd frame of ``n_frame`` bytes cannot hold more than 32768 × that.

    zstd blocks hold at most 128 KiB each behind a 3-byte header plus >= 1 byte of content,
    so no frame expands more than 32768-fold: a larger claim is refused before anything is
    allocated.
    """
    if n_out > ZSTD_MAX_RATIO * n_frame:
        raise FormatError(f"corrupted section {what!r} ({n_frame} bytes cannot hold {n_out} bytes)")


def output_bytes(n_values: int, itemsize: int) -> int:
    """Upper estimate of the bytes a decode of ``n_values`` values holds besides the model."""
    return n_values * (PER_OUTPUT_VALUE + itemsize)


def available_memory() -> int:
    """Bytes of memory a decode may use now (``MemAvailable``; else physical memory)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 1 << 62


def n_values(region: tuple[tuple[int, int], ...]) -> int:
    """Values in a region given as (start, stop) per axis."""
    return math.prod(max(0, b - a) for a, b in region)
