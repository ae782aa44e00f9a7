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
