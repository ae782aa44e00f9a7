"""Dataset stage: the structure of a NetCDF dataset <-> the ``dataset`` object of a header.

A dataset file (format 2.0, ``docs/format.md`` part 10) holds the fields of several
variables, each compressed exactly as a single-field file and with its sections renamed
``f<k>_<name>``, plus the variables that make the fields a dataset (coordinate variables, the
variables named by ``coordinates``, ``bounds``, ``grid_mapping`` ..., small), stored
losslessly as raw little-endian bytes (zstd). Attributes keep their NumPy types (typed JSON,
below), so packing (``scale_factor``/``add_offset``), ``_FillValue`` and time units come back
exactly.

This module reads the structure of a NetCDF file (netCDF4), builds and checks the header's
``dataset`` object, picks one field's header and sections out of a file, and writes a dataset
back to NetCDF-4 or HDF5 (with dimension scales). It never imports another stage but ``read``
(fields are read there) and ``encode`` (raw array bytes).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, InputError
from ..payloads import Volume
from . import encode, read

logger = logging.getLogger(__name__)

VERSION = (2, 0)  # format version of a dataset file (docs/format.md, part 10)
MAX_VARIABLES = 64  # variables of one dataset file (fields and raw together)
MAX_RAW_VALUES = 1 << 28  # values of one losslessly stored variable
RAW_KINDS = "iufS"  # numbers and fixed-size byte strings
# attributes naming other variables a field needs (CF conventions, section 5-7)
LINK_ATTRS = (
    "coordinates",
    "bounds",
    "grid_mapping",
    "ancillary_variables",
    "cell_measures",
    "climatology",
    "formula_terms",
)
_WORD = re.compile(r"[^\s:]+")


@dataclass(frozen=True)
class RawVariable:
    """One variable of a dataset as stored on disk: on-disk dtype and attributes."""

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str  # on-disk dtype (int16 for a packed field)
    attrs: dict[str, Any]  # on-disk attributes, NumPy values (_FillValue, scale_factor, ...)
    values: np.ndarray | None = None  # raw on-disk values of a variable stored losslessly


@dataclass(frozen=True)
class DatasetSource:
    """What :func:`read_structure` found: dimensions, attributes, variables in file order."""

    path: str
    dims: tuple[tuple[str, int, bool], ...]  # name, size (after a selection), unlimited
    attrs: dict[str, Any]
    variables: tuple[RawVariable, ...]
    fields: tuple[str, ...]  # the variables compressed (values None in ``variables``)


# ----------------------------------------------------------------------------- typed attrs


def attr_to_json(value: Any) -> Any:
    """A NetCDF attribute -> JSON: strings stay strings, numbers keep their dtype.

    ``{"dtype": "float64", "values": [1.5, "nan"]}``: non-finite numbers as the strings
    ``"nan"``, ``"inf"``, ``"-inf"``.
    """
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    arr = np.asarray(value)
    if arr.dtype.kind in "SU" or arr.dtype == object:
        items = [attr_to_json(x) for x in arr.ravel()]
        if all(isinstance(x, str) for x in items):
            return {"dtype": "str", "values": items}
        raise TypeError(f"unsupported attribute value {value!r}")
    if arr.dtype.kind not in "iufb":
        raise TypeError(f"unsupported attribute dtype {arr.dtype}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int8)
    vals = [_num_to_json(x) for x in arr.ravel().tolist()]
    return {"dtype": str(arr.dtype), "values": vals}


def _num_to_json(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if x != x else ("inf" if x > 0 else "-inf")
    return x


def attr_from_json(value: Any, where: str) -> Any:
    """Inverse of :func:`attr_to_json` (a scalar for one value, else a 1-D array)."""
    if isinstance(value, str):
        return value
    if not (isinstance(value, dict) and set(value) == {"dtype", "values"}):
        raise FormatError(f"{where}: corrupted header (bad attribute value)")
    values = value["values"]
    if not isinstance(values, list) or not values or len(values) > 1 << 20:
        raise FormatError(f"{where}: corrupted header (bad attribute value)")
    if value["dtype"] == "str":
        if not all(isinstance(v, str) for v in values):
            raise FormatError(f"{where}: corrupted header (bad attribute value)")
        return values[0] if len(values) == 1 else list(values)
    dt = _numeric_dtype(value["dtype"], where)
    nums = [float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v for v in values]
    if not all(type(v) in (int, float) for v in nums):
        raise FormatError(f"{where}: corrupted header (bad attribute value)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            arr = np.array(nums, dtype=dt)
    except (OverflowError, ValueError, RuntimeWarning):
        raise FormatError(f"{where}: corrupted header (attribute outside {dt})") from None
    return arr[0] if arr.size == 1 else arr


def _numeric_dtype(text: Any, where: str) -> np.dtype:
    names = {
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float32",
        "float64",
    }
    if text not in names:
        raise FormatError(f"{where}: corrupted header (bad dtype {str(text)[:40]!r})")
    return np.dtype(text)


def attrs_to_json(attrs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        try:
            out[str(k)] = attr_to_json(v)
        except TypeError as exc:
            logger.warning("attribute %r not kept (%s)", k, exc)
    return out


def attrs_from_json(attrs: Any, where: str) -> dict[str, Any]:
    if not isinstance(attrs, dict) or len(attrs) > 4096:
        raise FormatError(f"{where}: corrupted header (bad attributes)")
    return {str(k): attr_from_json(v, f"{where}: attribute {k[:40]!r}") for k, v in attrs.items()}


# ----------------------------------------------------------------------------- reading


def _links(v: Any) -> set[str]:
    """Names in the attributes of ``v`` that may name other variables."""
    out: set[str] = set()
    for key in LINK_ATTRS:
        text = v.getncattr(key) if key in v.ncattrs() else None
        if isinstance(text, str):
            out.update(_WORD.findall(text))
    return out


def _is_field_candidate(v: Any, dims: set[str]) -> bool:
    kind = np.dtype(v.dtype).kind if isinstance(v.dtype, np.dtype) else "O"
    packed = "scale_factor" in v.ncattrs() or "add_offset" in v.ncattrs()
    numeric = kind == "f" or (kind in "iu" and packed)
    return numeric and 2 <= v.ndim <= 4 and v.name not in dims and min(v.shape) > 0


def read_structure(
    path: Path,
    names: list[str] | None,
    time_dim: str | None = None,
    select: read.Select | None = None,
) -> tuple[DatasetSource, Iterator[Volume]]:
    """The structure of a NetCDF dataset, and its fields read one at a time.

    Parameters
    ----------
    names : list of str or None
        The fields to compress; ``None`` or ``["all"]``: every data variable of 2 to 4
        dimensions that is float (or packed integers) and that no other variable names.
    time_dim, select
        As for :func:`sciinr.stages.read.read` (the selection applies to every field, and
        the stored coordinates are cut to match).

    Raises
    ------
    InputError
        Not a NetCDF file, an unknown variable, no field to compress.
    """
    import netCDF4

    path = Path(path)
    read.regular_file(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(8)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    if magic.startswith(read.NETCDF3_MAGICS):
        read._check_netcdf3_size(path)  # the netCDF library reads a missing part as 0
    elif magic != read.HDF5_MAGIC:
        raise InputError(f"{path}: not a NetCDF file (unknown magic bytes)")
    try:
        ds = netCDF4.Dataset(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: unreadable NetCDF file ({exc.strerror or exc})") from None
    with ds:
        dims = set(ds.dimensions)
        linked: set[str] = set()
        for v in ds.variables.values():
            linked |= _links(v)
        candidates = [
            n for n, v in ds.variables.items() if _is_field_candidate(v, dims) and n not in linked
        ]
        if names is None or names == ["all"]:
            fields = candidates
            if not fields:
                raise InputError(f"{path}: no variable to compress (2-4-D float variables)")
        else:
            missing = [n for n in names if n not in ds.variables]
            if missing:
                raise InputError(
                    f"{path}: variable {missing[0]!r} not found (has: {', '.join(candidates)})"
                )
            if len(set(names)) != len(names):
                raise InputError(f"{path}: a variable is named twice in {','.join(names)}")
            fields = list(names)
        keep = set(fields) if names not in (None, ["all"]) else set(ds.variables)
        if names not in (None, ["all"]):
            todo = list(fields)
            while todo:  # coordinate variables, then whatever the kept variables name
                v = ds.variables[todo.pop()]
                for n in [*v.dimensions, *_links(v)]:
                    if n in ds.variables and n not in keep:
                        keep.add(n)
                        todo.append(n)
        order = [n for n in ds.variables if n in keep]
        if len(order) > MAX_VARIABLES:
            raise InputError(
                f"{path}: {len(order)} variables; a .sinr file holds at most {MAX_VARIABLES}"
            )
        volumes: list[Volume] = []
        for n in fields:  # read first: the selection of the fields cuts the coordinates
            volumes.append(read.read(ds.variables[n], time_dim=time_dim, select=select))
        cut = _dim_slices(volumes, path)
        variables = []
        for n in order:
            v = ds.variables[n]
            attrs = {k: v.getncattr(k) for k in v.ncattrs()}
            shape = tuple(_cut_len(d, s, cut) for d, s in zip(v.dimensions, v.shape, strict=True))
            if n in fields:
                raw_dtype = str(np.dtype(v.dtype))
                variables.append(RawVariable(n, tuple(v.dimensions), shape, raw_dtype, attrs))
                continue
            values = _raw_values(v, cut, path)
            if values is None:
                continue
            variables.append(
                RawVariable(n, tuple(v.dimensions), values.shape, str(values.dtype), attrs, values)
            )
        dim_list = tuple(
            (d, _cut_len(d, len(ds.dimensions[d]), cut), ds.dimensions[d].isunlimited())
            for d in ds.dimensions
        )
        gattrs = {k: ds.getncattr(k) for k in ds.ncattrs()}
    source = DatasetSource(str(path), dim_list, gattrs, tuple(variables), tuple(fields))
    return source, iter(volumes)


def _dim_slices(volumes: list[Volume], path: Path) -> dict[str, tuple[int, int]]:
    cut: dict[str, tuple[int, int]] = {}
    for vol in volumes:
        if vol.selection is None:
            continue
        for d, se in zip(vol.dims, vol.selection, strict=True):
            if cut.setdefault(d, se) != se:
                raise InputError(
                    f"{path}: the selection cuts dimension {d!r} differently for different "
                    "variables; compress them separately"
                )
    return cut


def _cut_len(dim: str, size: int, cut: dict[str, tuple[int, int]]) -> int:
    return cut[dim][1] - cut[dim][0] if dim in cut else size


def _raw_values(v: Any, cut: dict[str, tuple[int, int]], path: Path) -> np.ndarray | None:
    dt = v.dtype if isinstance(v.dtype, np.dtype) else None
    if dt is None or dt.kind not in RAW_KINDS or math.prod(v.shape) > MAX_RAW_VALUES:
        logger.warning(
            "%s: variable %r (%s) not kept (unsupported type or size)", path, v.name, v.dtype
        )
        return None
    v.set_auto_maskandscale(False)
    key = tuple(slice(*cut[d]) if d in cut else slice(None) for d in v.dimensions)
    try:
        values = np.asarray(v[key] if key else v[...])
    except (OSError, RuntimeError, IndexError) as exc:
        raise InputError(f"{path}: variable {v.name!r} cannot be read ({exc})") from None
    shape = tuple(_cut_len(d, s, cut) for d, s in zip(v.dimensions, v.shape, strict=True))
    return values.reshape(shape).copy()  # C-contiguous, and 0-d stays 0-d


# ----------------------------------------------------------------------------- header


def field_prefix(k: int) -> str:
    return f"f{k}_"


def assemble(
    source: DatasetSource,
    fields: dict[str, tuple[dict[str, Any], dict[str, bytes]]],
    writer: str,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The header and sections of a dataset file.

    ``fields`` maps each field's name to the header and sections of its single-field file.
    """
    entries: list[dict[str, Any]] = []
    sections: dict[str, bytes] = {}
    k_field = k_raw = 0
    for var in source.variables:
        entry: dict[str, Any] = {
            "name": var.name,
            "dims": list(var.dims),
            "shape": list(var.shape),
            "dtype": var.dtype,
            "attrs": attrs_to_json(var.attrs),
        }
        if var.values is None:
            head, secs = fields[var.name]
            prefix = field_prefix(k_field)
            k_field += 1
            entry["field"] = {k: v for k, v in head.items() if k not in ("sciinr", "source")}
            entry["prefix"] = prefix
            sections.update({prefix + n: b for n, b in secs.items()})
        else:
            name = f"r{k_raw}"
            k_raw += 1
            entry["section"] = name
            sections[name] = encode.array_bytes(var.values)
        entries.append(entry)
    header = {
        "sciinr": writer,
        "source": Path(source.path).name,
        "dataset": {
            "dims": [{"name": n, "size": s, "unlimited": u} for n, s, u in source.dims],
            "attrs": attrs_to_json(source.attrs),
            "variables": entries,
        },
    }
    return header, sections


def is_dataset(header: dict[str, Any]) -> bool:
    return "dataset" in header


def check(header: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """Check the ``dataset`` object's structure (types, names, dims); its variable entries.

    Each field's own header is checked when that field is opened.
    """

    def bad(what: str) -> FormatError:
        return FormatError(f"{source}: corrupted header (bad dataset {what})")

    ds = header.get("dataset")
    if not isinstance(ds, dict) or not isinstance(ds.get("variables"), list):
        raise bad("object")
    dims = ds.get("dims")
    if not isinstance(dims, list) or len(dims) > 1024:
        raise bad("dims")
    sizes: dict[str, int] = {}
    for d in dims:
        if not (
            isinstance(d, dict)
            and set(d) == {"name", "size", "unlimited"}
            and _name_ok(d["name"])
            and type(d["size"]) is int
            and 0 <= d["size"] <= 1 << 31
            and isinstance(d["unlimited"], bool)
            and d["name"] not in sizes
        ):
            raise bad("dims")
        sizes[d["name"]] = d["size"]
    entries = ds["variables"]
    if not entries or len(entries) > MAX_VARIABLES:
        raise bad("variables")
    seen: set[str] = set()
    for e in entries:
        if not (
            isinstance(e, dict)
            and _name_ok(e.get("name"))
            and e["name"] not in seen
            and isinstance(e.get("dims"), list)
            and isinstance(e.get("shape"), list)
            and len(e["dims"]) == len(e["shape"]) <= 32
            and all(d in sizes for d in e["dims"])
            and [sizes[d] for d in e["dims"]] == e["shape"]
            and isinstance(e.get("attrs"), dict)
            and ("field" in e) != ("section" in e)
        ):
            raise bad(f"variable {_short(e)}")
        seen.add(e["name"])
        if "field" in e:
            if not (
                isinstance(e["field"], dict)
                and isinstance(e.get("prefix"), str)
                and re.fullmatch(r"f[0-9]{1,3}_", e["prefix"])
            ):
                raise bad(f"variable {e['name'][:40]!r}")
        else:
            dt = np.dtype(_raw_dtype(e.get("dtype"), source))
            if not (
                isinstance(e["section"], str)
                and re.fullmatch(r"r[0-9]{1,3}", e["section"])
                and math.prod(e["shape"]) <= MAX_RAW_VALUES
                and dt.itemsize > 0
            ):
                raise bad(f"variable {e['name'][:40]!r}")
    return entries


def _raw_dtype(text: Any, source: str) -> str:
    if isinstance(text, str) and re.fullmatch(r"S[0-9]{1,4}", text) and text != "S0":
        return text
    return str(_numeric_dtype(text, source))


def _name_ok(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 1024 and "\x00" not in v


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def field_names(header: dict[str, Any]) -> list[str]:
    return [e["name"] for e in header["dataset"]["variables"] if "field" in e]


def select_field(
    header: dict[str, Any], sections: dict[str, bytes], variable: str | None, source: str
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """One field's own header (a single-field header) and its sections, prefix removed."""
    entries = check(header, source)
    names = [e["name"] for e in entries if "field" in e]
    if variable is None:
        if len(names) != 1:
            raise InputError(
                f"{source}: holds {len(names)} compressed variables ({', '.join(names)}); "
                "choose one with variable= (or --var)"
            )
        variable = names[0]
    entry = next((e for e in entries if e["name"] == variable and "field" in e), None)
    if entry is None:
        raise InputError(f"{source}: no compressed variable {variable!r} (has: {', '.join(names)})")
    prefix = entry["prefix"]
    own = {n[len(prefix) :]: b for n, b in sections.items() if n.startswith(prefix)}
    head = {
        **entry["field"],
        "sciinr": header.get("sciinr", ""),
        "source": header.get("source", ""),
    }
    return head, own


def raw_values(entry: dict[str, Any], sections: dict[str, bytes], source: str) -> np.ndarray:
    """The values of a variable stored losslessly (on-disk dtype)."""
    name = entry["section"]
    if name not in sections:
        raise FormatError(f"{source}: missing sections: {name}")
    dtype = _raw_dtype(entry["dtype"], source)
    try:
        return encode.bytes_array(sections[name], dtype, tuple(entry["shape"]), name)
    except FormatError as exc:
        raise FormatError(f"{source}: {exc}") from None


# ----------------------------------------------------------------------------- packing


def fill_value(attrs: dict[str, Any], dtype: np.dtype) -> Any:
    """The ``_FillValue`` (else ``missing_value``) usable for ``dtype``, or None."""
    for key in ("_FillValue", "missing_value"):
        if key in attrs:
            v = np.asarray(attrs[key]).ravel()
            if v.size and (dtype.kind == "f" or np.isfinite(v[0]).all()):
                return np.asarray(v[0]).astype(dtype)
    return None


def pack(values: Any, dtype: str, attrs: dict[str, Any]) -> np.ndarray:
    """Decoded values -> on-disk values (``scale_factor``/``add_offset`` packing, fill)."""
    dt = np.dtype(dtype)
    mask = np.ma.getmaskarray(values) if np.ma.isMaskedArray(values) else None
    x = np.asarray(np.ma.getdata(values), dtype=np.float64)
    nan = ~np.isfinite(x)
    if mask is not None:
        nan |= mask
    if dt.kind in "iu":
        scale = float(np.asarray(attrs.get("scale_factor", 1.0)).ravel()[0])
        offset = float(np.asarray(attrs.get("add_offset", 0.0)).ravel()[0])
        q = np.round((np.where(nan, 0.0, x) - offset) / scale)
        info = np.iinfo(dt)
        out = np.clip(q, info.min, info.max).astype(dt)
    else:
        out = x.astype(dt)
    if nan.any():
        fv = fill_value(attrs, dt)
        out[nan] = fv if fv is not None else (np.nan if dt.kind == "f" else 0)
    return out


# ----------------------------------------------------------------------------- writing


def write_netcdf(
    path: Path,
    header: dict[str, Any],
    values: Callable[[dict[str, Any]], np.ndarray],
    history: str,
    source: str,
) -> None:
    """A NetCDF-4 file with every variable of ``header`` (on-disk values from ``values``)."""
    import netCDF4

    ds_meta = header["dataset"]
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        for d in ds_meta["dims"]:
            ds.createDimension(d["name"], None if d["unlimited"] else d["size"])
        gattrs = attrs_from_json(ds_meta["attrs"], source)
        gattrs["history"] = _history(gattrs.get("history"), history)
        ds.setncatts(gattrs)
        for e in ds_meta["variables"]:
            attrs = attrs_from_json(e["attrs"], source)
            dt = np.dtype(_raw_dtype(e["dtype"], source))
            fv = (
                fill_value({"_FillValue": attrs["_FillValue"]}, dt)
                if "_FillValue" in attrs
                else None
            )
            attrs.pop("_FillValue", None)
            var = ds.createVariable(
                e["name"],
                dt,
                tuple(e["dims"]),
                zlib=dt.kind != "S",
                fill_value=fv if fv is not None else False,
            )
            var.set_auto_maskandscale(False)
            for k, v in attrs.items():
                with contextlib.suppress(TypeError, ValueError, AttributeError, RuntimeError):
                    var.setncattr(k, v)
            data = values(e)
            if data.ndim == 0:
                var.assignValue(data)
            else:
                var[...] = data


def write_hdf5(
    path: Path,
    header: dict[str, Any],
    values: Callable[[dict[str, Any]], np.ndarray],
    history: str,
    source: str,
) -> None:
    """An HDF5 file: one dataset per variable, dimensions as HDF5 dimension scales."""
    import h5py

    ds_meta = header["dataset"]
    entries = {e["name"]: e for e in ds_meta["variables"]}
    with h5py.File(path, "w") as fh:
        gattrs = attrs_from_json(ds_meta["attrs"], source)
        gattrs["history"] = _history(gattrs.get("history"), history)
        _set_attrs(fh, gattrs, path)
        scales = {}
        for d in ds_meta["dims"]:
            e = entries.get(d["name"])
            if e is not None and e["dims"] == [d["name"]]:
                continue  # its coordinate variable is the scale
            scales[d["name"]] = fh.create_dataset(d["name"], data=np.arange(d["size"]))
        for e in ds_meta["variables"]:
            data = values(e)
            kw = {"compression": "gzip", "shuffle": True} if data.ndim and data.size > 1 else {}
            dset = fh.create_dataset(e["name"], data=data, **kw)
            _set_attrs(dset, attrs_from_json(e["attrs"], source), path)
            if e["dims"] == [e["name"]] and e["name"] in {d["name"] for d in ds_meta["dims"]}:
                scales[e["name"]] = dset
        for s in scales.values():
            s.make_scale(s.name.lstrip("/"))
        for e in ds_meta["variables"]:
            dset = fh[e["name"]]
            for i, d in enumerate(e["dims"]):
                dset.dims[i].label = d
                if d in scales and scales[d].name != dset.name:
                    dset.dims[i].attach_scale(scales[d])


def _set_attrs(obj: Any, attrs: dict[str, Any], path: Path) -> None:
    for k, v in attrs.items():
        try:
            obj.attrs[k] = v
        except (TypeError, ValueError, RuntimeError, KeyError, OSError) as exc:
            logger.warning("%s: attribute %r not written (%s)", path, k, exc)


def _history(old: Any, line: str) -> str:
    return f"{old}\n{line}" if isinstance(old, str) and old else line
