"""Dask integration: lazy and parallel decoding, and compression spread over workers.

Only this module imports dask (``pip install sciinr[dask]``); the core never does. Tasks carry
plain values (a path, the bytes of a file, NumPy arrays), never torch objects, so they run on
threads, on a :class:`distributed.LocalCluster` or on a remote scheduler alike.

* :func:`to_dask` (``SinrArray.to_dask``): a :class:`dask.array.Array` whose chunks are region
  decodes of the file, along time and blocks;
* :func:`decode` (``sciinr decompress --workers N``): the same graph computed on N threads or on
  a cluster; the values are those of a serial decode up to float32 rounding;
* :func:`compress_field` (``sciinr compress --workers N | --scheduler ADDRESS``): the group
  tasks of :mod:`sciinr.stages.stream` mapped over a dask client.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from .errors import ConfigError

logger = logging.getLogger(__name__)

CHUNK_BYTES = 64 << 20  # default dask chunk: one block of time steps, at most this many bytes


def _dask() -> Any:
    try:
        import dask.array as da
    except ImportError:
        raise ConfigError(
            "dask is not installed: pip install 'sciinr[dask]' (dask[distributed])"
        ) from None
    return da


class RegionReader:
    """A picklable ``__getitem__`` over a ``.sinr`` file: what a dask task decodes from.

    Holds the file's path (or its bytes) and opens it once per process, on first use. It
    covers the region of the field that starts at ``offset`` and has ``shape``.
    """

    def __init__(
        self,
        source: Any,
        shape: tuple[int, ...],
        dtype: Any,
        device: str = "cpu",
        offset: tuple[int, ...] | None = None,
        variable: str | None = None,
    ):
        self.source = source
        self.variable = variable  # the field of a dataset file
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.device = device
        self.offset = tuple(offset) if offset is not None else (0,) * self.ndim
        self._arr: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arr": None}  # the opened file (with its model) stays here

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        if self._arr is None:
            from .api import SinrArray

            self._arr = SinrArray(self.source, device=self.device, variable=self.variable)
        moved = tuple(slice(o + k.start, o + k.stop) for o, k in zip(self.offset, key, strict=True))
        return self._arr[moved]


def default_chunks(arr: Any) -> tuple[int, ...]:
    """One block of time steps by the whole space, split along the first spatial axes (in
    multiples of the block) while a chunk holds more than :data:`CHUNK_BYTES`.

    A file without block networks (a whole-field base) is cut by the default block size.
    """
    model = arr.header.get("model")
    if isinstance(model, dict) and "block" in model:
        block4 = model["block"]
    else:
        from .config import PartitionConfig

        block4 = [min(b, s) for b, s in zip(PartitionConfig().block, arr._shape4, strict=True)]
    axes = arr._axes()  # internal axis of each original axis
    chunks = [block4[0] if (arr.has_time and i == 0) else n for i, n in enumerate(arr.shape)]
    for i in range(1 if arr.has_time else 0, arr.ndim):
        b = block4[axes[i]]
        while math.prod(chunks) * arr.dtype.itemsize > CHUNK_BYTES and chunks[i] > b:
            chunks[i] = max(b, (chunks[i] // 2) // b * b)
    return tuple(int(c) for c in chunks)


def _aligned(start: int, stop: int, size: int) -> tuple[int, ...]:
    """Chunk lengths covering [start, stop) with cuts at multiples of ``size``."""
    cuts = [start, *range((start // size + 1) * size, stop, size), stop]
    return tuple(b - a for a, b in itertools.pairwise(cuts))


def _lazy(arr: Any, region: list[tuple[int, int]], chunks: Any) -> Any:
    da = _dask()
    from dask.base import tokenize

    source = arr._bytes if arr._bytes is not None else arr.source
    device = "cpu" if arr.device == "auto" else arr.device
    shape = tuple(b - a for a, b in region)
    offset = tuple(a for a, _ in region)
    reader = RegionReader(source, shape, arr.dtype, device, offset, variable=arr.variable)
    name = "sciinr-" + tokenize(arr.source, arr.nbytes_file, repr(arr.header), region, chunks)
    return da.from_array(
        reader,
        chunks=chunks,
        lock=False,
        asarray=False,
        fancy=False,
        name=name,
        meta=_meta(arr),
    )


def _meta(arr: Any) -> np.ndarray:
    """dask's prototype of a chunk: a masked array for a file with missing values."""
    empty = np.empty((0,) * arr.ndim, arr.dtype)
    return np.ma.MaskedArray(empty) if arr.masked else empty


def to_dask(arr: Any, chunks: Any = None) -> Any:
    """A lazy dask array over an opened ``.sinr`` file.

    Parameters
    ----------
    arr : SinrArray
        The opened file; its path (or bytes) goes into the tasks, not the object.
    chunks : optional
        Any dask chunk specification; default :func:`default_chunks` (whole blocks, so no
        block is evaluated twice). Values equal ``arr[...]`` up to float32 rounding: torch's
        batched matrix-vector product (the networks' last layer) rounds differently with the
        number of blocks evaluated together.
    """
    chunks = default_chunks(arr) if chunks is None else chunks
    return _lazy(arr, [(0, n) for n in arr.shape], chunks)


def decode(
    arr: Any, key: Any = ..., *, workers: int = 1, scheduler: str | None = None
) -> np.ndarray:
    """``arr[key]`` decoded on ``workers`` threads (or on the cluster at ``scheduler``).

    The region is cut at multiples of :func:`default_chunks`, so every block is evaluated on
    the same voxels as by ``arr[key]``; the values equal a serial decode up to float32
    rounding (see :func:`to_dask`).
    """
    from .api import normalize_key

    keys = normalize_key(key, arr.shape)
    region, post = [], []
    for k in keys:
        if isinstance(k, int):
            region.append((k, k + 1))
            post.append(0)
        else:
            start, stop, step = k
            region.append((start, max(start, stop)))
            post.append(slice(None, None, step))
    size = default_chunks(arr)
    chunks = tuple(
        _aligned(a, b, c) if b > a else (0,) for (a, b), c in zip(region, size, strict=True)
    )
    lazy = _lazy(arr, region, chunks)
    if scheduler is not None:
        with client(scheduler=scheduler) as c:
            out = c.compute(lazy).result()
    else:
        out = lazy.compute(scheduler="threads", num_workers=max(1, int(workers)))
    if arr.masked:  # chunks are masked arrays: keep the mask and the file's fill value
        from .stages import mask

        out = np.ma.asanyarray(out)[tuple(post)]
        valid = ~np.ma.getmaskarray(out)
        return mask.contiguous(mask.apply(np.ma.getdata(out), valid, arr.fill_value), arr.dtype)
    return np.ascontiguousarray(np.asarray(out)[tuple(post)])


@contextlib.contextmanager
def client(
    workers: int | None = None, scheduler: str | None = None, processes: bool = True
) -> Iterator[Any]:
    """A dask.distributed client: a ``LocalCluster`` of ``workers`` single-threaded workers
    (processes, or threads of this process), or the cluster at ``scheduler``; closed on exit."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("dask.distributed is not installed: pip install 'sciinr[dask]'") from None
    if scheduler is not None:
        with Client(scheduler) as c:
            yield c
        return
    n = max(1, int(workers or 1))
    with (
        LocalCluster(
            n_workers=n, threads_per_worker=1, processes=processes, dashboard_address=None
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def mapper(c: Any) -> Any:
    """A ``map(fn, *iterables) -> list`` that runs every call as a task on client ``c``.

    An argument that is the same object in every call is scattered to the workers once.
    """

    def run(fn: Any, *iterables: Any) -> list[Any]:
        columns = []
        for it in iterables:
            items = list(it)
            if len(items) > 1 and all(x is items[0] for x in items):
                # one argument shared by every call (the model, the codebooks): sent once
                shared = c.scatter([items[0]], broadcast=True, hash=False)[0]
                items = [shared] * len(items)
            columns.append(items)
        return c.gather(c.map(fn, *columns, pure=False))

    return run
