"""The batched SIREN kernels: hand-written backward, in-place evaluation, folding, buffers."""

from __future__ import annotations

import math
import os

import pytest
import torch

from sciinr.nets import (
    BatchedSiren,
    Folded,
    NetShape,
    Workspace,
    block_bias,
    fold,
    local_coords,
    siren_eval,
    siren_forward,
    siren_loss_grad,
)

SHAPE = NetShape(n_nets=3, n_blocks=7, latent_dim=5, width=8, depth=2, omega0=30.0)


def _net(shape: NetShape = SHAPE, dtype=torch.float64) -> BatchedSiren:
    return BatchedSiren(shape, torch.Generator().manual_seed(1)).to(dtype)


def _reference(params, latents, shape, nets, blocks, coords):
    """The SIREN written the plain way: sin(w0 * (x W + b)) per layer, no folding."""
    w0 = shape.omega0
    bias = params["b_in"][nets] + latents[blocks].unsqueeze(1) @ params["w_lat"][nets]
    h = torch.sin(w0 * (coords @ params["w_in"][nets] + bias))
    for i in range(shape.depth):
        h = torch.sin(w0 * (h @ params[f"w_h{i}"][nets] + params[f"b_h{i}"][nets]))
    return (h @ params["w_out"][nets] + params["b_out"][nets]).squeeze(-1)


def _blocks(params, latents, nets, blocks, coords, fast=True):
    """Selected blocks on one coordinate grid: the fast kernel, or the autograd reference."""
    folded = fold(params, SHAPE).select(nets)
    bias = block_bias(params, latents, SHAPE, nets, blocks).unsqueeze(1)
    return siren_eval(folded, bias, coords) if fast else siren_forward(folded, bias, coords)


def _problem(dtype=torch.float64):
    g = torch.Generator().manual_seed(2)
    n, groups, s = SHAPE.n_nets, 2, 5
    slots = torch.tensor([[0, 1], [2, 3], [4, 6]])
    nets = torch.arange(n)[:, None].expand(n, groups)
    coords = torch.rand((n, groups, s, 4), generator=g, dtype=dtype) * 2 - 1
    target = torch.rand((n, groups, s), generator=g, dtype=dtype) * 2 - 1
    weight = torch.rand((n, groups), generator=g, dtype=dtype) + 0.5
    return slots, nets, coords, target, weight


def test_block_bias_folds_omega_and_latents():
    net = _net()
    p, lat = net.weights(), net.latent_table()
    nets, blocks = torch.tensor([2, 0]), torch.tensor([5, 1])
    got = block_bias(p, lat, SHAPE, nets, blocks)
    want = SHAPE.omega0 * (p["b_in"][nets, 0] + (lat[blocks, None] @ p["w_lat"][nets])[:, 0])
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("use_work", [False, True])
def test_hand_written_backward_equals_autograd(use_work):
    net = _net()
    slots, nets, coords, target, weight = _problem()
    p = net.weights()
    folded = fold(p, SHAPE)
    bias = block_bias(p, net.latent_table(), SHAPE, nets, slots)
    leaves = [t.detach().clone().requires_grad_() for t in [*folded.tensors(), bias]]
    n, g, s, _ = coords.shape
    out = siren_forward(Folded.from_tensors(leaves[:-1]), leaves[-1], coords.view(n, g * s, 4))
    ref_loss = ((out.view(n, g, s) - target) * weight[..., None]).square().sum() * 0.3
    ref_loss.backward()

    work = Workspace() if use_work else None
    plain = Folded.from_tensors([t.detach() for t in leaves[:-1]])
    for _ in range(2):  # the second call reuses the workspace buffers
        loss, grads, grad_bias = siren_loss_grad(
            plain, leaves[-1].detach(), coords, target, weight, 0.3, work
        )
        torch.testing.assert_close(loss.sum(), ref_loss.detach())
        for got, leaf in zip([*grads, grad_bias], leaves, strict=True):
            torch.testing.assert_close(got, leaf.grad, rtol=1e-9, atol=1e-12)


def test_eval_equals_differentiable_forward_and_reference():
    net = _net()
    p, lat = net.weights(), net.latent_table()
    nets, blocks = torch.tensor([0, 2, 1, 2]), torch.tensor([0, 5, 3, 6])
    coords = local_coords((2, 3, 4, 5)).double()
    want = _reference(p, lat, SHAPE, nets, blocks, coords).detach()
    got = _blocks(p, lat, nets, blocks, coords, fast=False)  # differentiable path
    assert got.requires_grad
    torch.testing.assert_close(got.detach(), want)
    work = Workspace()
    with torch.no_grad():
        for _ in range(2):
            fast = _blocks(p, lat, nets, blocks, coords)
            torch.testing.assert_close(fast, want)
            folded = fold(p, SHAPE).select(nets)
            bias = block_bias(p, lat, SHAPE, nets, blocks).unsqueeze(1)
            torch.testing.assert_close(siren_eval(folded, bias, coords, work), want)
            # per-network coordinates (3-D) give the same values
            per_net = coords.expand(len(nets), *coords.shape)
            torch.testing.assert_close(siren_eval(folded, bias, per_net, work), want)


def test_eval_in_float32_is_close_to_float64():
    net64 = _net()
    net32 = _net(dtype=torch.float32)
    coords = local_coords((2, 4, 4, 4))
    args = (torch.tensor([0, 1, 2]), torch.tensor([1, 2, 6]))
    with torch.no_grad():
        a = _blocks(net64.weights(), net64.latent_table(), *args, coords.double())
        b = _blocks(net32.weights(), net32.latent_table(), *args, coords)
    assert float((a.detach() - b.double()).abs().max()) < 1e-4


def test_workspace_reuses_and_bounds_buffers():
    work = Workspace(max_shapes=2)
    like = torch.zeros(1)
    first = work.get(2, (3, 4), like)
    assert work.get(2, (3, 4), like) is first
    work.get(2, (5, 4), like)
    work.get(2, (6, 4), like)  # a third shape clears the cache
    assert work.get(2, (3, 4), like) is not first
    assert len(work._bufs) <= 2


def test_fold_is_differentiable():
    net = _net()
    folded = fold(net.weights(), SHAPE)
    sum(t.sum() for t in folded.tensors()).backward()
    w0 = SHAPE.omega0
    assert float(net.params["w_h0"].grad[0, 0, 0]) == pytest.approx(w0)
    assert float(net.params["w_out"].grad[0, 0, 0]) == pytest.approx(1.0)
    assert math.isclose(float(net.params["w_in"].grad.mean()), w0)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("SCIINR_TEST_COMPILE") != "1",
    reason="compiling costs ~15-50 s on 2 cores; set SCIINR_TEST_COMPILE=1 to run",
)
def test_compiled_kernel_agrees_with_eager():
    """torch.compile of the pure kernel gives the eager result (skipped where it cannot run)."""
    from sciinr.stages.fit import _compiled_kernel

    net = _net(dtype=torch.float32)
    slots, nets, coords, target, weight = _problem(torch.float32)
    with torch.no_grad():
        p = net.weights()
        folded = fold(p, SHAPE)
        bias = block_bias(p, net.latent_table(), SHAPE, nets, slots)
    eager = siren_loss_grad(folded, bias, coords, target, weight, 0.3)
    try:
        compiled = _compiled_kernel()(folded, bias, coords, target, weight, 0.3)
    except Exception as exc:  # no C++ compiler, unsupported platform, ...
        pytest.skip(f"torch.compile unavailable here: {type(exc).__name__}")
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-4, atol=1e-7)
    for a, b in zip([*compiled[1], compiled[2]], [*eager[1], eager[2]], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
