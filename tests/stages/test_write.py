"""The write stage: atomic files, refusals, arrays with their names, dims and attrs."""

from __future__ import annotations

import h5py
import netCDF4
import numpy as np
import pytest

from sciinr import OutputError
from sciinr.stages import write


def test_write_bytes_is_atomic_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "f.sinr"
    assert write.write_bytes(out, b"abc") == out
    assert out.read_bytes() == b"abc"
    with pytest.raises(OutputError, match="already exists"):
        write.write_bytes(out, b"xyz")
    assert out.read_bytes() == b"abc"
    write.write_bytes(out, b"xyz", overwrite=True)
    assert out.read_bytes() == b"xyz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.sinr"]  # no temporary left


def test_destinations_are_checked_before_any_work(tmp_path):
    with pytest.raises(OutputError, match="is a directory"):
        write.check_destination(tmp_path, overwrite=True)
    with pytest.raises(OutputError, match="does not exist"):
        write.check_destination(tmp_path / "no" / "f.sinr", overwrite=False)
    with pytest.raises(OutputError, match="unknown output type"):
        write.check_array_destination(tmp_path / "f.txt", overwrite=False)
    write.check_array_destination(tmp_path / "f.nc", overwrite=False)  # fine


@pytest.mark.parametrize("suffix", [".npy", ".h5", ".nc"])
def test_write_array_keeps_values_dims_and_attrs(tmp_path, suffix):
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    attrs = {"units": "K", "scale": 2.5}
    out = write.write_array(
        tmp_path / f"out{suffix}", array, variable="T", dims=("time", "y", "x"), attrs=attrs
    )
    if suffix == ".npy":
        np.testing.assert_array_equal(np.load(out), array)
    elif suffix == ".h5":
        with h5py.File(out) as fh:
            ds = fh["T"]
            np.testing.assert_array_equal(ds[...], array)
            assert [d.label for d in ds.dims] == ["time", "y", "x"]
            assert ds.attrs["units"] == "K"
            assert ds.attrs["scale"] == 2.5
    else:
        with netCDF4.Dataset(out) as nc:
            var = nc["T"]
            np.testing.assert_array_equal(var[...], array)
            assert var.dimensions == ("time", "y", "x")
            assert var.getncattr("units") == "K"
            assert var.getncattr("scale") == 2.5


def test_write_array_names_missing_dims(tmp_path):
    out = write.write_array(tmp_path / "o.nc", np.zeros((2, 3), np.float32), dims=("a",))
    with netCDF4.Dataset(out) as nc:
        assert nc["data"].dimensions == ("dim0", "dim1")
