"""Manifests: validation, checksum, missing/different files, time and crop selection."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from sciinr import datasets
from sciinr.errors import InputError

from .conftest import smooth_field


def _write_manifest(tmp: Path, data_file: Path, **overrides: object) -> Path:
    raw = {
        "name": "tiny",
        "file": data_file.name,
        "variable": "density",
        "shape": [4, 8, 16, 16],
        "dtype": "float32",
        "dims": ["time", "z", "y", "x"],
        "time_axis": 0,
        "bytes": data_file.stat().st_size,
        "sha256": hashlib.sha256(data_file.read_bytes()).hexdigest(),
        "source": "made by tests/test_datasets.py",
        "licence": "CC0",
    }
    raw.update(overrides)
    path = tmp / "tiny.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture
def tiny_h5(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.h5"
    with h5py.File(path, "w") as fh:
        ds = fh.create_dataset("density", data=smooth_field())
        for i, name in enumerate(("time", "z", "y", "x")):
            ds.dims[i].label = name
    return path


def test_every_manifest_is_valid() -> None:
    names = datasets.manifest_names()
    assert {"vf_run01_density", "isabel_velmag", "small_theta_colpex"} <= set(names)
    for name in names:
        m = datasets.load_manifest(name)
        assert m.name == name
        assert len(m.sha256) == 64
        assert len(m.dims) == len(m.shape)


def test_load_field_selects_time_and_crop(tmp_path: Path, tiny_h5: Path) -> None:
    m = datasets.load_manifest(_write_manifest(tmp_path, tiny_h5))
    field = datasets.load_field(m, tmp_path, time="1:4", every=2, crop="2:6,:,0:8")
    expected = smooth_field()[1:4:2, 2:6, :, 0:8]
    assert field.data.shape == (2, 4, 16, 8)
    np.testing.assert_array_equal(field.data, expected)
    assert field.sha256 == m.sha256
    assert "time steps 1:4:2" in field.selection
    assert "crop 2:6,:,0:8" in field.selection


def test_missing_file_is_a_clear_error(tmp_path: Path, tiny_h5: Path) -> None:
    m = datasets.load_manifest(_write_manifest(tmp_path, tiny_h5))
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    with pytest.raises(InputError, match=r"tiny\.h5: not found .*--data-dir"):
        datasets.locate(m, empty)


def test_changed_file_is_refused(tmp_path: Path, tiny_h5: Path) -> None:
    manifest = _write_manifest(tmp_path, tiny_h5)
    data = bytearray(tiny_h5.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte different
    tiny_h5.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"sha256 .* differs from manifest tiny"):
        datasets.locate(datasets.load_manifest(manifest), tmp_path)
    tiny_h5.write_bytes(bytes(data[:-10]))
    with pytest.raises(InputError, match="truncated"):
        datasets.locate(datasets.load_manifest(manifest), tmp_path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"sha256": "abc"}, "64 hex digits"),
        ({"shape": [4, 0]}, "positive integers"),
        ({"dims": ["time"]}, "do not match shape"),
        ({"bytes": "12"}, "'bytes' must be a int"),
        ({"time_axis": 2}, "time_axis must be 0 or null"),
    ],
)
def test_malformed_manifest(tmp_path: Path, tiny_h5: Path, override: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        datasets.load_manifest(_write_manifest(tmp_path, tiny_h5, **override))


def test_unknown_manifest_lists_known_ones() -> None:
    with pytest.raises(InputError, match=r"no such manifest .*vf_run01_density"):
        datasets.load_manifest("no_such_dataset")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("40:48:0", "positive"),
        ("a:b", "integers"),
        ("90:99", "selects nothing"),
        ("1:2:3:4", "start:stop"),
    ],
)
def test_bad_slices(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        datasets.parse_slice(text, 10, "time steps")


def test_crop_needs_one_slice_per_spatial_axis(tmp_path: Path, tiny_h5: Path) -> None:
    m = datasets.load_manifest(_write_manifest(tmp_path, tiny_h5))
    with pytest.raises(InputError, match="give 3 comma-separated slices"):
        datasets.load_field(m, tmp_path, crop="0:4,0:4")


@pytest.mark.realdata
def test_shared_files_match_their_manifests(shared_data: Path) -> None:
    for name in datasets.manifest_names():
        m = datasets.load_manifest(name)
        assert datasets.locate(m, shared_data).name == m.file


@pytest.mark.realdata
def test_load_real_field_unpacks_and_selects(shared_data: Path) -> None:
    m = datasets.load_manifest("eraint_u")
    field = datasets.load_field(m, shared_data, time="1", crop="0:2,:,100:200")
    assert field.data.shape == (1, 2, 241, 100)
    assert field.data.dtype == np.float32
    lo, hi = m.value_range
    assert lo <= field.data.min() < field.data.max() <= hi
