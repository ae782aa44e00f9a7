"""One configuration object for the whole pipeline, shared by the CLI and the Python API.

:class:`Config` nests one frozen dataclass per stage. Every field has a documented default
(``metadata["help"]``, reused by the CLI) and holds JSON types only, so ``to_dict()`` goes
into each file's header and ``from_dict()`` reads it back.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class PartitionConfig:
    """How the (t, z, y, x) volume is cut into blocks."""

    block: tuple[int, int, int, int] = field(
        default=(8, 16, 16, 16),
        metadata={"help": "block size in t, z, y, x (clipped to the field's own size)"},
    )
    trivial_fraction: float = field(
        default=0.5,
        metadata={
            "help": "a block whose half-range is below this fraction of the target RMS error "
            "is stored as one constant and never fitted"
        },
    )
    const_step: float = field(
        default=0.5,
        metadata={
            "help": "block min/max are stored on a grid of this fraction of the target RMS error"
        },
    )

    def __post_init__(self) -> None:
        _check(0 < self.const_step <= 10, "partition.const_step must be in (0, 10]")
        _check(
            len(self.block) == 4, f"partition.block needs 4 sizes (t, z, y, x), got {self.block}"
        )
        _check(
            all(isinstance(b, int) and 1 <= b <= 4096 for b in self.block),
            f"partition.block sizes must be integers in 1..4096, got {self.block}",
        )
        _check(
            0 <= self.trivial_fraction <= 10,
            f"partition.trivial_fraction must be in [0, 10], got {self.trivial_fraction}",
        )


@dataclass(frozen=True)
class ClusterConfig:
    """Balanced k-means grouping of similar blocks."""

    blocks_per_net: int = field(
        default=4, metadata={"help": "blocks served by one network (every network gets this many)"}
    )
    features: int = field(
        default=4, metadata={"help": "block feature grid: each axis pooled to at most this size"}
    )

    def __post_init__(self) -> None:
        _check(1 <= self.blocks_per_net <= 4096, "cluster.blocks_per_net must be in 1..4096")
        _check(1 <= self.features <= 64, "cluster.features must be in 1..64")


@dataclass(frozen=True)
class FitConfig:
    """The batched SIREN networks and their training."""

    width: int = field(default=32, metadata={"help": "neurons per hidden layer"})
    depth: int = field(default=2, metadata={"help": "hidden layers after the first one"})
    latent_dim: int = field(default=8, metadata={"help": "length of each block's latent code"})
    omega0: float = field(default=30.0, metadata={"help": "SIREN frequency factor"})
    lr: float = field(default=2e-3, metadata={"help": "Adam learning rate at the start"})
    samples_per_net: int = field(
        default=512, metadata={"help": "random samples per network in one training step"}
    )
    max_steps: int = field(default=20000, metadata={"help": "training steps at most"})
    max_seconds: float = field(default=900.0, metadata={"help": "training time budget, seconds"})
    eval_every: int = field(
        default=250,
        metadata={
            "help": "steps between periodic exact PSNR evaluations of the whole field (also "
            "run when the running estimate nears the target; at most a tenth of the time)"
        },
    )
    margin_db: float = field(
        default=0.3, metadata={"help": "train this many dB above the target before stopping"}
    )
    device: str = field(
        default="auto", metadata={"help": "auto | cpu | cuda (auto: cuda if present)"}
    )
    compile: str = field(
        default="off",
        metadata={
            "help": "on | off: fuse the training step with torch.compile (warm-up costs "
            "seconds; falls back to eager if compiling fails)"
        },
    )

    def __post_init__(self) -> None:
        _check(1 <= self.width <= 1024, "fit.width must be in 1..1024")
        _check(0 <= self.depth <= 16, "fit.depth must be in 0..16")
        _check(0 <= self.latent_dim <= 256, "fit.latent_dim must be in 0..256")
        _check(0 < self.omega0 <= 1000, "fit.omega0 must be in (0, 1000]")
        _check(0 < self.lr < 1, "fit.lr must be in (0, 1)")
        _check(1 <= self.samples_per_net <= 1 << 22, "fit.samples_per_net must be in 1..4194304")
        _check(0 <= self.max_steps <= 10_000_000, "fit.max_steps must be in 0..10000000")
        _check(self.max_seconds > 0, "fit.max_seconds must be > 0")
        _check(self.eval_every >= 1, "fit.eval_every must be >= 1")
        _check(0 <= self.margin_db <= 20, "fit.margin_db must be in [0, 20]")
        _check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"fit.device must be auto, cpu or cuda, got {self.device!r}",
        )
        _check(
            self.compile in ("on", "off"), f"fit.compile must be on or off, got {self.compile!r}"
        )


@dataclass(frozen=True)
class ShrinkConfig:
    """Pruning, shared-parameter quantization and fine-tuning of the fitted networks."""

    prune: float = field(
        default=0.75,
        metadata={"help": "fraction of hidden-layer weights to prune at most (0: no pruning)"},
    )
    prune_steps: int = field(default=3, metadata={"help": "pruning steps, each with recovery"})
    recovery_steps: int = field(
        default=600, metadata={"help": "training steps at most after each pruning step"}
    )
    recovery_lr: float = field(
        default=2e-4, metadata={"help": "learning rate of the recovery training after pruning"}
    )
    importance_power: float = field(
        default=0.5,
        metadata={"help": "how much a network's block error raises its weights' importance"},
    )
    keep_db: float = field(
        default=0.4,
        metadata={"help": "a pruning step is undone when the PSNR falls below target + this"},
    )
    bits: int = field(
        default=6,
        metadata={"help": "bits per shared weight index (0: float16 weights, no sharing)"},
    )
    max_bits: int = field(
        default=9, metadata={"help": "more bits are tried up to this while below the target"}
    )
    latent_bits: int = field(default=8, metadata={"help": "bits per latent code value"})
    finetune_steps: int = field(
        default=600, metadata={"help": "centroid fine-tuning steps at most"}
    )
    finetune_lr: float = field(default=2e-4, metadata={"help": "centroid fine-tuning rate"})
    finetune_margin_db: float = field(
        default=0.05, metadata={"help": "fine-tuning stops this far above the target"}
    )

    def __post_init__(self) -> None:
        _check(0 <= self.prune < 1, "shrink.prune must be in [0, 1)")
        _check(1 <= self.prune_steps <= 20, "shrink.prune_steps must be in 1..20")
        _check(0 <= self.recovery_steps <= 1_000_000, "shrink.recovery_steps must be >= 0")
        _check(0 < self.recovery_lr < 1, "shrink.recovery_lr must be in (0, 1)")
        _check(0 <= self.importance_power <= 4, "shrink.importance_power must be in [0, 4]")
        _check(-5 <= self.keep_db <= 20, "shrink.keep_db must be in [-5, 20]")
        _check(self.bits == 0 or 1 <= self.bits <= 12, "shrink.bits must be 0 or in 1..12")
        _check(self.max_bits <= 12, "shrink.max_bits must be at most 12")
        _check(1 <= self.latent_bits <= 16, "shrink.latent_bits must be in 1..16")
        _check(0 <= self.finetune_steps <= 1_000_000, "shrink.finetune_steps must be >= 0")
        _check(0 < self.finetune_lr < 1, "shrink.finetune_lr must be in (0, 1)")
        _check(0 <= self.finetune_margin_db <= 20, "shrink.finetune_margin_db must be in [0, 20]")


@dataclass(frozen=True)
class BaseConfig:
    """The whole-field base level (:mod:`sciinr.stages.tucker`), fitted before any block."""

    kind: str = field(
        default="tucker",
        metadata={
            "help": "tucker: a quantized Tucker (HOSVD) basis spanning the whole field, "
            "time included; none: block networks only",
            "flag": "--base",
        },
    )
    theta: float = field(
        default=0.15,
        metadata={
            "help": "dead zone of the base's core quantizer (0: plain rounding)",
            "flag": "--base-theta",
        },
    )
    tolerance_db: float = field(
        default=0.1,
        metadata={
            "help": "the base's step search stops within this many dB above the target",
            "flag": "--base-tolerance-db",
        },
    )

    def __post_init__(self) -> None:
        _check(
            self.kind in ("tucker", "none"), f"base.kind must be tucker or none, got {self.kind!r}"
        )
        _check(0 <= self.theta < 0.5, "base.theta must be in [0, 0.5)")
        _check(0.001 <= self.tolerance_db <= 3, "base.tolerance_db must be in [0.001, 3]")


@dataclass(frozen=True)
class BoundConfig:
    """Error bounds and rate control: a residual layer on top of the networks.

    At most one of ``max_error``, ``rel_error`` and ``ratio`` may be set. With none of them,
    a file whose networks fall short of the PSNR target gets a residual that closes the gap
    (``psnr_topup``).
    """

    max_error: float | None = field(
        default=None,
        metadata={"help": "bound |original - decoded| at every voxel by this (original units)"},
    )
    rel_error: float | None = field(
        default=None,
        metadata={"help": "bound |original - decoded| by this fraction of the value range"},
    )
    ratio: float | None = field(
        default=None,
        metadata={"help": "aim at this compression ratio (within 5 percent) with the best PSNR"},
    )
    network_psnr: float | None = field(
        default=None,
        metadata={
            "help": "PSNR the networks train to under a bound or ratio (default: the PSNR "
            "target, or the bound's PSNR (RMS error E / sqrt 3) where that is lower)"
        },
    )
    split: tuple[int, ...] = field(
        default=(0, 1, 4),
        metadata={
            "help": "network sizes tried under a bound or ratio, the smallest file wins: "
            "0 = no networks, k = k times blocks per network (fewer, shared networks)"
        },
    )
    chunk: tuple[int, int, int, int] = field(
        default=(8, 64, 64, 64),
        metadata={
            "help": "residual chunk (t, z, y, x) of a file without networks, the unit of "
            "region decoding (with networks: the block)"
        },
    )
    psnr_topup: bool = field(
        default=True,
        metadata={"help": "when the networks fall short of the PSNR target, add a residual"},
    )

    def __post_init__(self) -> None:
        given = [n for n in ("max_error", "rel_error", "ratio") if getattr(self, n) is not None]
        _check(len(given) <= 1, f"give at most one of max_error, rel_error, ratio (got {given})")
        for name in given:
            v = getattr(self, name)
            _check(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
                f"bound.{name} must be a number, got {v!r}",
            )
        _check(self.max_error is None or self.max_error > 0, "bound.max_error must be > 0")
        _check(
            self.rel_error is None or 0 < self.rel_error < 1, "bound.rel_error must be in (0, 1)"
        )
        _check(self.ratio is None or 1 < self.ratio <= 1e7, "bound.ratio must be in (1, 1e7]")
        _check(
            self.network_psnr is None or 10 <= self.network_psnr <= 140,
            "bound.network_psnr must be between 10 and 140 dB",
        )
        _check(
            len(self.split) >= 1
            and len(set(self.split)) == len(self.split)
            and all(type(k) is int and 0 <= k <= 4096 for k in self.split),
            f"bound.split must be distinct integers in 0..4096, got {self.split}",
        )
        _check(
            len(self.chunk) == 4 and all(type(c) is int and 1 <= c <= 1 << 16 for c in self.chunk),
            f"bound.chunk needs 4 sizes in 1..65536, got {self.chunk}",
        )
        _check(  # a chunk decodes whole: its voxels count in the decode budget of the file
            math.prod(self.chunk) <= 1 << 21,
            f"bound.chunk holds at most 2**21 voxels (the default 8x64x64x64), got {self.chunk}",
        )
        _check(isinstance(self.psnr_topup, bool), "bound.psnr_topup must be true or false")

    @property
    def target(self) -> str | None:
        """``"max_error"``, ``"ratio"`` or None (plain PSNR target)."""
        if self.max_error is not None or self.rel_error is not None:
            return "max_error"
        return "ratio" if self.ratio is not None else None


@dataclass(frozen=True)
class ScaleConfig:
    """Fields larger than memory, and compression spread over workers (see docs/scale.md).

    With the defaults the field is read whole and fitted in one piece. With a memory limit
    (or on dask workers) the field streams from its file: one pass gathers block statistics,
    then independent *groups* (boxes of whole blocks, time windows where they fit) are read,
    clustered, fitted and pruned alone; their networks share one codebook per tensor.
    """

    memory_limit: int | None = field(
        default=None,
        metadata={
            "help": "bytes of memory one process may use (e.g. 1GB): the field streams from "
            "its file in groups sized to fit; none: the field is read whole into memory"
        },
    )
    group_values: int | None = field(
        default=None,
        metadata={
            "help": "values per independent group (a box of whole blocks); none: as large "
            "as the memory limit allows, or 2**24 on dask workers"
        },
    )

    def __post_init__(self) -> None:
        for name in ("memory_limit", "group_values"):
            v = getattr(self, name)
            _check(
                v is None or (type(v) is int and v > 0), f"scale.{name} must be a positive integer"
            )

    @property
    def streaming(self) -> bool:
        return self.memory_limit is not None or self.group_values is not None


@dataclass(frozen=True)
class Config:
    """Everything that decides how a field is compressed.

    Parameters
    ----------
    psnr : float, default: 40.0
        Target PSNR in dB over the whole field (value range of the original, MSE over all values).
    seed : int, default: 0
        Seed of every random choice (initial weights, k-means, sampling).
    partition, cluster, fit, shrink
        Per-stage settings: :class:`PartitionConfig`, :class:`ClusterConfig`,
        :class:`FitConfig`, :class:`ShrinkConfig`.
    bound : BoundConfig
        Error bound or ratio target, met by a residual layer (:class:`BoundConfig`).
    base : BaseConfig
        The whole-field base level (:class:`BaseConfig`).
    scale : ScaleConfig
        Memory limit and group size of out-of-core / distributed compression.
    """

    psnr: float = field(default=40.0, metadata={"help": "target PSNR in dB over the whole field"})
    seed: int = field(default=0, metadata={"help": "seed of every random choice"})
    effort: str = field(
        default="default",
        metadata={
            "help": "fast | default | max: how hard rate control searches for the smallest "
            "file (max also tries the base's dead zones 0.1..0.25 and keeps the smallest)"
        },
    )
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    shrink: ShrinkConfig = field(default_factory=ShrinkConfig)
    bound: BoundConfig = field(default_factory=BoundConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)

    def __post_init__(self) -> None:
        _check(10.0 <= self.psnr <= 140.0, f"psnr must be between 10 and 140 dB, got {self.psnr}")
        _check(0 <= self.seed < 2**63, "seed must be a non-negative integer")
        _check(
            self.effort in ("fast", "default", "max"),
            f"effort must be fast, default or max, got {self.effort!r}",
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible nested dict (tuples become lists)."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        return _build(cls, d)

    def replace(self, **changes: Any) -> Config:
        """A copy with top-level fields or dotted stage fields (``"fit.width"``) changed."""
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            if "." in key:
                stage, name = key.split(".", 1)
                nested.setdefault(stage, {})[name] = value
            else:
                top[key] = value
        for stage, fields in nested.items():
            if not hasattr(self, stage):
                raise ConfigError(f"unknown config section {stage!r}")
            try:
                top[stage] = dataclasses.replace(getattr(self, stage), **fields)
            except TypeError as exc:
                raise ConfigError(f"config section {stage!r}: {exc}") from None
        try:
            return dataclasses.replace(self, **top)
        except TypeError as exc:
            raise ConfigError(str(exc)) from None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _build(cls: type, d: Any) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"config section for {cls.__name__} must be a mapping")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise ConfigError(f"unknown config keys for {cls.__name__}: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        f = names[key]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            kwargs[key] = _build(sub, value)
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None
