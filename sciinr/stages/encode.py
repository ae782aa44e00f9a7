"""Encode stage: :class:`Model` (+ :class:`Shrunk`) <-> header metadata + named byte sections.

Integer streams go through :mod:`sciinr.stages.entropy` (ANS or zstd, whichever is smaller);
float arrays are little-endian and zstd-compressed. Sections:

==============  ==============================================================================
``trivial``     packed bits, one per block (1 = stored as a constant)
``const_lo``    per block, integer ``lo_q``: ``lo = base + lo_q * step`` (base, step in header)
``const_span``  per block, ``hi_q - lo_q``
``block_net``   per fitted block, the network that serves it
``codebooks``   float16 centroids of every parameter tensor, concatenated (sizes in header)
``idx_<name>``  per parameter tensor, indices into ``[0, *codebook]`` (0 = pruned zero)
``latent_q``    per fitted block and latent dimension, uniform quantization integers
``latent_scale`` float32 ``offset`` then ``step`` per latent dimension
``params``      (``params_dtype = float16`` only) every parameter, float16, in name order
``latents``     (``params_dtype = float16`` only) float16 latent codes
==============  ==============================================================================

Decoding derives every expected count from the (already validated) header before it decodes
anything and refuses a section whose content disagrees.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import zstandard

from ..errors import FormatError
from ..nets import NetShape
from ..payloads import BlockConstants, Model, Shrunk, dequantize_shared, dequantize_uniform
from . import budget
from .container import header_float as _float
from .container import header_int as _int
from .entropy import ZSTD_LEVEL, decode_ints, encode_ints, unzip_exact

MAX_VALUES = 1 << 40  # largest field a header may describe
MAX_BLOCKS = 1 << 31
MAX_CODEBOOK = 1 << 12


def _zip(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)


def array_bytes(arr: np.ndarray) -> bytes:
    """A little-endian array, zstd-compressed."""
    return _zip(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())


def bytes_array(data: bytes, dtype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Inverse of :func:`array_bytes`, with the size fixed in advance by the caller."""
    dt = np.dtype(dtype).newbyteorder("<")
    n = math.prod(shape) * dt.itemsize
    return (
        np.frombuffer(unzip_exact(data, n, what), dtype=dt)
        .reshape(shape)
        .astype(dt.newbyteorder("="))
    )


def encode_model(
    model: Model, shrunk: Shrunk | None = None
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Model -> (metadata for the header, sections).

    With ``shrunk`` (weight-shared networks) the indices, codebooks and quantized latents are
    stored; without it (``shrink.bits = 0``), every parameter as float16. Integer streams
    take the smaller of ANS and zstd (:func:`~sciinr.stages.entropy.encode_ints`).
    """
    net = model.net
    meta: dict[str, Any] = {
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
        "consts": {"base": model.consts.base, "step": model.consts.step},
    }
    c = model.consts
    sections = {
        "trivial": _zip(np.packbits(model.trivial.astype(np.uint8)).tobytes()),
        "const_lo": encode_ints(c.lo_q),
        "const_span": encode_ints(c.hi_q - c.lo_q),
        "block_net": encode_ints(model.block_net),
    }
    names = net.param_names()
    if shrunk is not None and shrunk.codebooks:
        meta["params_dtype"] = "shared"
        meta["codebook_sizes"] = [int(shrunk.codebooks[n].size) for n in names]
        meta["latent_bits"] = int(max(1, int(shrunk.latent_q.max(initial=0))).bit_length())
        meta["sparsity"] = shrunk.sparsity
        sections["codebooks"] = array_bytes(
            np.concatenate([shrunk.codebooks[n] for n in names]).astype(np.float16)
        )
        for n in names:
            sections[f"idx_{n}"] = encode_ints(shrunk.indices[n])
        sections["latent_q"] = encode_ints(shrunk.latent_q)
        sections["latent_scale"] = array_bytes(
            np.concatenate([shrunk.latent_offset, shrunk.latent_step]).astype(np.float32)
        )
    else:
        meta["params_dtype"] = "float16"
        params = (
            np.concatenate([model.arrays[k].ravel() for k in names])
            if net.n_nets
            else np.zeros(0, np.float32)
        )
        sections["params"] = array_bytes(params.astype(np.float16))
        sections["latents"] = array_bytes(model.arrays["latents"].astype(np.float16))
    return meta, sections


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
    shape = NetShape(
        n_nets=_int(net, "n_nets", 0, max(n_fit, 1)),
        n_blocks=n_fit,
        latent_dim=_int(net, "latent_dim", 0, 256),
        width=_int(net, "width", 1, 1024),
        depth=_int(net, "depth", 0, 16),
        omega0=_float(net, "omega0"),
    )
    if not 0 < shape.omega0 <= 1000:
        raise FormatError("corrupted header (omega0)")
    consts = meta.get("consts")
    if not isinstance(consts, dict) or not _float(consts, "step") > 0:
        raise FormatError("corrupted header (block constants)")
    _float(consts, "base")
    kind = meta.get("params_dtype")
    if kind not in ("float16", "shared"):
        raise FormatError(f"corrupted header (unknown parameter encoding {kind!r})")
    if kind == "shared":
        sizes = meta.get("codebook_sizes")
        if not (
            isinstance(sizes, list)
            and len(sizes) == len(shape.param_names())
            and all(type(k) is int and 0 <= k <= MAX_CODEBOOK for k in sizes)
        ):
            raise FormatError("corrupted header (codebook sizes)")
        _int(meta, "latent_bits", 1, 16)
    return tuple(shape4), tuple(block), shape


def describe(meta: dict[str, Any], net: NetShape, sizes: dict[str, int]) -> dict[str, Any]:
    """``sciinr.info`` entries of the networks of a file (``meta`` checked by validate_meta).

    ``sizes`` are the file's section sizes; the networks' own sections (parameters,
    codebooks, latents) give ``bits_per_parameter``.
    """
    n_params = net.n_params() + net.n_blocks * net.latent_dim
    own = [*(f"idx_{n}" for n in net.param_names()), "codebooks", "latent_q", "latent_scale"]
    own += ["params", "latents"]
    net_bytes = sum(sizes.get(k, 0) for k in own)
    return {
        "networks": net.n_nets,
        "fitted_blocks": net.n_blocks,
        "block": meta.get("block"),
        "parameters": n_params,
        "parameter_encoding": meta.get("params_dtype"),
        "sparsity": meta.get("sparsity", 0.0),
        "bits_per_parameter": 8 * net_bytes / max(n_params, 1),
        "architecture": {
            "width": net.width,
            "depth": net.depth,
            "latent_dim": net.latent_dim,
            "omega0": net.omega0,
        },
    }


def _need(sections: dict[str, bytes], names: list[str]) -> None:
    missing = set(names) - set(sections)
    if missing:
        raise FormatError(f"missing sections: {', '.join(sorted(missing))}")


def decode_model(
    meta: dict[str, Any], sections: dict[str, bytes], n_bytes: int | None = None
) -> Model:
    """(metadata, sections) -> Model; raises :class:`FormatError` on any inconsistency.

    ``n_bytes`` is the size of the file the model comes from: the arrays its header implies
    must fit that file's decode budget (:func:`~sciinr.stages.budget.check_model`), checked
    before any of them is allocated. ``None`` (the encoder checking its own output) skips it.
    """
    shape4, block, net = validate_meta(meta)
    grid = tuple(-(-s // b) for s, b in zip(shape4, block, strict=True))
    n_blocks = math.prod(grid)
    if n_bytes is not None:
        budget.check_model(n_blocks, net, n_bytes)
    _need(sections, ["trivial", "const_lo", "const_span", "block_net"])
    bits = np.frombuffer(unzip_exact(sections["trivial"], -(-n_blocks // 8), "trivial"), np.uint8)
    trivial = np.unpackbits(bits)[:n_blocks].astype(bool)
    n_fit = int((~trivial).sum())
    if n_fit != net.n_blocks:
        raise FormatError(
            f"corrupted section 'trivial' ({n_fit} fitted blocks, header says {net.n_blocks})"
        )
    lo_q = decode_ints(sections["const_lo"], n_blocks, "const_lo")
    span = decode_ints(sections["const_span"], n_blocks, "const_span")
    if n_blocks and span.min() < 0:
        raise FormatError("corrupted section 'const_span' (negative span)")
    consts = BlockConstants(
        base=float(meta["consts"]["base"]),
        step=float(meta["consts"]["step"]),
        lo_q=lo_q,
        hi_q=lo_q + span,
    )
    lo, hi = consts.lo, consts.hi
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise FormatError("corrupted section 'const_lo' (values outside float32)")
    block_net = decode_ints(sections["block_net"], n_fit, "block_net")
    if n_fit and (block_net.min() < 0 or block_net.max() >= net.n_nets):
        raise FormatError("corrupted section 'block_net' (network index out of range)")
    names = net.param_names()
    shapes = net.param_shapes()
    if meta["params_dtype"] == "float16":
        arrays = _decode_float16(sections, net, names, shapes)
    else:
        arrays = _decode_shared(meta, sections, net, names, shapes)
    for name, arr in arrays.items():
        if not np.isfinite(arr).all():
            raise FormatError(f"corrupted section for {name!r} (non-finite values)")
    return Model(
        shape4=shape4,
        block=block,
        grid=grid,
        consts=consts,
        trivial=trivial,
        net=net,
        arrays=arrays,
        block_net=block_net,
    )


def _decode_float16(sections, net, names, shapes) -> dict[str, np.ndarray]:
    _need(sections, ["params", "latents"])
    flat = bytes_array(sections["params"], "float16", (net.n_params(),), "params")
    arrays: dict[str, np.ndarray] = {}
    pos = 0
    for name in names:
        size = math.prod(shapes[name])
        arrays[name] = flat[pos : pos + size].astype(np.float32).reshape(shapes[name])
        pos += size
    arrays["latents"] = bytes_array(
        sections["latents"], "float16", (net.n_blocks, net.latent_dim), "latents"
    ).astype(np.float32)
    return arrays


def _decode_shared(meta, sections, net, names, shapes) -> dict[str, np.ndarray]:
    _need(sections, ["codebooks", "latent_q", "latent_scale", *[f"idx_{n}" for n in names]])
    sizes = meta["codebook_sizes"]
    flat = bytes_array(sections["codebooks"], "float16", (sum(sizes),), "codebooks").astype(
        np.float32
    )
    arrays: dict[str, np.ndarray] = {}
    pos = 0
    for name, k in zip(names, sizes, strict=True):
        cb = flat[pos : pos + k]
        pos += k
        idx = decode_ints(sections[f"idx_{name}"], math.prod(shapes[name]), f"idx_{name}")
        if idx.size and (idx.min() < 0 or idx.max() > k):
            raise FormatError(f"corrupted section 'idx_{name}' (index outside its codebook)")
        arrays[name] = dequantize_shared(cb, idx.reshape(shapes[name]))
    n, d = net.n_blocks, net.latent_dim
    q = decode_ints(sections["latent_q"], n * d, "latent_q").reshape(n, d)
    if q.size and (q.min() < 0 or q.max() >= 1 << meta["latent_bits"]):
        raise FormatError("corrupted section 'latent_q' (value outside its bit width)")
    scale = bytes_array(sections["latent_scale"], "float32", (2 * d,), "latent_scale")
    arrays["latents"] = dequantize_uniform(q, scale[:d], scale[d:])
    return arrays
