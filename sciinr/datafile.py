"""Whole datasets: several variables of a NetCDF file (or an xarray Dataset) in one ``.sinr``.

compress: dataset.read_structure -> each field through :func:`sciinr.api.compress_volume`
-> dataset.assemble -> container (format 2.0);
back: :class:`DatasetFile` -> one field as a :class:`~sciinr.api.SinrArray`, the variables
stored losslessly as arrays, or the whole dataset written as NetCDF/HDF5.

Examples
--------
>>> sciinr.compress_dataset("era.nc", variables=["u", "v"], out="era.sinr")  # doctest: +SKIP
>>> sciinr.decompress_dataset("era.sinr", "era_back.nc")                      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import api
from ._version import __version__
from .config import Config
from .errors import InputError, OutputError
from .metrics import bits_per_value, ratio
from .stages import container, dataset, read, write

logger = logging.getLogger(__name__)


def compress_dataset_volumes(
    path: str | Path,
    variables: list[str] | None,
    cfg: Config,
    *,
    time_dim: str | None = None,
    select: read.Select | None = None,
    progress: bool = False,
    source_name: str | None = None,
) -> tuple[bytes, dict[str, api.Report]]:
    """Compress the fields of a NetCDF dataset (and store its coordinates) into one file.

    Returns the ``.sinr`` bytes and one :class:`~sciinr.api.Report` per field.
    """
    source, volumes = dataset.read_structure(Path(path), variables, time_dim, select)
    fields: dict[str, tuple[dict[str, Any], dict[str, bytes]]] = {}
    reports: dict[str, api.Report] = {}
    for volume in volumes:
        logger.info("compressing %s", volume.variable)
        blob, report = api.compress_volume(volume, cfg, progress=progress)
        fields[volume.variable] = container.unpack(blob)
        reports[volume.variable] = report
        del blob
    if source_name is not None:
        source = dataclass_replace(source, path=source_name)
    header, sections = dataset.assemble(source, fields, __version__)
    blob = container.pack(header, sections, version=dataset.VERSION)
    n_bytes = len(blob)
    logger.info("dataset: %d fields, %d bytes", len(fields), n_bytes)
    return blob, reports


def dataclass_replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)


def compress_dataset(
    path: str | Path,
    *,
    variables: list[str] | str | None = None,
    psnr: float | None = None,
    config: Config | None = None,
    out: str | Path | None = None,
    time_dim: str | None = None,
    time: Any = None,
    crop: Any = None,
    overwrite: bool = False,
    progress: bool = False,
) -> bytes | Path:
    """Compress several variables of a NetCDF file, with its coordinates, into one ``.sinr``.

    Parameters
    ----------
    path : str or Path
        A NetCDF file (NetCDF-3 or NetCDF-4).
    variables : list of str, "all" or None
        The variables to compress (``"all"`` or None: every 2-4-D float data variable).
        Coordinate variables and the variables they name (``coordinates``, ``bounds``,
        ``grid_mapping`` ...) are stored losslessly.
    psnr, config, time_dim, time, crop, overwrite, progress
        As for :func:`sciinr.compress`.

    Returns
    -------
    bytes or Path
    """
    cfg = api.resolve_config(config, psnr, None)
    if isinstance(variables, str):
        variables = [v.strip() for v in variables.split(",")]
    if out is not None:
        write.check_destination(Path(out), overwrite)
    blob, _ = compress_dataset_volumes(
        path,
        variables,
        cfg,
        time_dim=time_dim,
        select=api.make_select(time, crop),
        progress=progress,
    )
    if out is None:
        return blob
    return write.write_bytes(Path(out), blob, overwrite=overwrite)


class DatasetFile:
    """A dataset ``.sinr`` file opened: its structure now, values when asked for.

    Attributes
    ----------
    variables : list of dict
        The header entry of each variable, in the original file's order.
    fields : list of str
        The compressed variables.
    """

    def __init__(self, source: bytes | str | Path, device: str = "auto"):
        data, self.source = api.read_source(source)
        self.header, self._sections = container.unpack(data, self.source)
        if not dataset.is_dataset(self.header):
            raise InputError(f"{self.source}: a single-field file, not a dataset file")
        self.variables = dataset.check(self.header, self.source)
        self.fields = [e["name"] for e in self.variables if "field" in e]
        self.nbytes_file = len(data)
        self.format_version = container.version_of(data)
        self._data = data
        self._device = device
        self._arrays: dict[str, api.SinrArray] = {}

    @property
    def dims(self) -> dict[str, int]:
        return {d["name"]: d["size"] for d in self.header["dataset"]["dims"]}

    @property
    def attrs(self) -> dict[str, Any]:
        return dataset.attrs_from_json(self.header["dataset"]["attrs"], self.source)

    def entry(self, name: str) -> dict[str, Any]:
        for e in self.variables:
            if e["name"] == name:
                return e
        raise InputError(f"{self.source}: no variable {name!r}")

    def field(self, name: str) -> api.SinrArray:
        """One compressed variable, opened lazily (decoded values, float)."""
        if name not in self._arrays:
            self._arrays[name] = api.SinrArray(self._data, device=self._device, variable=name)
            self._arrays[name].source = self.source
        return self._arrays[name]

    def raw(self, name: str, key: Any = ...) -> np.ndarray:
        """On-disk values of a variable: the stored array, or a field decoded and re-packed
        to its on-disk dtype (``scale_factor``/``add_offset``, fill value)."""
        e = self.entry(name)
        if "section" in e:
            return dataset.raw_values(e, self._sections, self.source)[key]
        attrs = dataset.attrs_from_json(e["attrs"], self.source)
        return dataset.pack(self.field(name)[key], e["dtype"], attrs)

    def write(self, path: str | Path, overwrite: bool = False) -> Path:
        """The whole dataset as NetCDF-4 (``.nc``) or HDF5 (``.h5``) with a ``history`` line."""
        path = Path(path)
        kind = write.ARRAY_SUFFIXES.get(path.suffix.lower())
        if kind not in ("netcdf", "hdf5"):
            raise OutputError(
                f"{path}: a dataset file is written as .nc or .h5 (or choose one variable "
                "with --var for .npy)"
            )
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        history = f"{stamp} sciinr {__version__}: decompressed from {Path(self.source).name}"
        writer = dataset.write_netcdf if kind == "netcdf" else dataset.write_hdf5
        try:
            with write.atomic_path(path, overwrite) as tmp:
                writer(tmp, self.header, lambda e: self.raw(e["name"]), history, self.source)
        except (OSError, RuntimeError) as exc:
            if isinstance(exc, OutputError):
                raise
            raise OutputError(f"{path}: cannot write {kind} output ({exc})") from None
        return path


def open_dataset_file(source: bytes | str | Path, device: str = "auto") -> DatasetFile:
    """Open a dataset ``.sinr`` file (see :class:`DatasetFile`)."""
    return DatasetFile(source, device=device)


def decompress_dataset(
    source: bytes | str | Path, out: str | Path, *, overwrite: bool = False, device: str = "auto"
) -> Path:
    """Write every variable of a dataset ``.sinr`` file to NetCDF-4 or HDF5."""
    return DatasetFile(source, device=device).write(out, overwrite=overwrite)


def info(data: bytes, name: str) -> dict[str, Any]:
    """:func:`sciinr.info` of a dataset file: totals, and one entry per variable."""
    f = DatasetFile(data)
    f.source = name
    per: dict[str, Any] = {}
    n_values = 0
    for v in f.fields:
        meta = api.info(data, variable=v)
        n_values += math.prod(meta["shape"])
        per[v] = {
            k: meta[k]
            for k in (
                "shape",
                "dims",
                "dtype",
                "psnr",
                "target_psnr",
                "value_range",
                "max_error",
                "networks",
            )
        }
        per[v]["bytes"] = sum(meta["sections"].values())
        per[v]["stored_dtype"] = f.entry(v)["dtype"]
    return {
        "source": name,
        "format_version": "{}.{}".format(*f.format_version),
        "written_by": f.header.get("sciinr"),
        "bytes": f.nbytes_file,
        "ratio": ratio(n_values, f.nbytes_file),
        "bits_per_value": bits_per_value(n_values, f.nbytes_file),
        "dims": f.dims,
        "variables": per,
        "stored_losslessly": [e["name"] for e in f.variables if "section" in e],
        "attrs": {k: _plain(v) for k, v in f.attrs.items()},
    }


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def to_sinr(
    obj: Any,
    path: str | Path,
    *,
    psnr: float | None = None,
    config: Config | None = None,
    variables: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Compress an ``xarray.Dataset`` or ``DataArray`` (NumPy- or dask-backed) to ``.sinr``.

    The dataset is written to a temporary NetCDF-4 file first (xarray's CF encoding: times,
    packing and fill values as in ``to_netcdf``; dask arrays are computed chunk by chunk),
    which is then compressed like :func:`compress_dataset`.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
    path : str or Path
        The ``.sinr`` file to write.
    psnr, config, overwrite, progress
        As for :func:`sciinr.compress`.
    variables : list of str, optional
        The data variables to compress (default: every 2-4-D float one).
    """
    import xarray as xr

    if isinstance(obj, xr.DataArray):
        obj = obj.to_dataset(name=obj.name if obj.name is not None else "data")
    if not isinstance(obj, xr.Dataset):
        raise InputError(f"to_sinr takes an xarray Dataset or DataArray, not {type(obj).__name__}")
    cfg = api.resolve_config(config, psnr, None)
    write.check_destination(Path(path), overwrite)
    parent = Path(path).parent if str(Path(path).parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=".sciinr-", suffix=".nc", dir=parent)
    os.close(fd)
    try:
        obj.to_netcdf(tmp, engine="netcdf4", format="NETCDF4")
        blob, _ = compress_dataset_volumes(
            tmp, variables, cfg, progress=progress, source_name="<xarray>"
        )
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return write.write_bytes(Path(path), blob, overwrite=overwrite)
