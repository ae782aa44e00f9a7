"""Golden ``.sinr`` files: every format version this reader supports must still decode.

``tests/golden/v<MAJOR>.<MINOR>.sinr`` is a small file written by the sciinr of that format
version, ``.npy`` beside it the array it decoded to then, ``.json`` what ``sciinr.info``
said. A file for the current version must exist (a missing one fails; it is never written
silently). Regenerate the current version's files, and only those, with::

    SCIINR_REGEN=1 python -m pytest -q tests/test_golden.py

Files of older versions are kept: a change of the format that stops them from decoding as
recorded is caught here (see the compatibility rule in ``docs/format.md``). The current
version's file uses what that version added (2.0: a mask of missing values); the ``.npy``
holds NaN where the decoded array is masked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import sciinr
from sciinr.stages import container

from .conftest import smooth_field

GOLDEN = Path(__file__).resolve().parent / "golden"
VERSION = f"{container.MAJOR}.{container.MINOR}"
REGEN = os.environ.get("SCIINR_REGEN") == "1"
INFO_KEYS = (
    "variable",
    "shape",
    "dims",
    "dtype",
    "format_version",
    "networks",
    "block",
    "attrs",
    "missing_values",
)


def _golden_files() -> list[Path]:
    return sorted(GOLDEN.glob("v*.sinr"))


GOLDEN_CONFIG = {
    "partition.block": (2, 4, 4, 6),
    "fit.width": 8,
    "fit.depth": 1,
    "fit.latent_dim": 2,
    "fit.samples_per_net": 256,
    "fit.max_steps": 300,
    "fit.eval_every": 50,
    "fit.device": "cpu",
    "cluster.blocks_per_net": 2,
}


@pytest.mark.skipif(not REGEN, reason="set SCIINR_REGEN=1 to rewrite the golden files")
def test_regenerate_current_version(tmp_path):
    """A time-varying 4-D float32 field with a constant corner (trivial blocks), attrs, and
    missing values: a block-shaped "land" region and a few scattered NaN."""
    field = smooth_field(t=3, z=4, y=8, x=12, seed=3)
    field[:, :, :4, :6] = 11.5
    field[:, :, 5:, 9:] = np.nan
    field[1, 2, 3, 7] = field[2, 0, 6, 1] = np.nan
    src = tmp_path / "golden.h5"
    with h5py.File(src, "w") as fh:
        ds = fh.create_dataset("rho", data=field)
        for i, name in enumerate(("time", "z", "y", "x")):
            ds.dims[i].label = name
        ds.attrs["units"] = "kg m-3"
        ds.attrs["levels"] = np.arange(3, dtype=np.int32)
    cfg = sciinr.Config(psnr=25.0, seed=1).replace(**GOLDEN_CONFIG)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    GOLDEN.mkdir(exist_ok=True)
    try:  # the block networks, and the whole-field base
        for name, kind in ((f"v{VERSION}", "none"), (f"v{VERSION}-base", "tucker")):
            blob = sciinr.compress(src, var="rho", config=cfg.replace(**{"base.kind": kind}))
            path = GOLDEN / f"{name}.sinr"
            path.write_bytes(blob)
            decoded = np.ma.filled(sciinr.decompress(blob, device="cpu"), np.nan)
            np.save(path.with_suffix(".npy"), decoded, allow_pickle=False)
            meta = {k: sciinr.info(blob)[k] for k in INFO_KEYS}
            path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    finally:
        torch.set_num_threads(n)


@pytest.mark.skipif(not REGEN, reason="set SCIINR_REGEN=1 to rewrite the golden files")
def test_regenerate_current_version_dataset(tmp_path):
    """A dataset file: two fields, one int16-packed, with a time coordinate and attrs."""
    import netCDF4

    field = smooth_field(t=3, z=4, y=8, x=12, seed=3)
    field[:, :, :4, :6] = 11.5
    src = tmp_path / "golden.nc"
    with netCDF4.Dataset(src, "w") as ds:
        ds.title = "golden"
        for name, n in zip(("time", "z", "y", "x"), field.shape, strict=True):
            ds.createDimension(name, n)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t[:] = [0.0, 1.0, 2.0]
        rho = ds.createVariable("rho", "f4", ("time", "z", "y", "x"))
        rho.units = "kg m-3"
        rho[:] = field
        w = ds.createVariable("w", "i2", ("time", "z", "y", "x"))
        w.scale_factor = 0.001
        w.add_offset = 5.0
        w[:] = field[:, :, ::-1] - 5
    cfg = sciinr.Config(psnr=25.0, seed=1).replace(**GOLDEN_CONFIG)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        blob = sciinr.compress_dataset(src, variables="all", config=cfg)
    finally:
        torch.set_num_threads(n)
    path = GOLDEN / f"v{VERSION}-dataset.sinr"
    path.write_bytes(blob)
    arrays = {v: sciinr.decompress(blob, variable=v, device="cpu") for v in ("rho", "w")}
    np.savez(path.with_suffix(".npz"), **arrays, allow_pickle=False)
    meta = {v: {k: sciinr.info(blob, variable=v)[k] for k in INFO_KEYS} for v in arrays}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")


def test_current_version_has_a_golden_file():
    path = GOLDEN / f"v{VERSION}.sinr"
    assert path.exists(), (
        f"{path} is missing: run SCIINR_REGEN=1 python -m pytest -q tests/test_golden.py "
        "and commit tests/golden/"
    )


@pytest.mark.parametrize("path", _golden_files(), ids=lambda p: p.stem)
def test_golden_file_decodes_as_recorded(path):
    if path.with_suffix(".npz").exists():  # a dataset file: each variable as recorded
        recorded = json.loads(path.with_suffix(".json").read_text())
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as arrays:
            assert sorted(arrays.keys()) == sorted(recorded)
            for var, exp in arrays.items():
                meta = sciinr.info(path, variable=var)
                assert {k: meta[k] for k in recorded[var]} == recorded[var]
                decoded = sciinr.decompress(path, variable=var, device="cpu")
                span = float(exp.max() - exp.min()) or 1.0
                np.testing.assert_allclose(decoded, exp, rtol=0, atol=1e-5 * span)
        return
    expected = np.load(path.with_suffix(".npy"), allow_pickle=False)
    recorded = json.loads(path.with_suffix(".json").read_text())
    meta = sciinr.info(path)
    assert {k: meta[k] for k in recorded} == recorded
    decoded = sciinr.decompress(path, device="cpu")
    assert decoded.dtype == expected.dtype
    missing = np.isnan(expected)
    assert np.ma.isMaskedArray(decoded) == bool(missing.any())
    np.testing.assert_array_equal(np.ma.getmaskarray(decoded), missing)
    span = float(np.nanmax(expected) - np.nanmin(expected)) or 1.0
    # CPUs may differ in the last bits of sin/matmul; a format change differs by far more
    np.testing.assert_allclose(np.ma.filled(decoded, np.nan), expected, rtol=0, atol=1e-5 * span)
    step = np.ma.filled(sciinr.decompress(path, time=1, device="cpu"), np.nan)
    np.testing.assert_allclose(step, expected[1], rtol=0, atol=1e-5 * span)
