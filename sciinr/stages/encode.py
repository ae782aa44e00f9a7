"""Encode stage: :class:`Model` <-> header metadata + named byte sections.

Sections (each zstd-compressed raw little-endian arrays):

- ``trivial``   packed bits, one per block (1 = stored as a constant)
- ``lo``, ``hi``  float32 per block: the values mapped to -1 and +1
- ``block_net`` uint16/uint32 per fitted block: the network that serves it
- ``params``    every network parameter, in :meth:`NetShape.param_names` order, float16
- ``latents``   float16 (n_fit, latent_dim)

Decoding derives every expected length from the (already validated) header before it
decompresses anything, and refuses a section whose length differs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import zstandard

from ..errors import FormatError
from ..nets import NetShape
from ..payloads import Model

ZSTD_LEVEL = 19
MAX_VALUES = 1 << 40  # largest field a header may describe
MAX_BLOCKS = 1 << 31
ZSTD_MAX_RATIO = 1 << 15  # largest expansion of a zstd frame (see _unzip)


def _zip(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)


def _unzip(data: bytes, n_bytes: int, what: str) -> bytes:
    # zstd blocks hold at most 128 KiB each behind a 3-byte header plus >= 1 byte of
    # content, so no frame expands more than 32768-fold: a larger claim is refused before
    # anything is allocated.
    if n_bytes > ZSTD_MAX_RATIO * len(data):
        raise FormatError(
            f"corrupted section {what!r} ({len(data)} bytes cannot hold {n_bytes} bytes)"
        )
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError:
        raise FormatError(f"corrupted section {what!r} (not a zstd frame)") from None
    if declared != n_bytes:
        holds = f"holds {declared} bytes" if declared >= 0 else "size not recorded"
        raise FormatError(f"corrupted section {what!r} ({holds}, expected {n_bytes} bytes)")
    try:
        raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=n_bytes)
    except zstandard.ZstdError:
        raise FormatError(f"corrupted section {what!r} (zstd stream does not decode)") from None
    if len(raw) != n_bytes:
        raise FormatError(f"corrupted section {what!r} ({len(raw)} bytes, expected {n_bytes})")
    return raw


def array_bytes(arr: np.ndarray) -> bytes:
    """A little-endian array, zstd-compressed."""
    return _zip(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())


def bytes_array(data: bytes, dtype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Inverse of :func:`array_bytes`, with the size fixed in advance by the caller."""
    dt = np.dtype(dtype).newbyteorder("<")
    n = math.prod(shape) * dt.itemsize
    return (
        np.frombuffer(_unzip(data, n, what), dtype=dt).reshape(shape).astype(dt.newbyteorder("="))
    )


def encode_model(model: Model) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Model -> (metadata for the header, sections)."""
    net = model.net
    idx_dtype = "uint16" if net.n_nets <= 1 << 16 else "uint32"
    meta = {
        "shape4": list(model.shape4),
        "block": list(model.block),
        "net": {
            "n_nets": net.n_nets,
            "n_blocks": net.n_blocks,
            "latent_dim": net.latent_dim,
            "width": net.width,
            "depth": net.depth,
            "omega0": net.omega0,
        },
        "block_net_dtype": idx_dtype,
        "params_dtype": "float16",
    }
    params = (
        np.concatenate([model.arrays[k].ravel() for k in net.param_names()])
        if net.n_nets
        else np.zeros(0, np.float32)
    )
    sections = {
        "trivial": _zip(np.packbits(model.trivial.astype(np.uint8)).tobytes()),
        "lo": array_bytes(model.lo.astype(np.float32)),
        "hi": array_bytes(model.hi.astype(np.float32)),
        "block_net": array_bytes(model.block_net.astype(idx_dtype)),
        "params": array_bytes(params.astype(np.float16)),
        "latents": array_bytes(model.arrays["latents"].astype(np.float16)),
    }
    return meta, sections


def _int(meta: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = meta.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise FormatError(f"corrupted header ({key} = {v!r} not in {lo}..{hi})")
    return v


def validate_meta(meta: Any) -> tuple[tuple[int, ...], tuple[int, ...], NetShape]:
    """Check the model metadata of a header; returns (shape4, block, net shape)."""
    if not isinstance(meta, dict):
        raise FormatError("corrupted header (no model description)")
    shape4, block = meta.get("shape4"), meta.get("block")
    for name, v in (("shape4", shape4), ("block", block)):
        if not (
            isinstance(v, list)
            and len(v) == 4
            and all(type(x) is int and 1 <= x <= 1 << 31 for x in v)
        ):
            raise FormatError(f"corrupted header ({name} = {v!r})")
    if math.prod(shape4) > MAX_VALUES or any(b > s for b, s in zip(block, shape4, strict=True)):
        raise FormatError(f"corrupted header (shape {shape4} with blocks {block})")
    n_blocks = math.prod(-(-s // b) for s, b in zip(shape4, block, strict=True))
    if n_blocks > MAX_BLOCKS:
        raise FormatError(f"corrupted header ({n_blocks} blocks)")
    net = meta.get("net")
    if not isinstance(net, dict):
        raise FormatError("corrupted header (no network description)")
    n_fit = _int(net, "n_blocks", 0, n_blocks)
    omega0 = net.get("omega0")
    shape = NetShape(
        n_nets=_int(net, "n_nets", 0, max(n_fit, 1)),
        n_blocks=n_fit,
        latent_dim=_int(net, "latent_dim", 0, 256),
        width=_int(net, "width", 1, 1024),
        depth=_int(net, "depth", 0, 16),
        omega0=float(omega0) if type(omega0) in (int, float) and 0 < omega0 <= 1000 else -1.0,
    )
    if shape.omega0 < 0:
        raise FormatError(f"corrupted header (omega0 = {omega0!r})")
    if (
        meta.get("block_net_dtype") not in ("uint16", "uint32")
        or meta.get("params_dtype") != "float16"
    ):
        raise FormatError("corrupted header (unknown section dtype)")
    return tuple(shape4), tuple(block), shape


def decode_model(meta: dict[str, Any], sections: dict[str, bytes]) -> Model:
    """(metadata, sections) -> Model; raises :class:`FormatError` on any inconsistency."""
    shape4, block, net = validate_meta(meta)
    grid = tuple(-(-s // b) for s, b in zip(shape4, block, strict=True))
    n_blocks = math.prod(grid)
    missing = {"trivial", "lo", "hi", "block_net", "params", "latents"} - set(sections)
    if missing:
        raise FormatError(f"missing sections: {', '.join(sorted(missing))}")
    bits = np.frombuffer(_unzip(sections["trivial"], -(-n_blocks // 8), "trivial"), np.uint8)
    trivial = np.unpackbits(bits)[:n_blocks].astype(bool)
    n_fit = int((~trivial).sum())
    if n_fit != net.n_blocks:
        raise FormatError(
            f"corrupted section 'trivial' ({n_fit} fitted blocks, header says {net.n_blocks})"
        )
    lo = bytes_array(sections["lo"], "float32", (n_blocks,), "lo")
    hi = bytes_array(sections["hi"], "float32", (n_blocks,), "hi")
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise FormatError("corrupted section 'lo'/'hi' (non-finite values)")
    block_net = bytes_array(
        sections["block_net"], meta["block_net_dtype"], (n_fit,), "block_net"
    ).astype(np.int64)
    if n_fit and (block_net.max() >= net.n_nets):
        raise FormatError("corrupted section 'block_net' (network index out of range)")
    shapes = net.param_shapes()
    flat = bytes_array(sections["params"], "float16", (net.n_params(),), "params")
    arrays: dict[str, np.ndarray] = {}
    pos = 0
    for name in net.param_names():
        size = math.prod(shapes[name])
        arrays[name] = flat[pos : pos + size].astype(np.float32).reshape(shapes[name])
        pos += size
    arrays["latents"] = bytes_array(
        sections["latents"], "float16", (n_fit, net.latent_dim), "latents"
    ).astype(np.float32)
    for name, arr in arrays.items():
        if not np.isfinite(arr).all():
            raise FormatError(f"corrupted section for {name!r} (non-finite values)")
    return Model(
        shape4=shape4,
        block=block,
        grid=grid,
        lo=lo,
        hi=hi,
        trivial=trivial,
        net=net,
        arrays=arrays,
        block_net=block_net,
    )
