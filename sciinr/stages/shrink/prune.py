"""Block-aware magnitude pruning.

A weight's importance is its magnitude times a factor that grows with the reconstruction
error of the blocks its network serves (a weight serving a hard block is worth more). For each
parameter tensor, the least important fraction *across all networks* is pruned, so hard
networks keep more of their weights than easy ones. Pruned weights are exactly zero.
"""

from __future__ import annotations

import numpy as np
import torch

from ...nets import BatchedSiren, NetShape


def prunable(names: list[str]) -> list[str]:
    """The hidden-layer weights. Measured on viscous fingering (4 steps, width 32): pruning 50 %
    of them costs nothing after 100 recovery steps, while pruning the input, latent or output
    weights of a SIREN (each sets whole frequencies or the output scale) fell to 25-32 dB."""
    return [n for n in names if n.startswith("w_h")]


def importance(
    arrays: dict[str, np.ndarray], net_error: np.ndarray, power: float
) -> dict[str, np.ndarray]:
    """|w| scaled per network by ``(error / mean error) ** power``."""
    err = np.asarray(net_error, np.float64)
    factor = (err / max(err.mean(), 1e-30)) ** power if err.size else err
    out = {}
    for name in prunable(list(arrays)):
        w = np.abs(arrays[name].astype(np.float64))
        out[name] = w * factor.reshape(-1, *([1] * (w.ndim - 1)))
    return out


def masks_for(scores: dict[str, np.ndarray], fraction: float) -> dict[str, np.ndarray]:
    """Keep-masks (bool) that prune ``fraction`` of each tensor, lowest scores first."""
    out = {}
    for name, s in scores.items():
        k = round(fraction * s.size)
        keep = np.ones(s.size, bool)
        if k > 0:
            keep[np.argsort(s, axis=None, kind="stable")[:k]] = False
        out[name] = keep.reshape(s.shape)
    return out


class MaskedSiren(BatchedSiren):
    """A :class:`BatchedSiren` whose pruned weights stay exactly zero while it trains."""

    def __init__(
        self, shape: NetShape, arrays: dict[str, np.ndarray], masks: dict[str, np.ndarray]
    ):
        super().__init__(shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(torch.from_numpy(arrays[name]))
            self.latents.copy_(torch.from_numpy(arrays["latents"]))
        self.mask_names = sorted(masks)
        for name in self.mask_names:
            self.register_buffer(f"mask_{name}", torch.from_numpy(masks[name].astype(np.float32)))

    def weights(self) -> dict[str, torch.Tensor]:
        w = dict(self.params.items())
        for name in self.mask_names:
            w[name] = w[name] * getattr(self, f"mask_{name}")
        return w
