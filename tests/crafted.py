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
