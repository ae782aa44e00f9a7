import h5py
import netCDF4
import numpy as np
import pytest

from sciinr.cli import main
from sciinr.metrics import psnr

from .conftest import smooth_field

TINY = [
    "--base",
    "none",
    "--block",
    "2,8,8,8",
    "--width",
    "16",
    "--depth",
    "1",
    "--samples-per-net",
    "512",
    "--eval-every",
    "50",
    "--device",
    "cpu",
    "-q",
]


@pytest.fixture(scope="module")
def sinr_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    src = d / "in.nc"
    field = smooth_field()
    with netCDF4.Dataset(src, "w") as ds:
        for name, n in zip(("time", "z", "y", "x"), field.shape, strict=True):
            ds.createDimension(name, n)
        v = ds.createVariable("theta", "f4", ("time", "z", "y", "x"))
        v.units = "K"
        v[...] = field
    out = d / "out.sinr"
    assert (
        main(["compress", str(src), "-o", str(out), "--var", "theta", "--psnr", "30", *TINY]) == 0
    )
    return field, out


def test_compress_decompress_formats(tmp_path, sinr_file, capsys):
    field, sinr = sinr_file
    for name in ("a.npy", "a.h5", "a.nc"):
        assert main(["decompress", str(sinr), "-o", str(tmp_path / name), "-q"]) == 0
    assert psnr(field, np.load(tmp_path / "a.npy")) >= 30
    with h5py.File(tmp_path / "a.h5") as fh:
        assert [d.label for d in fh["theta"].dims] == ["time", "z", "y", "x"]
        assert fh["theta"].attrs["units"] == "K"
    with netCDF4.Dataset(tmp_path / "a.nc") as ds:
        assert ds["theta"].dimensions == ("time", "z", "y", "x")
        assert ds["theta"].units == "K"


def test_time_and_region(tmp_path, sinr_file):
    _, sinr = sinr_file
    assert main(["decompress", str(sinr), "-o", str(tmp_path / "full.npy"), "-q"]) == 0
    assert main(["decompress", str(sinr), "-o", str(tmp_path / "t.nc"), "--time", "1", "-q"]) == 0
    assert (
        main(
            [
                "decompress",
                str(sinr),
                "-o",
                str(tmp_path / "r.npy"),
                "--region",
                "0:2,1:3,:,4",
                "-q",
            ]
        )
        == 0
    )
    full = np.load(tmp_path / "full.npy")
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), full[0:2, 1:3, :, 4], atol=1e-5)
    with netCDF4.Dataset(tmp_path / "t.nc") as ds:
        assert ds["theta"].dimensions == ("z", "y", "x")
        np.testing.assert_allclose(ds["theta"][...], full[1], atol=1e-5)


def test_info(sinr_file, capsys):
    _, sinr = sinr_file
    assert main(["info", str(sinr)]) == 0
    out = capsys.readouterr().out
    for word in ("ratio", "PSNR", "max error", "networks", "parameters", "sparsity", "theta"):
        assert word in out
    assert "time=4 z=8 y=16 x=16" in out
    assert "no pointwise guarantee" in out


def test_info_of_a_base_file(tmp_path, capsys):
    src, out = tmp_path / "f.npy", tmp_path / "f.sinr"
    np.save(src, smooth_field())
    assert main(["compress", str(src), "-o", str(out), "--psnr", "35", "-q"]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    lines = dict(
        line.split(None, 1) for line in capsys.readouterr().out.splitlines() if " " in line
    )
    assert "networks" not in lines
    assert "ranks" in lines["base"]
    assert "no block networks" in lines["base"]
    assert float(lines["PSNR"].split()[0]) >= 35.0


def _error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("sciinr: error: ")
    assert "\n" not in err
    assert "Traceback" not in err
    return err


def test_one_line_errors(tmp_path, sinr_file, capsys):
    field, sinr = sinr_file
    assert main(["compress", str(tmp_path / "missing.h5"), "-o", str(tmp_path / "o.sinr")]) == 2
    assert "missing.h5: no such file" in _error_line(capsys)
    src = tmp_path / "ints.h5"
    with h5py.File(src, "w") as fh:
        fh["count"] = np.zeros((4, 4, 4), np.int32)
        fh["rho"] = field
    assert main(["compress", str(src), "-o", str(tmp_path / "o.sinr"), "--var", "nope"]) == 2
    assert "'nope' not found (has: count, rho)" in _error_line(capsys)
    assert main(["compress", str(src), "-o", str(tmp_path / "o.sinr"), "--var", "count"]) == 2
    assert "dtype int32" in _error_line(capsys)
    bad = tmp_path / "cut.sinr"
    bad.write_bytes(sinr.read_bytes()[:-7])
    assert main(["decompress", str(bad), "-o", str(tmp_path / "o.npy")]) == 2
    assert "truncated" in _error_line(capsys)
    assert (
        main(
            ["compress", str(src), "-o", str(tmp_path / "o.sinr"), "--var", "rho", "--psnr", "500"]
        )
        == 2
    )
    assert "psnr" in _error_line(capsys)
    assert not (tmp_path / "o.sinr").exists()
    assert not (tmp_path / "o.npy").exists()


def test_help_on_every_command(capsys):
    for cmd in ("compress", "decompress", "info", "demo"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        assert "usage: sciinr " + cmd in capsys.readouterr().out


def test_quiet_prints_nothing_and_verbose_has_no_blank_lines(tmp_path, capsys, caplog):
    src = tmp_path / "f.npy"
    np.save(src, smooth_field(t=2))
    fast = [a for a in TINY if a != "-q"] + ["--max-steps", "100", "--prune", "0"]
    assert main(["compress", str(src), "-o", str(tmp_path / "q.sinr"), *fast, "-q"]) == 0
    assert capsys.readouterr() == ("", "")
    assert main(["compress", str(src), "-o", str(tmp_path / "v.sinr"), *fast, "-vv"]) == 0
    out, err = capsys.readouterr()
    assert any(r.levelname == "DEBUG" for r in caplog.records)  # pytest holds the log
    assert "\r" not in err  # no progress bar under -vv: the debug log reports progress
    assert "" not in err.rstrip("\n").split("\n")[1:]  # no blank lines
    assert "ratio" in out


def test_var_lists_repeats_abbreviations_and_dims(tmp_path, capsys):
    src = tmp_path / "series.npy"
    np.save(src, smooth_field(t=4)[:, 0])  # (t, y, x)
    out = tmp_path / "o.sinr"
    base = ["compress", str(src), "-o", str(out)]
    with pytest.raises(SystemExit) as exc:
        main([*base, "--var", "a", "--var", "b"])
    assert exc.value.code == 2
    assert "--var given twice" in capsys.readouterr().err
    assert main([*base, "--var", "a,b", *TINY]) == 2
    assert "need a NetCDF input" in _error_line(capsys)
    with pytest.raises(SystemExit):
        main([*base, "--tim", "0:2"])  # no abbreviation of --time(-dim)
    assert "unrecognized arguments: --tim" in capsys.readouterr().err
    fast = [*TINY, "--max-steps", "100", "--prune", "0"]
    assert main([*base, "--dims", "t,y,x", "--time", "1:3", *fast]) == 0
    arr = sciinr_open(out)
    assert arr.dims == ("t", "y", "x")
    assert arr.has_time
    assert arr.shape == (2, 16, 16)


def sciinr_open(path):
    import sciinr

    return sciinr.open(path)
