"""``sciinr verify``: reports the errors and fails loudly on a broken guarantee."""

import json

import numpy as np
import pytest

from sciinr.cli import main

from .conftest import smooth_field

FAST = [
    "--base",
    "none",
    "--block",
    "2,8,8,8",
    "--width",
    "16",
    "--depth",
    "1",
    "--samples-per-net",
    "256",
    "--eval-every",
    "10",
    "--max-steps",
    "20",
    "--device",
    "cpu",
    "--split",
    "0,1",
    "-q",
]


@pytest.fixture(scope="module")
def bounded(tmp_path_factory):
    d = tmp_path_factory.mktemp("verify")
    field = smooth_field()
    src = d / "field.npy"
    np.save(src, field)
    out = d / "field.sinr"
    assert main(["compress", str(src), "-o", str(out), "--rel-error", "1e-3", *FAST]) == 0
    return field, src, out


def test_verify_passes_and_reports(bounded, capsys):
    field, src, out = bounded
    capsys.readouterr()
    assert main(["verify", str(src), str(out), "--json", "--each-step", "-q"]) == 0
    result = json.loads(capsys.readouterr().out)
    vr = float(field.max() - field.min())
    assert result["guaranteed"] == pytest.approx(1e-3 * vr)
    assert 0 < result["max_error"] <= result["guaranteed"]
    assert result["max_error_relative"] <= 1e-3
    assert result["steps"]["n"] == field.shape[0]
    assert result["steps"]["max_error"] <= result["guaranteed"]
    assert result["psnr"] == pytest.approx(result["stored_psnr"], abs=1e-6)
    assert result["failures"] == []
    assert main(["verify", str(src), str(out), "--time", "2", "-q"]) == 0
    assert "verify OK" in capsys.readouterr().out


def test_verify_fails_on_a_violated_bound(bounded, tmp_path, capsys):
    field, _, out = bounded
    vr = float(field.max() - field.min())
    perturbed = field.copy()
    perturbed[1, 3, 5, 7] += np.float32(3e-3 * vr)  # three times the bound at one value
    src = tmp_path / "perturbed.npy"
    np.save(src, perturbed)
    capsys.readouterr()
    assert main(["verify", str(src), str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "verify FAILED: max error" in err
    assert main(["verify", str(src), str(out), "--time", "1", "-q"]) == 1
    assert main(["verify", str(src), str(out), "--time", "0", "-q"]) == 0  # step 0 untouched


def test_verify_fails_when_the_stored_psnr_is_not_reached(tmp_path, capsys):
    field = smooth_field()
    src = tmp_path / "f.npy"
    np.save(src, field)
    out = tmp_path / "f.sinr"
    assert main(["compress", str(src), "-o", str(out), "--psnr", "10", *FAST]) == 0
    np.save(src, field[::-1].copy())  # same values and range, other order
    capsys.readouterr()
    assert main(["verify", str(src), str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "verify FAILED: PSNR" in err
    assert "max error" not in err  # this file stores no bound


def test_verify_refuses_a_different_field(bounded, tmp_path, capsys):
    _, _, out = bounded
    src = tmp_path / "small.npy"
    np.save(src, smooth_field(t=2))
    capsys.readouterr()
    assert main(["verify", str(src), str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "differs from the shape" in err[0]
