"""Fit stage: :class:`Blocks` + :class:`Assignment` -> :class:`Fitted`.

All networks train together as one batched computation (:class:`~sciinr.nets.BatchedSiren`).
Data, coordinates and random sampling live on the device; there is no DataLoader. The loss
is the squared error in *original units* (normalized error times each block's half-range),
so it minimizes exactly the MSE that the PSNR of the whole field measures. The running loss
gives a free PSNR estimate that drives the learning-rate schedule and decides when to compute
the PSNR of the whole field exactly (also every ``eval_every`` steps when that costs little);
training stops once the exact PSNR reaches the target plus a margin, or when the step or time
budget is spent. The best parameters seen are kept.

One training step:

1. the effective weights (``net.weights()``, ``net.latent_table()``, so pruned or
   weight-shared subclasses train through the same loop) are folded once
   (:func:`~sciinr.nets.fold`, :func:`~sciinr.nets.block_bias`) into small tensors;
2. the networks are processed in cache-sized chunks: each chunk draws its samples, runs the
   hand-written forward and backward pass (:func:`~sciinr.nets.siren_loss_grad`) in reused
   buffers, and writes its slice of the gradient;
3. one autograd call carries those gradients back to the parameters, then Adam steps.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import FitConfig
from ..metrics import psnr_from_mse
from ..nets import (
    BatchedSiren,
    Folded,
    NetShape,
    Workspace,
    block_bias,
    fold,
    local_coords,
    resolve_device,
    siren_eval,
    siren_loss_grad,
)
from ..payloads import Assignment, Blocks, Fitted
from .partition import valid_mask

logger = logging.getLogger(__name__)

CHUNK_SAMPLES = 1 << 14  # training samples per chunk: activations of a chunk stay in cache
WINDOW = 25  # steps between PSNR estimates from the training loss (grows as the lr decays)
WINDOW_GROWTH = 1.5  # the window grows by this factor at every halving of the learning rate
PATIENCE = 2  # windows without MIN_GAIN_DB of progress before the learning rate halves
MIN_GAIN_DB = 0.05
FIRST_LEAD_DB = 1.0  # the first exact evaluation runs when the estimate is this close to the goal
EVAL_ACTIVATIONS = 1 << 18  # hidden activations per evaluation chunk (1 MB in float32)


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
    """Exact squared error of every fitted block, in original units, padding excluded."""

    def __init__(self, blocks: Blocks, device: torch.device, width: int):
        self.values = torch.from_numpy(blocks.values).to(device)
        self.scale2 = torch.from_numpy(blocks.half_range[blocks.fit_ids] ** 2).to(device)
        valid = valid_mask(blocks.shape4, blocks.block, blocks.fit_ids)
        if blocks.mask is not None:  # masked voxels count in no error
            valid &= blocks.mask
        self.valid_all = valid if blocks.mask is not None else None
        partial = np.flatnonzero(~valid.all(axis=1))  # blocks past the field, or masked
        self.valid_row = np.full(len(valid), -1)
        self.valid_row[partial] = np.arange(len(partial))
        self.valid = torch.from_numpy(valid[partial]).to(device)  # (n_partial, V) bool
        self.coords = local_coords(blocks.block, device=device)
        n_vox = self.values.shape[1]
        per = max(1, EVAL_ACTIVATIONS // max(1, width))  # voxels per chunk
        self.span = min(n_vox, per)  # voxels of one block per chunk
        self.batch = max(1, per // n_vox)  # whole blocks per chunk when blocks are small
        self.work = Workspace()

    def block_sse(
        self, folded: Folded, bias: torch.Tensor, block_net: torch.Tensor
    ) -> torch.Tensor:
        """(n_fit,) float64: squared error of each block.

        ``folded`` holds all networks, ``bias`` (n_fit, W) the folded first-layer bias of each
        block, ``block_net`` (n_fit,) the network of each block.
        """
        n, n_vox = self.values.shape
        sse = torch.zeros(n, dtype=torch.float64, device=self.values.device)
        with torch.no_grad():
            for start in range(0, n, self.batch):
                stop = min(n, start + self.batch)
                sub = folded.select(block_net[start:stop])
                b = bias[start:stop, None, :]
                for v0 in range(0, n_vox, self.span):
                    v1 = min(n_vox, v0 + self.span)
                    err = siren_eval(sub, b, self.coords[v0:v1], self.work)
                    err = err.clamp_(-1.0, 1.0).sub_(self.values[start:stop, v0:v1]).square_()
                    rows = self.valid_row[start:stop]
                    ks = np.flatnonzero(rows >= 0)  # one indexed product, not one per block
                    if ks.size:
                        kt = torch.from_numpy(ks).to(err.device)
                        rt = torch.from_numpy(rows[ks]).to(err.device)
                        err[kt] *= self.valid[rt, v0:v1]
                    sse[start:stop] += err.sum(1, dtype=torch.float64)
        return sse * self.scale2


@functools.cache
def _compiled_kernel() -> Callable:
    return torch.compile(siren_loss_grad, dynamic=False)


class _Trainer:
    """One training step of all networks: chunked hand-written backward, then Adam."""

    def __init__(
        self,
        net: BatchedSiren,
        shape: NetShape,
        blocks: Blocks,
        assignment: Assignment,
        evaluator: _Evaluator,
        cfg: FitConfig,
        device: torch.device,
        seed: int,
    ):
        self.net, self.shape, self.ev = net, shape, evaluator
        n_nets, per = assignment.slots.shape
        self.n_nets, self.per = n_nets, per
        self.s = max(1, cfg.samples_per_net // per)  # samples per slot (block) per step
        self.slots = torch.from_numpy(assignment.slots).to(device)  # (N, P)
        self.slot_net = torch.arange(n_nets, device=device)[:, None].expand(n_nets, per)
        self.n_vox = blocks.values.shape[1]
        self.table: torch.Tensor | None = None
        scale2 = evaluator.scale2
        if evaluator.valid_all is not None:
            # samples are drawn among a block's valid voxels only; weighting each block by its
            # valid fraction keeps the loss an estimate of the squared error over valid voxels
            valid = evaluator.valid_all
            count = valid.sum(axis=1)
            order = np.argsort(~valid, axis=1, kind="stable").astype(np.int32)
            self.table = torch.from_numpy(order.reshape(-1)).to(device)
            self.count = torch.from_numpy(count.astype(np.int64)).to(device)
            scale2 = scale2 * torch.from_numpy(count / self.n_vox).to(device)
        slot_scale = scale2[self.slots].sqrt().float()  # (N, P)
        self.norm = float(slot_scale.square().mean().sqrt()) or 1.0
        self.weight = slot_scale / self.norm
        self.values_flat = evaluator.values.reshape(-1)
        self.slot_base = self.slots * self.n_vox  # (N, P) offsets into values_flat
        self.chunk = max(1, CHUNK_SAMPLES // (per * self.s))  # networks per chunk
        self.scale = 1.0 / (n_nets * per * self.s)
        self.gen = torch.Generator(device=device).manual_seed(seed + 1)
        self.work = Workspace()
        self.kernel = siren_loss_grad
        self.compiled = False
        if cfg.compile == "on":
            self.kernel = _compiled_kernel()
            self.compiled = True

    def folded(self) -> tuple[Folded, torch.Tensor]:
        """Folded weights of all networks and the folded bias of every slot ``(N, P, W)``."""
        params = self.net.weights()
        lat = self.net.latent_table()
        return fold(params, self.shape), block_bias(
            params, lat, self.shape, self.slot_net, self.slots
        )

    def draw(self, nets: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Random samples for ``nets``: coords (n, P, s, 4) and targets (n, P, s)."""
        base = self.slot_base[nets]
        if self.table is None:
            vidx = torch.randint(
                0,
                self.n_vox,
                (base.shape[0], self.per, self.s),
                generator=self.gen,
                device=base.device,
            )
        else:
            count = self.count[self.slots[nets]][:, :, None]  # (n, P, 1)
            u = torch.rand(
                (base.shape[0], self.per, self.s), generator=self.gen, device=base.device
            )
            k = torch.minimum((u * count).long(), count - 1)
            vidx = self.table.take(base[:, :, None] + k).long()
        target = self.values_flat.take(base[:, :, None] + vidx)
        coords = self.ev.coords.index_select(0, vidx.view(-1)).view(*vidx.shape, 4)
        return coords, target

    def _run_chunk(self, folded: Folded, bias: torch.Tensor, nets: slice) -> tuple:
        coords, target = self.draw(nets)
        args = (folded.select(nets), bias[nets], coords, target, self.weight[nets])
        if self.compiled:
            try:
                return self.kernel(*args, self.scale)
            except Exception as exc:  # any compile failure falls back to eager
                logger.warning("torch.compile failed (%s); training continues in eager mode", exc)
                self.kernel, self.compiled = siren_loss_grad, False
        return self.kernel(*args, self.scale, self.work)

    def step(self) -> torch.Tensor:
        """Gradients of one training step (``.grad`` of the parameters); returns the loss."""
        folded, bias = self.folded()
        graph = [*folded.tensors(), bias]
        leaves = [t.detach() for t in graph]
        lf, lb = Folded.from_tensors(leaves[:-1]), leaves[-1]
        grads = [torch.empty_like(t) for t in leaves]
        loss = torch.zeros((), dtype=torch.float64, device=lb.device)
        for a in range(0, self.n_nets, self.chunk):
            nets = slice(a, min(self.n_nets, a + self.chunk))
            net_loss, g, g_bias = self._run_chunk(lf, lb, nets)
            for full, part in zip(grads, [*g, g_bias], strict=True):
                full[nets] = part
            loss += net_loss.sum()
        pairs = [(t, g) for t, g in zip(graph, grads, strict=True) if t.requires_grad]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
        return loss

    def estimate_mse(self, loss: float) -> float:
        """Mean squared error (original units) of the fitted voxels, from a step's loss."""
        return loss * self.norm**2


def _adam(params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam, the fused single-kernel version where the device supports it (4x faster on CPU)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


class _Schedule:
    """Learning rate and exact-evaluation timing, driven by the running training loss.

    Every ``window()`` steps the mean training loss gives a PSNR estimate (free: it is measured
    on the step's own fresh samples before the update). When the estimate has not improved by
    ``MIN_GAIN_DB`` for ``PATIENCE`` windows the learning rate halves, and the window grows by
    ``WINDOW_GROWTH`` (quick early halvings bring the big gains; later ones wait longer, so high
    targets keep progressing). An exact evaluation is asked for when the estimate, corrected by
    the offset seen at the last exact evaluation, reaches the goal.
    """

    def __init__(self, lr: float, goal: float):
        self.lr0 = self.lr = lr
        self.goal = goal
        self.halvings = 0
        self.last_check = 0
        self.best_est, self.stale = -math.inf, 0
        self.est, self.offset, self.est_at_exact = -math.inf, FIRST_LEAD_DB, -math.inf

    def window(self) -> int:
        return int(WINDOW * WINDOW_GROWTH**self.halvings)

    def check(self, step: int, est: float) -> bool:
        """Record an estimate; returns True when an exact evaluation is due."""
        self.last_check, self.est = step, est
        if est > self.best_est + MIN_GAIN_DB:
            self.best_est, self.stale = est, 0
        else:
            self.stale += 1
            if self.stale >= PATIENCE:
                self.lr *= 0.5
                self.halvings += 1
                self.best_est, self.stale = est, 0
        return est + self.offset >= self.goal and est > self.est_at_exact + MIN_GAIN_DB

    def calibrate(self, exact: float) -> None:
        """Learn how far the estimate is from an exact evaluation."""
        if math.isfinite(self.est):
            self.offset, self.est_at_exact = exact - self.est, self.est

    def exhausted(self) -> bool:
        return self.lr < self.lr0 / 200


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
    label: str = "fit",
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
    label : str
        The bar's label: the phase (``fit``, ``prune 1/3``, ``share 6 bits, fine-tune``).
    init : dict, optional
        Start from these parameters (as in ``Fitted.arrays``) instead of a random init.
    net : BatchedSiren, optional
        Train this network (e.g. a pruned or weight-shared subclass) instead of a new one;
        its :meth:`~BatchedSiren.parameters` are what the optimizer updates, through its
        :meth:`~BatchedSiren.weights` and :meth:`~BatchedSiren.latent_table`. On return it
        holds the best parameters seen.
    max_steps : int, optional
        Overrides ``cfg.max_steps``.
    """
    device = resolve_device(cfg.device)
    n_values = max(1, blocks.n_values)  # valid voxels: masked ones count in no error
    n_fit = blocks.n_fit
    shape = net_shape(cfg, assignment.n_nets, n_fit)
    block_net = torch.from_numpy(assignment.block_net).to(device)
    fit_ids = torch.arange(n_fit, device=device)
    if n_fit == 0:
        net = BatchedSiren(shape, torch.Generator().manual_seed(seed))
        p = psnr_from_mse(blocks.trivial_sse / n_values, value_range)
        return Fitted(shape, net.state_arrays(), assignment.block_net, p, 0, 0.0)

    gen = torch.Generator().manual_seed(seed)
    if net is None:
        net = BatchedSiren(shape, gen) if init is None else BatchedSiren.from_arrays(shape, init)
    net = net.to(device)
    opt = _adam(list(net.parameters()), cfg.lr)
    evaluator = _Evaluator(blocks, device, cfg.width)
    trainer = _Trainer(net, shape, blocks, assignment, evaluator, cfg, device, seed)

    def exact_psnr() -> float:
        with torch.no_grad():
            params = net.weights()
            bias = block_bias(params, net.latent_table(), shape, block_net, fit_ids)
            sse = float(evaluator.block_sse(fold(params, shape), bias, block_net).sum())
        return psnr_from_mse((sse + blocks.trivial_sse) / n_values, value_range)

    goal = target_psnr + cfg.margin_db
    budget = cfg.max_steps if max_steps is None else max_steps
    sched = _Schedule(cfg.lr, goal)
    fit_values = n_fit * blocks.values.shape[1]
    best: tuple[float, dict | None] = (-math.inf, None)
    t0 = time.perf_counter()
    # A periodic exact evaluation (one forward pass over every fitted voxel) runs only when
    # training since the last one cost ten times as much (a forward+backward sample ~ 3
    # forward voxels). Counted in samples, not seconds, so that runs are reproducible.
    eval_cost = 10 * fit_values
    step_cost = 3 * assignment.n_nets * trainer.per * trainer.s
    last_exact = 0
    step = 0
    losses: list[torch.Tensor] = []
    bar = tqdm(total=budget, disable=not progress, leave=False, desc=label, unit="step")
    try:
        while step < budget:
            opt.zero_grad(set_to_none=True)
            losses.append(trainer.step())
            opt.step()
            step += 1
            bar.update(1)
            out_of_time = time.perf_counter() - t0 > cfg.max_seconds
            run_exact = (
                step == budget
                or out_of_time
                or (step % cfg.eval_every == 0 and (step - last_exact) * step_cost >= eval_cost)
            )
            if step - sched.last_check >= sched.window():
                mse = trainer.estimate_mse(float(torch.stack(losses).mean())) * fit_values
                losses.clear()
                est = psnr_from_mse((mse + blocks.trivial_sse) / n_values, value_range)
                run_exact |= sched.check(step, est)
                if sched.lr != opt.param_groups[0]["lr"]:
                    for g in opt.param_groups:
                        g["lr"] = sched.lr
                logger.debug("step %d estimate %.3f lr %.2e", step, est, sched.lr)
                run_exact |= sched.exhausted()
            if run_exact:
                p = exact_psnr()
                last_exact = step
                sched.calibrate(p)
                if p > best[0]:
                    best = (p, {k: t.detach().clone() for k, t in net.state_dict().items()})
                bar.set_postfix(psnr=f"{p:.2f}", lr=f"{sched.lr:.1e}")
                logger.debug("step %d psnr %.3f lr %.2e", step, p, sched.lr)
                if p >= goal or out_of_time or sched.exhausted():
                    break
    finally:
        bar.close()
    if best[1] is None:
        best = (exact_psnr(), {k: t.detach().clone() for k, t in net.state_dict().items()})
    net.load_state_dict(best[1])
    seconds = time.perf_counter() - t0
    logger.info(
        "fit: %d networks, %d steps, %.1f s, PSNR %.2f dB (%.2f M samples/s)",
        assignment.n_nets,
        step,
        seconds,
        best[0],
        step * assignment.n_nets * trainer.per * trainer.s / seconds / 1e6,
    )
    return Fitted(shape, net.state_arrays(), assignment.block_net, best[0], step, seconds)
