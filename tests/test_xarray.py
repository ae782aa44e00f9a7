"""The xarray backend (engine="sciinr") and sciinr.to_sinr."""

from __future__ import annotations

import importlib.metadata
import pickle
from pathlib import Path

import numpy as np
import pytest
import tomllib

xr = pytest.importorskip("xarray")

import sciinr  # noqa: E402
from sciinr.metrics import psnr  # noqa: E402
from sciinr.xarray_backend import SinrBackendArray, SinrBackendEntrypoint  # noqa: E402

from .conftest import smooth_field, tiny  # noqa: E402
from .test_dataset import SCALE, make_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENGINE = SinrBackendEntrypoint  # works whether or not the entry points are installed


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("xr")
    src = d / "in.nc"
    theta, wind = make_dataset(src)
    sinr = d / "ds.sinr"
    sciinr.compress_dataset(src, variables="all", config=tiny(30.0), out=sinr)
    return src, sinr, theta, wind


def assert_same_structure(a, b):
    assert list(a.variables) == list(b.variables)
    assert dict(a.sizes) == dict(b.sizes)
    assert set(a.coords) == set(b.coords)
    assert set(a.data_vars) == set(b.data_vars)
    assert a.attrs == {k: v for k, v in b.attrs.items() if k != "history"} or a.attrs == b.attrs
    for n in a.variables:
        assert a[n].dims == b[n].dims, n
        assert a[n].dtype == b[n].dtype, n
        assert a[n].encoding.get("dtype") == b[n].encoding.get("dtype"), n
        assert a[n].attrs.keys() == b[n].attrs.keys(), n
        for k, v in a[n].attrs.items():
            np.testing.assert_array_equal(v, b[n].attrs[k])
    for n in a.coords:
        np.testing.assert_array_equal(a[n].values, b[n].values)


def test_open_dataset_matches_the_original(files):
    src, sinr, theta, wind = files
    a = xr.open_dataset(src)
    b = xr.open_dataset(sinr, engine=ENGINE)
    assert_same_structure(a, b)
    assert b["time"].dtype.kind == "M"  # CF-decoded times
    assert b["wind"].encoding["scale_factor"] == SCALE
    assert psnr(theta, b["theta"].values) >= 30
    assert psnr(wind, b["wind"].values) >= 29  # packed to the int16 grid after decoding
    # lazy: an index decodes only that part, with the same values as the whole
    np.testing.assert_array_equal(b["theta"][1, 2:5].values, b["theta"].values[1, 2:5])
    np.testing.assert_array_equal(b["theta"].isel(x=3).values, b["theta"].values[..., 3])


def test_backend_array_pickles_and_is_thread_safe(files):
    _, sinr, _, _ = files
    b = xr.open_dataset(sinr, engine=ENGINE)
    arr = SinrBackendArray(str(sinr), "theta", b["theta"].shape, np.dtype("float32"), None, "cpu")
    again = pickle.loads(pickle.dumps(arr))
    key = (1, slice(0, 4), slice(None), slice(2, 9))
    np.testing.assert_array_equal(again._raw_indexing_method(key), arr._raw_indexing_method(key))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda t: arr._raw_indexing_method((t,)), range(4)))
    np.testing.assert_array_equal(np.stack(parts), arr._raw_indexing_method((slice(None),)))


def test_dask_chunks(files):
    pytest.importorskip("dask")
    _, sinr, theta, _ = files
    b = xr.open_dataset(sinr, engine=ENGINE, chunks={"time": 1})
    assert b["theta"].chunks[0] == (1, 1, 1, 1)
    assert psnr(theta, b["theta"].compute().values) >= 30


def test_single_field_file(tmp_path):
    field = smooth_field()
    path = tmp_path / "f.sinr"
    sciinr.compress(field, config=tiny(30.0), out=path)
    ds = xr.open_dataset(path, engine=ENGINE)
    assert list(ds.data_vars) == ["data"]
    assert ds["data"].dims == ("time", "z", "y", "x")
    assert psnr(field, ds["data"].values) >= 30


def test_guess_can_open_never_raises(tmp_path, files):
    _, sinr, _, _ = files
    e = SinrBackendEntrypoint()
    renamed = tmp_path / "no_suffix"
    renamed.write_bytes(sinr.read_bytes())
    assert e.guess_can_open(renamed)  # by magic
    assert e.guess_can_open(tmp_path / "missing.sinr")  # by extension
    assert not e.guess_can_open(tmp_path / "missing.nc")
    assert not e.guess_can_open(tmp_path)  # a directory
    assert not e.guess_can_open(12)
    nc = tmp_path / "x.sinr.nc"
    nc.write_bytes(b"CDF\x01" + bytes(40))
    assert not e.guess_can_open(nc)


def test_to_sinr_dataset_dataarray_and_dask(tmp_path, files):
    src, _, theta, _ = files
    a = xr.open_dataset(src)
    out = sciinr.to_sinr(a, tmp_path / "a.sinr", config=tiny(30.0))
    assert_same_structure(a, xr.open_dataset(out, engine=ENGINE))
    da = xr.DataArray(theta, dims=("time", "z", "y", "x"), name="theta", attrs={"units": "K"})
    out = sciinr.to_sinr(da.chunk({"time": 2}), tmp_path / "b.sinr", config=tiny(30.0))
    b = xr.open_dataset(out, engine=ENGINE)
    assert b["theta"].attrs == {"units": "K"}
    assert psnr(theta, b["theta"].values) >= 30
    assert not list(tmp_path.glob(".sciinr-*"))  # the temporary NetCDF is gone


def test_entry_point_declared():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    target = meta["project"]["entry-points"]["xarray.backends"]["sciinr"]
    assert target == "sciinr.xarray_backend:SinrBackendEntrypoint"
    eps = importlib.metadata.entry_points(group="xarray.backends")
    if not any(ep.name == "sciinr" for ep in eps):
        pytest.skip("sciinr's entry points are not installed (re-run pip install -e .)")
    assert "sciinr" in xr.backends.list_engines()


def test_missing_values_come_back_where_they_were(tmp_path):
    import netCDF4

    src = tmp_path / "m.nc"
    make_dataset(src)
    with netCDF4.Dataset(src, "a") as ds:  # land: a corner of every step, in both fields
        ds["theta"][:, :, :4, :5] = np.ma.masked
        ds["wind"][:, :, :4, :5] = np.ma.masked
    sinr = sciinr.compress_dataset(src, variables="all", config=tiny(30.0), out=tmp_path / "m.sinr")
    a = xr.open_dataset(src)
    b = xr.open_dataset(sinr, engine=ENGINE)
    for name in ("theta", "wind"):
        missing = np.isnan(a[name].values)
        assert missing.sum() == 4 * 8 * 4 * 5
        np.testing.assert_array_equal(np.isnan(b[name].values), missing)
        assert psnr(a[name].values[~missing], b[name].values[~missing]) >= 29
    back = tmp_path / "m_back.nc"
    sciinr.decompress_dataset(sinr, back)
    c = xr.open_dataset(back)
    np.testing.assert_array_equal(np.isnan(c["wind"].values), np.isnan(a["wind"].values))
