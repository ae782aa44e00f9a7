"""Batched SIREN networks: many small MLPs evaluated as one computation.

Every network has the same architecture, so their weights are stacked along a leading
``n_nets`` axis and evaluated with ``torch.baddbmm``. Each block owns a learned latent code;
its projection through the first layer is the same for every sample of that block, so it is
computed once per block (:func:`block_bias`) and broadcast over the block's samples.

The fast paths work on :class:`Folded` weights (``omega0`` multiplied into the weights once,
not into every activation): :func:`siren_eval` (forward only, in place) for decoding and
evaluation, :func:`siren_loss_grad` (forward and backward written out, no autograd graph) for
training. Both are plain device-agnostic torch: the same code runs on CPU and CUDA, and
:func:`siren_loss_grad` is a pure function that :func:`torch.compile` can fuse.
:func:`siren_forward` is the plain autograd version both are tested against.

No I/O, no training loop: see :mod:`sciinr.stages.fit` and :mod:`sciinr.stages.decode`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .payloads import COORD_DIM, NetShape  # torch-free, so payloads need no torch


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> cuda when available, else cpu; any other name as torch spells it.

    Raises
    ------
    ConfigError
        An unknown device name, or CUDA asked for where none is available.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (use auto, cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: no CUDA device is available")
    return dev


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
        """The effective stacked parameters (what :func:`fold` folds for the kernels).

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


@dataclass(frozen=True)
class Folded:
    """Effective weights of ``n`` networks with ``omega0`` folded in (see :func:`fold`)."""

    w_in: torch.Tensor  # (n, 4, W)
    hidden: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # ((n, W, W), (n, 1, W)) per layer
    w_out: torch.Tensor  # (n, W, 1)
    b_out: torch.Tensor  # (n, 1, 1)

    def tensors(self) -> list[torch.Tensor]:
        """All tensors in a fixed order: ``w_in, a_0, c_0, ..., w_out, b_out``."""
        flat = [self.w_in]
        for a, c in self.hidden:
            flat += [a, c]
        return [*flat, self.w_out, self.b_out]

    @classmethod
    def from_tensors(cls, flat: list[torch.Tensor]) -> Folded:
        """Inverse of :meth:`tensors`."""
        depth = (len(flat) - 3) // 2
        hidden = tuple((flat[1 + 2 * i], flat[2 + 2 * i]) for i in range(depth))
        return cls(flat[0], hidden, flat[-2], flat[-1])

    def select(self, index: slice | torch.Tensor) -> Folded:
        """The networks ``index`` (a slice gives views, a tensor of ids gathers)."""
        return Folded.from_tensors([t[index] for t in self.tensors()])


def fold(params: dict[str, torch.Tensor], shape: NetShape) -> Folded:
    """Stacked parameters with ``omega0`` multiplied into every sine layer.

    ``sin(w0 * (h @ W + b))`` is computed as ``sin(h @ (w0 W) + w0 b)``: the scaling touches
    the small weight tensors once instead of every activation. Differentiable. The first
    layer's bias is per block and comes from :func:`block_bias`.
    """
    w0 = shape.omega0
    hidden = tuple((params[f"w_h{i}"] * w0, params[f"b_h{i}"] * w0) for i in range(shape.depth))
    return Folded(params["w_in"] * w0, hidden, params["w_out"], params["b_out"])


def block_bias(
    params: dict[str, torch.Tensor],
    latents: torch.Tensor,
    shape: NetShape,
    nets: torch.Tensor,
    blocks: torch.Tensor,
) -> torch.Tensor:
    """Folded first-layer bias of blocks: ``w0 * (b_in + latent @ w_lat)``, ``(*nets.shape, W)``.

    ``nets`` and ``blocks`` (long tensors of one shape) give each block's network and latent row.
    Differentiable.
    """
    bias = params["b_in"][nets].squeeze(-2)  # (..., W)
    if shape.latent_dim:
        lat = latents[blocks].unsqueeze(-2)  # (..., 1, L)
        bias = bias + torch.matmul(lat, params["w_lat"][nets]).squeeze(-2)
    return bias * shape.omega0


class Workspace:
    """Activation buffers reused from one call to the next (one set per shape).

    On CPU a fresh multi-megabyte tensor costs page faults on first touch, often more than the
    arithmetic that fills it; reusing buffers also keeps them warm in cache. Pass one
    ``Workspace`` to repeated :func:`siren_eval` / :func:`siren_loss_grad` calls. Not
    thread-safe: one per training loop or decoder.
    """

    def __init__(self, max_shapes: int = 4):
        self._bufs: dict[tuple, list[torch.Tensor]] = {}
        self._max = max_shapes

    def get(self, count: int, shape: tuple[int, ...], like: torch.Tensor) -> list[torch.Tensor]:
        """``count`` buffers of ``shape`` with the dtype and device of ``like``."""
        key = (count, shape, like.dtype, like.device)
        bufs = self._bufs.get(key)
        if bufs is None:
            if len(self._bufs) >= self._max:
                self._bufs.clear()
            bufs = [torch.empty(shape, dtype=like.dtype, device=like.device) for _ in range(count)]
            self._bufs[key] = bufs
        return bufs


def _first_layer(
    folded: Folded, coords: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``coords @ w_in`` as ``(n, S, W)``; ``coords`` is (n, S, 4) or shared (S, 4)."""
    if coords.dim() == 2:
        if out is None:
            return torch.matmul(coords, folded.w_in)
        coords = coords.expand(folded.w_in.shape[0], *coords.shape)
    return torch.bmm(coords, folded.w_in, out=out)


def siren_forward(folded: Folded, bias: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """The plain forward pass, differentiable by autograd; arguments as in :func:`siren_eval`.

    The reference the fast kernels are held to: :func:`siren_eval` must give its values and
    :func:`siren_loss_grad` the gradients autograd takes through it (``tests/test_nets.py``).
    """
    n, g, width = bias.shape
    h = _first_layer(folded, coords)
    s = h.shape[1] // g
    h = torch.sin((h.view(n, g, s, width) + bias.unsqueeze(2)).view(n, g * s, width))
    for a, c in folded.hidden:
        h = torch.sin(torch.baddbmm(c, h, a))
    return torch.baddbmm(folded.b_out, h, folded.w_out).squeeze(-1)


def siren_eval(
    folded: Folded, bias: torch.Tensor, coords: torch.Tensor, work: Workspace | None = None
) -> torch.Tensor:
    """Forward pass without autograd, activations updated in place (decoding, evaluation).

    Parameters
    ----------
    folded : Folded
        Weights of ``n`` networks.
    bias : Tensor (n, G, W)
        Folded first-layer bias of ``G`` equal groups of samples per network (one per block).
    coords : Tensor (n, G * s, 4) or (S, 4)
        Sample coordinates, group-major; a 2-D tensor is shared by every network.
    work : Workspace, optional
        Reuse activation buffers across calls.

    Returns
    -------
    Tensor (n, G * s)
    """
    with torch.no_grad():
        n, g, width = bias.shape
        size = coords.shape[-2]
        bufs = work.get(2, (n, size, width), bias) if work is not None else [None, None]
        h = _first_layer(folded, coords, out=bufs[0])
        h.view(n, g, size // g, width).add_(bias.unsqueeze(2))
        h.sin_()
        for i, (a, c) in enumerate(folded.hidden):
            h = torch.baddbmm(c, h, a, out=bufs[(i + 1) % 2]).sin_()
        return torch.baddbmm(folded.b_out, h, folded.w_out).squeeze(-1)


def siren_loss_grad(
    folded: Folded,
    bias: torch.Tensor,
    coords: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    scale: float,
    work: Workspace | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Weighted squared error and its gradient; forward and backward written out by hand.

    The loss is ``scale * sum((weight * (f(coords) - target)) ** 2)``. Writing the backward
    pass out instead of using autograd lets it reuse each layer's buffers in place, builds no
    graph, and gives :func:`torch.compile` one pure function to fuse (pass no ``work`` then).
    Inputs must not require grad.

    Parameters
    ----------
    folded : Folded
        Weights of ``n`` networks.
    bias : Tensor (n, G, W)
        Folded first-layer bias per group (block) of samples.
    coords : Tensor (n, G, s, 4)
    target : Tensor (n, G, s)
    weight : Tensor (n, G)
        Weight of the error of each group.
    scale : float
        Loss multiplier (e.g. one over the number of samples in the whole step).
    work : Workspace, optional
        Reuse activation buffers across calls.

    Returns
    -------
    loss : Tensor (n,)
        Loss of each network.
    grads : list of Tensor
        Gradient for each tensor of ``folded.tensors()``, in that order.
    grad_bias : Tensor (n, G, W)
    """
    n, g, s, _ = coords.shape
    width = bias.shape[-1]
    layers = 1 + len(folded.hidden)
    if work is not None:
        bufs = work.get(2 * layers, (n, g * s, width), bias)
        pre, act = bufs[:layers], bufs[layers:]
    else:
        pre, act = [None] * layers, [None] * layers
    x = coords.reshape(n, g * s, 4)
    z = torch.bmm(x, folded.w_in, out=pre[0])
    z.view(n, g, s, width).add_(bias.unsqueeze(2))
    pre[0] = z
    h = act[0] = torch.sin(z, out=act[0])
    for i, (a, c) in enumerate(folded.hidden, start=1):
        pre[i] = z = torch.baddbmm(c, h, a, out=pre[i])
        act[i] = h = torch.sin(z, out=act[i])
    out = torch.baddbmm(folded.b_out, h, folded.w_out).view(n, g, s)
    w = weight.unsqueeze(-1)
    wr = (out - target) * w  # weighted residual (n, G, s)
    loss = wr.square().sum(dim=(1, 2)) * scale
    g_out = (wr * w * (2.0 * scale)).view(n, g * s, 1)
    grad_w_out = torch.bmm(h.transpose(1, 2), g_out)
    grad_b_out = g_out.sum(1, keepdim=True)
    # d loss / d z of the last sine layer = (g_out * w_out^T) * cos(z), in z's buffer
    g_z = pre[-1].cos_().mul_(g_out).mul_(folded.w_out.transpose(1, 2))
    grads_hidden: list[torch.Tensor] = []
    for i in range(layers - 2, -1, -1):  # hidden layer i: input act[i], pre-activation pre[i+1]
        a = folded.hidden[i][0]
        grads_hidden[:0] = [torch.bmm(act[i].transpose(1, 2), g_z), g_z.sum(1, keepdim=True)]
        g_h = torch.bmm(g_z, a.transpose(1, 2), out=act[i] if work is not None else None)
        g_z = pre[i].cos_().mul_(g_h)
    grad_w_in = torch.bmm(x.transpose(1, 2), g_z)
    grad_bias = g_z.view(n, g, s, width).sum(2)
    return loss, [grad_w_in, *grads_hidden, grad_w_out, grad_b_out], grad_bias


def local_coords(
    block: tuple[int, ...],
    ranges: tuple[tuple[int, int], ...] | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Block-local coordinates in [-1, 1] of a (sub-)grid of a block, ``(S, 4)`` C order.

    ``ranges`` gives (start, stop) voxel indices inside the block per axis (default: all).
    An axis of size 1 has coordinate 0.
    """
    axes = []
    for i, b in enumerate(block):
        start, stop = ranges[i] if ranges is not None else (0, b)
        idx = torch.arange(start, stop, device=device, dtype=dtype)
        axes.append(idx * (2.0 / (b - 1)) - 1.0 if b > 1 else idx * 0.0)
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)
