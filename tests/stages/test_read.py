import h5py
import netCDF4
import numpy as np
import pytest

from sciinr import InputError
from sciinr.stages import read


def _nc(path, data, name="temp", dims=("time", "z", "y", "x"), packed=False):
    with netCDF4.Dataset(path, "w") as ds:
        for d, n in zip(dims, data.shape, strict=True):
            ds.createDimension(d, n)
        if packed:
            v = ds.createVariable(name, "i2", dims)
            v.scale_factor = 0.5
            v.add_offset = 100.0
            v.set_auto_maskandscale(True)
        else:
            v = ds.createVariable(name, data.dtype, dims)
        v.units = "K"
        v[...] = data
        ds.createVariable("other", "f4", (dims[-1],))[...] = np.zeros(data.shape[-1])


def test_hdf5_with_dimension_labels(tmp_path, field):
    p = tmp_path / "f.h5"
    with h5py.File(p, "w") as fh:
        ds = fh.create_dataset("grp/rho", data=field)
        for i, n in enumerate(["time", "z", "y", "x"]):
            ds.dims[i].label = n
        ds.attrs["units"] = "kg/m3"
    vol = read.read(p, var="grp/rho")
    assert vol.has_time
    assert vol.dims == ("time", "z", "y", "x")
    assert vol.attrs == {"units": "kg/m3"}
    np.testing.assert_array_equal(vol.data, field)


def test_netcdf_static_and_2d_time(tmp_path, field):
    p = tmp_path / "s.nc"
    _nc(p, field[0], dims=("z", "y", "x"))
    vol = read.read(p, var="temp")
    assert not vol.has_time
    assert vol.data.shape == (1, *field.shape[1:])
    p2 = tmp_path / "t.nc"
    _nc(p2, field[:, 0], dims=("time", "lat", "lon"))
    vol = read.read(p2, var="temp")
    assert vol.has_time
    assert vol.data.shape == (field.shape[0], 1, *field.shape[2:])
    vol = read.read(p2, var="temp", time_dim="none")
    assert not vol.has_time


def test_netcdf_packed_int16_unpacks(tmp_path):
    data = np.linspace(90, 110, 2 * 3 * 4 * 5).reshape(2, 3, 4, 5).astype(np.float32)
    p = tmp_path / "p.nc"
    _nc(p, data, packed=True)
    vol = read.read(p, var="temp")
    np.testing.assert_allclose(vol.data, data, atol=0.25 + 1e-6)
    assert vol.attrs["sciinr_unpacked_from"] == "int16"


def test_npy(tmp_path, field):
    p = tmp_path / "a.npy"
    np.save(p, field)
    vol = read.read(p)
    assert vol.has_time
    assert vol.orig_shape == field.shape


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "directory"),
        (lambda p: p.write_bytes(b"hello world"), "not an HDF5, NetCDF or .npy"),
        (lambda p: np.save(p, np.zeros((4, 4), np.int32)), "dtype int32"),
        (lambda p: np.save(p, np.zeros((4, 4), np.complex64)), "dtype complex64"),
        (lambda p: np.save(p, np.zeros(4, np.float32)), "1 dimensions"),
        (lambda p: np.save(p, np.zeros((2, 2, 2, 2, 2), np.float32)), "5 dimensions"),
        (lambda p: np.save(p, np.zeros((0, 4), np.float32)), "empty"),
        (lambda p: np.save(p, np.array([[1, np.inf]], np.float32)), "1 infinite values"),
    ],
)
def test_bad_inputs(tmp_path, make, match):
    p = tmp_path / "x.npy"
    make(p)
    with pytest.raises(InputError, match=match) as info:
        read.read(p)
    assert "\n" not in str(info.value)


def test_unknown_variable_lists_existing(tmp_path, field):
    p = tmp_path / "f.nc"
    _nc(p, field)
    with pytest.raises(InputError, match=r"'dens' not found \(has: temp\)"):
        read.read(p, var="dens")
    h = tmp_path / "f.h5"
    with h5py.File(h, "w") as fh:
        fh["a"] = field
        fh["b"] = np.zeros((3, 3), np.int16)
    with pytest.raises(InputError, match=r"choose one with --var \(has: a, b\)"):
        read.read(h)
    with pytest.raises(InputError, match="dtype int16"):
        read.read(h, var="b")
