"""Write stage: bytes or a decoded array -> a file, atomically.

Every output is written to a temporary file in the destination directory, flushed to disk
(fsync) and renamed over the destination, so a crash or Ctrl-C never leaves a half-written
file. An existing destination is replaced only when ``overwrite`` is true.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputError

ARRAY_SUFFIXES = {
    ".npy": "npy",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".he5": "hdf5",
    ".nc": "netcdf",
    ".nc4": "netcdf",
}


def check_destination(path: Path, overwrite: bool) -> None:
    """Fail early (before any work) when ``path`` cannot be written."""
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists (use --overwrite / overwrite=True to replace)")
    if path.is_dir():
        raise OutputError(f"{path}: is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: directory {parent} is not writable")


@contextlib.contextmanager
def atomic_path(path: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    check_destination(path, overwrite)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp"
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def write_bytes(path: Path, data: bytes, overwrite: bool = False) -> Path:
    """Write bytes atomically."""
    with atomic_path(Path(path), overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_array(
    path: Path,
    array: np.ndarray,
    *,
    variable: str = "data",
    dims: tuple[str, ...] | None = None,
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a decoded array to ``.npy``, HDF5 (``.h5``) or NetCDF (``.nc``) with dims and attrs."""
    path = Path(path)
    kind = ARRAY_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise OutputError(
            f"{path}: unknown output type {path.suffix!r} "
            f"(use one of {', '.join(sorted(ARRAY_SUFFIXES))})"
        )
    dims = (
        tuple(dims)
        if dims and len(dims) == array.ndim
        else tuple(f"dim{i}" for i in range(array.ndim))
    )
    writer: Callable[[Path], None] = {
        "npy": lambda p: _write_npy(p, array),
        "hdf5": lambda p: _write_h5(p, array, variable, dims, attrs or {}),
        "netcdf": lambda p: _write_nc(p, array, variable, dims, attrs or {}),
    }[kind]
    with atomic_path(path, overwrite) as tmp:
        writer(tmp)
    return path


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def _write_h5(
    path: Path, array: np.ndarray, variable: str, dims: tuple[str, ...], attrs: dict[str, Any]
) -> None:
    import h5py

    with h5py.File(path, "w") as fh:
        ds = fh.create_dataset(variable, data=array, compression="gzip", shuffle=True)
        for i, name in enumerate(dims):
            ds.dims[i].label = name
        for k, v in attrs.items():
            with contextlib.suppress(TypeError, ValueError):
                ds.attrs[k] = v


def _write_nc(
    path: Path, array: np.ndarray, variable: str, dims: tuple[str, ...], attrs: dict[str, Any]
) -> None:
    import netCDF4

    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        for name, size in zip(dims, array.shape, strict=True):
            ds.createDimension(name, size)
        var = ds.createVariable(variable.replace("/", "_"), array.dtype, dims, zlib=True)
        for k, v in attrs.items():
            if k.startswith("_"):
                continue
            with contextlib.suppress(TypeError, ValueError, AttributeError):
                var.setncattr(k, v)
        var[...] = array
