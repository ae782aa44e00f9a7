"""Batched SIREN networks: many small MLPs evaluated as one computation.

Every network has the same architecture, so their weights are stacked along a leading
``n_nets`` axis and evaluated with ``torch.baddbmm``. Each block owns a learned latent code;
its projection through the first layer is the same for every sample of that block, so it is
computed once per block (``block_bias``) instead of once per sample.

No I/O, no training loop: see :mod:`sciinr.stages.fit` and :mod:`sciinr.stages.decode`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

COORD_DIM = 4  # (t, z, y, x) inside a block, each in [-1, 1]


@dataclass(frozen=True)
class NetShape:
    """Architecture shared by all networks of one file."""

    n_nets: int
    n_blocks: int
    latent_dim: int
    width: int
    depth: int  # hidden layers after the first one
    omega0: float

    def param_names(self) -> list[str]:
        names = ["w_in", "w_lat", "b_in"]
        for i in range(self.depth):
            names += [f"w_h{i}", f"b_h{i}"]
        return [*names, "w_out", "b_out"]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        n, w = self.n_nets, self.width
        shapes: dict[str, tuple[int, ...]] = {
            "w_in": (n, COORD_DIM, w),
            "w_lat": (n, self.latent_dim, w),
            "b_in": (n, 1, w),
        }
        for i in range(self.depth):
            shapes[f"w_h{i}"] = (n, w, w)
            shapes[f"b_h{i}"] = (n, 1, w)
        shapes["w_out"] = (n, w, 1)
        shapes["b_out"] = (n, 1, 1)
        return shapes

    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes().values())


class BatchedSiren(nn.Module):
    """``n_nets`` SIRENs with stacked weights and one latent code per block.

    Parameters
    ----------
    shape : NetShape
        Architecture.
    generator : torch.Generator, optional
        Source of the initial weights (for reproducible files).
    """

    def __init__(self, shape: NetShape, generator: torch.Generator | None = None):
        super().__init__()
        self.shape = shape
        w0 = shape.omega0
        params = {}
        for name, shp in shape.param_shapes().items():
            fan_in = shp[1]
            if name in ("w_in", "w_lat"):
                bound = 1.0 / (COORD_DIM + shape.latent_dim)
            elif name.startswith("b_"):
                bound = 1.0 / math.sqrt(shape.width)
                bound = bound / w0 if name != "b_in" else bound
            else:
                bound = math.sqrt(6.0 / fan_in) / w0
            t = (torch.rand(shp, generator=generator) * 2 - 1) * bound
            params[name] = nn.Parameter(t)
        self.params = nn.ParameterDict(params)
        lat = torch.randn((shape.n_blocks, shape.latent_dim), generator=generator) * 0.01
        self.latents = nn.Parameter(lat)

    def weights(self) -> dict[str, torch.Tensor]:
        """The effective stacked parameters used by :meth:`forward`.

        Subclasses (pruned or weight-shared networks, see :mod:`sciinr.stages.shrink`) override
        this to build the weights from masks or codebooks; training then updates whatever
        :meth:`parameters` they expose.
        """
        return dict(self.params.items())

    def latent_table(self) -> torch.Tensor:
        """The effective latent codes, ``(n_blocks, latent_dim)``."""
        return self.latents

    def block_bias(self, block_net: torch.Tensor) -> torch.Tensor:
        """First-layer contribution of every block's latent code, ``(n_blocks, width)``.

        ``block_net`` (n_blocks,) long: the network that owns each block.
        """
        w_lat = self.weights()["w_lat"][block_net]  # (n_blocks, L, W)
        return torch.bmm(self.latent_table().unsqueeze(1), w_lat).squeeze(1)

    def forward(self, coords: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Evaluate all networks.

        Parameters
        ----------
        coords : Tensor (n_nets, S, 4)
            Block-local coordinates of S samples per network.
        bias : Tensor (n_nets, S, width)
            Per-sample first-layer bias: ``block_bias`` gathered at each sample's block.

        Returns
        -------
        Tensor (n_nets, S)
            Normalized values in roughly [-1, 1].
        """
        p = self.weights()
        w0 = self.shape.omega0
        h = torch.baddbmm(bias + p["b_in"], coords, p["w_in"])
        h = torch.sin(w0 * h)
        for i in range(self.shape.depth):
            h = torch.sin(w0 * torch.baddbmm(p[f"b_h{i}"], h, p[f"w_h{i}"]))
        out = torch.baddbmm(p["b_out"], h, p["w_out"])
        return out.squeeze(-1)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """All effective parameters as float32 NumPy arrays (name -> array), latents included."""
        with torch.no_grad():
            out = {k: v.detach().cpu().float().numpy().copy() for k, v in self.weights().items()}
            out["latents"] = self.latent_table().detach().cpu().float().numpy().copy()
        return out

    @classmethod
    def from_arrays(cls, shape: NetShape, arrays: dict[str, np.ndarray]) -> BatchedSiren:
        """Rebuild a network from :meth:`state_arrays` output (shapes are checked)."""
        net = cls(shape, generator=torch.Generator().manual_seed(0))
        expected = {**shape.param_shapes(), "latents": (shape.n_blocks, shape.latent_dim)}
        with torch.no_grad():
            for name, shp in expected.items():
                arr = arrays[name]
                if tuple(arr.shape) != tuple(shp):
                    raise ValueError(f"parameter {name}: shape {arr.shape}, expected {shp}")
                target = net.latents if name == "latents" else net.params[name]
                target.copy_(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)))
        return net


def forward_blocks(
    params: dict[str, torch.Tensor],
    latents: torch.Tensor,
    shape: NetShape,
    nets: torch.Tensor,
    blocks: torch.Tensor,
    coords: torch.Tensor,
) -> torch.Tensor:
    """Evaluate selected blocks on one shared coordinate grid (decoding and evaluation).

    Parameters
    ----------
    params : dict of Tensor
        Stacked parameters as in :meth:`NetShape.param_shapes`.
    latents : Tensor (n_blocks, latent_dim)
    shape : NetShape
    nets : Tensor (B,) long
        Network of each selected block.
    blocks : Tensor (B,) long
        Latent row of each selected block.
    coords : Tensor (S, 4)
        Block-local coordinates, the same for every selected block.

    Returns
    -------
    Tensor (B, S)
    """
    w0 = shape.omega0
    bias = params["b_in"][nets]  # (B, 1, W)
    if shape.latent_dim:
        bias = bias + torch.bmm(latents[blocks].unsqueeze(1), params["w_lat"][nets])
    h = coords @ params["w_in"][nets]  # (B, S, W)
    h = torch.sin(w0 * (h + bias))
    for i in range(shape.depth):
        h = torch.sin(w0 * torch.baddbmm(params[f"b_h{i}"][nets], h, params[f"w_h{i}"][nets]))
    return torch.baddbmm(params["b_out"][nets], h, params["w_out"][nets]).squeeze(-1)


def local_coords(
    block: tuple[int, ...],
    ranges: tuple[tuple[int, int], ...] | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Block-local coordinates in [-1, 1] of a (sub-)grid of a block, ``(S, 4)`` C order.

    ``ranges`` gives (start, stop) voxel indices inside the block per axis (default: all).
    An axis of size 1 has coordinate 0.
    """
    axes = []
    for i, b in enumerate(block):
        start, stop = ranges[i] if ranges is not None else (0, b)
        idx = torch.arange(start, stop, device=device, dtype=torch.float32)
        axes.append(idx * (2.0 / (b - 1)) - 1.0 if b > 1 else idx * 0.0)
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)
