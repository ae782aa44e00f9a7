"""Shared fixtures: tiny formula fields and a fast configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sciinr import Config

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def smooth_field(t: int = 4, z: int = 8, y: int = 16, x: int = 16, seed: int = 0) -> np.ndarray:
    """A smooth travelling wave plus a blob: easy to fit, not constant anywhere."""
    rng = np.random.default_rng(seed)
    tt, zz, yy, xx = np.meshgrid(
        np.linspace(0, 1, t),
        np.linspace(0, 1, z),
        np.linspace(0, 1, y),
        np.linspace(0, 1, x),
        indexing="ij",
    )
    phase = rng.uniform(0, 1)
    f = np.sin(2 * np.pi * (xx + 0.5 * yy - 0.3 * tt + phase)) + 0.5 * np.exp(
        -((xx - 0.5) ** 2 + (yy - 0.5) ** 2 + (zz - 0.5) ** 2) / 0.05
    )
    return (10 + 3 * f).astype(np.float32)


@pytest.fixture
def field() -> np.ndarray:
    return smooth_field()


TINY = {
    "base.kind": "none",  # these settings exercise the block networks
    "partition.block": (2, 8, 8, 8),
    "fit.width": 16,
    "fit.depth": 1,
    "fit.samples_per_net": 512,
    "fit.eval_every": 50,
    "fit.max_steps": 1500,
    "fit.device": "cpu",
    "shrink.prune_steps": 1,
    "shrink.recovery_steps": 150,
    "shrink.finetune_steps": 150,
}


def tiny(psnr: float = 30.0, **changes) -> Config:
    """A configuration that compresses the tiny test fields in a second or two."""
    return Config(psnr=psnr).replace(**{**TINY, **changes})


MICRO = {
    "base.kind": "none",  # these settings exercise the block networks
    "partition.block": (2, 4, 4, 4),
    "fit.width": 8,
    "fit.depth": 1,
    "fit.latent_dim": 2,
    "fit.max_steps": 10,
    "fit.eval_every": 5,
    "fit.samples_per_net": 128,
    "fit.device": "cpu",
    "cluster.blocks_per_net": 2,
}


def micro(psnr: float = 20.0, **changes) -> Config:
    """The smallest real files (ten training steps): for format, fuzzing and refusal tests."""
    return Config(psnr=psnr).replace(**{**MICRO, **changes})


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one torch thread is faster, and far faster on a loaded machine.

    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_config() -> Config:
    return tiny()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
