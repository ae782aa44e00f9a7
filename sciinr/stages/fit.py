"""Fit stage: :class:`Blocks` + :class:`Assignment` -> :class:`Fitted`.

All networks train together as one batched computation (:class:`~sciinr.nets.BatchedSiren`).
Data, coordinates and random sampling live on the device; there is no DataLoader. The loss
is the squared error in *original units* (normalized error times each block's half-range),
so it minimizes exactly the MSE that the PSNR of the whole field measures. Every
``eval_every`` steps the PSNR of the whole field is computed exactly; training stops once it
reaches the target plus a margin, or when the step or time budget is spent. The best
parameters seen are kept.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import FitConfig
from ..metrics import psnr_from_mse
from ..nets import BatchedSiren, NetShape, forward_blocks, local_coords
from ..payloads import Assignment, Blocks, Fitted
from .partition import valid_mask

logger = logging.getLogger(__name__)

EVAL_CHUNK_VALUES = 1 << 22  # hidden activations per evaluation chunk (~16 MB in float32)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def net_shape(cfg: FitConfig, n_nets: int, n_blocks: int) -> NetShape:
    return NetShape(
        n_nets=n_nets,
        n_blocks=n_blocks,
        latent_dim=cfg.latent_dim,
        width=cfg.width,
        depth=cfg.depth,
        omega0=cfg.omega0,
    )


class _Evaluator:
    """Exact squared error of the fitted blocks, in original units, padding excluded."""

    def __init__(self, blocks: Blocks, device: torch.device, width: int):
        self.values = torch.from_numpy(blocks.values).to(device)
        self.scale = torch.from_numpy(blocks.half_range[blocks.fit_ids]).to(device)
        self.valid = torch.from_numpy(valid_mask(blocks.shape4, blocks.block, blocks.fit_ids)).to(
            device
        )
        self.coords = local_coords(blocks.block, device=device)
        v = self.values.shape[1]
        self.chunk = max(1, EVAL_CHUNK_VALUES // max(1, v * width))

    @torch.no_grad()
    def sse(
        self,
        params: dict[str, torch.Tensor],
        latents: torch.Tensor,
        shape: NetShape,
        block_net: torch.Tensor,
    ) -> float:
        total = 0.0
        n = self.values.shape[0]
        for start in range(0, n, self.chunk):
            ids = torch.arange(start, min(n, start + self.chunk), device=self.values.device)
            pred = forward_blocks(params, latents, shape, block_net[ids], ids, self.coords)
            err = (pred.clamp(-1.0, 1.0).double() - self.values[ids]) * self.scale[ids, None]
            total += float((err.square() * self.valid[ids]).sum())
        return total


def fit(
    blocks: Blocks,
    assignment: Assignment,
    cfg: FitConfig,
    *,
    target_psnr: float,
    value_range: float,
    seed: int = 0,
    progress: bool = False,
    init: dict[str, np.ndarray] | None = None,
    max_steps: int | None = None,
    net: BatchedSiren | None = None,
) -> Fitted:
    """Train one network per cluster until the whole field reaches ``target_psnr + margin``.

    Parameters
    ----------
    blocks, assignment
        Output of ``partition`` and ``cluster``.
    cfg : FitConfig
        Architecture and training budget.
    target_psnr : float
        PSNR (dB) of the whole field to reach; ``cfg.margin_db`` is added.
    value_range : float
        max - min of the original field (PSNR's peak).
    seed : int
        Seed of initial weights and sampling.
    progress : bool
        Show a tqdm bar with the current PSNR.
    init : dict, optional
        Start from these parameters (as in ``Fitted.arrays``) instead of a random init.
    net : BatchedSiren, optional
        Train this network (e.g. a pruned or weight-shared subclass) instead of a new one;
        its :meth:`~BatchedSiren.parameters` are what the optimizer updates.
    max_steps : int, optional
        Overrides ``cfg.max_steps``.
    """
    device = resolve_device(cfg.device)
    n_values = int(np.prod(blocks.shape4))
    n_fit = blocks.n_fit
    shape = net_shape(cfg, assignment.n_nets, n_fit)
    block_net = torch.from_numpy(assignment.block_net).to(device)
    if n_fit == 0:
        net = BatchedSiren(shape, torch.Generator().manual_seed(seed))
        p = psnr_from_mse(blocks.trivial_sse / n_values, value_range)
        return Fitted(shape, net.state_arrays(), assignment.block_net, p, 0, 0.0)

    gen = torch.Generator().manual_seed(seed)
    if net is None:
        net = BatchedSiren(shape, gen) if init is None else BatchedSiren.from_arrays(shape, init)
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    evaluator = _Evaluator(blocks, device, cfg.width)

    def exact_psnr() -> float:
        with torch.no_grad():
            sse = evaluator.sse(net.weights(), net.latent_table(), shape, block_net)
        return psnr_from_mse((sse + blocks.trivial_sse) / n_values, value_range)

    n_nets, per = assignment.slots.shape
    per_slot = max(1, cfg.samples_per_net // per)
    v = blocks.values.shape[1]
    slots = torch.from_numpy(assignment.slots).to(device)  # (N, P)
    slot_scale = evaluator.scale[slots].float()  # (N, P)
    norm = float(slot_scale.square().mean().sqrt()) or 1.0
    weight = (slot_scale / norm)[:, :, None].expand(n_nets, per, per_slot).reshape(n_nets, -1)
    slot_ids = slots[:, :, None].expand(n_nets, per, per_slot)
    grid = evaluator.coords  # (V, 4)
    sgen = torch.Generator(device=device).manual_seed(seed + 1)

    goal = target_psnr + cfg.margin_db
    budget = cfg.max_steps if max_steps is None else max_steps
    best = (-math.inf, None)
    t0 = time.perf_counter()
    step = 0
    lr = cfg.lr
    last_eval = -math.inf
    bar = tqdm(total=budget, disable=not progress, leave=False, desc="fit", unit="step")
    try:
        while step < budget:
            vidx = torch.randint(0, v, (n_nets, per, per_slot), generator=sgen, device=device)
            y = evaluator.values[slot_ids, vidx].reshape(n_nets, -1)
            c = grid[vidx].reshape(n_nets, -1, 4)
            bb = net.block_bias(block_net)[slots]  # (N, P, W)
            bias = (
                bb[:, :, None, :].expand(n_nets, per, per_slot, -1).reshape(n_nets, -1, cfg.width)
            )
            pred = net(c, bias)
            loss = ((pred - y) * weight).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            if step % cfg.eval_every == 0 or step == budget:
                p = exact_psnr()
                if p > best[0]:
                    best = (p, {k: t.detach().clone() for k, t in net.state_dict().items()})
                if p < last_eval + 0.05:
                    lr *= 0.5
                    for g in opt.param_groups:
                        g["lr"] = lr
                last_eval = max(last_eval, p)
                bar.set_postfix(psnr=f"{p:.2f}", lr=f"{lr:.1e}")
                logger.debug("step %d psnr %.3f lr %.2e", step, p, lr)
                if p >= goal or time.perf_counter() - t0 > cfg.max_seconds or lr < cfg.lr / 200:
                    break
    finally:
        bar.close()
    if best[1] is None:
        best = (exact_psnr(), {k: t.detach().clone() for k, t in net.state_dict().items()})
    net.load_state_dict(best[1])
    seconds = time.perf_counter() - t0
    logger.info(
        "fit: %d networks, %d steps, %.1f s, PSNR %.2f dB (%.2f M samples/s)",
        n_nets,
        step,
        seconds,
        best[0],
        step * n_nets * per * per_slot / seconds / 1e6,
    )
    return Fitted(shape, net.state_arrays(), assignment.block_net, best[0], step, seconds)
