"""Out-of-core read and partition: a field read from its file in slabs of whole blocks.

The in-memory stages (:mod:`.read`, :mod:`.partition`) hold the whole variable. Here the
variable stays in its file (HDF5 and NetCDF through h5py / netCDF4 slicing, ``.npy`` memory
mapped) and only boxes of whole blocks are read:

1. :func:`open_field` reads the metadata only (a :class:`Field`, picklable: it holds a path);
2. :func:`scan` is one streaming pass over slabs of at most a given size; its accumulators see
   every slab once. :class:`BlockStats` keeps each block's min and max, from which
   :func:`constants` derives the trivial flags and block constants exactly as
   :func:`.partition.partition` does. A whole-field level that needs statistics of the field
   (e.g. the Gram matrix of each unfolding for a Tucker basis) adds its own accumulator to the
   same pass;
3. :func:`plan_boxes` cuts the block grid into boxes (rectangles whose blocks are contiguous in
   block order) of at most a given number of blocks, and :func:`box_blocks` reads one box into
   :class:`~sciinr.payloads.Blocks` of its own (normalized exactly as the in-memory partition
   normalizes the same blocks).

Peak memory of a pass is one slab and its block copy, about ``8`` bytes per value of the slab.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..config import PartitionConfig
from ..errors import InputError
from ..payloads import BlockConstants, Blocks
from . import read as read_stage
from .partition import quantize_constants, to_blocks, valid_mask

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]
NORMALIZE_ROWS = 256  # blocks normalized at a time (bounds the float64 temporaries)


@dataclass(frozen=True)
class Field:
    """A variable left in its file: what :class:`~sciinr.payloads.Volume` says, without data.

    ``value_range`` is known after a :func:`scan` with :class:`BlockStats`.
    """

    source: str  # the file's path, or "<array>"
    kind: str  # "hdf5" | "netcdf" | "npy" | "array"
    variable: str
    orig_shape: tuple[int, ...]
    dims: tuple[str, ...]
    has_time: bool
    dtype: str
    shape4: tuple[int, int, int, int]
    attrs: dict[str, Any] = field(default_factory=dict)
    file_chunks: tuple[int, ...] | None = None  # HDF5/NetCDF-4 chunk shape (original axes)
    array: np.ndarray | None = None  # kind "array" only
    value_range: tuple[float, float] | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape4)

    def with_range(self, lo: float, hi: float) -> Field:
        return dataclasses.replace(self, value_range=(float(lo), float(hi)))

    @contextlib.contextmanager
    def reader(self, cache_bytes: int = 64 << 20) -> Iterator[Reader]:
        """Open the file once for many :meth:`Reader.read` calls (a chunk cache of this size)."""
        if self.kind == "hdf5":
            import h5py

            with h5py.File(self.source, "r", rdcc_nbytes=cache_bytes, rdcc_nslots=10007) as fh:
                yield Reader(self, fh[self.variable])
        elif self.kind == "netcdf":
            import netCDF4

            with netCDF4.Dataset(self.source, "r") as ds:
                yield Reader(self, ds.variables[self.variable])
        elif self.kind == "npy":
            yield Reader(self, np.load(self.source, mmap_mode="r", allow_pickle=False))
        else:
            yield Reader(self, self.array)


class Reader:
    """Reads boxes of an opened :class:`Field` as float32 ``(t, z, y, x)`` arrays."""

    def __init__(self, fld: Field, var: Any):
        self.field, self.var = fld, var

    def read(self, box: Box) -> np.ndarray:
        f = self.field
        n_sp = len(f.orig_shape) - (1 if f.has_time else 0)
        key = ([slice(*box[0])] if f.has_time else []) + [slice(*b) for b in box[4 - n_sp :]]
        try:
            with warnings.catch_warnings():  # netCDF4 warns while casting fill values
                warnings.simplefilter("ignore", RuntimeWarning)
                warnings.simplefilter("ignore", UserWarning)
                arr = self.var[tuple(key)]
        except (OSError, RuntimeError) as exc:
            raise InputError(
                f"{f.source}: variable {f.variable!r} cannot be read ({exc})"
            ) from None
        if np.ma.isMaskedArray(arr):
            if np.ma.count_masked(arr):
                raise InputError(
                    f"{f.source}: variable {f.variable!r} has missing (fill) values, which "
                    f"{_NO_MASKS}"
                )
            arr = np.asarray(arr.data)
        arr = np.asarray(arr)
        if not np.isfinite(arr).all():
            what = "infinite values" if np.isinf(arr).any() else f"NaN values, which {_NO_MASKS}"
            raise InputError(f"{f.source}: variable {f.variable!r} has {what}")
        if arr.dtype == np.float64 and arr.size and np.abs(arr).max() > np.finfo(np.float32).max:
            raise InputError(f"{f.source}: variable {f.variable!r} exceeds the float32 range")
        return np.ascontiguousarray(arr, dtype=np.float32).reshape([b - a for a, b in box])


_NO_MASKS = (
    "out-of-core compression (streaming, workers) cannot mask yet; compress it in memory "
    "(without --memory-limit/--group-values/--workers/--scheduler) to keep them as a mask"
)


def open_field(
    source: Any,
    var: str | None = None,
    time_dim: str | None = None,
    dims: tuple[str, ...] | None = None,
) -> Field:
    """The metadata of one variable, as :func:`.read.read` would read it, without its values.

    Raises
    ------
    InputError
        As :func:`.read.read`: missing or unreadable file, unknown variable, bad dtype/shape.
    """
    if isinstance(source, np.ndarray):
        names = dims or read_stage._default_dims(source.ndim)
        return _field(source, "<array>", "array", "data", names, {}, time_dim, None, None)
    mod = type(source).__module__
    if mod.startswith("h5py"):  # an open dataset: stream it from its file
        source, var = source.file.filename, source.name
    elif mod.startswith("netCDF4"):
        source, var = source.group().filepath(), source.name
    if not isinstance(source, str | os.PathLike):
        raise InputError(
            f"cannot read a {type(source).__name__}: give a path, array, h5py dataset "
            "or netCDF4 variable"
        )
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a file")
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic.startswith(read_stage.NPY_MAGIC):
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        names = read_stage._default_dims(arr.ndim)
        return _field(arr, str(path), "npy", var or path.stem, names, {}, time_dim, None, None)
    nc = magic.startswith(read_stage.NETCDF3_MAGICS) or (
        magic == read_stage.HDF5_MAGIC and path.suffix.lower() in read_stage.NETCDF_SUFFIXES
    )
    if nc:
        return _netcdf_field(path, var, time_dim)
    if magic == read_stage.HDF5_MAGIC:
        return _hdf5_field(path, var, time_dim)
    raise InputError(f"{path}: not an HDF5, NetCDF or .npy file (unknown magic bytes)")


def _hdf5_field(path: Path, var: str | None, time_dim: str | None) -> Field:
    import h5py

    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: unreadable HDF5 file ({exc})") from None
    with fh:
        ds = read_stage.hdf5_dataset(fh, path, var)
        labels = [d.label for d in ds.dims]
        dims = tuple(lbl if lbl else f"dim{i}" for i, lbl in enumerate(labels))
        attrs = read_stage._clean_attrs(dict(ds.attrs))
        return _field(
            ds, str(path), "hdf5", ds.name.lstrip("/"), dims, attrs, time_dim, None, ds.chunks
        )


def _netcdf_field(path: Path, var: str | None, time_dim: str | None) -> Field:
    import netCDF4

    try:
        ds = netCDF4.Dataset(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: unreadable NetCDF file ({exc.strerror or exc})") from None
    with ds:
        var = read_stage.netcdf_variable(ds, path, var)
        v = ds.variables[var]
        packed = "scale_factor" in v.ncattrs() or "add_offset" in v.ncattrs()
        attrs = read_stage._clean_attrs({k: v.getncattr(k) for k in v.ncattrs()})
        dtype = v.dtype
        if packed:
            attrs["sciinr_unpacked_from"] = str(v.dtype)
            dtype = np.dtype(np.float64 if v.dtype == np.float64 else np.float32)
        chunking = v.chunking()
        chunks = tuple(chunking) if isinstance(chunking, list) else None
        proxy = _Meta(tuple(v.shape), dtype)
        hint = read_stage.nc_time_hint(v)
        return _field(
            proxy, str(path), "netcdf", var, tuple(v.dimensions), attrs, time_dim, hint, chunks
        )


@dataclass(frozen=True)
class _Meta:
    shape: tuple[int, ...]
    dtype: Any


def _field(
    arr: Any,
    path: str,
    kind: str,
    name: str,
    dims: tuple[str, ...],
    attrs: dict[str, Any],
    time_dim: str | None,
    time_hint: str | None,
    chunks: Any,
) -> Field:
    read_stage._check_dtype(arr.dtype, path, name)
    shape = tuple(int(s) for s in arr.shape)
    read_stage._check_shape(shape, path, name)
    dims = tuple(dims) if len(dims) == len(shape) else read_stage._default_dims(len(shape))
    has_time = read_stage._time_axis(dims, shape, time_dim, time_hint, path, name)
    spatial = shape[1:] if has_time else shape
    if len(spatial) > 3:
        raise InputError(
            f"{path}: variable {name!r} has {len(spatial)} spatial dimensions; "
            "sciinr takes 1 to 3 besides time"
        )
    t = shape[0] if has_time else 1
    shape4 = (t, *((1,) * (3 - len(spatial))), *spatial)
    return Field(
        source=path,
        kind=kind,
        variable=name,
        orig_shape=shape,
        dims=dims,
        has_time=has_time,
        dtype=str(np.dtype(arr.dtype)),
        shape4=shape4,  # type: ignore[arg-type]
        attrs=attrs,
        file_chunks=tuple(int(c) for c in chunks) if chunks else None,
        array=arr if kind == "array" else None,
    )


# ----------------------------------------------------------------------------- plans


def plan_boxes(grid: tuple[int, ...], max_blocks: int) -> list[Box]:
    """Cut the block grid into boxes of at most ``max_blocks`` blocks (at least one row).

    A box spans whole rows of the grid: one cell on the leading axes, a range on one axis and
    the full extent of the axes after it, so its blocks are contiguous in block (C) order and
    the boxes, in order, list every block once. Boxes along the cut axis differ by at most one.
    """
    max_blocks = max(1, int(max_blocks))
    axis = 3
    for a in range(4):
        if math.prod(grid[a + 1 :]) <= max_blocks:
            axis = a
            break
    row = math.prod(grid[axis + 1 :])
    n_cut = -(-grid[axis] // max(1, max_blocks // row))  # boxes along the cut axis
    edges = [round(i * grid[axis] / n_cut) for i in range(n_cut + 1)]
    boxes: list[Box] = []
    for prefix in np.ndindex(*grid[:axis]):
        for a, b in _pairs(edges):
            box = [(int(p), int(p) + 1) for p in prefix] + [(a, b)]
            box += [(0, int(g)) for g in grid[axis + 1 :]]
            boxes.append(tuple(box))  # type: ignore[arg-type]
    return boxes


def _pairs(edges: list[int]) -> Iterator[tuple[int, int]]:
    for a, b in itertools.pairwise(edges):
        if b > a:
            yield a, b


def voxel_box(cells: Box, block: tuple[int, ...], shape4: tuple[int, ...]) -> Box:
    """The voxels of a box of grid cells, clipped to the field."""
    return tuple(  # type: ignore[return-value]
        (a * b, min(e * b, s)) for (a, e), b, s in zip(cells, block, shape4, strict=True)
    )


def block_ids(cells: Box, grid: tuple[int, ...]) -> range:
    """Global ids of the blocks of a box made by :func:`plan_boxes` (a contiguous range)."""
    first = int(np.ravel_multi_index(tuple(a for a, _ in cells), grid))
    return range(first, first + math.prod(e - a for a, e in cells))


# ----------------------------------------------------------------------------- pass


class Accumulator(Protocol):
    def add(self, cells: Box, voxels: Box, data: np.ndarray) -> None: ...


class BlockStats:
    """Min and max of every block (float64 of the float32 values), as the partition takes them."""

    def __init__(self, grid: tuple[int, ...], block: tuple[int, ...]):
        n = math.prod(grid)
        self.grid, self.block = grid, block
        self.lo = np.full(n, np.inf)
        self.hi = np.full(n, -np.inf)

    def add(self, cells: Box, voxels: Box, data: np.ndarray) -> None:
        flat = to_blocks(data, self.block)
        ids = block_ids(cells, self.grid)
        self.lo[ids.start : ids.stop] = flat.min(axis=1)
        self.hi[ids.start : ids.stop] = flat.max(axis=1)


def scan(
    fld: Field,
    block: tuple[int, ...],
    slab_values: int,
    accumulators: list[Any],
) -> None:
    """One pass over the field in slabs of whole blocks (at most ``slab_values`` values, at
    least one row of blocks); every accumulator's ``add`` sees each slab once, in block order."""
    grid = tuple(-(-s // b) for s, b in zip(fld.shape4, block, strict=True))
    per_block = math.prod(block)
    with fld.reader(cache_bytes(fld)) as r:
        for cells in plan_boxes(grid, slab_values // per_block):
            voxels = voxel_box(cells, block, fld.shape4)
            data = r.read(voxels)
            for acc in accumulators:
                acc.add(cells, voxels, data)
            del data


CACHE_CHUNKS = 16  # file chunks kept decompressed (a slab that cuts chunks reads each once)
CACHE_MAX = 64 << 20


def cache_bytes(fld: Field) -> int:
    """HDF5 chunk cache of a reader: :data:`CACHE_CHUNKS` file chunks, at most 64 MB."""
    if not fld.file_chunks:
        return 1 << 20
    chunk = math.prod(fld.file_chunks) * np.dtype(fld.dtype).itemsize
    return int(min(CACHE_MAX, max(1 << 20, CACHE_CHUNKS * chunk)))


def constants(
    stats: BlockStats, cfg: PartitionConfig, tolerance: float
) -> tuple[BlockConstants, np.ndarray]:
    """Block constants and trivial flags, as :func:`.partition.partition` computes them."""
    trivial = (stats.hi - stats.lo) / 2 <= cfg.trivial_fraction * tolerance
    return quantize_constants(stats.lo, stats.hi, cfg.const_step * tolerance), trivial


def box_blocks(
    data: np.ndarray,
    block: tuple[int, ...],
    consts: BlockConstants,
    trivial: np.ndarray,
) -> Blocks:
    """:class:`Blocks` of one box (``data`` its voxels; ``consts``, ``trivial`` its blocks).

    Values, constants and the trivial blocks' error are those the in-memory partition gives the
    same blocks; ``shape4`` is the box's, so errors and PSNR are measured over the box.
    """
    shape4 = tuple(int(s) for s in data.shape)
    grid = tuple(-(-s // b) for s, b in zip(shape4, block, strict=True))
    flat = to_blocks(data, block)
    del data  # the caller passes its only reference: peak 3 copies (voxels, padded, blocks)
    lo, hi = consts.lo, consts.hi
    fit_ids = np.flatnonzero(~trivial)
    values = np.empty((len(fit_ids), flat.shape[1]), np.float32)
    for s in range(0, len(fit_ids), NORMALIZE_ROWS):  # elementwise: same values as one pass
        ids = fit_ids[s : s + NORMALIZE_ROWS]
        lo_f = lo[ids, None].astype(np.float64)
        scale = (hi[ids, None].astype(np.float64) - lo_f) / 2
        values[s : s + len(ids)] = np.clip((flat[ids] - lo_f) / scale - 1.0, -1.0, 1.0)
    triv = np.flatnonzero(trivial)
    sse = 0.0
    if len(triv):  # the partition's expression, in place: the same values, one float64 copy
        mid = (lo[triv, None].astype(np.float64) + hi[triv, None]) / 2
        err = np.empty((len(triv), flat.shape[1]))
        for s in range(0, len(triv), NORMALIZE_ROWS):
            err[s : s + NORMALIZE_ROWS] = (
                flat[triv[s : s + NORMALIZE_ROWS]] - mid[s : s + NORMALIZE_ROWS]
            )
        err **= 2
        err *= valid_mask(shape4, block, triv)
        sse = float(err.sum())
        del err
    return Blocks(
        block=tuple(block),  # type: ignore[arg-type]
        grid=grid,  # type: ignore[arg-type]
        consts=consts,
        trivial=trivial,
        values=values,
        shape4=shape4,  # type: ignore[arg-type]
        trivial_sse=sse,
    )
