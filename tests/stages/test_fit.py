"""The fit stage: chunked training step, early stop, effective-weights hooks, compile fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sciinr.config import ClusterConfig, FitConfig, PartitionConfig
from sciinr.metrics import psnr, rmse_for_psnr
from sciinr.nets import BatchedSiren, siren_forward
from sciinr.payloads import Model
from sciinr.stages import cluster, decode, fit, partition, read

from ..conftest import smooth_field

FIT = FitConfig(
    width=16,
    depth=1,
    latent_dim=4,
    samples_per_net=512,
    eval_every=50,
    max_steps=3000,
    device="cpu",
)


@pytest.fixture(scope="module")
def problem():
    data = smooth_field(t=4, z=8, y=16, x=16)
    vol = read.read(data)
    lo, hi = vol.value_range
    blocks = partition.partition(
        vol, PartitionConfig(block=(2, 8, 8, 8)), rmse_for_psnr(30.0, hi - lo)
    )
    assignment = cluster.cluster(blocks, ClusterConfig(blocks_per_net=2))
    return data, blocks, assignment, hi - lo


def _fit(problem, cfg=FIT, **kw):
    _, blocks, assignment, value_range = problem
    return fit.fit(blocks, assignment, cfg, target_psnr=30.0, value_range=value_range, **kw)


def test_reaches_target_stops_early_and_reports_exact_psnr(problem):
    data, blocks, _, _ = problem
    fitted = _fit(problem)
    assert fitted.psnr >= 30.0 + FIT.margin_db
    assert 0 < fitted.steps < FIT.max_steps
    decoded = decode.decode(Model.from_fit(blocks, fitted))
    assert psnr(data, decoded) == pytest.approx(fitted.psnr, abs=0.02)


def test_same_seed_same_result(problem):
    a = _fit(problem, max_steps=30)
    b = _fit(problem, max_steps=30)
    for name, arr in a.arrays.items():
        np.testing.assert_array_equal(arr, b.arrays[name])


def test_chunked_step_gradient_equals_autograd(problem, monkeypatch):
    _, blocks, assignment, _ = problem
    monkeypatch.setattr(fit, "CHUNK_SAMPLES", 1)  # one network per chunk
    shape = fit.net_shape(FIT, assignment.n_nets, blocks.n_fit)
    net = BatchedSiren(shape, torch.Generator().manual_seed(0))
    dev = torch.device("cpu")
    ev = fit._Evaluator(blocks, dev, FIT.width)
    trainer = fit._Trainer(net, shape, blocks, assignment, ev, FIT, dev, seed=0)
    assert trainer.chunk == 1
    assert assignment.n_nets > 1
    samples = [trainer.draw(slice(a, a + 1)) for a in range(assignment.n_nets)]
    monkeypatch.setattr(trainer, "draw", lambda nets: samples[nets.start])
    loss = trainer.step()
    got = {k: v.grad.clone() for k, v in net.named_parameters()}

    net.zero_grad()
    folded, bias = trainer.folded()
    coords = torch.cat([c for c, _ in samples])
    target = torch.cat([t for _, t in samples])
    n, p, s, _ = coords.shape
    pred = siren_forward(folded, bias, coords.view(n, p * s, 4)).view(n, p, s)
    ref = ((pred - target) * trainer.weight[..., None]).square().mean()
    ref.backward()
    torch.testing.assert_close(float(loss), float(ref.detach()))
    for k, v in net.named_parameters():
        torch.testing.assert_close(got[k], v.grad, rtol=1e-4, atol=1e-7)


class _Masked(BatchedSiren):
    """Half of every hidden weight pruned through the ``weights()`` hook."""

    def __init__(self, shape):
        super().__init__(shape, torch.Generator().manual_seed(3))
        self.register_buffer("mask", (torch.arange(shape.width) % 2 == 0).float())

    def weights(self):
        w = dict(self.params.items())
        w["w_h0"] = w["w_h0"] * self.mask
        return w


class _FrozenLatents(BatchedSiren):
    """Trains the weights only (as weight-shared fine-tuning does)."""

    def parameters(self, recurse=True):
        return iter(self.params.values())


def test_effective_weight_hooks_are_what_trains(problem):
    _, blocks, assignment, _ = problem
    shape = fit.net_shape(FIT, assignment.n_nets, blocks.n_fit)
    start = _fit(problem, net=_Masked(shape), max_steps=1).psnr
    fitted = _fit(problem, net=_Masked(shape), max_steps=60)
    assert np.all(fitted.arrays["w_h0"][..., 1::2] == 0)
    assert fitted.psnr > start + 3

    frozen = _FrozenLatents(shape, torch.Generator().manual_seed(4))
    before = frozen.latents.detach().clone()
    w_before = frozen.params["w_h0"].detach().clone()
    _fit(problem, net=frozen, max_steps=60)
    torch.testing.assert_close(frozen.latents.detach(), before, rtol=0, atol=0)
    assert not torch.equal(frozen.params["w_h0"].detach(), w_before)


def test_compile_failure_falls_back_to_eager(problem, monkeypatch, caplog):
    def broken():
        def kernel(*args):
            raise RuntimeError("no compiler here")

        return kernel

    monkeypatch.setattr(fit, "_compiled_kernel", broken)
    eager = _fit(problem, max_steps=20)
    with caplog.at_level("WARNING", logger="sciinr.stages.fit"):
        fallback = _fit(problem, FitConfig(**{**FIT.__dict__, "compile": "on"}), max_steps=20)
    assert "eager" in caplog.text
    np.testing.assert_array_equal(eager.arrays["w_out"], fallback.arrays["w_out"])


def test_all_trivial_needs_no_training():
    vol = read.read(np.full((2, 8, 8, 8), 3.0, np.float32))
    blocks = partition.partition(vol, PartitionConfig(block=(2, 8, 8, 8)), 0.1)
    assignment = cluster.cluster(blocks, ClusterConfig())
    fitted = fit.fit(blocks, assignment, FIT, target_psnr=40, value_range=1.0)
    assert fitted.steps == 0
    assert blocks.n_fit == 0
