"""Dask: lazy arrays, parallel decoding; the core never imports dask."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

import sciinr
from sciinr import cli

from .conftest import smooth_field, tiny

da = pytest.importorskip("dask.array")
from sciinr import parallel  # noqa: E402


def close(got: np.ndarray, want: np.ndarray) -> None:
    """Equal up to float32 rounding: torch's batched matrix-vector product (the networks'
    last layer) rounds differently with the number of blocks evaluated together."""
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=0, atol=4 * np.spacing(np.abs(want).max()))
    assert np.mean(got == want) > 0.5


@pytest.fixture(scope="module")
def sinr_path(tmp_path_factory):
    data = smooth_field(t=5, z=9, y=16, x=13)
    data[:, :, :8, :] = 2.0  # constant blocks too
    path = tmp_path_factory.mktemp("par") / "f.sinr"
    sciinr.compress(data, config=tiny(), out=path)
    return path


def test_core_does_not_import_dask():
    code = (
        "import sys, sciinr, sciinr.cli, sciinr.api, sciinr.scale, sciinr.stages.stream; "
        "assert not any(m == 'dask' or m.startswith(('dask.', 'distributed')) "
        "for m in sys.modules), sorted(m for m in sys.modules if 'dask' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_to_dask_equals_decode(sinr_path):
    arr = sciinr.open(sinr_path)
    lazy = arr.to_dask()
    assert isinstance(lazy, da.Array)
    assert lazy.shape == arr.shape
    assert lazy.dtype == arr.dtype
    assert lazy.chunks[0] == (2, 2, 1)  # one block of time steps per chunk
    full = arr[...]
    close(lazy.compute(), full)
    close(lazy[3].compute(), full[3])
    close(lazy[1:4, 2:7, 3:15, 5:13].compute(), full[1:4, 2:7, 3:15, 5:13])
    assert float(lazy.mean().compute()) == pytest.approx(float(full.mean()), rel=1e-6)


def test_to_dask_any_chunks_and_bytes(sinr_path):
    arr = sciinr.open(sinr_path)
    full = arr[...]
    close(arr.to_dask(chunks=(1, 3, 5, 4)).compute(), full)  # chunk edges inside blocks
    close(sciinr.open(sinr_path.read_bytes()).to_dask().compute(), full)


def test_tasks_are_picklable_and_hold_no_model(sinr_path):
    arr = sciinr.open(sinr_path)
    lazy = arr.to_dask()
    lazy[0].compute()
    blob = pickle.dumps(dict(lazy.__dask_graph__()))
    assert len(blob) < 20_000  # the path, not the decoded networks
    back = pickle.loads(blob)
    assert len(back) == len(dict(lazy.__dask_graph__()))


@pytest.mark.parametrize(
    "key",
    [
        ...,
        (slice(1, 4), slice(2, 7), slice(3, 15), slice(5, 13)),
        (3,),
        (slice(0, 5, 2), 4),
    ],
)
def test_parallel_decode_equals_serial(sinr_path, key):
    arr = sciinr.open(sinr_path)
    want = arr[key]
    close(parallel.decode(arr, key, workers=2), want)


def test_cli_decompress_workers(sinr_path, tmp_path):
    serial, par = tmp_path / "a.npy", tmp_path / "b.npy"
    assert cli.main(["decompress", str(sinr_path), "-o", str(serial), "-q"]) == 0
    assert cli.main(["decompress", str(sinr_path), "-o", str(par), "--workers", "2", "-q"]) == 0
    close(np.load(par), np.load(serial))
    reg = tmp_path / "r.npy"
    args = ["decompress", str(sinr_path), "-o", str(reg), "--region", "1:4,2:7,3:15,5:13"]
    assert cli.main([*args, "--workers", "2", "-q"]) == 0
    close(np.load(reg), sciinr.open(sinr_path)[1:4, 2:7, 3:15, 5:13])


def test_cli_workers_must_be_positive(sinr_path, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["decompress", str(sinr_path), "-o", str(tmp_path / "x.npy"), "--workers", "0"])
    assert exc.value.code == 2
    assert "positive integer" in capsys.readouterr().err


def test_to_dask_of_a_field_with_missing_values(tmp_path):
    data = smooth_field(t=4, z=8, y=16, x=16)
    data[1, :, 3:9, 2:5] = np.nan
    path = tmp_path / "m.sinr"
    sciinr.compress(data, config=tiny(), out=path)
    arr = sciinr.open(path)
    got = arr.to_dask().compute()
    want = arr[...]
    assert isinstance(got, np.ma.MaskedArray)
    np.testing.assert_array_equal(np.ma.getmaskarray(got), np.isnan(data))
    close(np.ma.filled(got, 0.0), np.ma.filled(want, 0.0))


def test_to_dask_of_a_file_without_networks(tmp_path):
    data = smooth_field(t=6, z=8, y=16, x=16)
    path = tmp_path / "b.sinr"
    sciinr.compress(data, psnr=35, config=tiny(**{"base.kind": "tucker"}), out=path)
    arr = sciinr.open(path)
    assert arr.net is None  # a whole-field base models this field
    lazy = arr.to_dask()
    assert lazy.chunks[0] == (6,)  # the default block's 8 steps, clipped to the field
    close(lazy.compute(), arr[...])
    close(parallel.decode(arr, (slice(1, 5), 3), workers=2), arr[1:5, 3])
