"""Inputs and situations a hostile or unlucky user meets: byte order, special files, races,
self-overwrites, odd indices, interrupts after the output is complete."""

from __future__ import annotations

import os
import signal
import struct
import sys
import threading
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pytest

import sciinr
from sciinr import FormatError, InputError, OutputError
from sciinr.cli import _identity, _interrupted, main
from sciinr.stages import container, write

from .conftest import micro, smooth_field

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "v1.0.sinr"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fast() -> sciinr.Config:
    return micro(**{"cluster.blocks_per_net": 4})


def _one_line(capsys, argv: list[str], *needles: str) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------ byte order


@pytest.fixture(scope="module")
def field() -> np.ndarray:
    return smooth_field(t=2, z=4, y=8, x=8)


def _blocky() -> np.ndarray:
    """Four constant blocks of ``_fast()``'s partition: stored without training."""
    out = np.empty((2, 4, 8, 8), np.float32)
    for i, v in enumerate((1.5, -2.25, 1e3, 7.0)):
        out[:, :, 4 * (i // 2) : 4 * (i // 2) + 4, 4 * (i % 2) : 4 * (i % 2) + 4] = v
    return out


@pytest.mark.parametrize("dtype", [">f4", ">f8"])
@pytest.mark.parametrize("kind", ["npy", "h5", "nc"])
def test_big_endian_input_compresses(tmp_path, kind, dtype):
    data = _blocky().astype(dtype)
    src = tmp_path / f"big.{kind}"
    if kind == "npy":
        np.save(src, data)
    elif kind == "h5":
        with h5py.File(src, "w") as fh:
            fh.create_dataset("rho", data=data, dtype=dtype)
    else:
        with netCDF4.Dataset(src, "w") as ds:
            for name, n in zip(("time", "z", "y", "x"), data.shape, strict=True):
                ds.createDimension(name, n)
            v = ds.createVariable("rho", np.dtype(dtype), ("time", "z", "y", "x"), endian="big")
            v[...] = data
    blob = sciinr.compress(src, config=_fast())
    info = sciinr.info(blob)
    assert info["dtype"] == {">f4": "float32", ">f8": "float64"}[dtype]
    out = sciinr.decompress(blob)
    assert out.dtype == np.dtype(dtype[1:])  # native byte order
    native = sciinr.decompress(sciinr.compress(_blocky().astype(dtype[1:]), config=_fast()))
    np.testing.assert_array_equal(out, native)  # values, not byte-swapped garbage
    np.testing.assert_allclose(out, _blocky(), atol=0.1 * 1002.25)  # 20 dB


# ------------------------------------------------------------------ special files


@pytest.fixture
def alarm():
    """Fail instead of hanging when something blocks (opening a FIFO would)."""

    def timeout(signum, frame):
        raise AssertionError("blocked for 30 s")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_fifo_input_is_refused_without_opening_it(tmp_path, capsys, alarm):
    fifo = tmp_path / "p.npy"
    os.mkfifo(fifo)
    out = tmp_path / "p.sinr"
    _one_line(capsys, ["compress", str(fifo), "-o", str(out), "-q"], "named pipe", "p.npy")
    assert not out.exists()
    _one_line(capsys, ["info", str(fifo)], "named pipe")
    with pytest.raises(InputError, match="named pipe"):
        sciinr.compress(fifo)
    with pytest.raises(InputError, match="named pipe"):
        sciinr.open(fifo)


def test_symlink_loop_is_reported_as_such(tmp_path, capsys):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    os.symlink(b, a)
    os.symlink(a, b)
    _one_line(capsys, ["compress", str(a), "-o", str(tmp_path / "o.sinr"), "-q"], "link loop")
    _one_line(capsys, ["info", str(a)], "link loop")
    with pytest.raises(InputError, match="link loop"):
        sciinr.open(a)


def test_header_over_the_limit_is_reported_as_too_large():
    head_len = container.MAX_HEADER + 1
    blob = struct.pack("<8sHHI", container.MAGIC, 1, 0, head_len) + bytes(64)
    with pytest.raises(FormatError, match="larger than the 16 MiB limit"):
        sciinr.open(blob)
    with pytest.raises(FormatError, match="truncated"):  # a header that fits but is cut
        sciinr.open(struct.pack("<8sHHI", container.MAGIC, 1, 0, 1000) + bytes(64))


# ------------------------------------------------------------------ concurrent writers


def test_a_writer_never_replaces_a_file_that_appeared_meanwhile(tmp_path):
    out = tmp_path / "o.sinr"

    def race() -> None:
        with write.atomic_path(out, overwrite=False) as tmp:
            tmp.write_bytes(b"mine")
            out.write_bytes(b"theirs")  # the other writer publishes first

    with pytest.raises(OutputError, match="another process wrote it meanwhile"):
        race()
    assert out.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.sinr"]  # no temporary left


def test_concurrent_writers_to_one_new_name_exactly_one_wins(tmp_path):
    out = tmp_path / "o.sinr"
    n = 8
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def writer(i: int) -> None:
        barrier.wait()
        try:
            write.write_bytes(out, f"writer {i}".encode() * 1000)
            results[i] = "ok"
        except OutputError as exc:
            results[i] = exc

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, r in enumerate(results) if r == "ok"]
    assert len(winners) == 1, results
    assert out.read_bytes() == f"writer {winners[0]}".encode() * 1000
    assert all(isinstance(r, OutputError) for i, r in enumerate(results) if i not in winners)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.sinr"]


def test_overwrite_still_replaces(tmp_path):
    out = tmp_path / "o.sinr"
    out.write_bytes(b"old")
    write.write_bytes(out, b"new", overwrite=True)
    assert out.read_bytes() == b"new"


# ------------------------------------------------------------------ the API's own input


def test_api_refuses_to_overwrite_its_input(field, tmp_path):
    src = tmp_path / "x.npy"
    np.save(src, field)
    before = src.read_bytes()
    with pytest.raises(OutputError, match="is the input file"):
        sciinr.compress(str(src), out=str(src), overwrite=True, config=_fast())
    link = tmp_path / "same.npy"
    os.link(src, link)  # another name of the same file
    with pytest.raises(OutputError, match="is the input file"):
        sciinr.compress(src, out=link, overwrite=True, config=_fast())
    assert src.read_bytes() == before


# ------------------------------------------------------------------ indices


@pytest.fixture(scope="module")
def golden() -> sciinr.SinrArray:
    return sciinr.open(GOLDEN)


@pytest.mark.parametrize(
    "key",
    [
        np.s_[::0],
        np.s_[0, ::0],
        np.s_[np.zeros((2, 2), int)],  # 2-D index array
        np.s_[[0, 1], [0, 1]],  # two index arrays
        np.s_[np.array([0.5])],  # floats
        np.s_[np.array([True])],  # a mask of the wrong length
        np.s_[[99]],  # out of bounds
        np.s_[..., ...],
        np.s_[0:"a"],
    ],
)
def test_bad_indices_are_input_errors(golden, key):
    with pytest.raises(InputError):
        golden[key]


def test_index_arrays_and_masks_select_like_numpy(golden):
    full = golden[...]
    n = golden.shape[-1]
    for key in (
        np.s_[[0, -1]],
        np.s_[:, [2, 0, 2]],
        np.s_[..., np.arange(n) % 3 == 0],
        np.s_[0, :, [1, 3]],
        np.s_[np.array([], int)],
    ):
        got = golden[key]
        assert got.shape == full[key].shape
        # a region decodes in other float32 batches than the whole field: 1 ulp may differ
        np.testing.assert_allclose(got, full[key], rtol=1e-6)


@pytest.mark.parametrize(
    "extra", [["--region", "::0"], ["--time", "0:4:0"], ["--region", "0,0:4:0"]]
)
def test_bad_cli_slices_are_one_line_errors(tmp_path, capsys, extra):
    out = tmp_path / "o.npy"
    _one_line(capsys, ["decompress", str(GOLDEN), "-o", str(out), *extra], "bad slice")
    assert not out.exists()


# ------------------------------------------------------------------ interrupts


class _InterruptOnWrite:
    """A stdout whose first write delivers SIGINT: the interrupt lands after the output."""

    def __init__(self) -> None:
        self.fired = False

    def write(self, text: str) -> int:
        if not self.fired and text.strip():
            self.fired = True
            signal.raise_signal(signal.SIGINT)
        return len(text)

    def flush(self) -> None:
        pass


def test_interrupt_after_the_output_is_complete_exits_0(tmp_path, capsys, monkeypatch):
    out = tmp_path / "o.npy"
    hook = _InterruptOnWrite()
    monkeypatch.setattr(sys, "stdout", hook)
    rc = main(["decompress", str(GOLDEN), "-o", str(out)])  # -q would print nothing
    err = capsys.readouterr().err
    assert hook.fired
    assert rc == 0, err
    assert "written completely" in err
    np.testing.assert_array_equal(np.load(out), sciinr.decompress(GOLDEN))


def test_interrupt_before_the_output_exists_exits_130(tmp_path, capsys):
    out = tmp_path / "o.npy"
    before = _identity(out)
    assert _interrupted(out, before) == 130
    out.write_bytes(b"old")
    before = _identity(out)
    assert _interrupted(out, before) == 130  # the old file is still there: nothing new
    new = tmp_path / "new.npy"
    new.write_bytes(b"x")
    os.replace(new, out)  # what an atomic publish does
    assert _interrupted(out, before) == 0
    assert "interrupted" in capsys.readouterr().err
