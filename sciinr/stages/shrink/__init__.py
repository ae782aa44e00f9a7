"""Shrink stage: :class:`Fitted` -> :class:`Shrunk` (prune, share weights, fine-tune).

1. Block-aware magnitude pruning in steps, with recovery training between them
   (:mod:`.prune`); a step that cannot recover the target PSNR is undone.
2. Latent codes: uniform quantization per dimension, then fixed.
3. Shared-parameter quantization: a k-means codebook per parameter tensor, index 0 = zero
   (:mod:`.quantize`), then the centroids are fine-tuned by backpropagation.
4. Rate control: if the result is below the target PSNR, retry with one more bit.

The training itself is :func:`sciinr.stages.fit.fit` run on a pruned or weight-shared network.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from ...config import FitConfig, ShrinkConfig
from ...nets import block_bias, fold, local_coords, resolve_device, siren_eval
from ...payloads import Assignment, Blocks, Fitted, Shrunk, dequantize_shared, dequantize_uniform
from .. import fit as fit_stage
from .prune import MaskedSiren, importance, masks_for, prunable
from .quantize import SharedSiren, quantize_uniform, share

logger = logging.getLogger(__name__)

__all__ = ["Pruned", "prune", "share_weights", "shrink"]


def net_errors(
    blocks: Blocks,
    fitted_arrays: dict[str, np.ndarray],
    shape,
    block_net: np.ndarray,
    device: torch.device,
) -> np.ndarray:
    """Mean squared error (original units, valid voxels) of each network's blocks, ``(n_nets,)``."""
    params = {k: torch.from_numpy(v).to(device) for k, v in fitted_arrays.items()}
    latents = params.pop("latents")
    coords = local_coords(blocks.block, device=device)
    scale = blocks.half_range[blocks.fit_ids]
    bn = torch.from_numpy(block_net).to(device)
    sse = np.zeros(blocks.n_fit)
    chunk = max(1, (1 << 22) // max(1, coords.shape[0] * shape.width))
    with torch.no_grad():
        folded = fold(params, shape)
        for s in range(0, blocks.n_fit, chunk):
            ids = torch.arange(s, min(blocks.n_fit, s + chunk), device=device)
            bias = block_bias(params, latents, shape, bn[ids], ids).unsqueeze(1)
            pred = siren_eval(folded.select(bn[ids]), bias, coords).clamp(-1, 1)
            target = torch.from_numpy(blocks.values[s : s + len(ids)]).to(device)
            err = (pred - target).double().square()
            if blocks.mask is None:
                err = err.mean(dim=1).cpu().numpy()
            else:  # masked voxels count in no error
                valid = torch.from_numpy(blocks.mask[s : s + len(ids)]).to(device)
                err = (err * valid).sum(1) / valid.sum(1).clamp_min(1)
                err = err.cpu().numpy()
            sse[s : s + len(ids)] = err * scale[s : s + len(ids)] ** 2
    return np.bincount(block_net, weights=sse, minlength=shape.n_nets) / np.maximum(
        np.bincount(block_net, minlength=shape.n_nets), 1
    )


@dataclasses.dataclass(frozen=True)
class Pruned:
    """Output of :func:`prune`: the recovered dense parameters and their keep-masks."""

    arrays: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    psnr: float
    log: tuple[tuple[str, float, int], ...]

    @property
    def sparsity(self) -> float:
        kept = sum(int(m.sum()) for m in self.masks.values())
        return 1 - kept / max(1, sum(m.size for m in self.masks.values()))


def prune(
    blocks: Blocks,
    assignment: Assignment,
    fitted: Fitted,
    cfg: ShrinkConfig,
    fit_cfg: FitConfig,
    *,
    target_psnr: float,
    value_range: float,
    seed: int = 0,
    progress: bool = False,
) -> Pruned:
    """Prune the hidden layers in ``cfg.prune_steps`` steps, recovering after each.

    A step whose recovery ends below ``target_psnr + cfg.keep_db`` is undone and pruning stops.
    """
    device = resolve_device(fit_cfg.device)
    shape = fitted.shape
    arrays = dict(fitted.arrays)
    log = [("fit", fitted.psnr, _count(arrays))]
    masks = {n: np.ones(arrays[n].shape, bool) for n in prunable(shape.param_names())}
    current = fitted.psnr
    recover_cfg = dataclasses.replace(fit_cfg, lr=cfg.recovery_lr)
    if blocks.n_fit and cfg.prune > 0:
        for k in range(1, cfg.prune_steps + 1):
            frac = cfg.prune * k / cfg.prune_steps
            err = net_errors(blocks, arrays, shape, fitted.block_net, device)
            new_masks = masks_for(importance(arrays, err, cfg.importance_power), frac)
            net = MaskedSiren(shape, arrays, new_masks)
            res = fit_stage.fit(
                blocks,
                assignment,
                recover_cfg,
                net=net,
                max_steps=cfg.recovery_steps,
                target_psnr=target_psnr,
                value_range=value_range,
                seed=seed + k,
                progress=progress,
                label=f"prune {k}/{cfg.prune_steps}",
            )
            logger.info("prune %.0f%%: PSNR %.2f dB", 100 * frac, res.psnr)
            if res.psnr < target_psnr + cfg.keep_db:
                logger.info("prune %.0f%% undone (below target)", 100 * frac)
                break
            arrays, masks, current = dict(res.arrays), new_masks, res.psnr
            log.append((f"prune {frac:.2f}", res.psnr, _count(arrays)))
    return Pruned(arrays=arrays, masks=masks, psnr=current, log=tuple(log))


def share_weights(
    blocks: Blocks,
    assignment: Assignment,
    fitted: Fitted,
    pruned: Pruned,
    cfg: ShrinkConfig,
    fit_cfg: FitConfig,
    *,
    target_psnr: float,
    value_range: float,
    seed: int = 0,
    progress: bool = False,
) -> Shrunk:
    """Quantize latents, share weights through codebooks, fine-tune the centroids.

    Tries ``cfg.bits`` and, while the result is below ``target_psnr``, one more bit up to
    ``cfg.max_bits``. With ``cfg.bits == 0`` the pruned float weights are returned as they are.
    """
    shape, arrays, masks = fitted.shape, pruned.arrays, pruned.masks
    names = shape.param_names()
    if cfg.bits == 0 or not blocks.n_fit:
        latent_q, off, step = quantize_uniform(arrays["latents"], 16)
        return Shrunk(
            shape=shape,
            codebooks={},
            indices={},
            latent_q=latent_q,
            latent_offset=off,
            latent_step=step,
            arrays=arrays,
            block_net=fitted.block_net,
            psnr=pruned.psnr,
            sparsity=pruned.sparsity,
            log=pruned.log,
        )
    tune_cfg = dataclasses.replace(fit_cfg, lr=cfg.finetune_lr, margin_db=cfg.finetune_margin_db)
    result = None
    for bits in range(cfg.bits, max(cfg.bits, cfg.max_bits) + 1):
        latent_q, off, step = quantize_uniform(arrays["latents"], cfg.latent_bits)
        latents = dequantize_uniform(latent_q, off, step)
        codebooks, indices = {}, {}
        for n in names:
            keep = masks.get(n, np.ones(arrays[n].shape, bool))
            codebooks[n], indices[n] = share(arrays[n], keep, bits)
        net = SharedSiren(shape, codebooks, indices, latents)
        res = fit_stage.fit(
            blocks,
            assignment,
            tune_cfg,
            net=net,
            max_steps=cfg.finetune_steps,
            target_psnr=target_psnr,
            value_range=value_range,
            seed=seed,
            progress=progress,
            label=f"share {bits} bits, fine-tune",
        )
        # centroids are stored as float16: round them here so ``arrays`` is what decode sees
        tuned = {
            n: c.astype(np.float16).astype(np.float32)
            for n, c in _codebooks(res, net, names).items()
        }
        deq = {n: dequantize_shared(tuned[n], indices[n]) for n in names}
        deq["latents"] = latents
        result = Shrunk(
            shape=shape,
            codebooks=tuned,
            indices=indices,
            latent_q=latent_q,
            latent_offset=off,
            latent_step=step,
            arrays=deq,
            block_net=fitted.block_net,
            psnr=res.psnr,
            sparsity=pruned.sparsity,
            log=(*pruned.log, (f"share {bits} bits + fine-tune", res.psnr, _count(deq))),
        )
        logger.info("weight sharing at %d bits: PSNR %.2f dB", bits, res.psnr)
        if res.psnr >= target_psnr or pruned.psnr < target_psnr:
            break  # reached, or more bits cannot beat the unquantized networks
    assert result is not None
    return result


def shrink(
    blocks: Blocks,
    assignment: Assignment,
    fitted: Fitted,
    cfg: ShrinkConfig,
    fit_cfg: FitConfig,
    *,
    target_psnr: float,
    value_range: float,
    seed: int = 0,
    progress: bool = False,
) -> Shrunk:
    """Make the fitted networks small while keeping the whole field at ``target_psnr``.

    Parameters
    ----------
    blocks, assignment, fitted
        Outputs of partition, cluster and fit.
    cfg : ShrinkConfig
        Pruning fraction and schedule, bits, fine-tuning budget.
    fit_cfg : FitConfig
        Training settings reused for recovery and fine-tuning.
    target_psnr, value_range
        The quality to keep and the field's value range.
    """
    common = dict(target_psnr=target_psnr, value_range=value_range, seed=seed, progress=progress)
    pruned = prune(blocks, assignment, fitted, cfg, fit_cfg, **common)
    return share_weights(blocks, assignment, fitted, pruned, cfg, fit_cfg, **common)


def _codebooks(res: Fitted, net: SharedSiren, names: list[str]) -> dict[str, np.ndarray]:
    """The fine-tuned centroids: ``fit`` loaded the best state back into ``net``."""
    cbs = net.codebook_arrays()
    # sanity: the dequantized weights equal what fit reported
    for n in names:
        if not np.allclose(
            dequantize_shared(cbs[n], net.__getattr__(f"idx_{n}").cpu().numpy()),
            res.arrays[n],
            atol=1e-6,
        ):
            raise RuntimeError(f"codebook and fitted weights disagree for {n}")
    return cbs


def _count(arrays: dict[str, np.ndarray]) -> int:
    return int(sum(int(np.count_nonzero(v)) for v in arrays.values()))
