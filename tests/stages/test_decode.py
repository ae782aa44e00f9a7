"""Decoding: regions equal the matching part of a full decode; batching does not change values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sciinr.config import ClusterConfig, FitConfig, PartitionConfig
from sciinr.metrics import rmse_for_psnr
from sciinr.nets import block_bias, fold, local_coords, siren_forward
from sciinr.payloads import Model
from sciinr.stages import cluster, decode, fit, partition, read

from ..conftest import smooth_field


@pytest.fixture(scope="module")
def model():
    """A briefly trained model of a field whose shape is not a multiple of the block."""
    data = smooth_field(t=5, z=9, y=16, x=13)
    data[:, :, :8, :] = 2.0  # some constant (trivial) blocks
    vol = read.read(data)
    lo, hi = vol.value_range
    blocks = partition.partition(
        vol, PartitionConfig(block=(2, 4, 8, 8)), rmse_for_psnr(30.0, hi - lo)
    )
    assert blocks.trivial.any()
    assert not blocks.trivial.all()
    assignment = cluster.cluster(blocks, ClusterConfig(blocks_per_net=3))
    cfg = FitConfig(width=16, depth=2, latent_dim=4, samples_per_net=256, device="cpu")
    fitted = fit.fit(blocks, assignment, cfg, target_psnr=30.0, value_range=hi - lo, max_steps=40)
    return Model.from_fit(blocks, fitted)


def _reference(model: Model) -> np.ndarray:
    """Every block evaluated alone with the autograd reference forward, assembled with NumPy."""
    params = {k: torch.from_numpy(v) for k, v in model.arrays.items() if k != "latents"}
    latents = torch.from_numpy(model.arrays["latents"])
    coords = local_coords(model.block)
    grid = np.zeros((int(np.prod(model.grid)), *model.block))
    fid = 0
    for bid in range(len(model.trivial)):
        lo, hi = float(model.lo[bid]), float(model.hi[bid])
        if model.trivial[bid]:
            grid[bid] = (lo + hi) / 2
            continue
        net = torch.tensor([int(model.block_net[fid])])
        with torch.no_grad():
            folded = fold(params, model.net).select(net)
            bias = block_bias(params, latents, model.net, net, torch.tensor([fid])).unsqueeze(1)
            pred = siren_forward(folded, bias, coords)
        grid[bid] = (lo + (pred.clamp(-1, 1).double().numpy() + 1) * (hi - lo) / 2).reshape(
            model.block
        )
        fid += 1
    g, b = model.grid, model.block
    full = grid.reshape(*g, *b).transpose(0, 4, 1, 5, 2, 6, 3, 7)
    full = full.reshape(*(gi * bi for gi, bi in zip(g, b, strict=True)))
    return full[tuple(slice(0, s) for s in model.shape4)].astype(np.float32)


def test_full_decode_matches_per_block_reference(model):
    np.testing.assert_allclose(decode.decode(model), _reference(model), rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "region",
    [
        ((0, 5), (0, 9), (0, 16), (0, 13)),
        ((3, 4), (0, 9), (0, 16), (0, 13)),  # one time step
        ((1, 4), (2, 7), (3, 15), (5, 13)),  # crosses block edges, touches the padded edge
        ((4, 5), (8, 9), (15, 16), (12, 13)),  # one voxel in a padded corner block
        ((0, 5), (0, 9), (0, 8), (0, 13)),  # constant blocks only
    ],
)
def test_region_equals_part_of_full_decode(model, region):
    full = decode.decode(model)
    part = decode.decode(model, region)
    want = full[tuple(slice(a, b) for a, b in region)]
    assert part.shape == want.shape
    assert part.dtype == np.float32
    np.testing.assert_allclose(part, want, rtol=0, atol=1e-5)


def test_empty_region(model):
    assert decode.decode(model, ((2, 2), (0, 9), (0, 16), (0, 13))).shape == (0, 9, 16, 13)


def test_small_batches_give_the_same_values(model, monkeypatch):
    whole = decode.decode(model)
    monkeypatch.setattr(decode, "BATCH_ACTIVATIONS", 16 * 50)  # 50 voxels per batch
    np.testing.assert_allclose(decode.decode(model), whole, rtol=0, atol=1e-5)
