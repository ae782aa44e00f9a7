"""Typed payloads passed between pipeline stages (one per arrow of the pipeline).

read -> :class:`Volume` -> partition -> :class:`Blocks` -> cluster -> :class:`Assignment`
-> fit -> :class:`Fitted` -> encode/container -> ``.sinr`` bytes, and back for decode.

Payloads hold NumPy arrays only (torch stays inside fit and decode), are frozen, and check
their shapes when built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

COORD_DIM = 4  # (t, z, y, x) inside a block, each in [-1, 1]


@dataclass(frozen=True)
class NetShape:
    """Architecture shared by all networks of one file."""

    n_nets: int
    n_blocks: int
    latent_dim: int
    width: int
    depth: int  # hidden layers after the first one
    omega0: float

    def param_names(self) -> list[str]:
        names = ["w_in", "w_lat", "b_in"]
        for i in range(self.depth):
            names += [f"w_h{i}", f"b_h{i}"]
        return [*names, "w_out", "b_out"]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        n, w = self.n_nets, self.width
        shapes: dict[str, tuple[int, ...]] = {
            "w_in": (n, COORD_DIM, w),
            "w_lat": (n, self.latent_dim, w),
            "b_in": (n, 1, w),
        }
        for i in range(self.depth):
            shapes[f"w_h{i}"] = (n, w, w)
            shapes[f"b_h{i}"] = (n, 1, w)
        shapes["w_out"] = (n, w, 1)
        shapes["b_out"] = (n, 1, 1)
        return shapes

    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes().values())


@dataclass(frozen=True)
class Volume:
    """A field as sciinr sees it: always 4-D ``(t, z, y, x)``, float32.

    ``orig_shape`` and ``dims`` keep the caller's layout: a static (z, y, x) field becomes
    ``(1, z, y, x)``, a (t, y, x) field ``(t, 1, y, x)``, a (y, x) field ``(1, 1, y, x)``.

    ``mask`` (same shape as ``data``, True = valid) marks the voxels that hold data; None
    means every voxel does. Under the mask ``data`` holds the mean of the valid values (a
    finite, in-range filler): every stage must give masked voxels zero weight, and the value
    range, PSNR and errors are those of the valid voxels only. ``fill_value`` is the
    original's fill (``_FillValue``/``missing_value``), None for NaN or a masked array.
    """

    data: np.ndarray  # (T, Z, Y, X) float32, C-contiguous
    orig_shape: tuple[int, ...]
    dims: tuple[str, ...]
    has_time: bool  # axis 0 of orig_shape is time
    dtype: str = "float32"  # dtype of the original values ("float32" or "float64")
    variable: str = "data"
    attrs: dict[str, Any] = field(default_factory=dict)
    source: str = "<array>"
    mask: np.ndarray | None = None  # (T, Z, Y, X) bool, True = valid; None: all valid
    fill_value: float | None = None  # the original's fill value, when it had one
    # (start, stop) per original axis when only part of the source was read, and its shape
    selection: tuple[tuple[int, int], ...] | None = None
    source_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.data.ndim != 4 or self.data.dtype != np.float32:
            raise ValueError("Volume.data must be a 4-D float32 array")
        if len(self.dims) != len(self.orig_shape):
            raise ValueError("Volume.dims must name every axis of orig_shape")
        if int(np.prod(self.orig_shape)) != self.data.size:
            raise ValueError("Volume.orig_shape does not match data")
        if self.mask is not None and (
            self.mask.shape != self.data.shape or self.mask.dtype != np.bool_
        ):
            raise ValueError("Volume.mask must be a bool array of the shape of data")

    @property
    def n_valid(self) -> int:
        """Number of voxels that hold data."""
        return self.data.size if self.mask is None else int(np.count_nonzero(self.mask))

    @property
    def valid_values(self) -> np.ndarray:
        """The values of the valid voxels (all of ``data`` when there is no mask)."""
        return self.data if self.mask is None else self.data[self.mask]

    @property
    def value_range(self) -> tuple[float, float]:
        """(min, max) of the valid values; (0, 0) when no voxel is valid."""
        vals = self.valid_values
        if vals.size == 0:
            return 0.0, 0.0
        return float(vals.min()), float(vals.max())


@dataclass(frozen=True)
class BlockConstants:
    """Per-block value ranges on an integer grid: ``lo = base + lo_q * step`` (same for hi).

    ``lo`` is rounded down and ``hi`` up, so normalized values stay within [-1, 1]; the grid
    step is a fraction of the target RMS error, so the integers entropy-code to a few bits.
    """

    base: float
    step: float
    lo_q: np.ndarray  # (n_blocks,) int64
    hi_q: np.ndarray  # (n_blocks,) int64

    def __post_init__(self) -> None:
        if self.lo_q.shape != self.hi_q.shape or self.lo_q.ndim != 1:
            raise ValueError("BlockConstants: lo_q and hi_q must be 1-D of the same length")
        if not (self.step > 0 and np.isfinite(self.step) and np.isfinite(self.base)):
            raise ValueError("BlockConstants: step must be positive and finite")

    @property
    def lo(self) -> np.ndarray:
        """(n_blocks,) float32: the value mapped to -1."""
        return (self.base + self.lo_q.astype(np.float64) * self.step).astype(np.float32)

    @property
    def hi(self) -> np.ndarray:
        """(n_blocks,) float32: the value mapped to +1."""
        return (self.base + self.hi_q.astype(np.float64) * self.step).astype(np.float32)


@dataclass(frozen=True)
class Blocks:
    """Output of ``partition``; input of ``cluster`` and ``fit``.

    All blocks have the same shape ``block``; edge blocks are padded by repeating the edge.
    Block ``i`` covers grid cell ``np.unravel_index(i, grid)``. ``mask`` (fitted blocks only,
    edge-padded like ``values``) marks the voxels that hold data; None: all do. Masked
    voxels of ``values`` hold the block's mean and must get zero weight.
    """

    block: tuple[int, int, int, int]  # (bt, bz, by, bx)
    grid: tuple[int, int, int, int]  # blocks along t, z, y, x
    consts: BlockConstants  # per-block lo/hi
    trivial: np.ndarray  # (n_blocks,) bool: stored as the constant (lo + hi) / 2
    values: np.ndarray  # (n_fit, bt*bz*by*bx) float32 in [-1, 1], non-trivial blocks only
    shape4: tuple[int, int, int, int]  # the field's (T, Z, Y, X), before padding
    trivial_sse: float = 0.0  # squared error of the trivial blocks (original units, float64)
    mask: np.ndarray | None = None  # (n_fit, voxels per block) bool, True = valid
    n_valid: int | None = None  # valid voxels of the field (None: all of shape4)

    def __post_init__(self) -> None:
        n = int(np.prod(self.grid))
        if self.trivial.shape != (n,) or self.consts.lo_q.shape != (n,):
            raise ValueError(f"Blocks: trivial and consts need {n} entries")
        if self.values.shape != (self.n_fit, int(np.prod(self.block))):
            raise ValueError("Blocks.values must be (n_fit, voxels per block)")
        if self.mask is not None and self.mask.shape != self.values.shape:
            raise ValueError("Blocks.mask must have the shape of Blocks.values")

    @property
    def n_values(self) -> int:
        """Voxels the PSNR of the field averages over: the valid ones."""
        return int(np.prod(self.shape4)) if self.n_valid is None else self.n_valid

    @property
    def n_blocks(self) -> int:
        return int(np.prod(self.grid))

    @property
    def lo(self) -> np.ndarray:
        return self.consts.lo

    @property
    def hi(self) -> np.ndarray:
        return self.consts.hi

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
    consts: BlockConstants
    trivial: np.ndarray  # (n_blocks,) bool
    net: NetShape
    arrays: dict[str, np.ndarray]  # float32 parameters, "latents" included
    block_net: np.ndarray  # (n_fit,) int64

    def __post_init__(self) -> None:
        n = int(np.prod(self.grid))
        if not (self.consts.lo_q.shape == self.trivial.shape == (n,)):
            raise ValueError("Model: consts and trivial need one entry per block")
        n_fit = int((~self.trivial).sum())
        if self.block_net.shape != (n_fit,) or self.net.n_blocks != n_fit:
            raise ValueError("Model: block_net needs one entry per fitted block")
        if n_fit and (self.block_net.min() < 0 or self.block_net.max() >= self.net.n_nets):
            raise ValueError("Model: block_net refers to a network that does not exist")

    @cached_property
    def lo(self) -> np.ndarray:
        """(n_blocks,) float32, decoded once."""
        return self.consts.lo

    @cached_property
    def hi(self) -> np.ndarray:
        """(n_blocks,) float32, decoded once."""
        return self.consts.hi

    @classmethod
    def from_fit(
        cls, blocks: Blocks, fitted: Fitted, arrays: dict[str, np.ndarray] | None = None
    ) -> Model:
        return cls(
            shape4=blocks.shape4,
            block=blocks.block,
            grid=blocks.grid,
            consts=blocks.consts,
            trivial=blocks.trivial,
            net=fitted.shape,
            arrays=fitted.arrays if arrays is None else arrays,
            block_net=fitted.block_net,
        )


def dequantize_uniform(q: np.ndarray, offset: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantize_uniform` (float32 arithmetic, identical at both ends)."""
    return (offset[None, :] + q.astype(np.float32) * step[None, :]).astype(np.float32)


def dequantize_shared(codebook: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Weights from a codebook and indices (0 -> exactly zero)."""
    table = np.concatenate([np.zeros(1, np.float32), codebook.astype(np.float32)])
    return table[idx]


@dataclass(frozen=True)
class Shrunk:
    """Output of ``shrink``: pruned, weight-shared networks and uniformly quantized latents.

    ``indices[name]`` has the parameter's shape; 0 means an exact (pruned) zero and ``i > 0``
    means ``codebooks[name][i - 1]``. Latent codes are ``offset + q * step`` per dimension.
    ``codebooks`` is empty when the weights are kept as float16 (``bits = 0``, ``arrays`` used).
    """

    shape: NetShape
    codebooks: dict[str, np.ndarray]  # name -> (K,) float32
    indices: dict[str, np.ndarray]  # name -> int64, parameter-shaped, 0..K
    latent_q: np.ndarray  # (n_fit, latent_dim) int64
    latent_offset: np.ndarray  # (latent_dim,) float32
    latent_step: np.ndarray  # (latent_dim,) float32
    arrays: dict[str, np.ndarray]  # dequantized float32 parameters, exactly what decode uses
    block_net: np.ndarray  # (n_fit,) int64
    psnr: float  # of the whole field with these parameters
    sparsity: float  # fraction of prunable weights that are zero
    log: tuple[tuple[str, float, int], ...] = ()  # (step, PSNR, parameter count) per step
