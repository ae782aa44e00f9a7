"""Hostile ``.sinr`` files: tiny files whose headers declare huge decodes.

Each file is well formed (valid JSON, every CRC right, every section present) and small
(a few kB); its header declares counts that the format's coders can carry in a few bytes
(constant streams, ANS runs from an empty state, zstd frames that expand 32768-fold) and that
would cost gigabytes or minutes to decode. The decode budget (``sciinr/stages/budget.py``)
must refuse each when it is opened. Used by ``tests/stages/test_budget.py`` and as seeds of
``benchmarks/fuzz.py``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
import zstandard

from sciinr.nets import NetShape
from sciinr.stages import container

_HEAD = struct.Struct("<BiI")  # integer stream: method, min, alphabet (docs/format.md, 7.2)


def _zip(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=19).compress(raw)


def constant_stream(value: int = 0) -> bytes:
    """An integer stream of any length, every value ``value`` (9 bytes)."""
    return _HEAD.pack(2, value, 1)


def ans_stream() -> bytes:
    """An ANS integer stream (alphabet 2) with no words: any count of zeros (26 bytes)."""
    table = _zip(np.array([65535, 1], "<u2").tobytes())
    return _HEAD.pack(1, 0, 2) + struct.pack("<I", len(table)) + table


def _header(shape4: list[int], block: list[int], net: NetShape, kind: str) -> dict:
    model = {
        "shape4": shape4,
        "block": block,
        "net": {
            "n_nets": net.n_nets,
            "n_blocks": net.n_blocks,
            "latent_dim": net.latent_dim,
            "width": net.width,
            "depth": net.depth,
            "omega0": net.omega0,
        },
        "consts": {"base": 0.0, "step": 1.0},
        "params_dtype": kind,
    }
    if kind == "shared":
        model["codebook_sizes"] = [1] * len(net.param_names())
        model["latent_bits"] = 1
        model["sparsity"] = 0.0
    return {
        "sciinr": "crafted",
        "variable": "v",
        "dims": ["time", "z", "y", "x"],
        "shape": shape4,
        "has_time": True,
        "dtype": "float32",
        "attrs": {},
        "source": "crafted",
        "value_range": [0.0, 1.0],
        "psnr": None,
        "config": {},
        "model": model,
    }


def _model_sections(n_blocks: int, net: NetShape, kind: str) -> dict[str, bytes]:
    """Sections of a model whose fitted blocks come first and whose streams are cheap."""
    bits = np.ones(n_blocks, np.uint8)
    bits[: net.n_blocks] = 0
    sections = {
        "trivial": _zip(np.packbits(bits).tobytes()),
        "const_lo": constant_stream(),
        "const_span": constant_stream(),
        "block_net": constant_stream(),
    }
    if kind == "shared":
        sections["codebooks"] = _zip(np.zeros(len(net.param_names()), "<f2").tobytes())
        for name in net.param_names():
            sections[f"idx_{name}"] = ans_stream()
        sections["latent_q"] = ans_stream()
        sections["latent_scale"] = _zip(np.ones(2 * net.latent_dim, "<f4").tobytes())
    else:
        sections["params"] = _zip(bytes(2 * net.n_params()))
        sections["latents"] = _zip(bytes(2 * net.n_blocks * net.latent_dim))
    return sections


def model_file(shape4: list[int], block: list[int], net: NetShape, kind: str) -> bytes:
    """A well-formed file holding only a model of this shape."""
    n_blocks = int(np.prod([-(-s // b) for s, b in zip(shape4, block, strict=True)]))
    return container.pack(_header(shape4, block, net, kind), _model_sections(n_blocks, net, kind))


def _net(n_nets: int, n_blocks: int, latent: int = 0, width: int = 1, depth: int = 0) -> NetShape:
    return NetShape(
        n_nets=n_nets, n_blocks=n_blocks, latent_dim=latent, width=width, depth=depth, omega0=30.0
    )


def huge_block_count() -> bytes:
    """2**26 blocks of one voxel, all constant: trivial bits and constant streams, ~1 kB."""
    return model_file([1, 512, 512, 256], [1, 1, 1, 1], _net(0, 0), "float16")


def huge_ans_latents() -> bytes:
    """2**18 fitted blocks x 256 latent dimensions from ANS streams of 26 bytes."""
    return model_file([1, 1, 512, 512], [1, 1, 1, 1], _net(1, 1 << 18, latent=256), "shared")


def huge_ans_parameters() -> bytes:
    """64 networks of width 512, depth 16 (268 M weights) from 26-byte ANS streams."""
    net = _net(64, 64, width=512, depth=16)
    return model_file([1, 1, 8, 8], [1, 1, 1, 1], net, "shared")


def wide_deep_network() -> bytes:
    """One network of width 1024 and depth 16 (16.8 M float16 weights in a 1-2 kB frame)."""
    return model_file([1, 1, 1, 4], [1, 1, 1, 1], _net(1, 1, width=1024, depth=16), "float16")


CASES: dict[str, Callable[[], bytes]] = {
    "huge_block_count": huge_block_count,
    "huge_ans_latents": huge_ans_latents,
    "huge_ans_parameters": huge_ans_parameters,
    "wide_deep_network": wide_deep_network,
}


# ------------------------------------------------------------------ residual layers

_INDEX = np.dtype(  # one record per residual chunk (sciinr/stages/residual.py)
    [
        ("words", "<u4"),
        ("method", "u1"),
        ("group", "u1"),
        ("transform", "u1"),
        ("width", "u1"),
        ("escapes", "<u4"),
        ("exact", "<u4"),
    ]
)


def claiming_frame(n_bytes: int) -> bytes:
    """A 15-byte zstd frame header and block that claims ``n_bytes`` of content."""
    magic = struct.pack("<I", 0xFD2FB528)
    fhd = bytes([0xE0])  # 8-byte content size, single segment (no window descriptor)
    block = bytes([0x03, 0x00, 0x00]) + b"\x00"  # last block, RLE, 0 bytes (a lie)
    return magic + fhd + struct.pack("<Q", n_bytes) + block


def residual_file(shape4: list[int], chunk: list[int], index: bytes) -> bytes:
    """One constant block and a residual layer of all-zero chunks with this index section."""
    net = _net(0, 0)
    header = _header(shape4, list(shape4), net, "float16")
    n_chunks = int(np.prod([-(-s // c) for s, c in zip(shape4, chunk, strict=True)]))
    header["residual"] = {
        "version": 1,
        "predict": "float64",
        "max_error": 0.5,
        "step": 1.0,
        "chunk": chunk,
        "chunks": n_chunks,
        "alphabet_half": 1,
        "groups": 1,
        "exact_voxels": 0,
        "mode": "max_error",
    }
    sections = _model_sections(1, net, "float16")
    sections.update(
        {
            "residual_index": index,
            "residual_tables": _zip(bytes(4)),
            "residual_codes": b"",
            "residual_escapes": _zip(b""),
            "residual_exact": _zip(b""),
        }
    )
    return container.pack(header, sections)


def residual_frame_claims_a_tebibyte() -> bytes:
    """A residual index frame whose header claims 1 TiB of content (15 bytes)."""
    return residual_file([1, 1, 4, 4], [1, 1, 4, 4], claiming_frame(1 << 40))


def residual_many_chunks() -> bytes:
    """2**24 chunks of one voxel, every chunk zero: a real index frame of ~8 kB."""
    n = 1 << 24
    return residual_file([1, 256, 256, 256], [1, 1, 1, 1], _zip(np.zeros(n, _INDEX).tobytes()))


def residual_many_chunks_short_index() -> bytes:
    """2**24 chunks declared, an index frame far too short to hold their records."""
    return residual_file(
        [1, 256, 256, 256], [1, 1, 1, 1], _zip(np.zeros(1 << 16, _INDEX).tobytes())
    )


def residual_huge_chunk() -> bytes:
    """One chunk of 2**28 voxels whose ANS code has no words (it decodes to 2**28 symbols)."""
    record = np.zeros(1, _INDEX)
    record["method"] = 1  # ANS, 0 words
    return residual_file([1, 512, 512, 1024], [1, 512, 512, 1024], _zip(record.tobytes()))


CASES.update(
    {
        "residual_huge_chunk": residual_huge_chunk,
        "residual_frame_claims_a_tebibyte": residual_frame_claims_a_tebibyte,
        "residual_many_chunks": residual_many_chunks,
        "residual_many_chunks_short_index": residual_many_chunks_short_index,
    }
)
