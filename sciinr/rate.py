"""Rate control: which networks a file keeps and how fine its residual layer is.

The pipeline (:func:`sciinr.api.compress_volume`) hands :func:`choose` a function that runs
the network stages (partition ... encode) for one configuration. What it does with it:

- **PSNR target** (no bound): the networks alone; when they fall short of the target and
  ``bound.psnr_topup`` is on, the coarsest residual whose file reaches it
  (:func:`step_for_psnr`).
- **max error**: every network size of ``bound.split`` with the residual that guarantees the
  bound; the smallest file wins.
- **ratio**: every network size with the finest residual whose file stays within
  :data:`RATIO_TOLERANCE` of the ratio (:func:`step_for_ratio`); the best PSNR wins.

File sizes are computed (:func:`sciinr.stages.container.packed_size`), never measured by
writing a file, and the float64 prediction a residual corrects is decoded only when a
residual is made.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import Config
from .errors import ConfigError
from .metrics import psnr_from_mse, ratio, rmse_for_psnr
from .payloads import Model, Volume
from .stages import decode, entropy, residual

logger = logging.getLogger(__name__)

MAX_EFFORT_THETAS = (0.1, 0.15, 0.2, 0.25)  # dead zones the base tries at effort "max"
FAST_TOLERANCE_DB = 0.3  # the base's landing tolerance at effort "fast"
RATIO_TOLERANCE = 0.05  # a ratio target is met within this relative margin
RATIO_AIM = 0.8  # the ratio search stops once inside this fraction of the tolerance
RATIO_ITERATIONS = 16  # bisection steps of the ratio search
STEP_ITERATIONS = 24  # bisection steps of the PSNR search (log scale)
TOPUP_TRIES = 20  # tightenings of a PSNR top-up whose interpolated chunks err a little more
TOPUP_TIGHTEN = 0.98  # factor of each tightening
NO_NETWORK_BLOCK = 4096  # largest block (per axis) of a file without networks (split 0)


@dataclass(frozen=True)
class Networks:
    """The network part of a file, as the pipeline made it for one configuration."""

    config: Config  # the configuration the networks were made with
    meta: dict[str, Any]  # header["model"]
    sections: dict[str, bytes]
    model: Model  # what a decoder rebuilds from ``meta`` and ``sections``
    psnr: float  # of the decoded networks alone
    n_bytes: int  # of the file holding these networks alone
    n_nets: int
    n_blocks: int
    n_trivial: int
    fit_steps: int
    max_abs_error: float | None = None  # largest |original - decoded| of the networks alone


@dataclass(frozen=True, eq=False)
class Layer:
    """A residual layer made for a file: the correction, its header entry and its sections."""

    correction: residual.Correction
    meta: dict[str, Any]  # header["residual"] (before the pipeline adds its split record)
    sections: dict[str, bytes]

    @property
    def n_bytes(self) -> int:
        return sum(len(v) for v in self.sections.values())

    @property
    def sse(self) -> float:
        return self.correction.sse

    @property
    def max_error(self) -> float:
        return self.correction.max_error

    @property
    def n_exact(self) -> int:
        return self.correction.n_exact


@dataclass(frozen=True)
class Choice:
    """What :func:`choose` keeps: networks, their residual (or None) and the sizes tried."""

    networks: Networks
    split: int | None  # entry of ``bound.split``; None: the configured networks
    correction: Layer | None
    tried: tuple[dict[str, Any], ...] = ()


NetworkStage = Callable[[Config], Networks]
FileSize = Callable[[Networks, "int | None", "Layer | None"], int]


def choose(volume: Volume, cfg: Config, networks: NetworkStage, file_size: FileSize) -> Choice:
    """Run the network stages as often as the target needs and pick the file to write.

    Parameters
    ----------
    volume : Volume
        The field.
    cfg : Config
        The user's configuration (``psnr`` and ``bound`` say what to aim at).
    networks : callable
        ``networks(config) -> Networks``: the network stages for one configuration.
    file_size : callable
        ``file_size(networks, split, correction) -> int``: bytes of the file these make.

    Raises
    ------
    ConfigError
        A ratio that no network size reaches.
    """
    bound = cfg.bound
    plain = cfg.replace(  # the network stages alone, without a residual
        bound=dataclasses.replace(
            bound, max_error=None, rel_error=None, ratio=None, psnr_topup=False
        )
    )
    if bound.target is None:
        net = networks(plain if bound.psnr_topup else cfg)
        if not bound.psnr_topup or not math.isfinite(net.psnr) or net.psnr >= cfg.psnr:
            return Choice(net, None, None)
        return Choice(net, None, _topup(volume, cfg, _Candidate.of(net, None, cfg)))
    lo, hi = volume.value_range
    vr = hi - lo
    err = max_error_of(cfg, lo, hi)
    net_psnr = network_psnr(cfg, err, vr)
    n_nets = sum(1 for k in bound.split if k > 0)
    best: tuple[float, Choice] | None = None
    tried: list[dict[str, Any]] = []
    for split in bound.split:
        net_cfg = network_config(plain, split, net_psnr, n_nets, volume.data.shape)
        cand = _Candidate.of(networks(net_cfg), split, cfg)
        net = cand.networks
        if err is not None:
            corr: Layer | None = _correct(volume, cand, max_error=err)
        else:
            fits, corr, smallest = _for_ratio(
                volume, cand, bound.ratio, lambda c, net=net, split=split: file_size(net, split, c)
            )
            if not fits:
                tried.append({"split": split, "network_bytes": net.n_bytes, "smallest": smallest})
                continue
        res_bytes = corr.n_bytes if corr is not None else 0
        p = psnr_from_mse(corr.sse / max(1, volume.n_valid), vr) if corr else net.psnr
        tried.append(
            {
                "split": split,
                "network_bytes": net.n_bytes,
                "residual_bytes": res_bytes,
                "psnr": p if math.isfinite(p) else None,
            }
        )
        logger.info(
            "split %d: network %d + residual %d bytes, PSNR %.2f", split, net.n_bytes, res_bytes, p
        )
        score = net.n_bytes + res_bytes if err is not None else -p
        if best is None or score < best[0]:
            best = (score, Choice(net, split, corr))
        del cand, corr  # the losers' predictions are freed
    if best is None:
        smallest = min(t["smallest"] for t in tried)
        raise ConfigError(
            f"ratio {bound.ratio} is out of reach for {volume.variable}: the smallest file "
            f"tried has ratio {ratio(volume.data.size, smallest):.1f}"
        )
    return dataclasses.replace(best[1], tried=tuple(tried))


def base_settings(cfg: Config) -> list[tuple[float, float]]:
    """(dead zone, landing tolerance in dB) of each base fit the effort asks for; the pipeline
    keeps the smallest file among them."""
    if cfg.effort == "fast":
        return [(cfg.base.theta, max(cfg.base.tolerance_db, FAST_TOLERANCE_DB))]
    if cfg.effort == "max":
        thetas = sorted({cfg.base.theta, *MAX_EFFORT_THETAS})
        return [(t, cfg.base.tolerance_db) for t in thetas]
    return [(cfg.base.theta, cfg.base.tolerance_db)]


def max_error_of(cfg: Config, lo: float, hi: float) -> float | None:
    """The absolute bound asked for (``max_error``, or ``rel_error`` of the range), or None."""
    bound = cfg.bound
    if bound.target != "max_error":
        return None
    if bound.max_error is not None:
        return bound.max_error
    vr = hi - lo
    return bound.rel_error * (vr if vr > 0 else max(abs(lo), 1.0))


def network_psnr(cfg: Config, max_error: float | None, value_range: float) -> float:
    """PSNR the networks train to under a bound or ratio.

    The PSNR target, or the bound's own PSNR where that is lower (the RMS error of a uniform
    quantizer of step ``2 E`` is ``E / sqrt 3``); ``bound.network_psnr`` overrides both.
    """
    if cfg.bound.network_psnr:
        return cfg.bound.network_psnr
    if max_error is None:
        return cfg.psnr
    rms = max_error / math.sqrt(3)
    auto = 20 * math.log10(value_range / rms) if value_range > 0 else cfg.psnr
    return min(cfg.psnr, max(10.0, auto))


def network_config(
    plain: Config, split: int, net_psnr: float, n_nets: int, shape4: tuple[int, ...]
) -> Config:
    """The pipeline's configuration for one network size (an entry of ``bound.split``).

    ``split`` 0: no networks; one block (the whole field, up to :data:`NO_NETWORK_BLOCK` per
    axis) stored as its mid-value, so the residual is the field itself, smooth across chunks.
    ``split`` k: k times the blocks per network, each size with its share of the time budget.
    """
    if split == 0:
        return plain.replace(
            psnr=10.0,
            **{
                "partition.trivial_fraction": 10.0,
                "partition.block": tuple(min(int(s), NO_NETWORK_BLOCK) for s in shape4),
            },
        )
    return plain.replace(
        psnr=net_psnr,
        **{
            "cluster.blocks_per_net": min(4096, plain.cluster.blocks_per_net * split),
            "fit.max_seconds": plain.fit.max_seconds / max(1, n_nets),
        },
    )


def step_for_psnr(
    original: np.ndarray,
    prediction: np.ndarray,
    target: float,
    vr: float,
    valid: np.ndarray | None = None,
) -> float:
    """Largest residual step whose reconstruction reaches ``target`` dB (bisection, log scale).

    With ``valid`` (True = holds data) the PSNR is that of the valid voxels.
    """
    n = original.size if valid is None else int(np.count_nonzero(valid))
    goal = n * vr**2 * 10 ** (-(target + 0.01) / 10)
    lo_s = rmse_for_psnr(target, vr) * 1e-2  # reaches the target (error ~ step / sqrt(12))
    hi_s = 2.0 * _max_abs_diff(original, prediction, valid) + lo_s  # all zeros: falls short
    for _ in range(STEP_ITERATIONS):
        mid = math.sqrt(lo_s * hi_s)
        if residual.squared_error(original, prediction, mid, valid) <= goal:
            lo_s = mid
        else:
            hi_s = mid
    return lo_s


def _max_abs_diff(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None) -> float:
    """max |a - b| over the valid voxels (0 when there are none)."""
    d = np.abs(a - b) if valid is None else np.abs(a[valid] - b[valid])
    return float(d.max()) if d.size else 0.0


def step_for_ratio(
    size: Callable[[float], int], budget: float, fine: float, coarse: float
) -> float | None:
    """The finest step in ``[fine, coarse]`` whose file is at most ``budget`` (+ tolerance).

    ``size(step)`` is the file's bytes with a residual of that step. None when even
    ``coarse`` is too big.
    """
    top = budget * (1 + RATIO_TOLERANCE)
    if size(coarse) > top:
        return None
    if size(fine) <= top:
        return fine
    best = coarse
    for _ in range(RATIO_ITERATIONS):
        mid = math.sqrt(fine * coarse)
        n_mid = size(mid)
        if n_mid <= budget * (1 + RATIO_TOLERANCE * RATIO_AIM):
            coarse = best = mid
            if n_mid >= budget * (1 - RATIO_TOLERANCE * RATIO_AIM):
                break
        else:
            fine = mid
    return best


# ----------------------------------------------------------------------------- internals


@dataclass
class _Candidate:
    """Networks with what a residual on them needs: the float64 prediction, margin, chunk."""

    networks: Networks
    prediction: np.ndarray  # (T, Z, Y, X) float64
    margin: float  # residual.prediction_margin of the model
    chunk: tuple[int, ...]  # residual chunk: the block, or bound.chunk without networks

    @classmethod
    def of(cls, net: Networks, split: int | None, cfg: Config) -> _Candidate:
        pred = decode.decode(net.model, device=cfg.fit.device, dtype=np.float64)
        chunk = cfg.bound.chunk if split == 0 else net.model.block
        return cls(net, pred, residual.prediction_margin(net.model), tuple(chunk))


def _correct(
    volume: Volume,
    cand: _Candidate,
    *,
    max_error: float | None = None,
    step: float | None = None,
    verify: bool = True,
) -> Layer:
    if max_error is None:
        max_error = residual.max_error_for(step, float(np.abs(volume.data).max()))
    corr = residual.fit(
        volume.data,
        cand.prediction,
        max_error,
        chunk=cand.chunk,
        margin=cand.margin,
        step=step,
        valid=volume.mask,
    )
    meta, sections = entropy.encode_residual(corr)
    if verify:  # decode the coded bytes as a reader will and check the bound everywhere
        codes = entropy.ResidualCodes(meta, sections, volume.data.shape)
        residual.check(volume.data, cand.prediction, codes, volume.mask)
    return Layer(corr, meta, sections)


def _topup(volume: Volume, cfg: Config, cand: _Candidate) -> Layer:
    """The coarsest residual that lifts the networks' file to the PSNR target."""
    lo, hi = volume.value_range
    step = step_for_psnr(volume.data, cand.prediction, cfg.psnr, hi - lo, volume.mask)
    corr = _correct(volume, cand, step=step)
    for _ in range(TOPUP_TRIES):  # chunks coded by interpolation may err a little more
        if psnr_from_mse(corr.sse / max(1, volume.n_valid), hi - lo) >= cfg.psnr:
            break
        step *= TOPUP_TIGHTEN
        corr = _correct(volume, cand, step=step)
    return corr


def _for_ratio(
    volume: Volume,
    cand: _Candidate,
    target: float,
    size: Callable[[Layer], int],
) -> tuple[bool, Layer | None, int]:
    """The residual with the finest step whose file stays within the tolerance of the ratio.

    Returns (fits, residual or None for the networks alone, smallest file size in bytes).
    """
    budget = 4.0 * volume.data.size / target
    lo, hi = volume.value_range
    net = cand.networks
    sizes: dict[float, int] = {}

    def size_at(step: float) -> int:
        if step not in sizes:
            sizes[step] = size(_correct(volume, cand, step=step, verify=False))
        return sizes[step]

    coarse = 2.0 * _max_abs_diff(volume.data, cand.prediction, volume.mask) + (hi - lo) * 2**-20
    fine = max(hi - lo, float(np.abs(volume.data).max()) * 2**-20) * 2**-22
    step = step_for_ratio(size_at, budget, fine, coarse)
    smallest = size_at(coarse)
    if step is None:  # even an all-zero residual is too big: the networks alone, if they fit
        alone = budget * (1 - RATIO_TOLERANCE) <= net.n_bytes <= budget * (1 + RATIO_TOLERANCE)
        return alone, None, min(smallest, net.n_bytes)
    return True, _correct(volume, cand, step=step), smallest
