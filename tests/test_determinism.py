"""Same input, configuration and seed give the same ``.sinr`` bytes on the same machine.

Checked in this process and against a separate process (another ``PYTHONHASHSEED``), both
on CPU with one torch thread. What differs on a GPU is documented in ``docs/format.md``
("Determinism").
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sciinr.cli import main

from .conftest import smooth_field

ROOT = Path(__file__).resolve().parents[1]
FLAGS = [
    "--psnr",
    "25",
    "--seed",
    "7",
    "--block",
    "2,4,8,8",
    "--width",
    "8",
    "--depth",
    "1",
    "--latent-dim",
    "2",
    "--samples-per-net",
    "256",
    "--max-steps",
    "60",
    "--eval-every",
    "20",
    "--blocks-per-net",
    "2",
    "--device",
    "cpu",
    "-q",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_same_input_config_and_seed_give_the_same_bytes(tmp_path, capsys):
    src = tmp_path / "field.npy"
    np.save(src, smooth_field(t=2, z=4, y=16, x=16))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "12345"}
    env["PYTHONPATH"] = str(ROOT)
    other = tmp_path / "other_process.sinr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sciinr.cli", "compress", str(src), "-o", str(other), *FLAGS],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first, second, reseeded = (tmp_path / f"{n}.sinr" for n in ("a", "b", "seed8"))
        assert main(["compress", str(src), "-o", str(first), *FLAGS]) == 0
        assert main(["compress", str(src), "-o", str(second), *FLAGS]) == 0
        assert first.read_bytes() == second.read_bytes()
        flags8 = [("8" if f == "7" else f) for f in FLAGS]
        assert main(["compress", str(src), "-o", str(reseeded), *flags8]) == 0
        assert reseeded.read_bytes() != first.read_bytes()  # the seed is honoured
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert other.read_bytes() == first.read_bytes()
    capsys.readouterr()
