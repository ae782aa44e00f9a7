"""Decode stage: :class:`Model` + a region -> NumPy array.

Only the blocks that intersect the region (:func:`touched`) are evaluated, and of each only
the voxels inside the region. The weights are folded once (:func:`~sciinr.nets.fold`);
blocks are then evaluated in cache-sized batches (a few blocks, or a slice of one block's
voxels) through reused buffers (:class:`~sciinr.nets.Workspace`), on CPU or GPU, and written
straight into the output array.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ..nets import Workspace, block_bias, fold, local_coords, resolve_device, siren_eval
from ..payloads import Model

BATCH_ACTIVATIONS = 1 << 19  # hidden activations per batch (2 MB in float32): stays in cache

Region = tuple[tuple[int, int], ...]  # (start, stop) per t, z, y, x axis


def touched(
    block: tuple[int, ...], grid: tuple[int, ...], region: Region
) -> list[tuple[int, Region, tuple[slice, ...]]]:
    """(block id, (start, stop) inside the block, slices of the region) per touched block.

    ``block`` is the tile shape of a regular grid of ``grid`` tiles (the model's blocks, or
    the residual layer's chunks); ids are C-order indices of that grid.
    """
    ranges = [range(a // b, (e - 1) // b + 1) for (a, e), b in zip(region, block, strict=True)]
    out = []
    for cell in np.ndindex(*[len(r) for r in ranges]):
        idx = [r[c] for r, c in zip(ranges, cell, strict=True)]
        local, dest = [], []
        for ax in range(4):
            start = idx[ax] * block[ax]
            a = max(region[ax][0], start)
            e = min(region[ax][1], start + block[ax])
            local.append((a - start, e - start))
            dest.append(slice(a - region[ax][0], e - region[ax][0]))
        bid = int(np.ravel_multi_index(tuple(idx), grid))
        out.append((bid, tuple(local), tuple(dest)))
    return out


def decode(
    model: Model,
    region: Region | None = None,
    device: torch.device | str = "cpu",
    dtype: type | np.dtype = np.float32,
) -> np.ndarray:
    """Decode ``region`` (default: everything) to a NumPy array.

    Parameters
    ----------
    model : Model
    region : tuple of (start, stop) per t, z, y, x axis, optional
    device : {"auto", "cpu", "cuda", ...} or torch.device, default: "cpu"
    dtype : numpy.float32 or numpy.float64, default: float32
        The arithmetic of the networks and of the result. float64 evaluates the stored
        (float32) parameters widened, on coordinates made on the CPU, so any two devices
        agree within :func:`sciinr.stages.residual.prediction_margin`: the prediction a
        residual layer corrects.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"decode computes in float32 or float64, not {dtype}")
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    dev = resolve_device(device)  # a bad device is refused even where nothing is evaluated
    shape4 = model.shape4
    if region is None:
        region = tuple((0, s) for s in shape4)
    out = np.empty(tuple(b - a for a, b in region), dtype)
    if out.size == 0:
        return out
    block = model.block
    fit_index = np.cumsum(~model.trivial) - 1  # block id -> fitted id
    lo_all, hi_all = model.lo, model.hi

    groups: dict[tuple, list[tuple[int, tuple]]] = defaultdict(list)
    for bid, local, dest in touched(block, model.grid, region):
        if model.trivial[bid]:
            out[dest] = (np.float64(lo_all[bid]) + hi_all[bid]) / 2
        else:
            groups[local].append((bid, dest))
    if not groups:
        return out

    net = model.net
    with torch.no_grad():
        arrays = {k: torch.from_numpy(v).to(dev, tdtype) for k, v in model.arrays.items()}
        latents = arrays.pop("latents")
        params = arrays
        folded = fold(params, net)
        block_net = torch.from_numpy(model.block_net).to(dev)
        work = Workspace()
        for local, members in groups.items():
            coords = local_coords(block, local, dtype=tdtype).to(dev)
            sub = tuple(e - a for a, e in local)
            n_vox = coords.shape[0]
            per = max(1, BATCH_ACTIVATIONS // max(1, net.width))  # voxels per batch
            span = min(n_vox, per)  # voxels of one block per batch
            per_batch = max(1, per // n_vox)  # whole blocks per batch when blocks are small
            for start in range(0, len(members), per_batch):
                chunk = members[start : start + per_batch]
                bids = np.array([m[0] for m in chunk])
                fids = torch.from_numpy(fit_index[bids]).to(dev)
                nets = block_net[fids]
                sel = folded.select(nets)
                bias = block_bias(params, latents, net, nets, fids).unsqueeze(1)  # (B, 1, W)
                if span == n_vox:
                    pred = siren_eval(sel, bias, coords, work)
                else:
                    pred = torch.empty((len(chunk), n_vox), device=dev, dtype=tdtype)
                    for v0 in range(0, n_vox, span):
                        v1 = min(n_vox, v0 + span)
                        pred[:, v0:v1] = siren_eval(sel, bias, coords[v0:v1], work)
                pred = pred.clamp_(-1.0, 1.0).cpu().numpy().astype(np.float64)
                lo = lo_all[bids].astype(np.float64)[:, None]
                half = (hi_all[bids].astype(np.float64)[:, None] - lo) / 2
                vals = (lo + (pred + 1.0) * half).astype(dtype, copy=False)
                for row, (_, dest) in enumerate(chunk):
                    out[dest] = vals[row].reshape(sub)
    return out
