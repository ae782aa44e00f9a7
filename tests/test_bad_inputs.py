"""The bad-input catalogue, through the command line as a user meets it.

Each bad input must end with exit code 2 and exactly one stderr line that names the file
and what is wrong (no traceback), and must leave no output behind. The inputs that are
unusual but valid (a constant field, a field smaller than one block, huge block sizes)
must compress and decompress.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pytest
import torch

import sciinr
from sciinr.cli import main
from sciinr.metrics import psnr
from sciinr.stages import container

from .conftest import smooth_field

FAST = [
    "--width",
    "8",
    "--depth",
    "1",
    "--latent-dim",
    "2",
    "--samples-per-net",
    "256",
    "--eval-every",
    "25",
    "--device",
    "cpu",
    "-q",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    """Valid inputs: an HDF5 file with several datasets, a NetCDF file, and a .sinr."""
    d = tmp_path_factory.mktemp("good")
    field = smooth_field(t=2, z=4, y=8, x=8)
    h5 = d / "many.h5"
    with h5py.File(h5, "w") as fh:
        fh["rho"] = field
        fh["count"] = np.zeros((4, 4, 4), np.int32)
        fh["wave"] = (field[0] + 1j).astype(np.complex64)
        fh["label"] = np.array([[b"ab", b"cd"], [b"ef", b"gh"]])
        fh["line"] = field[0, 0, 0]
        fh["five"] = np.zeros((2, 2, 2, 2, 2), np.float32)
        fh["scalar"] = np.float32(3)
        fh["empty"] = np.zeros((0, 4), np.float32)
        fh.create_dataset("null", data=h5py.Empty("f4"))
        fh["nan"] = np.where(field > 12, np.nan, field).astype(np.float32)
        fh["inf"] = np.where(field > 12, np.inf, field).astype(np.float32)
        fh["huge"] = np.full((3, 3), 1e300)
        fh.create_group("grp")["inner"] = field
    nc = d / "f.nc"
    with netCDF4.Dataset(nc, "w") as ds:
        for name, n in zip(("time", "z", "y", "x"), field.shape, strict=True):
            ds.createDimension(name, n)
        v = ds.createVariable("temp", "f4", ("time", "z", "y", "x"), fill_value=-999.0)
        data = np.ma.masked_array(field, mask=field > 12.5)
        v[...] = data
        ds.createVariable("ok", "f4", ("time", "z", "y", "x"))[...] = field
    sinr = d / "good.sinr"
    cfg = sciinr.Config(psnr=20.0).replace(
        **{
            "partition.block": (2, 4, 4, 4),
            "fit.width": 8,
            "fit.depth": 1,
            "fit.latent_dim": 2,
            "fit.samples_per_net": 128,
            "fit.max_steps": 10,
            "fit.device": "cpu",
        }
    )
    sciinr.compress(field, config=cfg, out=sinr)
    return {"dir": d, "h5": h5, "nc": nc, "sinr": sinr}


def _one_line_error(capsys, argv: list[str], *needles: str, out: Path | None = None) -> str:
    """Run the CLI; it must fail with code 2 and one stderr line holding every needle."""
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "\n" not in err, err
    assert "Traceback" not in err
    assert err.startswith("sciinr"), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return err


# ------------------------------------------------------------------ compress: the input


def _truncated(src: Path, dst: Path, keep: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def _nc3(path: Path) -> Path:
    with netCDF4.Dataset(path, "w", format="NETCDF3_CLASSIC") as ds:
        for name, n in zip(("time", "z", "y", "x"), (2, 4, 8, 8), strict=True):
            ds.createDimension(name, n)
        ds.createVariable("temp", "f4", ("time", "z", "y", "x"))[...] = smooth_field(2, 4, 8, 8)
    return path


CASES = {
    # id: (make input from (good, tmp) -> path, extra args, needles)
    "missing file": (lambda g, t: t / "missing.h5", [], ["missing.h5: no such file"]),
    "directory": (lambda g, t: t, [], ["is a directory"]),
    "not a data file": (
        lambda g, t: (t / "notes.h5").write_text("hello") and t / "notes.h5",
        [],
        ["notes.h5: not an HDF5, NetCDF or .npy file"],
    ),
    "truncated HDF5": (
        lambda g, t: _truncated(g["h5"], t / "cut.h5", 0.5),
        ["--var", "rho"],
        ["cut.h5: unreadable HDF5 file"],
    ),
    "truncated NetCDF-4": (
        lambda g, t: _truncated(g["nc"], t / "cut.nc", 0.5),
        ["--var", "ok"],
        ["cut.nc: unreadable NetCDF file"],
    ),
    "truncated NetCDF-3": (
        lambda g, t: _truncated(_nc3(t / "three.nc"), t / "cut3.nc", 0.6),
        [],
        ["cut3.nc: unreadable NetCDF file (truncated"],
    ),
    "unknown HDF5 variable": (
        lambda g, t: g["h5"],
        ["--var", "dens"],
        ["many.h5: variable 'dens' not found (has: ", "grp/inner", "rho"],
    ),
    "unknown NetCDF variable": (
        lambda g, t: g["nc"],
        ["--var", "dens"],
        ["f.nc: variable 'dens' not found (has: temp, ok)"],
    ),
    "HDF5 group": (lambda g, t: g["h5"], ["--var", "grp"], ["'grp' is a group, not a dataset"]),
    "ambiguous file": (lambda g, t: g["h5"], [], ["candidate datasets, choose one with --var"]),
    "integer dtype": (lambda g, t: g["h5"], ["--var", "count"], ["'count' has dtype int32"]),
    "complex dtype": (lambda g, t: g["h5"], ["--var", "wave"], ["'wave' has dtype complex64"]),
    "string dtype": (lambda g, t: g["h5"], ["--var", "label"], ["dtype |S2 (strings)"]),
    "1 dimension": (lambda g, t: g["h5"], ["--var", "line"], ["'line' has 1 dimensions"]),
    "5 dimensions": (lambda g, t: g["h5"], ["--var", "five"], ["'five' has 5 dimensions"]),
    "0 dimensions": (lambda g, t: g["h5"], ["--var", "scalar"], ["'scalar' has 0 dimensions"]),
    "empty array": (lambda g, t: g["h5"], ["--var", "empty"], ["'empty' is empty (shape (0, 4))"]),
    "null dataspace": (lambda g, t: g["h5"], ["--var", "null"], ["'null' is empty"]),
    # NaN and fill values are masked (tests/test_masks.py); infinities are refused
    "Inf values": (lambda g, t: g["h5"], ["--var", "inf"], ["'inf' has ", " infinite values"]),
    "beyond float32": (lambda g, t: g["h5"], ["--var", "huge"], ["exceeds the float32 range"]),
    "unknown time dim": (
        lambda g, t: g["nc"],
        ["--var", "ok", "--time-dim", "when"],
        ["has no dimension 'when' (has: time, z, y, x)"],
    ),
    # options
    "psnr too high": (lambda g, t: g["h5"], ["--var", "rho", "--psnr", "500"], ["psnr must be"]),
    "psnr too low": (lambda g, t: g["h5"], ["--var", "rho", "--psnr", "5"], ["got 5.0"]),
    "psnr nan": (lambda g, t: g["h5"], ["--var", "rho", "--psnr", "nan"], ["got nan"]),
    "psnr not a number": (lambda g, t: g["h5"], ["--psnr", "high"], ["invalid float value"]),
    "block too big": (
        lambda g, t: g["h5"],
        ["--var", "rho", "--block", "5000,8,8,8"],
        ["block sizes must be integers in 1..4096"],
    ),
    "block zero": (lambda g, t: g["h5"], ["--block", "0,8,8,8"], ["1..4096, got (0, 8, 8, 8)"]),
    "block 2 sizes": (lambda g, t: g["h5"], ["--block", "8,8"], ["needs 4 sizes"]),
    "block not ints": (lambda g, t: g["h5"], ["--block", "a,b"], ["not a comma-separated list"]),
    "negative seed": (lambda g, t: g["h5"], ["--seed", "-1"], ["seed must be"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_compress_refuses(case, good, tmp_path, capsys):
    make, extra, needles = CASES[case]
    src = make(good, tmp_path)
    out = tmp_path / "out" / "o.sinr"
    out.parent.mkdir()
    _one_line_error(
        capsys, ["compress", str(src), "-o", str(out), *extra, *FAST], *needles, out=out
    )


# ------------------------------------------------------------------ compress: the output


def test_unwritable_outputs(good, tmp_path, capsys):
    src = str(good["h5"])
    args = ["--var", "rho", *FAST]
    missing = tmp_path / "no" / "dir" / "o.sinr"
    _one_line_error(capsys, ["compress", src, "-o", str(missing), *args], "does not exist")
    _one_line_error(capsys, ["compress", src, "-o", str(tmp_path), *args], "is a directory")
    under_file = good["h5"] / "o.sinr"
    _one_line_error(capsys, ["compress", src, "-o", str(under_file), *args], "does not exist")
    taken = tmp_path / "taken.sinr"
    taken.write_bytes(b"keep")
    _one_line_error(capsys, ["compress", src, "-o", str(taken), *args], "already exists")
    assert taken.read_bytes() == b"keep"
    copy = tmp_path / "copy.h5"
    copy.write_bytes(good["h5"].read_bytes())
    _one_line_error(
        capsys,
        ["compress", str(copy), "-o", str(copy), "--overwrite", *args],
        "is the input file",
    )
    assert copy.read_bytes() == good["h5"].read_bytes()
    if Path("/proc/self").is_dir():  # a directory nobody, root included, can create files in
        _one_line_error(
            capsys, ["compress", src, "-o", "/proc/o.sinr", *args], "/proc/o.sinr: ", "/proc"
        )


# ------------------------------------------------------------------ decompress / info


def _newer(sinr: Path, dst: Path) -> Path:
    blob = bytearray(sinr.read_bytes())
    struct.pack_into("<H", blob, 8, container.MAJOR + 1)
    end = 16 + struct.unpack_from("<I", blob, 12)[0]
    struct.pack_into("<I", blob, end, zlib.crc32(bytes(blob[:end])))
    dst.write_bytes(bytes(blob))
    return dst


SINR_CASES = {
    "missing": (lambda g, t: t / "gone.sinr", ["gone.sinr: no such file"]),
    "directory": (lambda g, t: t, ["is a directory, not a .sinr file"]),
    "zero-length": (
        lambda g, t: (t / "zero.sinr").write_bytes(b"") is not None and t / "zero.sinr",
        ["zero.sinr: empty file (0 bytes)"],
    ),
    "truncated": (
        lambda g, t: _truncated(g["sinr"], t / "cut.sinr", 0.7),
        ["cut.sinr: truncated"],
    ),
    "one byte flipped": (
        lambda g, t: (
            (t / "flip.sinr").write_bytes(
                bytes(b ^ (0x40 if i == 100 else 0) for i, b in enumerate(g["sinr"].read_bytes()))
            )
            and t / "flip.sinr"
        ),
        ["flip.sinr: corrupted header (checksum mismatch)"],
    ),
    "newer version": (
        lambda g, t: _newer(g["sinr"], t / "new.sinr"),
        [
            f"new.sinr: .sinr format version {container.MAJOR + 1}.0 is newer than this "
            "sciinr reads",
            "upgrade",
        ],
    ),
    "an HDF5 file": (lambda g, t: g["h5"], ["not a .sinr file (it is an HDF5/NetCDF-4 file)"]),
    "a text file": (
        lambda g, t: (t / "a.sinr").write_text("hello world") and t / "a.sinr",
        ["a.sinr: not a .sinr file (bad magic bytes)"],
    ),
}


@pytest.mark.parametrize("case", list(SINR_CASES))
@pytest.mark.parametrize("command", ["decompress", "info"])
def test_bad_sinr(case, command, good, tmp_path, capsys):
    make, needles = SINR_CASES[case]
    src = make(good, tmp_path)
    out = tmp_path / "out" / "o.npy"
    out.parent.mkdir()
    argv = [command, str(src)] + (["-o", str(out)] if command == "decompress" else [])
    _one_line_error(capsys, argv, *needles, out=out if command == "decompress" else None)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["-o", "{tmp}/o.txt"], "unknown output type '.txt'"),
        (["-o", "{tmp}/o.npy", "--time", "99"], "index 99 is out of bounds"),
        (["-o", "{tmp}/o.npy", "--region", "0,x"], "bad index 'x'"),
        (["-o", "{tmp}/o.npy", "--time", "0", "--region", "0"], "not both"),
        (["-o", "{tmp}/o.npy", "--device", "tpu"], "unknown device 'tpu'"),
        (["-o", "{tmp}/no/o.npy"], "does not exist"),
    ],
)
def test_bad_decompress_options(extra, needle, good, tmp_path, capsys):
    argv = ["decompress", str(good["sinr"]), *(a.format(tmp=tmp_path) for a in extra)]
    _one_line_error(capsys, argv, needle)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_requested_without_cuda(good, tmp_path, capsys):
    argv = ["decompress", str(good["sinr"]), "-o", str(tmp_path / "o.npy"), "--device", "cuda"]
    _one_line_error(capsys, argv, "no CUDA device is available")


def test_failed_overwrite_keeps_the_old_output(good, tmp_path, capsys):
    out = tmp_path / "o.npy"
    out.write_bytes(b"old")
    bad = _truncated(good["sinr"], tmp_path / "cut.sinr", 0.9)
    _one_line_error(capsys, ["decompress", str(bad), "-o", str(out), "--overwrite"], "truncated")
    assert out.read_bytes() == b"old"


# ------------------------------------------------------------------ unusual but valid


def test_constant_fields_are_exact(tmp_path, capsys):
    for dtype, shape in ((np.float32, (3, 4, 5, 6)), (np.float64, (5, 7)), (np.float32, (1, 1))):
        field = np.full(shape, -273.25, dtype)
        src, out, back = tmp_path / "c.npy", tmp_path / "c.sinr", tmp_path / "back.npy"
        np.save(src, field)
        assert main(["compress", str(src), "-o", str(out), "--overwrite", "-q"]) == 0
        assert main(["decompress", str(out), "-o", str(back), "--overwrite", "-q"]) == 0
        decoded = np.load(back)
        assert decoded.dtype == field.dtype
        np.testing.assert_array_equal(decoded, field)
        assert out.stat().st_size < 1500
    capsys.readouterr()


def test_field_smaller_than_one_block(tmp_path, capsys):
    field = smooth_field(t=1, z=1, y=3, x=5)[0, 0]  # 3 x 5 values, default block 8x16x16x16
    src, out, back = tmp_path / "tiny.npy", tmp_path / "tiny.sinr", tmp_path / "back.npy"
    np.save(src, field)
    assert (
        main(["compress", str(src), "-o", str(out), "--psnr", "30", "--base", "none", *FAST]) == 0
    )
    assert main(["decompress", str(out), "-o", str(back), "-q"]) == 0
    assert psnr(field, np.load(back)) >= 30.0
    assert sciinr.info(out)["block"] == [1, 1, 3, 5]
    capsys.readouterr()


def test_huge_block_sizes_are_clipped(good, tmp_path, capsys):
    out = tmp_path / "big.sinr"
    argv = ["compress", str(good["h5"]), "--var", "rho", "-o", str(out), "--psnr", "20"]
    argv += ["--base", "none", "--block", "4096,4096,4096,4096", "--max-steps", "50"]
    assert main([*argv, *FAST]) == 0
    meta = sciinr.info(out)
    assert meta["block"] == [2, 4, 8, 8]
    assert meta["fitted_blocks"] == 1
    capsys.readouterr()
