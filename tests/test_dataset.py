"""Dataset files: several variables with their coordinates, attributes and packing."""

from __future__ import annotations

import h5py
import netCDF4
import numpy as np
import pytest

import sciinr
from sciinr import FormatError, InputError, datafile
from sciinr.cli import main
from sciinr.metrics import psnr
from sciinr.stages import container, dataset

from .conftest import smooth_field, tiny

SCALE, OFFSET = 0.002, 10.0


def make_dataset(path, t=4):
    """A small CF dataset: a float field, an int16-packed field, coordinates, bounds, a grid
    mapping, an auxiliary 2-D coordinate and global attributes."""
    theta = smooth_field(t=t)
    wind = smooth_field(t=t, seed=5) - 3
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        ds.Conventions = "CF-1.8"
        ds.title = "test"
        ds.history = "made by a test"
        ds.createDimension("time", None)
        for name, n in (("z", 8), ("y", 16), ("x", 16), ("bnds", 2)):
            ds.createDimension(name, n)
        tv = ds.createVariable("time", "f8", ("time",))
        tv.units = "hours since 2000-01-01 00:00:00"
        tv.calendar = "gregorian"
        tv.standard_name = "time"
        tv[:] = np.arange(t) * 6.0
        zv = ds.createVariable("z", "i4", ("z",))
        zv.positive = "up"
        zv[:] = np.arange(8) * 100
        for name in ("y", "x"):
            v = ds.createVariable(name, "f4", (name,))
            v.units = "km"
            v.bounds = f"{name}_bnds"
            v[:] = np.linspace(0, 15, 16)
            b = ds.createVariable(f"{name}_bnds", "f4", (name, "bnds"))
            b[:] = np.stack([np.linspace(0, 15, 16) - 0.5, np.linspace(0, 15, 16) + 0.5], 1)
        crs = ds.createVariable("crs", "i4", ())
        crs.grid_mapping_name = "latitude_longitude"
        crs.semi_major_axis = 6371000.0
        lat = ds.createVariable("lat", "f8", ("y", "x"))
        lat.units = "degrees_north"
        lat[:] = np.add.outer(np.arange(16.0), np.arange(16.0) / 100)
        th = ds.createVariable("theta", "f4", ("time", "z", "y", "x"), fill_value=np.float32(-999))
        th.units = "K"
        th.grid_mapping = "crs"
        th.coordinates = "lat"
        th.valid_range = np.array([0, 100], np.float32)
        th[:] = theta
        w = ds.createVariable("wind", "i2", ("time", "z", "y", "x"), fill_value=np.int16(-32767))
        w.scale_factor = SCALE
        w.add_offset = OFFSET
        w.units = "m s-1"
        w[:] = wind
    return theta, wind


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    src = d / "in.nc"
    theta, wind = make_dataset(src)
    out = sciinr.compress_dataset(src, variables="all", config=tiny(30.0), out=d / "ds.sinr")
    return src, out, theta, wind


def test_structure_and_values(sample, tmp_path):
    src, sinr, theta, wind = sample
    f = datafile.DatasetFile(sinr)
    assert f.format_version == (2, 0)
    assert f.fields == ["theta", "wind"]
    names = [e["name"] for e in f.variables]
    assert names == ["time", "z", "y", "y_bnds", "x", "x_bnds", "crs", "lat", "theta", "wind"]
    assert psnr(theta, sciinr.decompress(sinr, variable="theta")) >= 30
    assert psnr(wind, sciinr.decompress(sinr, variable="wind")) >= 30
    with netCDF4.Dataset(src) as ds:
        ds.set_auto_maskandscale(False)
        for n in ("time", "z", "y", "y_bnds", "crs", "lat"):
            got = f.raw(n)
            assert got.dtype == ds[n].dtype
            np.testing.assert_array_equal(got, ds[n][...])
    with pytest.raises(InputError, match="holds 2 compressed variables"):
        sciinr.open(sinr)
    meta = sciinr.info(sinr)
    assert set(meta["variables"]) == {"theta", "wind"}
    assert meta["variables"]["wind"]["stored_dtype"] == "int16"
    assert meta["dims"] == {"time": 4, "z": 8, "y": 16, "x": 16, "bnds": 2}


def test_netcdf_round_trip(sample, tmp_path):
    src, sinr, _, _ = sample
    out = tmp_path / "back.nc"
    assert main(["decompress", str(sinr), "-o", str(out), "-q"]) == 0
    with netCDF4.Dataset(src) as a, netCDF4.Dataset(out) as b:
        assert list(b.dimensions) == list(a.dimensions)
        assert b.dimensions["time"].isunlimited()
        assert b.title == "test"
        assert b.history.startswith("made by a test\n")
        assert "sciinr" in b.history.splitlines()[-1]
        assert list(b.variables) == list(a.variables)
        for n, va in a.variables.items():
            vb = b.variables[n]
            assert vb.dtype == va.dtype
            assert vb.dimensions == va.dimensions
            assert set(vb.ncattrs()) == set(va.ncattrs())
            for k in va.ncattrs():
                np.testing.assert_array_equal(vb.getncattr(k), va.getncattr(k))
                assert np.asarray(vb.getncattr(k)).dtype == np.asarray(va.getncattr(k)).dtype
        assert b["wind"].scale_factor == SCALE
        a.set_auto_maskandscale(False)
        b.set_auto_maskandscale(False)
        packed = b["wind"][...]
        assert packed.dtype == np.int16
        # the packed integers are the decoded field, rounded to the packing grid
        decoded = sciinr.decompress(sinr, variable="wind")
        np.testing.assert_allclose(packed * SCALE + OFFSET, decoded, atol=SCALE / 2 + 1e-6)


def test_hdf5_output_has_dimension_scales(sample, tmp_path):
    _, sinr, _, _ = sample
    out = tmp_path / "back.h5"
    datafile.decompress_dataset(sinr, out)
    with h5py.File(out) as fh:
        th = fh["theta"]
        assert [d.label for d in th.dims] == ["time", "z", "y", "x"]
        assert [d[0].name for d in th.dims] == ["/time", "/z", "/y", "/x"]
        assert fh["time"].is_scale
        np.testing.assert_array_equal(th.dims[1][0][...], np.arange(8) * 100)
        assert fh["wind"].dtype == np.int16
        assert fh["bnds"].is_scale  # a dimension without a coordinate variable


def test_one_variable_keeps_what_it_names(tmp_path):
    src = tmp_path / "in.nc"
    theta, _ = make_dataset(src)
    blob = sciinr.compress_dataset(src, variables=["theta"], config=tiny(30.0))
    f = datafile.DatasetFile(blob)
    names = [e["name"] for e in f.variables]
    # coordinates of its dims, their bounds, its grid mapping and auxiliary coordinate
    assert names == ["time", "z", "y", "y_bnds", "x", "x_bnds", "crs", "lat", "theta"]
    assert psnr(theta, sciinr.decompress(blob)) >= 30  # one field: no variable= needed


def test_time_and_crop_cut_the_coordinates(tmp_path):
    src = tmp_path / "in.nc"
    theta, _ = make_dataset(src)
    out = tmp_path / "cut.sinr"
    args = ["compress", str(src), "-o", str(out), "--var", "theta", "--time", "1:3"]
    args += ["--crop", "0:8,2:10,:", "--block", "2,8,8,8", "--width", "16", "--depth", "1"]
    args += ["--max-steps", "600", "--device", "cpu", "--psnr", "25", "-q"]
    assert main(args) == 0
    f = datafile.DatasetFile(out)
    assert f.dims == {"time": 2, "z": 8, "y": 8, "x": 16, "bnds": 2}
    np.testing.assert_array_equal(f.raw("time"), [6.0, 12.0])
    np.testing.assert_array_equal(f.raw("y"), np.linspace(0, 15, 16)[2:10].astype(np.float32))
    assert f.raw("lat").shape == (8, 16)
    arr = sciinr.open(out)
    assert arr.shape == (2, 8, 8, 16)
    assert arr.header["selection"] == {
        "source_shape": [4, 8, 16, 16],
        "start": [1, 0, 2, 0],
        "stop": [3, 8, 10, 16],
    }
    assert psnr(theta[1:3, :, 2:10], arr[...]) >= 25


def test_typed_attributes_round_trip():
    values = {
        "s": "text",
        "f": np.float64(np.nan),
        "i": np.int16(-3),
        "a": np.array([1.5, np.inf], np.float32),
        "l": np.array(["a", "b"]),
    }
    back = dataset.attrs_from_json(dataset.attrs_to_json(values), "x")
    assert back["s"] == "text"
    assert np.isnan(back["f"])
    assert back["f"].dtype == np.float64
    assert back["i"] == -3
    assert back["i"].dtype == np.int16
    np.testing.assert_array_equal(back["a"], values["a"])
    assert back["a"].dtype == np.float32
    assert back["l"] == ["a", "b"]
    with pytest.raises(FormatError):
        dataset.attrs_from_json({"x": {"dtype": "object", "values": [1]}}, "x")
    with pytest.raises(FormatError):
        dataset.attrs_from_json({"x": {"dtype": "int8", "values": [1000]}}, "x")


def test_corrupted_dataset_header_is_a_format_error(sample):
    _, sinr, _, _ = sample
    header, sections = container.unpack(sinr.read_bytes())
    entry = header["dataset"]["variables"][0]
    for key, bad in (("shape", [5]), ("dtype", "object"), ("section", "r999x")):
        broken = {**header, "dataset": {**header["dataset"]}}
        broken["dataset"]["variables"] = [{**entry, key: bad}, *header["dataset"]["variables"][1:]]
        with pytest.raises(FormatError, match="corrupted header"):
            datafile.DatasetFile(container.pack(broken, sections, version=(2, 0)))
    f = datafile.DatasetFile(
        container.pack(header, {k: v for k, v in sections.items() if k != "r0"}, version=(2, 0))
    )
    with pytest.raises(FormatError, match="missing sections"):
        f.raw("time")


def test_cli_report_of_a_dataset(tmp_path, capsys):
    src = tmp_path / "in.nc"
    make_dataset(src)
    out = tmp_path / "o.sinr"
    args = ["compress", str(src), "--var", "all", "-o", str(out), "--block", "2,8,8,8"]
    args += ["--width", "16", "--depth", "1", "--max-steps", "300", "--device", "cpu"]
    assert main([*args, "--psnr", "25"]) == 0
    text = capsys.readouterr().out
    blocks = text.split("\n\n")
    assert [b.split()[1] for b in blocks[1:3]] == ["theta", "wind"]
    assert "dims          time=4 z=8 y=16 x=16" in blocks[1]
    n_values = 2 * 4 * 8 * 16 * 16
    total = blocks[3].split()
    assert total[0] == "total"
    assert float(total[1].rstrip("x")) == pytest.approx(4 * n_values / out.stat().st_size, abs=0.05)
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "lossless      time, z, y, y_bnds, x, x_bnds, crs, lat" in info
    assert info.count("no pointwise guarantee") == 2
