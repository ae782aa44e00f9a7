"""Typed payloads passed between pipeline stages (one per arrow of the pipeline).

read -> :class:`Volume` -> partition -> :class:`Blocks` -> cluster -> :class:`Assignment`
-> fit -> :class:`Fitted` -> encode/container -> ``.sinr`` bytes, and back for decode.

Payloads hold NumPy arrays only (torch stays inside fit and decode), are frozen, and check
their shapes when built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .nets import NetShape


@dataclass(frozen=True)
class Volume:
    """A field as sciinr sees it: always 4-D ``(t, z, y, x)``, float32.

    ``orig_shape`` and ``dims`` keep the caller's layout: a static (z, y, x) field becomes
    ``(1, z, y, x)``, a (t, y, x) field ``(t, 1, y, x)``, a (y, x) field ``(1, 1, y, x)``.
    """

    data: np.ndarray  # (T, Z, Y, X) float32, C-contiguous
    orig_shape: tuple[int, ...]
    dims: tuple[str, ...]
    has_time: bool  # axis 0 of orig_shape is time
    dtype: str = "float32"  # dtype of the original values ("float32" or "float64")
    variable: str = "data"
    attrs: dict[str, Any] = field(default_factory=dict)
    source: str = "<array>"

    def __post_init__(self) -> None:
        if self.data.ndim != 4 or self.data.dtype != np.float32:
            raise ValueError("Volume.data must be a 4-D float32 array")
        if len(self.dims) != len(self.orig_shape):
            raise ValueError("Volume.dims must name every axis of orig_shape")
        if int(np.prod(self.orig_shape)) != self.data.size:
            raise ValueError("Volume.orig_shape does not match data")

    @property
    def value_range(self) -> tuple[float, float]:
        return float(self.data.min()), float(self.data.max())


@dataclass(frozen=True)
class Blocks:
    """Output of ``partition``; input of ``cluster`` and ``fit``.

    All blocks have the same shape ``block``; edge blocks are padded by repeating the edge.
    Block ``i`` covers grid cell ``np.unravel_index(i, grid)``.
    """

    block: tuple[int, int, int, int]  # (bt, bz, by, bx)
    grid: tuple[int, int, int, int]  # blocks along t, z, y, x
    lo: np.ndarray  # (n_blocks,) float32: value mapped to -1
    hi: np.ndarray  # (n_blocks,) float32: value mapped to +1
    trivial: np.ndarray  # (n_blocks,) bool: stored as the constant (lo + hi) / 2
    values: np.ndarray  # (n_fit, bt*bz*by*bx) float32 in [-1, 1], non-trivial blocks only
    shape4: tuple[int, int, int, int]  # the field's (T, Z, Y, X), before padding
    trivial_sse: float = 0.0  # squared error of the trivial blocks (original units, float64)

    def __post_init__(self) -> None:
        n = int(np.prod(self.grid))
        for name in ("lo", "hi", "trivial"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"Blocks.{name} must have shape ({n},)")
        if self.values.shape != (self.n_fit, int(np.prod(self.block))):
            raise ValueError("Blocks.values must be (n_fit, voxels per block)")

    @property
    def n_blocks(self) -> int:
        return int(np.prod(self.grid))

    @property
    def fit_ids(self) -> np.ndarray:
        """Indices (into all blocks) of the blocks that need a network, ``(n_fit,)``."""
        return np.flatnonzero(~self.trivial)

    @property
    def n_fit(self) -> int:
        return int((~self.trivial).sum())

    @property
    def half_range(self) -> np.ndarray:
        """(hi - lo) / 2 per block: one normalized unit in original units."""
        return (self.hi.astype(np.float64) - self.lo) / 2


@dataclass(frozen=True)
class Assignment:
    """Output of ``cluster``: which network serves which fitted block."""

    block_net: np.ndarray  # (n_fit,) int64: network of each fitted block
    slots: np.ndarray  # (n_nets, blocks_per_net) int64: fitted-block ids, padded by repeats

    def __post_init__(self) -> None:
        if self.slots.ndim != 2:
            raise ValueError("Assignment.slots must be 2-D")

    @property
    def n_nets(self) -> int:
        return int(self.slots.shape[0])


@dataclass(frozen=True)
class Fitted:
    """Output of ``fit``: trained parameters of all networks plus what they reached."""

    shape: NetShape
    arrays: dict[str, np.ndarray]  # parameter name -> float32 array, "latents" included
    block_net: np.ndarray  # (n_fit,) int64
    psnr: float  # PSNR of the whole field as decoded from these parameters
    steps: int
    seconds: float


@dataclass(frozen=True)
class Model:
    """Everything decoding needs: the block layout, the block constants and the networks.

    Built from :class:`Blocks` + :class:`Fitted` when compressing, and from a ``.sinr`` file's
    sections when decompressing.
    """

    shape4: tuple[int, int, int, int]  # (T, Z, Y, X) of the field
    block: tuple[int, int, int, int]
    grid: tuple[int, int, int, int]
    lo: np.ndarray  # (n_blocks,) float32
    hi: np.ndarray  # (n_blocks,) float32
    trivial: np.ndarray  # (n_blocks,) bool
    net: NetShape
    arrays: dict[str, np.ndarray]  # float32 parameters, "latents" included
    block_net: np.ndarray  # (n_fit,) int64

    def __post_init__(self) -> None:
        n = int(np.prod(self.grid))
        if not (self.lo.shape == self.hi.shape == self.trivial.shape == (n,)):
            raise ValueError("Model: lo, hi and trivial need one entry per block")
        n_fit = int((~self.trivial).sum())
        if self.block_net.shape != (n_fit,) or self.net.n_blocks != n_fit:
            raise ValueError("Model: block_net needs one entry per fitted block")
        if n_fit and (self.block_net.min() < 0 or self.block_net.max() >= self.net.n_nets):
            raise ValueError("Model: block_net refers to a network that does not exist")

    @classmethod
    def from_fit(cls, blocks: Blocks, fitted: Fitted) -> Model:
        return cls(
            shape4=blocks.shape4,
            block=blocks.block,
            grid=blocks.grid,
            lo=blocks.lo,
            hi=blocks.hi,
            trivial=blocks.trivial,
            net=fitted.shape,
            arrays=fitted.arrays,
            block_net=fitted.block_net,
        )
