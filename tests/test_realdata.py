"""Integration tests on real simulation output from ../shared/data and the bundled excerpt."""

import h5py
import numpy as np
import pytest

import sciinr
from sciinr.demo import EXCERPT_VAR, excerpt_path
from sciinr.metrics import psnr

pytestmark = pytest.mark.realdata


def test_viscous_fingering_excerpt_reaches_target(shared_data, tmp_path):
    with h5py.File(shared_data / "vf_run01.h5") as fh:
        field = fh["density"][40:44, 32:64, 16:48, 16:48]
    src = tmp_path / "vf.h5"
    with h5py.File(src, "w") as fh:
        fh["density"] = field
    out = tmp_path / "vf.sinr"
    cfg = sciinr.Config(psnr=38.0).replace(**{"fit.device": "cpu", "fit.max_seconds": 120.0})
    sciinr.compress(src, var="density", config=cfg, out=out)
    decoded = sciinr.decompress(out)
    reached = psnr(field, decoded)
    assert reached >= 38.0
    assert sciinr.info(out)["ratio"] > 20


def test_packed_netcdf_eraint(shared_data):
    arr = sciinr.compress(
        shared_data / "eraint_uvz.nc",
        var="u",
        psnr=30,
        config=sciinr.Config().replace(**{"fit.device": "cpu", "fit.max_seconds": 60.0}),
    )
    info = sciinr.info(arr)
    assert info["shape"] == [2, 3, 241, 480]
    assert info["dims"][0] == "month"
    assert info["attrs"]["sciinr_unpacked_from"] == "int16"


def test_bundled_excerpt_is_intact():
    with h5py.File(excerpt_path()) as fh:
        ds = fh[EXCERPT_VAR]
        assert ds.shape == (8, 32, 48, 48)
        assert ds.dtype == np.float32


FAST_CLI = [
    "--psnr", "25", "--width", "16", "--depth", "1", "--max-steps", "150",
    "--samples-per-net", "512", "--eval-every", "50", "--prune", "0",
    "--finetune-steps", "40", "--device", "cpu", "-q",
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "block"),
    [("eraint_uvz.nc", "2,3,64,64"), ("small_theta_colpex.nc", "2,5,42,42")],
)
@pytest.mark.filterwarnings("ignore::xarray.SerializationWarning")  # eraint's NaN int16 fill
def test_xarray_sees_the_same_dataset(shared_data, tmp_path, name, block):
    xr = pytest.importorskip("xarray")
    from sciinr.cli import main
    from sciinr.xarray_backend import SinrBackendEntrypoint

    from .test_xarray import assert_same_structure

    src = shared_data / name
    out = tmp_path / "all.sinr"
    assert (
        main(["compress", str(src), "--var", "all", "-o", str(out), "--block", block, *FAST_CLI])
        == 0
    )
    a = xr.open_dataset(src)
    b = xr.open_dataset(out, engine=SinrBackendEntrypoint)
    assert_same_structure(a, b)
    meta = sciinr.info(out)
    for var, v in meta["variables"].items():
        span = v["value_range"][1] - v["value_range"][0]
        got = psnr(a[var].values, b[var].values)
        # the stored PSNR, less what rounding to an int16 packing grid may add
        assert got >= v["psnr"] - 0.5, var
        assert float(np.abs(a[var].values - b[var].values).max()) <= span
    packed = [n for n in a.data_vars if a[n].encoding.get("dtype") == np.int16]
    assert all(b[n].encoding["dtype"] == np.int16 for n in packed)
