"""The numcodecs codec ``sciinr``: numcodecs' own checks, the entry point, a zarr round trip."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
import tomllib

numcodecs = pytest.importorskip("numcodecs")

from sciinr import ConfigError, InputError  # noqa: E402
from sciinr.codecs import Sinr  # noqa: E402
from sciinr.metrics import psnr  # noqa: E402

from .conftest import TINY, smooth_field  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAST = {**TINY, "fit.max_steps": 400, "shrink.prune": 0.0}


def _codec(**kw) -> Sinr:
    return Sinr(psnr=kw.pop("psnr", 30.0), config=FAST, **kw)


def test_numcodecs_checks():
    common = pytest.importorskip("numcodecs.tests.common")
    numcodecs.register_codec(Sinr)  # the entry point may not be installed here
    codec = _codec()
    common.check_config(codec)  # get_config is JSON and from_config inverts it
    field = smooth_field()
    enc = codec.encode(field)
    # numcodecs' helpers compare decoded values exactly (lossless codecs); a lossy codec is
    # checked the same way at its stored quality: every kind of out buffer receives the values
    expect = codec.decode(enc)
    assert psnr(field, expect) >= 30
    for out in (np.empty_like(field), np.empty(field.size, field.dtype), bytearray(field.nbytes)):
        got = codec.decode(enc, out=out)
        np.testing.assert_array_equal(np.frombuffer(got, field.dtype).reshape(field.shape), expect)
    for buf in (enc, bytearray(enc), np.frombuffer(enc, np.uint8), memoryview(enc)):
        np.testing.assert_array_equal(codec.decode(buf), expect)
    with pytest.raises(TypeError):  # numcodecs' check_err_decode_object_buffer, on a field
        codec.decode(enc, out=np.empty(field.size, dtype=object))
    common.check_err_encode_object_buffer(codec)


def test_config_repr_and_equality():
    a = Sinr(psnr=45, max_error=0.25, config={"partition.block": (2, 8, 8, 8)})
    cfg = a.get_config()
    assert cfg == {
        "id": "sciinr",
        "psnr": 45.0,
        "max_error": 0.25,
        "config": {"partition.block": [2, 8, 8, 8]},
    }
    b = Sinr.from_config(json.loads(json.dumps(cfg)))
    assert a == b
    assert hash(a) == hash(b)
    assert a != Sinr(psnr=44)
    assert repr(a) == "Sinr(psnr=45.0, max_error=0.25, config={'partition.block': [2, 8, 8, 8]})"
    with pytest.raises(ConfigError):
        Sinr(psnr=500)
    with pytest.raises(ConfigError):
        Sinr(config={"fit.nope": 1})


def test_refuses_what_it_cannot_compress():
    codec = _codec()
    with pytest.raises(InputError, match="dtype int32"):
        codec.encode(np.zeros((4, 4), np.int32))
    with pytest.raises(InputError, match="1 dimensions"):
        codec.encode(np.zeros(16, np.float32))


def test_max_error_is_kept():
    field = smooth_field()
    codec = _codec(max_error=0.05)
    out = codec.decode(codec.encode(field))
    assert float(np.abs(out - field).max()) <= 0.05


def _entry_point_installed() -> bool:
    eps = importlib.metadata.entry_points(group="numcodecs.codecs")
    return any(ep.name == "sciinr" for ep in eps)


def test_entry_point_declared_and_loadable():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    target = meta["project"]["entry-points"]["numcodecs.codecs"]["sciinr"]
    assert target == "sciinr.codecs:Sinr"
    if not _entry_point_installed():
        pytest.skip("sciinr's entry points are not installed (re-run pip install -e .)")
    numcodecs.registry.codec_registry.pop("sciinr", None)  # found through the entry point
    codec = numcodecs.get_codec({"id": "sciinr", "psnr": 33.0})
    assert isinstance(codec, Sinr)
    assert codec.psnr == 33.0


def test_zarr_round_trip(tmp_path):
    zarr = pytest.importorskip("zarr")
    numcodecs.register_codec(Sinr)  # also works where the entry points are not installed
    field = np.concatenate([smooth_field(seed=1), smooth_field(seed=2)])  # (8, 8, 16, 16)
    path = tmp_path / "f.zarr"
    z = zarr.create_array(
        str(path),
        shape=field.shape,
        chunks=(4, 8, 16, 16),
        dtype="float32",
        zarr_format=2,
        compressors=_codec(),
        fill_value=0.0,
    )
    z[...] = field
    back = zarr.open_array(str(path), mode="r")
    assert back.compressors == (_codec(),)
    out = back[...]
    assert out.shape == field.shape
    assert out.dtype == np.float32
    for t in (slice(0, 4), slice(4, 8)):  # each chunk reaches the target on its own
        assert psnr(field[t], out[t]) >= 30
    np.testing.assert_array_equal(back[5, 2], out[5, 2])
