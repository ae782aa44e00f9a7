import h5py
import numpy as np
import pytest

import sciinr
from sciinr import FormatError, InputError
from sciinr.metrics import psnr


@pytest.fixture(scope="module")
def compressed():
    from .conftest import smooth_field, tiny

    field = smooth_field()
    cfg = tiny(psnr=30.0, **{"fit.max_steps": 3000})
    return field, sciinr.compress(field, config=cfg)


def test_reaches_target_psnr(compressed):
    field, blob = compressed
    out = sciinr.decompress(blob)
    assert out.shape == field.shape
    assert out.dtype == np.float32
    reached = psnr(field, out)
    assert reached >= 30.0
    assert sciinr.info(blob)["psnr"] == pytest.approx(reached, abs=0.01)


def test_time_and_region_match_full_decode(compressed):
    field, blob = compressed
    full = sciinr.decompress(blob)
    np.testing.assert_allclose(sciinr.decompress(blob, time=2), full[2], rtol=0, atol=1e-5)
    reg = sciinr.decompress(blob, region="1:3, 2:7, 3:15, ::3")
    np.testing.assert_allclose(reg, full[1:3, 2:7, 3:15, ::3], rtol=0, atol=1e-5)
    arr = sciinr.open(blob)
    assert arr.shape == field.shape
    assert arr.dims == ("time", "z", "y", "x")
    np.testing.assert_allclose(arr[-1, 5], full[-1, 5], rtol=0, atol=1e-5)
    np.testing.assert_allclose(arr[..., 4], full[..., 4], rtol=0, atol=1e-5)


def test_out_writes_file_and_refuses_overwrite(tmp_path, compressed):
    field, _ = compressed
    out = tmp_path / "f.sinr"
    out.write_bytes(b"keep me")
    with pytest.raises(sciinr.OutputError, match="already exists"):
        sciinr.compress(field, psnr=20, out=out)
    assert out.read_bytes() == b"keep me"


def test_constant_field_is_exact():
    field = np.full((3, 4, 5, 6), 7.25, np.float32)
    blob = sciinr.compress(field)
    np.testing.assert_array_equal(sciinr.decompress(blob), field)
    assert len(blob) < 2000


def test_float64_static_field_keeps_dtype(tiny_config):
    from .conftest import smooth_field

    field = smooth_field(t=1)[0].astype(np.float64)
    blob = sciinr.compress(field, config=tiny_config)
    out = sciinr.decompress(blob)
    assert out.dtype == np.float64
    assert out.shape == field.shape
    assert psnr(field, out) >= 30.0


def test_h5py_dataset_source(tmp_path, tiny_config, field):
    p = tmp_path / "a.h5"
    with h5py.File(p, "w") as fh:
        fh["v"] = field
    with h5py.File(p, "r") as fh:
        blob = sciinr.compress(fh["v"], config=tiny_config)
    assert sciinr.open(blob).variable == "v"


def test_bad_indices_and_sources(compressed):
    _, blob = compressed
    arr = sciinr.open(blob)
    with pytest.raises(InputError):
        arr[99]
    with pytest.raises(InputError):
        arr[0, 0, 0, 0, 0]
    with pytest.raises(FormatError, match="truncated"):
        sciinr.decompress(blob[:-10])
    with pytest.raises(FormatError, match=r"not a \.sinr"):
        sciinr.decompress(b"GARBAGE-" * 10)
    with pytest.raises(FormatError, match="empty"):
        sciinr.decompress(b"")
