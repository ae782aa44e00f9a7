"""xarray backend ``engine="sciinr"``: ``xr.open_dataset("f.sinr")`` with lazy, block-wise decoding.

Registered through the ``xarray.backends`` entry point. A dataset file gives back the
variables, dimensions, coordinates and attributes of the original; its compressed fields are
decoded lazily (an index decodes only the blocks it touches) and handed to xarray in their
on-disk form (packed integers, fill values), so xarray's CF decoding gives the same dtypes and
encodings as for the original file. A single-field file gives one variable.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from xarray.backends import BackendArray, BackendEntrypoint
from xarray.core import indexing

from . import api
from .stages import container, dataset


class SinrBackendArray(BackendArray):
    """One compressed variable of a ``.sinr`` file, decoded on indexing.

    Keeps the path, not an open handle: it pickles (for dask) and opens the file again
    in another process; within one process the opened file is shared under a lock.
    """

    def __init__(
        self,
        path: str,
        variable: str | None,
        shape: tuple[int, ...],
        dtype: np.dtype,
        pack: tuple[str, dict[str, Any]] | None,
        device: str,
    ):
        self.path = path
        self.variable = variable
        self.shape = shape
        self.dtype = dtype
        self.pack = pack  # (on-disk dtype, attrs) of a dataset field; None: decoded values
        self.device = device
        self._lock = threading.Lock()
        self._arr: api.SinrArray | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_arr"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.BASIC, self._raw_indexing_method
        )

    def _raw_indexing_method(self, key: tuple[Any, ...]) -> np.ndarray:
        with self._lock:  # one decode at a time per file (torch decodes with all threads)
            if self._arr is None:
                self._arr = api.open(self.path, device=self.device, variable=self.variable)
            values = self._arr[key]
        if self.pack is None:
            return values
        return dataset.pack(values, *self.pack)


def _variables_of_dataset_file(
    path: str, header: dict[str, Any], sections: dict[str, bytes], device: str
) -> tuple[dict[str, xr.Variable], dict[str, Any]]:
    entries = dataset.check(header, path)
    out: dict[str, xr.Variable] = {}
    for e in entries:
        attrs = dataset.attrs_from_json(e["attrs"], path)
        if "section" in e:
            data: Any = dataset.raw_values(e, sections, path)
        else:
            dt = np.dtype(e["dtype"])
            arr = SinrBackendArray(
                path, e["name"], tuple(e["shape"]), dt, (e["dtype"], attrs), device
            )
            data = indexing.LazilyIndexedArray(arr)
        out[e["name"]] = xr.Variable(tuple(e["dims"]), data, attrs)
    gattrs = dataset.attrs_from_json(header["dataset"]["attrs"], path)
    return out, gattrs


class SinrBackendEntrypoint(BackendEntrypoint):
    """Open ``.sinr`` files with ``xr.open_dataset(path, engine="sciinr")``."""

    description = "Open sciinr .sinr files (neural compression of scientific fields) in xarray"
    url = "https://github.com/sciinr/sciinr"
    open_dataset_parameters = (
        "filename_or_obj",
        "drop_variables",
        "mask_and_scale",
        "decode_times",
        "decode_timedelta",
        "use_cftime",
        "concat_characters",
        "decode_coords",
        "device",
    )

    def open_dataset(  # type: ignore[override]
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | list[str] | None = None,
        mask_and_scale: bool = True,
        decode_times: bool = True,
        decode_timedelta: bool | None = None,
        use_cftime: bool | None = None,
        concat_characters: bool = True,
        decode_coords: bool | str = True,
        device: str = "auto",
    ) -> xr.Dataset:
        """Open a ``.sinr`` file; values are decoded when indexed (or loaded).

        Parameters
        ----------
        filename_or_obj : str or Path
        drop_variables : str or list of str, optional
        mask_and_scale, decode_times, decode_timedelta, use_cftime, concat_characters,
        decode_coords
            xarray's CF decoding options, as for ``engine="netcdf4"``.
        device : {"auto", "cpu", "cuda"}, default: "auto"
            Where the networks are evaluated.
        """
        path = os.fspath(filename_or_obj)
        data, name = api.read_source(path)
        header, sections = container.unpack(data, name)
        if dataset.is_dataset(header):
            variables, attrs = _variables_of_dataset_file(path, header, sections, device)
        else:
            arr = api.SinrArray(data, device=device)
            lazy = SinrBackendArray(path, None, arr.shape, arr.dtype, None, device)
            variables = {
                arr.variable: xr.Variable(arr.dims, indexing.LazilyIndexedArray(lazy), arr.attrs)
            }
            attrs = {}
        vars_, attrs, coord_names = xr.conventions.decode_cf_variables(
            variables,
            attrs,
            mask_and_scale=mask_and_scale,
            decode_times=decode_times,
            concat_characters=concat_characters,
            decode_coords=decode_coords,
            drop_variables=drop_variables,
            use_cftime=use_cftime,
            decode_timedelta=decode_timedelta,
        )
        # as xarray's own stores: coordinates (and dimension coordinates) apart, file order kept
        data_vars, coord_vars = {}, {}
        for n, var in vars_.items():
            if n in coord_names or var.dims == (n,):
                coord_vars[n] = var
            else:
                data_vars[n] = var
        coords = xr.Coordinates(coord_vars, indexes={})
        return xr.Dataset(data_vars, coords=coords, attrs=attrs)

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """A path whose first bytes are the ``.sinr`` magic, or that ends in ``.sinr``."""
        try:
            path = Path(os.fspath(filename_or_obj))
        except TypeError:
            return False
        try:
            with open(path, "rb") as fh:
                return fh.read(len(container.MAGIC)) == container.MAGIC
        except OSError:
            return path.suffix.lower() == ".sinr"
