"""Read stage: a file (HDF5, NetCDF, ``.npy``) or an array -> :class:`~sciinr.payloads.Volume`.

Only the variable asked for is read. The time axis comes from the file's dimension names
(or ``time_dim``); it must be the first axis. Values must be float32/float64 (NetCDF
variables packed as integers with ``scale_factor``/``add_offset`` are unpacked).

Missing values become the volume's mask (stored losslessly, never fitted): the mask of a
``numpy.ma.MaskedArray`` (what netCDF4 returns for a variable with ``_FillValue``,
``missing_value`` or ``valid_range``), values equal to an HDF5 dataset's ``_FillValue`` or
``missing_value`` attribute, and NaN. ±Inf is refused: it is neither a value nor a
declared missing value.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..payloads import Volume

logger = logging.getLogger(__name__)

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
NETCDF3_MAGICS = (b"CDF\x01", b"CDF\x02", b"CDF\x05")
NPY_MAGIC = b"\x93NUMPY"
NETCDF3_HEADER_MAX = 64 << 20  # bytes of a NetCDF-3 header read to check the file size
_NC_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 4, 6: 8, 7: 1, 8: 2, 9: 4, 10: 8, 11: 8}
NETCDF_SUFFIXES = {".nc", ".nc4", ".cdf", ".netcdf"}
TIME_NAMES = {
    "time",
    "t",
    "times",
    "month",
    "months",
    "step",
    "steps",
    "timestep",
    "time_step",
    "frame",
    "frames",
    "record",
    "date",
    "day",
    "days",
    "year",
    "years",
}
_SKIP_ATTRS = {
    "DIMENSION_LIST",
    "REFERENCE_LIST",
    "CLASS",
    "NAME",
    "DIMENSION_LABELS",
    "_Netcdf4Dimid",
    "_Netcdf4Coordinates",
    "_FillValue",
    "scale_factor",
    "add_offset",
    "missing_value",
    "_Unsigned",
    "valid_range",
    "valid_min",
    "valid_max",
}


@dataclass(frozen=True)
class Select:
    """Part of a field to read: a range of time steps and a crop of the spatial axes.

    ``time`` is ``(start, stop)`` along the time axis (None: to the end); ``crop`` is one
    ``(start, stop)`` per spatial axis, in the file's order. Negative values count from the end.
    """

    time: tuple[int | None, int | None] | None = None
    crop: tuple[tuple[int | None, int | None], ...] | None = None

    def slices(
        self, shape: tuple[int, ...], has_time: bool, where: str
    ) -> tuple[slice, ...] | None:
        """One slice per axis, or None when nothing is selected."""
        if self.time is None and self.crop is None:
            return None
        n_sp = len(shape) - (1 if has_time else 0)
        out = [slice(None)] * len(shape)
        if self.time is not None:
            if not has_time:
                raise InputError(f"{where}: a time range was given but the field has no time axis")
            out[0] = slice(*self.time)
        if self.crop is not None:
            if len(self.crop) != n_sp:
                raise InputError(
                    f"{where}: the crop gives {len(self.crop)} ranges for {n_sp} spatial axes"
                )
            for i, (a, b) in enumerate(self.crop):
                out[len(shape) - n_sp + i] = slice(a, b)
        for axis, (sl, n) in enumerate(zip(out, shape, strict=True)):
            start, stop, _ = sl.indices(n)
            if stop <= start:
                raise InputError(
                    f"{where}: the selection {sl.start}:{sl.stop} of axis {axis} (size {n}) "
                    "is empty"
                )
            out[axis] = slice(start, stop)
        return tuple(out)


def parse_range(text: str) -> tuple[int | None, int | None]:
    """``"3:10"`` -> ``(3, 10)``; ``":5"`` -> ``(None, 5)``; ``"4"`` -> ``(4, 5)``."""
    try:
        if ":" not in text:
            i = int(text)
            return (i, i + 1 if i != -1 else None)
        a, b = text.split(":")
        return (int(a) if a.strip() else None, int(b) if b.strip() else None)
    except ValueError:
        raise InputError(f"bad range {text!r}: use START:STOP, e.g. 0:3") from None


def parse_crop(text: str) -> tuple[tuple[int | None, int | None], ...]:
    """``"0:10,5:20,:"`` -> one (start, stop) per spatial axis."""
    return tuple(
        parse_range(part.strip()) if part.strip() != ":" else (None, None)
        for part in text.split(",")
    )


def read(
    source: Any,
    var: str | None = None,
    time_dim: str | None = None,
    dims: tuple[str, ...] | None = None,
    select: Select | None = None,
) -> Volume:
    """Read one field into a :class:`Volume`.

    Parameters
    ----------
    source : str, Path, numpy.ndarray, h5py.Dataset or netCDF4.Variable
        Where the field is.
    var : str, optional
        Dataset path (HDF5) or variable name (NetCDF). Optional when the file holds one field.
    time_dim : str, optional
        Name of the time dimension; ``"none"`` for a static field. Default: from dimension names.
    dims : tuple of str, optional
        Axis names for an array or ``.npy`` source.
    select : Select, optional
        Read only these time steps / this crop (the header records the selection).

    Raises
    ------
    InputError
        Missing file, unreadable file, unknown variable, bad dtype/shape, or non-finite values.
    """
    if isinstance(source, np.ndarray):  # a numpy.ma.MaskedArray included
        names = dims or _default_dims(source.ndim)
        return _to_volume(source, "<array>", "data", names, {}, time_dim, None, select=select)
    mod = type(source).__module__
    if mod.startswith("h5py"):
        path = getattr(source.file, "filename", "<h5py>")
        return _from_h5_dataset(source, path, time_dim, select)
    if mod.startswith("netCDF4"):
        return _from_nc_variable(source, source.group().filepath(), time_dim, select)
    if isinstance(source, str | os.PathLike):
        return read_path(Path(source), var, time_dim, dims, select)
    raise InputError(
        f"cannot read a {type(source).__name__}: give a path, array, h5py dataset "
        "or netCDF4 variable"
    )


def regular_file(path: Path, what: str = "a file") -> os.stat_result:
    """``stat`` of a path that must be a regular file, else a one-line :class:`InputError`.

    Checked before the file is opened: opening a named pipe blocks until a writer appears,
    and a device may never end.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{path}: too many levels of symbolic links (a link loop)") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise InputError(f"{path}: no such file") from None
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a directory, not {what}")
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a named pipe (FIFO)"
            if stat.S_ISFIFO(st.st_mode)
            else "a socket"
            if stat.S_ISSOCK(st.st_mode)
            else "a device"
        )
        raise InputError(f"{path}: is {kind}, not a regular file")
    return st


def read_path(
    path: Path,
    var: str | None,
    time_dim: str | None,
    dims: tuple[str, ...] | None = None,
    select: Select | None = None,
) -> Volume:
    """Read a field from a file path (format detected from the magic bytes)."""
    regular_file(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(8)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    if magic.startswith(NPY_MAGIC):
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f"{path}: unreadable .npy file ({exc})") from None
        names = tuple(dims) if dims else _default_dims(arr.ndim)
        if len(names) != arr.ndim:
            raise InputError(f"{path}: {len(names)} dims given for a {arr.ndim}-D array")
        return _to_volume(
            arr, str(path), var or path.stem, names, {}, time_dim, None, select=select
        )
    if magic.startswith(NETCDF3_MAGICS):
        _check_netcdf3_size(path)
        return _read_netcdf(path, var, time_dim, select)
    if magic == HDF5_MAGIC and path.suffix.lower() in NETCDF_SUFFIXES:
        return _read_netcdf(path, var, time_dim, select)
    if magic == HDF5_MAGIC:
        return _read_hdf5(path, var, time_dim, select)
    raise InputError(f"{path}: not an HDF5, NetCDF or .npy file (unknown magic bytes)")


def _default_dims(ndim: int) -> tuple[str, ...]:
    return {1: ("x",), 2: ("y", "x"), 3: ("z", "y", "x"), 4: ("time", "z", "y", "x")}.get(
        ndim, tuple(f"dim{i}" for i in range(ndim))
    )


def _read_hdf5(
    path: Path, var: str | None, time_dim: str | None, select: Select | None = None
) -> Volume:
    import h5py

    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: unreadable HDF5 file ({exc})") from None
    with fh:
        fields: list[str] = []
        try:
            fh.visititems(
                lambda name, obj: (
                    fields.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim >= 2 else None
                )
            )
        except (OSError, RuntimeError, KeyError) as exc:
            raise InputError(f"{path}: unreadable HDF5 file ({exc})") from None
        if var is None:
            if len(fields) != 1:
                raise InputError(
                    f"{path}: {len(fields)} candidate datasets, choose one with "
                    f"--var (has: {', '.join(fields) or 'none'})"
                )
            var = fields[0]
        try:
            obj = fh.get(var)
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise InputError(f"{path}: variable {var!r} cannot be read ({exc})") from None
        if isinstance(obj, h5py.Group):
            raise InputError(
                f"{path}: {var!r} is a group, not a dataset (has: "
                f"{', '.join(fields) or 'no multi-dimensional datasets'})"
            )
        if not isinstance(obj, h5py.Dataset):
            raise InputError(
                f"{path}: variable {var!r} not found (has: "
                f"{', '.join(fields) or 'no multi-dimensional datasets'})"
            )
        return _from_h5_dataset(obj, str(path), time_dim, select)


def _from_h5_dataset(
    ds: Any, path: str, time_dim: str | None, select: Select | None = None
) -> Volume:
    name = (ds.name or "data").lstrip("/")
    if ds.shape is None:
        raise InputError(f"{path}: variable {name!r} is empty (HDF5 null dataspace)")
    _check_dtype(ds.dtype, path, name)
    _check_shape(tuple(ds.shape), path, name)
    try:
        labels = [d.label for d in ds.dims]
        raw_attrs = dict(ds.attrs)
        attrs = _clean_attrs(raw_attrs)
    except (OSError, RuntimeError, KeyError) as exc:
        raise InputError(f"{path}: variable {name!r} cannot be read ({exc})") from None
    dims = tuple(lbl if lbl else f"dim{i}" for i, lbl in enumerate(labels))
    sel = _selection(select, tuple(ds.shape), dims, time_dim, None, path, name)
    try:
        arr = ds[sel] if sel is not None else ds[()]
    except OSError as exc:
        raise InputError(f"{path}: variable {name!r} cannot be read ({exc})") from None
    fills = _fill_values(raw_attrs)
    if fills:  # h5py does not mask: values equal to a declared fill are missing
        missing = np.isin(arr, np.asarray(fills, arr.dtype))
        arr = np.ma.MaskedArray(arr, mask=missing) if missing.any() else arr
    fill = fills[0] if fills else None
    return _to_volume(
        arr,
        path,
        name,
        dims,
        attrs,
        time_dim,
        None,
        fill,
        select=select,
        sel=sel,
        source_shape=ds.shape,
    )


def _check_netcdf3_size(path: Path) -> None:
    """Refuse a truncated NetCDF-3 file (the netCDF library reads the missing part as 0)."""
    with open(path, "rb") as fh:
        head = fh.read(NETCDF3_HEADER_MAX)
    need = netcdf3_required_size(head)
    have = path.stat().st_size
    if need is not None and have < need:
        raise InputError(
            f"{path}: unreadable NetCDF file (truncated: its header needs {need} bytes, "
            f"the file has {have})"
        )


def netcdf3_required_size(head: bytes) -> int | None:
    """Smallest size of a NetCDF-3 (CDF-1/2/5) file with this header; None if unparsable.

    Follows the classic format specification: header = magic numrecs dim_list gatt_list
    var_list, big-endian; each variable ends with its ``vsize`` and ``begin`` offset.
    """
    import struct

    version = head[3] if len(head) > 3 else 0
    wide = version == 5  # CDF-5: 64-bit counts, sizes and dimension ids
    count_fmt = ">q" if wide else ">i"
    offset_fmt = ">i" if version == 1 else ">q"
    pos = 4

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, head, pos)
        pos += struct.calcsize(fmt)
        if value < 0 and fmt != ">I":
            raise ValueError("negative count")
        return value

    def skip(n_bytes: int) -> None:  # values are padded to 4 bytes
        nonlocal pos
        pos += -(-n_bytes // 4) * 4

    def att_list() -> None:
        take(">i")
        for _ in range(take(count_fmt)):
            skip(take(count_fmt))
            size = _NC_TYPE_SIZES[take(">i")]
            skip(take(count_fmt) * size)

    try:
        numrecs = take(">Q" if wide else ">I")
        take(">i")
        dims = []
        for _ in range(take(count_fmt)):
            skip(take(count_fmt))
            dims.append(take(count_fmt))
        att_list()
        take(">i")
        variables = []
        for _ in range(take(count_fmt)):
            skip(take(count_fmt))
            ids = [take(count_fmt) for _ in range(take(count_fmt))]
            att_list()
            size = _NC_TYPE_SIZES[take(">i")]
            vsize = take(count_fmt)
            begin = take(offset_fmt)
            is_record = bool(ids) and dims[ids[0]] == 0
            n = 1
            for i in ids[1:] if is_record else ids:
                n *= dims[i]
            variables.append((is_record, begin, vsize, n * size))
    except (struct.error, KeyError, IndexError, ValueError):
        return None
    need = pos
    streaming = numrecs in (0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)
    recsize = sum(v[2] for v in variables if v[0])
    for is_record, begin, _, nbytes in variables:
        if not is_record:
            need = max(need, begin + nbytes)
        elif numrecs and not streaming:
            need = max(need, begin + (numrecs - 1) * recsize + nbytes)
    return need


def _read_netcdf(
    path: Path, var: str | None, time_dim: str | None, select: Select | None = None
) -> Volume:
    import netCDF4

    try:
        ds = netCDF4.Dataset(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: unreadable NetCDF file ({exc.strerror or exc})") from None
    with ds:
        coord_names = set(ds.dimensions)
        fields = [n for n, v in ds.variables.items() if v.ndim >= 2 and n not in coord_names]
        if var is None:
            if len(fields) != 1:
                raise InputError(
                    f"{path}: {len(fields)} candidate variables, choose one with "
                    f"--var (has: {', '.join(fields) or 'none'})"
                )
            var = fields[0]
        if var not in ds.variables:
            raise InputError(f"{path}: variable {var!r} not found (has: {', '.join(fields)})")
        return _from_nc_variable(ds.variables[var], str(path), time_dim, select)


def _from_nc_variable(
    v: Any, path: str, time_dim: str | None, select: Select | None = None
) -> Volume:
    name = v.name
    packed = "scale_factor" in v.ncattrs() or "add_offset" in v.ncattrs()
    if not packed or (
        not np.issubdtype(v.dtype, np.integer) and not np.issubdtype(v.dtype, np.floating)
    ):
        _check_dtype(v.dtype, path, name)
    _check_shape(tuple(v.shape), path, name)
    attrs = _clean_attrs({k: v.getncattr(k) for k in v.ncattrs()})
    time_hint = nc_time_hint(v)
    sel = _selection(select, tuple(v.shape), tuple(v.dimensions), time_dim, time_hint, path, name)
    try:
        with warnings.catch_warnings():  # netCDF4 warns while casting fill values of packed ints
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            arr = v[sel] if sel is not None else v[...]
    except (OSError, RuntimeError) as exc:
        raise InputError(f"{path}: variable {name!r} cannot be read ({exc})") from None
    fill = None
    if not packed:  # a packed variable's fill is in packed units: NaN marks it on output
        fills = _fill_values({k: v.getncattr(k) for k in v.ncattrs()})
        fill = fills[0] if fills else None
    if packed:
        arr = arr.astype(np.float32) if arr.dtype != np.float64 else arr
        attrs["sciinr_unpacked_from"] = str(v.dtype)
    dims = tuple(v.dimensions)
    return _to_volume(
        arr,
        path,
        name,
        dims,
        attrs,
        time_dim,
        time_hint,
        fill,
        select=select,
        sel=sel,
        source_shape=v.shape,
    )


def nc_time_hint(v: Any) -> str | None:
    """The time dimension of a netCDF4 variable, from its coordinate variables (or None)."""
    grp = v.group()
    unlimited = {n for n, d in grp.dimensions.items() if d.isunlimited()}
    time_hint = None
    for d in v.dimensions:
        cv = grp.variables.get(d)
        is_time = d in unlimited and v.dimensions[0] == d
        if cv is not None:
            units = str(getattr(cv, "units", ""))
            is_time |= " since " in units or getattr(cv, "axis", "") == "T"
            is_time |= getattr(cv, "standard_name", "") == "time"
        if is_time:
            time_hint = d
            break
    return time_hint


def _selection(
    select: Select | None,
    shape: tuple[int, ...],
    dims: tuple[str, ...],
    time_dim: str | None,
    time_hint: str | None,
    path: str,
    name: str,
) -> tuple[slice, ...] | None:
    if select is None or not 2 <= len(shape) <= 4:
        return None
    dims = tuple(dims) if len(dims) == len(shape) else _default_dims(len(shape))
    has_time = _time_axis(dims, shape, time_dim, time_hint, path, name)
    return select.slices(shape, has_time, f"{path}: variable {name!r}")


def _fill_values(attrs: dict[str, Any]) -> list[float]:
    """The finite numbers declared missing by ``_FillValue`` and ``missing_value``."""
    out: list[float] = []
    for key in ("_FillValue", "missing_value"):
        if key not in attrs:
            continue
        try:
            values = np.asarray(attrs[key], dtype=np.float64).ravel()
        except (TypeError, ValueError):
            continue
        out += [float(x) for x in values if np.isfinite(x) and float(x) not in out]
    return out


def _check_dtype(dtype: Any, path: str, name: str) -> None:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind != "f" or dt.itemsize not in (4, 8):  # either byte order
        kind = {"S": "strings", "U": "strings", "O": "objects or strings", "V": "compound"}
        note = f" ({kind[dt.kind]})" if dt is not None and dt.kind in kind else ""
        shown = "str" if dtype is str else str(dtype)
        raise InputError(
            f"{path}: variable {name!r} has dtype {shown}{note}; sciinr compresses "
            "float32 or float64 fields only"
        )


def _check_shape(shape: tuple[int, ...], path: str, name: str) -> None:
    if not 2 <= len(shape) <= 4:
        raise InputError(
            f"{path}: variable {name!r} has {len(shape)} dimensions {shape}; "
            "sciinr takes 2 to 4 (time first, then space)"
        )
    if 0 in shape:
        raise InputError(f"{path}: variable {name!r} is empty (shape {shape})")


def _to_volume(
    arr: Any,
    path: str,
    name: str,
    dims: tuple[str, ...],
    attrs: dict[str, Any],
    time_dim: str | None,
    time_hint: str | None,
    fill_value: float | None = None,
    select: Select | None = None,
    sel: tuple[slice, ...] | None = None,
    source_shape: tuple[int, ...] | None = None,
) -> Volume:
    _check_dtype(arr.dtype, path, name)
    if select is not None and sel is None and source_shape is None:  # an in-memory array
        dims_ = tuple(dims) if len(dims) == arr.ndim else _default_dims(arr.ndim)
        sel = _selection(select, tuple(arr.shape), dims_, time_dim, time_hint, path, name)
        if sel is not None:
            source_shape = tuple(arr.shape)
            arr = arr[sel]
    shape = tuple(int(s) for s in arr.shape)
    _check_shape(shape, path, name)
    dims = tuple(dims) if len(dims) == len(shape) else _default_dims(len(shape))
    has_time = _time_axis(dims, shape, time_dim, time_hint, path, name)
    spatial = shape[1:] if has_time else shape
    if len(spatial) > 3 or len(spatial) < 1:
        raise InputError(
            f"{path}: variable {name!r} has {len(spatial)} spatial dimensions; "
            "sciinr takes 1 to 3 besides time"
        )
    t = shape[0] if has_time else 1
    full = (t, *((1,) * (3 - len(spatial))), *spatial)
    valid = None
    if np.ma.isMaskedArray(arr):
        masked = np.ma.getmaskarray(arr)
        valid = ~masked if masked.any() else None
        src = np.asarray(arr.data)
    else:
        src = np.asarray(arr)
    finite = np.isfinite(src)
    if not finite.all():
        inf = np.isinf(src) if valid is None else np.isinf(src) & valid
        n_inf = int(np.count_nonzero(inf))
        if n_inf:
            raise InputError(
                f"{path}: variable {name!r} has {n_inf} infinite values; sciinr takes "
                "finite values, and NaN or a mask for missing ones"
            )
        valid = finite if valid is None else valid & finite
    del finite
    n_valid = src.size if valid is None else int(np.count_nonzero(valid))
    if src.dtype.itemsize == 8 and n_valid:
        peak = np.abs(src).max() if valid is None else np.abs(src[valid]).max()
        if peak > np.finfo(np.float32).max:
            raise InputError(f"{path}: variable {name!r} exceeds the float32 range")
    if valid is None:
        data = np.ascontiguousarray(src, dtype=np.float32).reshape(full)
        mask = None
    else:
        data = np.array(src, dtype=np.float32).reshape(full)
        mask = np.ascontiguousarray(valid).reshape(full)
        # a finite, in-range filler: partition refines it block by block, nothing fits it
        data[~mask] = np.float32(data[mask].mean(dtype=np.float64)) if n_valid else 0.0
        logger.info(
            "%s:%s: %d of %d values missing (masked)", path, name, src.size - n_valid, src.size
        )
    logger.info("read %s:%s shape=%s dims=%s time=%s", path, name, shape, dims, has_time)
    selection = None
    if sel is not None and source_shape is not None:
        selection = tuple((int(s.start), int(s.stop)) for s in sel)
    return Volume(
        data=data,
        orig_shape=shape,
        dims=dims,
        has_time=has_time,
        dtype=np.dtype(arr.dtype).name,  # "float32" for ">f4" too
        variable=name,
        attrs=attrs,
        source=path,
        selection=selection,
        source_shape=tuple(int(n) for n in source_shape) if selection else None,
        mask=mask,
        fill_value=fill_value if mask is not None else None,
    )


def _time_axis(
    dims: tuple[str, ...],
    shape: tuple[int, ...],
    time_dim: str | None,
    time_hint: str | None,
    path: str,
    name: str,
) -> bool:
    if time_dim is not None:
        if time_dim.lower() == "none":
            if len(shape) == 4:
                raise InputError(f"{path}: variable {name!r} is 4-D; its first axis must be time")
            return False
        if time_dim not in dims:
            raise InputError(
                f"{path}: variable {name!r} has no dimension {time_dim!r} (has: {', '.join(dims)})"
            )
        if dims.index(time_dim) != 0:
            raise InputError(
                f"{path}: variable {name!r}: time dimension {time_dim!r} must be the first axis"
            )
        return True
    found = time_hint or next((d for d in dims if d.lower() in TIME_NAMES), None)
    if found is not None and dims.index(found) == 0:
        return True
    return len(shape) == 4


def _clean_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if key in _SKIP_ATTRS or not 0 < len(str(key)) <= 1024 or "\x00" in str(key):
            continue
        v = _json_value(value)
        if v is not None:
            out[str(key)] = v
    return out


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, np.generic):
        return (
            value.item() if not isinstance(value, np.bytes_) else value.decode("utf-8", "replace")
        )
    if isinstance(value, np.ndarray):
        if value.size == 0 or value.ndim > 8:
            return None
        if value.dtype.kind in "iufb":
            return value.tolist() if value.size > 1 else value.item()
        if value.dtype.kind in "SUO":
            items = [_json_value(x) for x in value.ravel()]
            if all(isinstance(x, str) for x in items):
                return items if len(items) > 1 else items[0]
    if isinstance(value, list | tuple):
        items = [_json_value(x) for x in value]
        return items if all(x is not None for x in items) else None
    return None
