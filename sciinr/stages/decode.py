"""Decode stage: :class:`Model` + a region -> NumPy array.

Only the blocks that intersect the region are evaluated, and of each only the voxels inside
the region. The weights are folded once (:func:`~sciinr.nets.fold`); blocks are then evaluated
in cache-sized batches (a few blocks, or a slice of one block's voxels) through reused buffers
(:class:`~sciinr.nets.Workspace`), on CPU or GPU, and written straight into the output array.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ..nets import Workspace, block_bias, fold, local_coords, siren_eval
from ..payloads import Model

BATCH_ACTIVATIONS = 1 << 19  # hidden activations per batch (2 MB in float32): stays in cache


def decode(
    model: Model,
    region: tuple[tuple[int, int], ...] | None = None,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Decode ``region`` ((start, stop) per t, z, y, x axis; default: everything) to float32."""
    shape4 = model.shape4
    if region is None:
        region = tuple((0, s) for s in shape4)
    out = np.empty(tuple(b - a for a, b in region), np.float32)
    if out.size == 0:
        return out
    block, grid = model.block, model.grid
    ranges = [range(a // b, (e - 1) // b + 1) for (a, e), b in zip(region, block, strict=True)]
    cells = np.stack(np.meshgrid(*[np.asarray(r) for r in ranges], indexing="ij"), -1).reshape(
        -1, 4
    )
    ids = np.ravel_multi_index(tuple(cells.T), grid)
    fit_index = np.cumsum(~model.trivial) - 1  # block id -> fitted id
    lo_all, hi_all = model.lo, model.hi

    groups: dict[tuple, list[tuple[int, tuple]]] = defaultdict(list)
    for cell, bid in zip(cells, ids, strict=True):
        local, dest = [], []
        for ax in range(4):
            start = int(cell[ax]) * block[ax]
            a = max(region[ax][0], start)
            e = min(region[ax][1], start + block[ax])
            local.append((a - start, e - start))
            dest.append(slice(a - region[ax][0], e - region[ax][0]))
        if model.trivial[bid]:
            out[tuple(dest)] = (np.float64(lo_all[bid]) + hi_all[bid]) / 2
        else:
            groups[tuple(local)].append((int(bid), tuple(dest)))
    if not groups:
        return out

    dev = torch.device(device)
    net = model.net
    with torch.no_grad():
        params = {k: torch.from_numpy(v).to(dev) for k, v in model.arrays.items() if k != "latents"}
        latents = torch.from_numpy(model.arrays["latents"]).to(dev)
        folded = fold(params, net)
        block_net = torch.from_numpy(model.block_net).to(dev)
        work = Workspace()
        for local, members in groups.items():
            coords = local_coords(block, local, dev)
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
                    pred = torch.empty((len(chunk), n_vox), device=dev)
                    for v0 in range(0, n_vox, span):
                        v1 = min(n_vox, v0 + span)
                        pred[:, v0:v1] = siren_eval(sel, bias, coords[v0:v1], work)
                pred = pred.clamp_(-1.0, 1.0).cpu().numpy().astype(np.float64)
                lo = lo_all[bids].astype(np.float64)[:, None]
                half = (hi_all[bids].astype(np.float64)[:, None] - lo) / 2
                vals = (lo + (pred + 1.0) * half).astype(np.float32)
                for row, (_, dest) in enumerate(chunk):
                    out[dest] = vals[row].reshape(sub)
    return out
