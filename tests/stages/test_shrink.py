import dataclasses

import numpy as np
import pytest

from sciinr.payloads import dequantize_shared, dequantize_uniform
from sciinr.stages.shrink.prune import importance, masks_for
from sciinr.stages.shrink.quantize import kmeans_1d, quantize_uniform, share


def test_kmeans_1d_error_bounded():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, 5000).astype(np.float32)
    for bits in (3, 5, 7):
        c, lab = kmeans_1d(w, 2**bits)
        assert c.size <= 2**bits
        assert np.all(np.diff(c) > 0)
        err = np.abs(c[lab] - w)
        inside = (w >= c[0]) & (w <= c[-1])
        # each value goes to its nearest centroid: inside the codebook's span the error is
        # at most half the widest gap
        assert err[inside].max() <= np.diff(c).max() / 2 + 1e-6
        np.testing.assert_array_equal(lab, np.abs(w[:, None] - c[None, :]).argmin(1))
        assert np.sqrt((err**2).mean()) < 0.5 * 0.1 / 2 ** (bits - 3)  # 2x Lloyd-Max


def test_share_keeps_pruned_zero_and_dequantizes():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, (3, 8, 8)).astype(np.float32)
    keep = rng.random(w.shape) > 0.4
    cb, idx = share(w, keep, bits=4)
    deq = dequantize_shared(cb, idx)
    assert (deq[~keep] == 0).all()
    assert (idx[~keep] == 0).all()
    assert (idx[keep] > 0).all()
    assert np.abs(deq[keep] - w[keep]).max() < 0.5


def test_uniform_latent_quantization_bound():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 0.05, (40, 8)).astype(np.float32)
    q, off, step = quantize_uniform(x, 8)
    assert q.min() >= 0
    assert q.max() <= 255
    assert np.abs(dequantize_uniform(q, off, step) - x).max() <= step.max() / 2 + 1e-7


def test_masks_prune_fraction_and_prefer_hard_networks():
    rng = np.random.default_rng(3)
    arrays = {
        "w_h0": rng.normal(0, 1, (2, 16, 16)).astype(np.float32),
        "latents": np.zeros((4, 2), np.float32),
    }
    scores = importance(arrays, net_error=np.array([1.0, 9.0]), power=1.0)
    masks = masks_for(scores, 0.5)
    assert masks["w_h0"].sum() == 256
    # the network with the larger error keeps more weights
    assert masks["w_h0"][1].sum() > masks["w_h0"][0].sum()


# ----------------------------------------------------------------------------- shrink() itself


@pytest.fixture(scope="module")
def fitted_tiny():
    """Blocks, assignment and fitted networks of a tiny field (the stages before shrink)."""
    from sciinr.metrics import rmse_for_psnr
    from sciinr.stages import cluster, fit, partition, read

    from ..conftest import smooth_field, tiny

    volume = read.read(smooth_field(t=2, z=8, y=16, x=16))
    cfg = tiny(psnr=30.0)
    lo, hi = volume.value_range
    blocks = partition.partition(volume, cfg.partition, rmse_for_psnr(30.0, hi - lo))
    asg = cluster.cluster(blocks, cfg.cluster)
    fitted = fit.fit(blocks, asg, cfg.fit, target_psnr=30.0, value_range=hi - lo)
    return blocks, asg, fitted, cfg, hi - lo


def test_a_prune_step_that_cannot_recover_is_undone(fitted_tiny):
    from sciinr.stages import shrink

    blocks, asg, fitted, cfg, vr = fitted_tiny
    scfg = dataclasses.replace(cfg.shrink, prune=0.9, prune_steps=1, recovery_steps=5, keep_db=20)
    pruned = shrink.prune(blocks, asg, fitted, scfg, cfg.fit, target_psnr=30.0, value_range=vr)
    assert pruned.sparsity == 0.0  # 90 % pruned cannot stay 20 dB above the target: undone
    assert all(m.all() for m in pruned.masks.values())
    for name, arr in fitted.arrays.items():
        np.testing.assert_array_equal(pruned.arrays[name], arr)
    assert pruned.psnr == fitted.psnr
    assert [step for step, *_ in pruned.log] == ["fit"]


def test_a_prune_step_that_recovers_is_kept(fitted_tiny):
    from sciinr.stages import shrink

    blocks, asg, fitted, cfg, vr = fitted_tiny
    scfg = dataclasses.replace(cfg.shrink, prune=0.5, prune_steps=1, recovery_steps=5, keep_db=0)
    pruned = shrink.prune(blocks, asg, fitted, scfg, cfg.fit, target_psnr=10.0, value_range=vr)
    assert pruned.sparsity == pytest.approx(0.5, abs=0.05)
    assert [step for step, *_ in pruned.log] == ["fit", "prune 0.50"]
    for name, mask in pruned.masks.items():
        assert not pruned.arrays[name][~mask].any()  # pruned weights stay zero


def test_weight_sharing_adds_bits_until_the_target(fitted_tiny):
    from sciinr.stages import shrink

    blocks, asg, fitted, cfg, vr = fitted_tiny
    scfg = dataclasses.replace(cfg.shrink, prune=0.0, bits=1, max_bits=8, finetune_steps=0)

    def run(lo: int, hi: int, target: float):
        c = dataclasses.replace(scfg, bits=lo, max_bits=hi)
        small = shrink.shrink(blocks, asg, fitted, c, cfg.fit, target_psnr=target, value_range=vr)
        bits = int(small.log[-1][0].split()[1])  # ("share B bits + fine-tune", psnr, count)
        return small, bits

    one, _ = run(1, 1, 0.0)
    target = one.psnr + 3.0  # one bit falls short of it
    small, bits = run(1, 8, target)
    assert bits > 1  # escalated past the first width
    assert small.psnr >= target
    assert max(cb.size for cb in small.codebooks.values()) <= 2**bits
    fewer, _ = run(bits - 1, bits - 1, target)
    assert fewer.psnr < target  # it stopped at the first width that reaches the target
