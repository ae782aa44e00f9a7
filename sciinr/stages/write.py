"""Write stage: bytes or a decoded array -> a file, atomically.

Every output is written to a temporary file in the destination directory (created with the
usual permissions, i.e. 0666 minus the umask, or the mode of the file it replaces), flushed
to disk (fsync), renamed over the destination (``os.replace``) and the directory is synced,
so a crash, Ctrl-C or SIGTERM never leaves a half-written file under the destination's name.
An existing destination is replaced only when ``overwrite`` is true. A SIGKILL in the
milliseconds of the final write can leave a hidden ``.NAME.XXXXXXXX.tmp`` file beside the
destination, never a partial destination.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputError

logger = logging.getLogger(__name__)

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
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists (use --overwrite / overwrite=True to replace)")
    if path.exists() and not path.is_file():
        raise OutputError(f"{path}: exists and is not a regular file")
    parent = _parent(path)
    if not parent.is_dir():
        raise OutputError(f"{path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: directory {parent} is not writable")


def check_array_destination(path: Path, overwrite: bool) -> None:
    """:func:`check_destination` plus a known array suffix (``.npy``, ``.h5``, ``.nc``)."""
    check_destination(path, overwrite)
    _array_kind(Path(path))


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


@contextlib.contextmanager
def atomic_path(path: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    On any exception (``KeyboardInterrupt`` included) the temporary file is removed and
    ``path`` is left as it was.
    """
    path = Path(path)
    check_destination(path, overwrite)
    parent = _parent(path)
    try:
        mode = path.stat().st_mode & 0o7777 if path.exists() else None
        tmp_path = parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
        if mode is not None:
            os.chmod(tmp_path, mode)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create a file in {parent} ({exc.strerror})") from None
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp_path, path)
        else:
            _publish_new(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise
    _sync_directory(parent)


def _publish_new(tmp_path: Path, path: Path) -> None:
    """Give ``tmp_path`` the name ``path`` only if no file has that name yet.

    A hard link fails when the name exists, atomically, so of two writers racing for one new
    name exactly one succeeds (a rename would let the second silently replace the first).
    Where the file system has no hard links, the name is reserved with ``O_EXCL`` first.
    """
    taken = OutputError(
        f"{path}: already exists (another process wrote it meanwhile; use --overwrite / "
        "overwrite=True to replace)"
    )
    try:
        os.link(tmp_path, path)
    except FileExistsError:
        raise taken from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
            raise
        try:  # no hard links here: reserve the name, then move the file over the reservation
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise taken from None
        os.replace(tmp_path, path)
        return
    tmp_path.unlink()


def refuse_same_file(source: object, out: Path) -> None:
    """An output must never replace its own input (same file, whatever the path says)."""
    if not isinstance(source, str | os.PathLike):
        return
    same = False
    with contextlib.suppress(OSError):
        same = Path(out).exists() and Path(source).samefile(out)
    if same:
        raise OutputError(f"{out}: is the input file; choose another output")


def _sync_directory(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: Path, data: bytes, overwrite: bool = False) -> Path:
    """Write bytes atomically.

    Raises
    ------
    OutputError
        ``path`` exists (and not ``overwrite``), its directory is missing or unwritable,
        or the write fails (e.g. disk full).
    """
    path = Path(path)
    try:
        with atomic_path(path, overwrite) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path


def write_array(
    path: Path,
    array: np.ndarray,
    *,
    variable: str = "data",
    dims: tuple[str, ...] | None = None,
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
    fill_value: float | None = None,
) -> Path:
    """Write a decoded array to ``.npy``, HDF5 (``.h5``) or NetCDF (``.nc``) with dims and attrs.

    A ``numpy.ma.MaskedArray`` is written with its masked values set to ``fill_value`` (NaN
    when None), declared as the variable's ``_FillValue`` in HDF5 and NetCDF; ``.npy`` gets
    NaN.
    """
    path = Path(path)
    kind = _array_kind(path)
    dims = (
        tuple(dims)
        if dims and len(dims) == array.ndim
        else tuple(f"dim{i}" for i in range(array.ndim))
    )
    fill = None
    if np.ma.isMaskedArray(array):
        fill = np.asarray(np.nan if fill_value is None else fill_value, array.dtype)
        array = np.ma.filled(array, np.nan if kind == "npy" else fill)
    writer: Callable[[Path], None] = {
        "npy": lambda p: _write_npy(p, array),
        "hdf5": lambda p: _write_h5(p, array, variable, dims, attrs or {}, fill),
        "netcdf": lambda p: _write_nc(p, array, variable, dims, attrs or {}, fill),
    }[kind]
    try:
        with atomic_path(path, overwrite) as tmp:
            writer(tmp)
    except (OSError, RuntimeError) as exc:  # h5py and netCDF4 report failures as these
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"{path}: cannot write {kind} output ({exc})") from None
    return path


def _array_kind(path: Path) -> str:
    kind = ARRAY_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise OutputError(
            f"{path}: unknown output type {path.suffix!r} "
            f"(use one of {', '.join(sorted(ARRAY_SUFFIXES))})"
        )
    return kind


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def _write_h5(
    path: Path,
    array: np.ndarray,
    variable: str,
    dims: tuple[str, ...],
    attrs: dict[str, Any],
    fill: np.ndarray | None = None,
) -> None:
    import h5py

    name = "/".join(p for p in variable.split("/") if p not in ("", ".", "..")) or "data"
    with h5py.File(path, "w") as fh:
        ds = fh.create_dataset(name, data=array, compression="gzip", shuffle=True)
        if fill is not None:
            ds.attrs["_FillValue"] = fill
        for i, name in enumerate(dims):
            ds.dims[i].label = name
        for k, v in attrs.items():
            try:
                ds.attrs[k] = v
            except (TypeError, ValueError, RuntimeError, KeyError, OSError) as exc:
                logger.warning("%s: attribute %r not written (%s)", path, k, exc)


def _write_nc(
    path: Path,
    array: np.ndarray,
    variable: str,
    dims: tuple[str, ...],
    attrs: dict[str, Any],
    fill: np.ndarray | None = None,
) -> None:
    import netCDF4

    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        for name, size in zip(dims, array.shape, strict=True):
            ds.createDimension(name, size)
        var = ds.createVariable(
            variable.replace("/", "_"), array.dtype, dims, zlib=True, fill_value=fill
        )
        for k, v in attrs.items():
            if k.startswith("_"):
                continue
            try:
                var.setncattr(k, v)
            except (TypeError, ValueError, AttributeError, RuntimeError, KeyError) as exc:
                logger.warning("%s: attribute %r not written (%s)", path, k, exc)
        var[...] = array
