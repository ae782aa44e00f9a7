"""Shared-parameter quantization: k-means weight sharing with fine-tuned centroids.

Each parameter tensor (all networks together) gets a codebook of ``2**bits`` centroids found
by 1-D k-means over its surviving (unpruned) values. Index 0 is reserved for an exact zero (the
pruned weights), so the sparsity mask and the centroid indices form one integer stream that the
entropy coder compresses. :class:`SharedSiren` keeps the indices fixed and trains only the
centroids (the gradient of a centroid is the sum of its weights' gradients), plus nothing
else: latent codes are quantized uniformly beforehand and stay fixed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...nets import BatchedSiren, NetShape


def kmeans_1d(values: np.ndarray, k: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means (Lloyd, quantile init). Returns sorted centroids (k',) and labels.

    ``k'`` <= k: empty clusters are dropped.
    """
    v = np.sort(values.astype(np.float64).ravel())
    if v.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    k = max(1, min(k, np.unique(v).size))
    c = np.quantile(v, (np.arange(k) + 0.5) / k)
    c = np.unique(c)
    for _ in range(iters):
        edges = (c[1:] + c[:-1]) / 2
        lab = np.searchsorted(edges, v)
        sums = np.bincount(lab, weights=v, minlength=c.size)
        cnt = np.bincount(lab, minlength=c.size)
        new = np.where(cnt > 0, sums / np.maximum(cnt, 1), c)
        new = np.unique(new[cnt > 0])
        if new.size == c.size and np.allclose(new, c, rtol=0, atol=1e-12):
            c = new
            break
        c = new
    edges = (c[1:] + c[:-1]) / 2
    labels = np.searchsorted(edges, values.astype(np.float64).ravel())
    return c.astype(np.float32), labels.reshape(values.shape)


def share(array: np.ndarray, keep: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Codebook (K,) float32 and indices (array.shape) int64; index 0 = pruned zero."""
    idx = np.zeros(array.shape, np.int64)
    centroids, labels = kmeans_1d(array[keep], 2**bits)
    idx[keep] = labels + 1
    return centroids, idx


def quantize_uniform(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column uniform quantization of a (n, d) array: (ints, offset (d,), step (d,))."""
    lo = x.min(axis=0) if x.size else np.zeros(x.shape[1], np.float32)
    hi = x.max(axis=0) if x.size else np.zeros(x.shape[1], np.float32)
    step = ((hi - lo) / (2**bits - 1)).astype(np.float32)
    step = np.where(step > 0, step, np.float32(1.0)).astype(np.float32)
    q = np.round((x - lo) / step).astype(np.int64)
    return q, lo.astype(np.float32), step


class SharedSiren(BatchedSiren):
    """A :class:`BatchedSiren` whose weights are ``codebook[index]``; only codebooks train."""

    def __init__(
        self,
        shape: NetShape,
        codebooks: dict[str, np.ndarray],
        indices: dict[str, np.ndarray],
        latents: np.ndarray,
    ):
        super().__init__(shape, generator=torch.Generator().manual_seed(0))
        del self.params
        self.latents.requires_grad_(False)
        with torch.no_grad():
            self.latents.copy_(torch.from_numpy(latents))
        self.names = list(codebooks)
        self.codebooks = nn.ParameterDict(
            {n: nn.Parameter(torch.from_numpy(codebooks[n].astype(np.float32))) for n in self.names}
        )
        for n in self.names:
            self.register_buffer(f"idx_{n}", torch.from_numpy(indices[n]))

    def parameters(self, recurse: bool = True):  # type: ignore[override]
        return iter(self.codebooks.values())

    def weights(self) -> dict[str, torch.Tensor]:
        out = {}
        for n in self.names:
            cb = self.codebooks[n]
            table = torch.cat([cb.new_zeros(1), cb])
            out[n] = table[getattr(self, f"idx_{n}")]
        return out

    def codebook_arrays(self) -> dict[str, np.ndarray]:
        return {n: p.detach().cpu().numpy().astype(np.float32) for n, p in self.codebooks.items()}
