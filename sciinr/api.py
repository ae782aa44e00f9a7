"""The pipeline, readable top to bottom: composes the stages, no math of its own.

compress:   read -> partition -> cluster -> fit -> shrink -> encode -> container (-> file)
decompress: container -> encode (inverse) -> decode (only the blocks asked for)
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from . import rate
from ._version import __version__
from .config import Config
from .errors import ConfigError, FormatError, InputError
from .metrics import bits_per_value, psnr, psnr_from_mse, ratio, rmse_for_psnr
from .nets import NetShape, resolve_device
from .payloads import Model, Volume
from .stages import (
    budget,
    cluster,
    container,
    dataset,
    decode,
    encode,
    entropy,
    fit,
    mask,
    partition,
    read,
    residual,
    shrink,
    tucker,
    write,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Report:
    """What one compression did (also printed by the CLI)."""

    n_values: int
    n_bytes: int
    psnr: float  # measured on the stored (decoded) result
    seconds: float
    n_nets: int
    n_blocks: int
    n_trivial: int
    fit_steps: int
    sections: dict[str, int] = field(default_factory=dict)
    max_error: float | None = None  # guaranteed at every voxel (residual layer), else None
    residual_bytes: int = 0  # bytes of the residual layer
    measured_max_error: float | None = None  # largest |original - decoded| seen, no guarantee
    value_range: tuple[float, float] | None = None  # of the original
    dims: tuple[tuple[str, int], ...] = ()  # name and size of each axis
    base_ranks: tuple[int, ...] | None = None  # Tucker ranks of the whole-field base, if any

    @property
    def ratio(self) -> float:
        return ratio(self.n_values, self.n_bytes)

    @property
    def bits_per_value(self) -> float:
        return bits_per_value(self.n_values, self.n_bytes)


def resolve_config(config: Config | None, psnr_db: float | None, device: str | None) -> Config:
    cfg = config if config is not None else Config()
    if config is not None and not isinstance(config, Config):
        raise ConfigError(f"config must be a sciinr.Config, got {type(config).__name__}")
    changes: dict[str, Any] = {}
    if psnr_db is not None:
        changes["psnr"] = float(psnr_db)
    if device is not None:
        changes["fit.device"] = device
    return cfg.replace(**changes) if changes else cfg


def build_header(
    volume: Volume,
    cfg: Config,
    model_meta: dict[str, Any] | None,
    reached: float,
    base_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON header of a ``.sinr`` file (without its section table).

    ``model_meta`` describes the block networks, ``base_meta`` the whole-field base; a file
    has one or the other.
    """
    lo, hi = volume.value_range
    selected = {}
    selection = getattr(volume, "selection", None)  # a streamed field has none
    if selection is not None and volume.source_shape is not None:
        selected = {
            "selection": {
                "source_shape": list(volume.source_shape),
                "start": [a for a, _ in selection],
                "stop": [b for _, b in selection],
            }
        }
    parts = {"model": model_meta} if model_meta is not None else {"base": base_meta}
    return {
        "sciinr": __version__,
        "variable": volume.variable,
        "dims": list(volume.dims),
        "shape": list(volume.orig_shape),
        "has_time": volume.has_time,
        "dtype": volume.dtype,
        "attrs": _json_safe(volume.attrs),
        "source": Path(volume.source).name,
        "value_range": [lo, hi],
        "psnr": reached if math.isfinite(reached) else None,
        "config": config_record(cfg),
        **parts,
        **selected,
    }


def uses_base(volume: Volume, cfg: Config) -> bool:
    """Whether the whole-field base models this field (else the block networks do).

    The base serves a PSNR target on a non-constant field whose axes it can decompose; a
    constant field is stored exactly by the blocks, and bounds use their residual layer.
    """
    lo, hi = volume.value_range
    return (
        cfg.base.kind == "tucker"
        and cfg.bound.target is None
        and hi > lo
        and max(volume.data.shape) <= tucker.MAX_MODE
    )


def encode_base(
    volume: Volume, cfg: Config
) -> tuple[dict[str, Any], dict[str, bytes], float, float]:
    """The base stage: fit -> encode the Tucker base (once per setting rate control asks
    for, the smallest kept); returns header entry, sections, the PSNR of the field as a
    reader decodes it and its largest error (measured)."""
    lo, hi = volume.value_range
    target_mse = rmse_for_psnr(cfg.psnr, hi - lo) ** 2
    best = None
    for theta, tolerance in rate.base_settings(cfg):
        fitted = tucker.fit(
            volume.data, target_mse, theta=theta, tolerance_db=tolerance, mask=volume.mask
        )
        meta, sections = tucker.encode(fitted)
        size = sum(map(len, sections.values()))
        if best is None or size < best[0]:
            best = (size, fitted, meta, sections)
    assert best is not None
    _, fitted, meta, sections = best
    decoded = tucker.evaluate(fitted).astype(np.float32)
    reached = psnr(volume.data, decoded, volume.mask)
    diff = np.abs(decoded.astype(np.float64) - volume.data)
    worst = float(diff.max() if volume.mask is None else diff[volume.mask].max(initial=0.0))
    return meta, sections, reached, worst


def base_stage(volume: Volume, cfg: Config) -> rate.Networks | None:
    """The whole-field base at ``cfg.psnr`` as rate control's stand-in for networks (the
    prediction a residual layer corrects), or None where the base does not apply."""
    lo, hi = volume.value_range
    if cfg.base.kind != "tucker" or not hi > lo or max(volume.data.shape) > tucker.MAX_MODE:
        return None
    meta, sections, reached, worst = encode_base(volume, cfg)
    header = build_header(volume, cfg, None, reached, base_meta=meta)
    try:
        n_bytes = container.packed_size(header, sections)
        fitted = tucker.decode(meta, sections, volume.data.shape, n_bytes)
    except FormatError:  # a reader would refuse it: too large for its decode budget
        return None
    return rate.Networks(
        config=cfg,
        meta=meta,
        sections=sections,
        model=None,
        psnr=reached,
        n_bytes=n_bytes,
        n_nets=0,
        n_blocks=0,
        n_trivial=0,
        fit_steps=0,
        max_abs_error=worst,
        base=fitted,
    )


def _compress_base(volume: Volume, cfg: Config, t0: float) -> tuple[bytes, Report] | None:
    """The file of the whole-field base, or None when a reader would refuse to decode it
    (its core is too large for the decode budget of a file of its size)."""
    meta, sections, reached, worst = encode_base(volume, cfg)
    header = build_header(volume, cfg, None, reached, base_meta=meta)
    header["max_abs_error"] = worst  # measured, not guaranteed
    header, sections = _with_mask(volume, header, sections)
    blob = pack(header, sections)
    try:
        tucker.check(meta, sections, volume.data.shape, len(blob))
    except FormatError as exc:
        logger.warning("the whole-field base is not used (%s); block networks instead", exc)
        return None
    report = Report(
        n_values=volume.data.size,
        n_bytes=len(blob),
        psnr=reached,
        seconds=time.perf_counter() - t0,
        n_nets=0,
        n_blocks=0,
        n_trivial=0,
        fit_steps=0,
        sections={k: len(v) for k, v in sections.items()},
        base_ranks=tuple(meta["ranks"]),
        measured_max_error=worst,
        value_range=volume.value_range,
        dims=tuple(zip(volume.dims, volume.orig_shape, strict=True)),
    )
    logger.info(
        "compressed %s with a Tucker base of ranks %s: ratio %.1f, PSNR %.2f dB, %.1f s",
        volume.variable,
        report.base_ranks,
        report.ratio,
        reached,
        report.seconds,
    )
    return blob, report


def encode_networks(volume: Volume, cfg: Config, progress: bool = False) -> rate.Networks:
    """The network stages: partition -> cluster -> fit -> shrink -> encode (no file yet).

    The networks are decoded once, as a reader will, to measure the PSNR they reach.
    """
    lo, hi = volume.value_range
    value_range = hi - lo
    tolerance = rmse_for_psnr(cfg.psnr, value_range)
    blocks = partition.partition(volume, cfg.partition, tolerance)
    assignment = cluster.cluster(blocks, cfg.cluster, seed=cfg.seed)
    common = dict(target_psnr=cfg.psnr, value_range=value_range, seed=cfg.seed, progress=progress)
    fitted = fit.fit(blocks, assignment, cfg.fit, **common)
    small = shrink.shrink(blocks, assignment, fitted, cfg.shrink, cfg.fit, **common)
    model = Model.from_fit(blocks, fitted, arrays=small.arrays)
    meta, sections = encode.encode_model(model, small)
    stored = encode.decode_model(meta, sections)
    decoded = decode.decode(stored, device=cfg.fit.device)
    reached = psnr(volume.data, decoded, volume.mask)
    diff = np.abs(decoded.astype(np.float64) - volume.data)
    worst = float(diff.max() if volume.mask is None else diff[volume.mask].max(initial=0.0))
    del decoded, diff
    header, all_sections = _with_mask(volume, build_header(volume, cfg, meta, reached), sections)
    return rate.Networks(
        config=cfg,
        meta=meta,
        sections=sections,
        model=stored,
        psnr=reached,
        n_bytes=container.packed_size(header, all_sections),
        n_nets=fitted.shape.n_nets,
        n_blocks=blocks.n_blocks,
        n_trivial=int(blocks.trivial.sum()),
        fit_steps=fitted.steps,
        max_abs_error=worst,
    )


def compress_volume(volume: Volume, cfg: Config, progress: bool = False) -> tuple[bytes, Report]:
    """Run the whole pipeline on a volume; returns the ``.sinr`` bytes and a :class:`Report`.

    The composition: a whole-field base (:func:`encode_base`) where it serves the target
    (:func:`uses_base`); otherwise the network stages (:func:`encode_networks`) model the
    field block by block, and rate control (:func:`sciinr.rate.choose`) decides how often
    to run them and which residual layer (:mod:`sciinr.stages.residual`, which corrects any
    float64 prediction) closes the gap. The container packs the result, once.
    """
    t0 = time.perf_counter()
    if uses_base(volume, cfg):
        done = _compress_base(volume, cfg, t0)
        if done is not None:
            return done

    def networks(c: Config) -> rate.Networks:
        return encode_networks(volume, c, progress=progress)

    def file_size(net: rate.Networks, split: int | None, corr: rate.Layer | None) -> int:
        return container.packed_size(*_file(volume, cfg, net, split, corr, ()))

    choice = rate.choose(volume, cfg, networks, file_size, base=lambda c: base_stage(volume, c))
    net, corr = choice.networks, choice.correction
    header, sections = _file(volume, cfg, net, choice.split, corr, choice.tried)
    blob = pack(header, sections)
    report = Report(
        n_values=volume.data.size,
        n_bytes=len(blob),
        psnr=_reached(volume, net, corr),
        seconds=time.perf_counter() - t0,
        n_nets=net.n_nets,
        n_blocks=net.n_blocks,
        n_trivial=net.n_trivial,
        fit_steps=net.fit_steps,
        sections={k: len(v) for k, v in sections.items()},
        max_error=corr.max_error if corr is not None else None,
        residual_bytes=corr.n_bytes if corr is not None else 0,
        measured_max_error=net.max_abs_error if corr is None else None,
        value_range=volume.value_range,
        dims=tuple(zip(volume.dims, volume.orig_shape, strict=True)),
    )
    if corr is not None:
        logger.info(
            "residual layer: max error %.6g, %d + %d bytes (network + residual), %d exact voxels",
            corr.max_error,
            net.n_bytes,
            corr.n_bytes,
            corr.n_exact,
        )
    logger.info(
        "compressed %s: ratio %.1f, PSNR %.2f dB, %.1f s",
        volume.variable,
        report.ratio,
        report.psnr,
        report.seconds,
    )
    return blob, report


def _file(
    volume: Volume,
    cfg: Config,
    net: rate.Networks,
    split: int | None,
    corr: rate.Layer | None,
    tried: tuple[dict[str, Any], ...],
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Header and sections of the file of these networks and residual layer."""
    reached = _reached(volume, net, corr)
    if net.base is not None:
        header = build_header(volume, cfg, None, reached, base_meta=net.meta)
    else:
        header = build_header(volume, cfg, net.meta, reached)
    if corr is None:
        if net.max_abs_error is not None:  # measured, not guaranteed ("residual": a bound)
            header["max_abs_error"] = net.max_abs_error
        return _with_mask(volume, header, net.sections)
    header["residual"] = {
        **corr.meta,
        "mode": cfg.bound.target or "psnr",
        "network_bytes": net.n_bytes,
        "residual_bytes": corr.n_bytes,
        "network_psnr": net.psnr if math.isfinite(net.psnr) else None,
        "split": split,
        "tried": list(tried),
    }
    return _with_mask(volume, header, {**net.sections, **corr.sections})


def _with_mask(
    volume: Volume, header: dict[str, Any], sections: dict[str, bytes]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The header and sections, with the mask entry and section of a field that has one."""
    if volume.mask is None:
        return header, sections
    meta, bits = mask.encode(volume.mask, volume.fill_value)
    return {**header, "mask": meta}, {**sections, mask.SECTION: bits}


def pack(header: dict[str, Any], sections: dict[str, bytes]) -> bytes:
    """The ``.sinr`` bytes, in the oldest format version that holds them."""
    # the mask and the whole-field base both came with format 2.0
    newer = "mask" in header or "base" in header
    version = mask.VERSION if newer else container.BASE_VERSION
    return container.pack(header, sections, version)


def _reached(volume: Volume, net: rate.Networks, corr: rate.Layer | None) -> float:
    """PSNR of the decoded file: the networks', or with the residual layer added."""
    if corr is None:
        return net.psnr
    lo, hi = volume.value_range
    return psnr_from_mse(corr.sse / max(1, volume.n_valid), hi - lo)


def compress(
    data: Any,
    *,
    psnr: float | None = None,
    config: Config | None = None,
    out: str | Path | None = None,
    var: str | None = None,
    time_dim: str | None = None,
    dims: tuple[str, ...] | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
    max_error: float | None = None,
    rel_error: float | None = None,
    ratio: float | None = None,
    time: str | tuple[int | None, int | None] | None = None,
    crop: str | tuple[tuple[int | None, int | None], ...] | None = None,
    memory_limit: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
) -> bytes | Path:
    """Compress a field.

    Parameters
    ----------
    data : numpy.ndarray, str, Path, h5py.Dataset or netCDF4.Variable
        The field (2-D to 4-D, time first), or a file holding it. Missing values (the mask of
        a ``numpy.ma.MaskedArray``, a ``_FillValue``/``missing_value``, NaN) are stored as a
        lossless mask; PSNR and errors are over the valid values, which are all that is fitted.
    psnr : float, optional
        Target PSNR in dB over the whole field (default: ``config.psnr``, 40).
    config : Config, optional
        Full configuration; ``psnr`` and ``device`` override its fields.
    out : str or Path, optional
        Write the file here (atomically) and return its path instead of the bytes.
    var : str, optional
        Variable (NetCDF) or dataset path (HDF5) when ``data`` is a file.
    time_dim : str, optional
        Name of the time dimension, or ``"none"`` for a static field.
    dims : tuple of str, optional
        Axis names when ``data`` is an array.
    device : {"auto", "cpu", "cuda"}, optional
        Where to train.
    overwrite : bool, default: False
        Replace an existing ``out``.
    progress : bool, default: False
        Show a progress bar.
    max_error : float, optional
        Guarantee ``|original - decoded| <= max_error`` at every voxel (a residual layer).
    rel_error : float, optional
        The same bound as a fraction of the value range (max - min).
    ratio : float, optional
        Aim at this compression ratio (within 5 %) with the best PSNR reachable.
    time : str or (int, int), optional
        Compress only these time steps, ``"A:B"`` or ``(A, B)`` (the header records it).
    crop : str or tuple of (int, int), optional
        Compress only this box, ``"z0:z1,y0:y1,x0:x1"`` (one range per spatial axis).
    memory_limit : int, optional
        Bytes one process may use: the field streams from its file in groups sized to fit
        (``config.scale``; see docs/scale.md).
    workers : int, optional
        Fit the groups on a dask ``LocalCluster`` of this many processes (``sciinr[dask]``).
    scheduler : str, optional
        Fit the groups on the dask cluster at this address.

    Returns
    -------
    bytes or Path
        The ``.sinr`` bytes, or ``out``.

    Raises
    ------
    SciinrError
        Bad input (:class:`InputError`), bad options (:class:`ConfigError`), unwritable
        output (:class:`OutputError`).

    Examples
    --------
    >>> import numpy as np, sciinr
    >>> field = np.zeros((2, 8, 8, 8), np.float32)
    >>> blob = sciinr.compress(field, psnr=40)
    >>> sciinr.decompress(blob).shape
    (2, 8, 8, 8)
    """
    cfg = resolve_config(config, psnr, device)
    bounds = {"max_error": max_error, "rel_error": rel_error, "ratio": ratio}
    if any(v is not None for v in bounds.values()):
        cfg = cfg.replace(**{f"bound.{k}": v for k, v in bounds.items()})
    if memory_limit is not None:
        cfg = cfg.replace(**{"scale.memory_limit": int(memory_limit)})
    if out is not None:
        write.refuse_same_file(data, Path(out))
        write.check_destination(Path(out), overwrite)
    select = make_select(time, crop)
    if cfg.scale.streaming or workers or scheduler is not None:  # out of core / on dask
        from . import scale

        if select is not None:
            raise ConfigError("time= and crop= are not supported with memory_limit or dask")
        blob, _ = scale.compress_source(
            data, cfg, var=var, time_dim=time_dim, dims=dims, workers=workers, scheduler=scheduler
        )
    else:
        volume = read.read(data, var=var, time_dim=time_dim, dims=dims, select=select)
        blob, _ = compress_volume(volume, cfg, progress=progress)
    if out is None:
        return blob
    return write.write_bytes(Path(out), blob, overwrite=overwrite)


def make_select(time: Any = None, crop: Any = None) -> read.Select | None:
    """A :class:`~sciinr.stages.read.Select` from ``"A:B"`` / ``"z0:z1,y0:y1,x0:x1"`` or tuples."""
    if time is None and crop is None:
        return None
    if isinstance(time, str):
        time = read.parse_range(time)
    if isinstance(crop, str):
        crop = read.parse_crop(crop)
    return read.Select(
        time=tuple(time) if time is not None else None,
        crop=tuple(tuple(c) for c in crop) if crop is not None else None,
    )


class SinrArray:
    """A ``.sinr`` file opened lazily: metadata now, values only for what is indexed.

    Attributes
    ----------
    shape, dtype, dims, attrs, variable, psnr
        From the file's header.

    Examples
    --------
    >>> arr = sciinr.open("field.sinr")      # doctest: +SKIP
    >>> arr[3].shape                          # one time step, decoded alone  # doctest: +SKIP
    """

    def __init__(
        self, source: bytes | str | Path, device: str = "auto", variable: str | None = None
    ):
        data, self.source = read_source(source)
        self._bytes = data if self.source == "<bytes>" else None  # what dask tasks reopen
        self.header, self._sections = container.unpack(data, self.source)
        self.nbytes_file = len(data)
        self.format_version = container.version_of(data)
        if dataset.is_dataset(self.header):  # one field of a dataset file
            self.header, self._sections = dataset.select_field(
                self.header, self._sections, variable, self.source
            )
            # this variable's share: its sections and its header entry
            self.nbytes_file = sum(map(len, self._sections.values())) + len(
                json.dumps(self.header, separators=(",", ":"))
            )
        elif variable is not None and variable != self.header.get("variable"):
            raise InputError(
                f"{self.source}: no variable {variable!r} (has: {self.header.get('variable')})"
            )
        h = self.header
        container.check_field_header(h, self.source)
        self.shape: tuple[int, ...] = tuple(h["shape"])
        self.dims: tuple[str, ...] = tuple(h["dims"])
        self.has_time: bool = h["has_time"]
        self.net: NetShape | None = None
        self._base: tucker.TuckerBase | None = None
        try:
            if "model" in h:
                self._shape4, block, self.net = encode.validate_meta(h["model"])
                n_blocks = math.prod(-(-s // b) for s, b in zip(self._shape4, block, strict=True))
                budget.check_model(n_blocks, self.net, self.nbytes_file)
                self._model_bytes = budget.model_bytes(n_blocks, self.net)
            else:
                self._shape4 = _shape4_of(self.shape, self.has_time)
                self._model_bytes = tucker.check(
                    h["base"], self._sections, self._shape4, self.nbytes_file
                )
        except FormatError as exc:
            raise FormatError(f"{self.source}: {exc}") from None
        self.dtype = np.dtype(h["dtype"])
        if tuple(self._shape4) != _shape4_of(self.shape, self.has_time):
            raise FormatError(
                f"{self.source}: corrupted header (shape {list(self.shape)}, has_time "
                f"{self.has_time} disagree with model shape {list(self._shape4)})"
            )
        self.attrs: dict[str, Any] = dict(h["attrs"])
        self.variable: str = h["variable"]
        self.psnr: float | None = h.get("psnr")
        self._model: Model | None = None
        self.residual: entropy.ResidualCodes | None = None  # an error-bounded file's layer
        if "residual" in h:
            try:
                self.residual = entropy.ResidualCodes(
                    h["residual"], self._sections, self._shape4, n_bytes=self.nbytes_file
                )
            except FormatError as exc:
                raise FormatError(f"{self.source}: {exc}") from None
        self.max_error = self.residual.max_error if self.residual is not None else None
        self._mask: mask.Mask | None = None  # fields with missing values
        self._mask_bits: np.ndarray | None = None
        if "mask" in h:
            try:
                self._mask = mask.Mask.from_header(h["mask"], self._sections, self._shape4)
                what = f"a model and a mask of {math.prod(self._shape4)} values"
                budget.check(self._model_bytes + self._mask.n_bytes, self.nbytes_file, what)
            except FormatError as exc:
                raise FormatError(f"{self.source}: {exc}") from None
        self.fill_value = self._mask.fill_value if self._mask is not None else None
        self.device = device

    @property
    def section_sizes(self) -> dict[str, int]:
        """Bytes of every section of the file, by name, in file order."""
        return {k: len(v) for k, v in self._sections.items()}

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def base(self) -> tucker.TuckerBase:
        """The whole-field base of a file that has one (decoded once)."""
        if self._base is None:
            try:
                self._base = tucker.decode(
                    self.header["base"], self._sections, self._shape4, self.nbytes_file
                )
            except FormatError as exc:
                raise FormatError(f"{self.source}: {exc}") from None
        return self._base

    @property
    def masked(self) -> bool:
        """True when the field has missing values: indexing returns ``numpy.ma.MaskedArray``."""
        return self._mask is not None

    def _valid(self, region: tuple[tuple[int, int], ...]) -> np.ndarray:
        """(region) bool, True = valid, of a file with a mask."""
        assert self._mask is not None
        if self._mask_bits is None:
            try:
                self._mask_bits = self._mask.bits()
            except FormatError as exc:
                raise FormatError(f"{self.source}: {exc}") from None
        return self._mask.region(self._mask_bits, region)

    @property
    def model(self) -> Model:
        if self._model is None:
            try:
                # a valid file never overflows float32 while its model is decoded
                with np.errstate(over="raise", invalid="raise"):
                    self._model = encode.decode_model(
                        self.header["model"], self._sections, n_bytes=self.nbytes_file
                    )
            except FormatError as exc:
                raise FormatError(f"{self.source}: {exc}") from None
            except FloatingPointError:
                raise FormatError(
                    f"{self.source}: corrupted model (its values overflow float32)"
                ) from None
        return self._model

    def _axes(self) -> list[int]:
        """Internal (t, z, y, x) axis of each original axis."""
        n_sp = self.ndim - (1 if self.has_time else 0)
        return ([0] if self.has_time else []) + list(range(4 - n_sp, 4))

    def __getitem__(self, key: Any) -> np.ndarray:
        keys = normalize_key(key, self.shape)
        region = [(0, 1)] * 4
        post: list[Any] = []
        for axis, k in zip(self._axes(), keys, strict=True):
            if isinstance(k, int):
                region[axis] = (k, k + 1)
                post.append(0)
            elif isinstance(k, np.ndarray):  # decode the span it covers, then take
                lo = int(k.min()) if k.size else 0
                region[axis] = (lo, int(k.max()) + 1 if k.size else 0)
                post.append(k - lo)
            else:
                start, stop, step = k
                if stop <= start:
                    region[axis] = (start, start)
                    post.append(slice(0, 0))
                else:
                    region[axis] = (start, stop)
                    post.append(slice(None, None, step))
        # the memory check comes before the model exists: its arrays count too
        n = budget.n_values(tuple(region))
        need = budget.output_bytes(n, self.dtype.itemsize)
        need += self._model_bytes if self._model is None and self._base is None else 0
        if self.residual is not None:  # its chunks decode whole, one at a time
            need += budget.PER_CHUNK_VOXEL * math.prod(self.residual.chunk)
        if self._mask is not None:  # the packed bits, then a bool and an index per value
            need += (self._mask.n_bytes if self._mask_bits is None else 0) + 16 * n
        avail = budget.available_memory()
        too_big = InputError(
            f"{self.source}: decoding {n} values (about {need / 1e9:.1f} GB with temporaries) "
            f"does not fit in memory ({avail / 1e9:.1f} GB available); decode one time step "
            "or a region"
        )
        if need > avail:
            raise too_big
        device = resolve_device(self.device)  # a bad device is an error for every kind of file
        try:
            if self.net is None:
                prediction = tucker.evaluate(self.base, tuple(region))
                if self.residual is None:
                    internal = prediction.astype(np.float32)
                else:
                    internal = residual.apply(prediction, self.residual, tuple(region))
            elif self.residual is None:
                internal = decode.decode(self.model, tuple(region), device=device)
            else:  # the float64 prediction the residual layer corrects
                prediction = decode.decode(
                    self.model, tuple(region), device=device, dtype=np.float64
                )
                internal = residual.apply(prediction, self.residual, tuple(region))
            finite = bool(np.isfinite(internal).all())
            if self._mask is not None:
                internal = mask.apply(internal, self._valid(tuple(region)), self.fill_value)
            sub = internal.reshape([region[a][1] - region[a][0] for a in self._axes()])
            sub = sub[tuple(post)]
            if isinstance(sub, np.ma.MaskedArray):
                out = mask.contiguous(sub, self.dtype)
            else:
                out = np.ascontiguousarray(sub).astype(self.dtype, copy=False)
        except MemoryError:
            raise too_big from None
        if not finite:  # e.g. crafted parameters that overflow float32
            raise FormatError(f"{self.source}: corrupted model (it decodes to non-finite values)")
        return out

    def read(self) -> np.ndarray:
        """The whole field."""
        return self[...]

    def _base_only(self, what: str) -> tucker.TuckerBase:
        if self.net is not None or self.residual is not None:
            raise InputError(
                f"{self.source}: {what} needs a file whose field is a whole-field base "
                "(this one is block networks or carries an error bound; decode its grid)"
            )
        return self.base

    def sample(self, points: Any) -> np.ndarray:
        """Values at arbitrary points: ``points`` is (P, ndim) float index coordinates in the
        file's own axes (``arr.dims``), clamped to the grid.

        The whole-field base is multilinear in its factors, so a point between voxels gets the
        multilinear interpolation of the decoded voxels around it (exact at integer points).
        In a file with missing values, a point takes the mask of its nearest voxel.
        """
        base = self._base_only("sampling between voxels")
        pts = np.asarray(points, np.float64)
        if pts.ndim != 2 or pts.shape[1] != self.ndim or not np.isfinite(pts).all():
            raise InputError(
                f"points must be a finite (P, {self.ndim}) array of index coordinates "
                f"(axes {', '.join(self.dims)}); got shape {pts.shape}"
            )
        need = budget.output_bytes(len(pts) * 4, 8)
        if need > budget.available_memory():
            raise InputError(f"{self.source}: {len(pts)} points do not fit in memory")
        internal = np.zeros((len(pts), 4))
        internal[:, self._axes()] = pts
        values = tucker.sample(base, internal).astype(self.dtype)
        if self._mask is None:
            return values
        nearest = np.rint(np.clip(internal, 0, np.array(self._shape4) - 1)).astype(np.int64)
        lo, hi = nearest.min(0), nearest.max(0) + 1
        valid = self._valid(tuple(zip(lo.tolist(), hi.tolist(), strict=True)))
        valid = valid[tuple((nearest - lo).T)]
        return np.ma.MaskedArray(values, mask=~valid)

    def resample(self, scale: int) -> np.ndarray:
        """The field on a grid ``scale`` times finer along every axis longer than 1 (time
        included): ``(n - 1) * scale + 1`` points spanning each axis, multilinearly interpolated
        between the decoded voxels (the original voxels are exact). Files with missing values
        are refused (the mask has no values between voxels)."""
        base = self._base_only("a finer grid")
        if not isinstance(scale, int) or isinstance(scale, bool) or not 1 <= scale <= 64:
            raise InputError(f"scale must be an integer in 1..64, got {scale!r}")
        if self._mask is not None:
            raise InputError(f"{self.source}: a field with missing values cannot be refined")
        coords = [np.linspace(0, n - 1, (n - 1) * scale + 1) for n in self._shape4]
        n = math.prod(len(c) for c in coords)
        if budget.output_bytes(n, self.dtype.itemsize) > budget.available_memory():
            raise InputError(f"{self.source}: a grid of {n} values does not fit in memory")
        out = tucker.evaluate_grid(base, coords).astype(self.dtype)
        return out.reshape([len(coords[a]) for a in self._axes()])

    def to_dask(self, chunks: Any = None) -> Any:
        """A lazy :class:`dask.array.Array` of the field (needs ``sciinr[dask]``).

        Each chunk is a region decode of this file (by path, or its bytes); the default chunks
        are one block of time steps by the whole space (see :func:`sciinr.parallel.to_dask`).
        """
        from . import parallel

        return parallel.to_dask(self, chunks)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self.read()
        return arr if dtype is None else arr.astype(dtype)

    def __repr__(self) -> str:
        return (
            f"<SinrArray {self.variable} shape={self.shape} dims={self.dims} "
            f"dtype={self.dtype} psnr={self.psnr}>"
        )


def normalize_key(key: Any, shape: tuple[int, ...]) -> list[Any]:
    """NumPy indexing -> per-axis int, (start, stop, step>0) or an int64 array of indices.

    Integers, slices with a positive step, one ellipsis, and at most one integer array or
    boolean mask (1-D, along one axis) are supported; anything else is an :class:`InputError`.
    """
    if not isinstance(key, tuple):
        key = (key,)
    ellipses = [i for i, k in enumerate(key) if k is Ellipsis]  # identity: arrays compare
    if len(ellipses) > 1:
        raise InputError("an index can only have a single ellipsis")
    if ellipses:
        i = ellipses[0]
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1 :]
    if len(key) > len(shape):
        raise InputError(f"too many indices ({len(key)}) for a {len(shape)}-D field")
    key = key + (slice(None),) * (len(shape) - len(key))
    out: list[Any] = []
    for k, n in zip(key, shape, strict=True):
        if isinstance(k, int | np.integer) and not isinstance(k, bool):
            i = int(k) + n if k < 0 else int(k)
            if not 0 <= i < n:
                raise InputError(f"index {int(k)} is out of bounds for an axis of size {n}")
            out.append(i)
        elif isinstance(k, slice):
            try:
                start, stop, step = k.indices(n)
            except (TypeError, ValueError) as exc:  # a zero step, or non-integer bounds
                raise InputError(f"bad slice {_show_slice(k)}: {exc}") from None
            if step <= 0:
                raise InputError("negative slice steps are not supported")
            out.append((start, max(start, stop), step))
        elif isinstance(k, list | np.ndarray):
            out.append(_array_index(k, n))
        else:
            raise InputError(f"unsupported index {k!r}: use integers, slices or one index array")
    if sum(isinstance(k, np.ndarray) for k in out) > 1:
        raise InputError("at most one index array or boolean mask is supported")
    return out


def _show_slice(k: slice) -> str:
    parts = ["" if v is None else str(v) for v in (k.start, k.stop, k.step)]
    return ":".join(parts)


def _array_index(k: Any, n: int) -> np.ndarray:
    """An integer array or boolean mask along an axis of size ``n`` -> int64 indices."""
    arr = np.asarray(k)
    if arr.ndim != 1:
        raise InputError(f"an index array must be 1-D (got {arr.ndim}-D)")
    if arr.dtype == bool:
        if arr.size != n:
            raise InputError(f"boolean index of length {arr.size} for an axis of size {n}")
        return np.flatnonzero(arr)
    if arr.size and arr.dtype.kind not in "iu":
        raise InputError(f"index arrays must hold integers or booleans, not {arr.dtype}")
    idx = arr.astype(np.int64)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise InputError(f"index array out of bounds for an axis of size {n}")
    return np.where(idx < 0, idx + n, idx)


def parse_index(text: str) -> tuple[Any, ...]:
    """``"3, 0:32, :, ::2"`` -> ``(3, slice(0, 32), slice(None), slice(None, None, 2))``."""
    items: list[Any] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if part == "...":
                items.append(Ellipsis)
            elif ":" in part:
                bits = [int(b) if b.strip() else None for b in part.split(":")]
                if len(bits) > 3:
                    raise ValueError
                items.append(slice(*bits))
            else:
                items.append(int(part))
        except ValueError:
            raise InputError(
                f"bad index {part!r} in {text!r}: use e.g. '3, 0:32, :, 10:20'"
            ) from None
    return tuple(items)


def read_source(source: Any) -> tuple[bytes, str]:
    """The bytes of a ``.sinr`` source and a name for messages."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), "<bytes>"
    if not isinstance(source, str | PathLike):
        raise InputError(f"cannot open a {type(source).__name__} as .sinr: give a path or bytes")
    path = Path(source)
    read.regular_file(path, "a .sinr file")
    try:
        with path.open("rb") as fh:  # a large file that is not a .sinr is not read whole
            head = fh.read(len(container.MAGIC))
            return (head + fh.read() if head == container.MAGIC else head), str(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _shape4_of(shape: tuple[int, ...], has_time: bool) -> tuple[int, ...]:
    """The internal (t, z, y, x) shape of a field of this shape (as the read stage makes it)."""
    t, spatial = (shape[0], shape[1:]) if has_time else (1, shape)
    return (t, *((1,) * (3 - len(spatial))), *spatial)


def open(
    source: bytes | str | Path, device: str = "auto", variable: str | None = None
) -> SinrArray:
    """Open a ``.sinr`` file (or bytes) lazily; index it to decode only what is asked for.

    ``variable`` picks one compressed variable of a dataset file (several variables); it may
    be left out when the file holds one.

    The whole header is verified (checksums, types, sizes) before this returns; the
    networks are decoded on the first index.

    Raises
    ------
    InputError
        The path does not exist, is a directory, or cannot be read.
    FormatError
        Not a .sinr file, truncated, corrupted, or from a newer format version.
    """
    return SinrArray(source, device=device, variable=variable)


def decompress(
    source: bytes | str | Path,
    *,
    time: Any = None,
    region: Any = None,
    device: str = "auto",
    variable: str | None = None,
) -> np.ndarray:
    """Decode a ``.sinr`` file or bytes to a NumPy array.

    Parameters
    ----------
    source : bytes, str or Path
    time : int or slice, optional
        Only this time step (or range) of a time-varying field.
    region : tuple or str, optional
        Basic index over all axes (``(3, slice(0, 32), ...)`` or ``"3,0:32,:,:"``).
    device : {"auto", "cpu", "cuda"}, default: "auto"
    variable : str, optional
        The variable of a dataset file holding several.
    """
    arr = SinrArray(source, device=device, variable=variable)
    if isinstance(region, str):
        region = parse_index(region)
    key: tuple[Any, ...] = (
        tuple(region)
        if isinstance(region, tuple | list)
        else ((region,) if region is not None else ())
    )
    if time is not None:
        if not arr.has_time:
            raise InputError(f"{arr.source}: the field has no time axis (dims {arr.dims})")
        if region is not None:
            raise InputError("give either time or region (region includes the time axis)")
        key = (time,)
    return arr[key if key else ...]


def info(source: bytes | str | Path, variable: str | None = None) -> dict[str, Any]:
    """Describe a ``.sinr`` file without decoding its values.

    For a dataset file: ``variable`` picks one variable (its description as for a
    single-field file); without it, the dataset's summary with one entry per variable.

    Raises
    ------
    InputError
        The path does not exist, is a directory, or cannot be read.
    FormatError
        Not a .sinr file, truncated, corrupted, or from a newer format version.
    """
    if variable is None:
        data, name = read_source(source)
        head, _ = container.unpack(data, name)
        if dataset.is_dataset(head):
            from .datafile import info as dataset_info

            return dataset_info(data, name)
    arr = SinrArray(source, variable=variable)
    n_values = math.prod(arr.shape)
    h = arr.header
    sizes = arr.section_sizes
    layer = (
        arr.residual.describe(h["residual"], h.get("value_range"))
        if arr.residual is not None
        else {"max_error": None}
    )
    return {
        "source": arr.source,
        "variable": arr.variable,
        "shape": list(arr.shape),
        "dims": list(arr.dims),
        "dtype": str(arr.dtype),
        "format_version": "{}.{}".format(*arr.format_version),
        "written_by": h.get("sciinr"),
        "bytes": arr.nbytes_file,
        "ratio": ratio(n_values, arr.nbytes_file),
        "bits_per_value": bits_per_value(n_values, arr.nbytes_file),
        "psnr": arr.psnr,
        "target_psnr": (h.get("config") or {}).get("psnr"),
        "value_range": h.get("value_range"),
        "missing_values": n_values - arr._mask.valid if arr._mask is not None else 0,
        **(encode.describe(h["model"], arr.net, sizes) if arr.net is not None else _base_info(arr)),
        "sections": sizes,
        "measured_max_error": h.get("max_abs_error"),
        "selection": h.get("selection"),
        **layer,
        "attrs": arr.attrs,
    }


def _base_info(arr: SinrArray) -> dict[str, Any]:
    """``info()`` entries of a file whose field is a whole-field Tucker base."""
    meta = arr.header["base"]
    n_params = math.prod(meta["ranks"]) + sum(
        s * r for s, r in zip(arr._shape4, meta["ranks"], strict=True) if s > 1
    )
    return {
        "networks": 0,
        "fitted_blocks": 0,
        "block": None,
        "base": {"kind": meta["kind"], "ranks": list(meta["ranks"]), "step": meta["step"]},
        "parameters": n_params,
        "bits_per_parameter": 8 * sum(arr.section_sizes[k] for k in tucker.SECTIONS) / n_params,
    }


def write_decoded(
    path: str | Path,
    array: np.ndarray,
    sinr: SinrArray,
    dims: tuple[str, ...] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a decoded array with the variable name, dims and attrs of its ``.sinr`` file."""
    return write.write_array(
        Path(path),
        array,
        variable=sinr.variable,
        dims=dims if dims is not None else sinr.dims,
        attrs=sinr.attrs,
        overwrite=overwrite,
        fill_value=sinr.fill_value,
    )


def config_record(cfg: Config) -> dict[str, Any]:
    """What a header keeps of the config: the target PSNR and every non-default setting."""
    return {"psnr": cfg.psnr, **_changes(cfg.to_dict(), Config().to_dict())}


def _changes(d: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    """The entries of a config dict that differ from the defaults (this version's)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            sub = _changes(v, default.get(k, {}))
            if sub:
                out[k] = sub
        elif default.get(k) != v:
            out[k] = v
    return out


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def verify(
    volume: Volume, arr: SinrArray, *, time: int | None = None, each_step: bool = False
) -> dict[str, Any]:
    """Decode a ``.sinr`` file and compare it with its original (``sciinr verify``).

    Parameters
    ----------
    volume : Volume
        The original field, as :func:`sciinr.stages.read.read` gives it (float32).
    arr : SinrArray
        The opened file.
    time : int, optional
        Verify only this time step, decoded alone (default: the whole field).
    each_step : bool, default: False
        Also decode every time step alone and check the bound on each.

    Returns
    -------
    dict
        ``max_error``, ``max_error_relative`` (to the original's value range), ``psnr``,
        ``ratio``, ``guaranteed`` (the stored bound or None), ``failures`` (broken
        guarantees: a max error above the stored bound, a PSNR below the stored PSNR).

    Raises
    ------
    InputError
        The original's shape differs from the file's, or a bad time step.
    """
    if tuple(volume.orig_shape) != tuple(arr.shape):
        raise InputError(
            f"{volume.source}: shape {tuple(volume.orig_shape)} differs from the shape "
            f"{arr.shape} stored in {arr.source}"
        )
    lo, hi = volume.value_range
    vr = hi - lo
    orig = volume.data.reshape(volume.orig_shape)
    valid = None if volume.mask is None else volume.mask.reshape(volume.orig_shape)
    clock = _clock()
    if time is not None:
        if not arr.has_time:
            raise InputError(f"{arr.source}: the field has no time axis (dims {arr.dims})")
        if not -arr.shape[0] <= time < arr.shape[0]:
            raise InputError(f"time step {time} is out of range (the field has {arr.shape[0]})")
        decoded, ref, what = arr[time], orig[time], f"time step {time % arr.shape[0]}"
        ref_valid = None if valid is None else valid[time]
    else:
        decoded, ref, what = arr[...], orig, "full field"
        ref_valid = valid
    seconds = _clock() - clock
    failures: list[str] = []
    err, sq, differ = _compare(ref, ref_valid, decoded)
    if differ:
        failures.append(f"mask differs from the original's at {differ} values ({what})")
    p = psnr_from_mse(sq, vr)
    if arr.max_error is not None and err > arr.max_error:
        failures.append(f"max error {err:.6g} > guaranteed {arr.max_error:.6g} ({what})")
    if time is None and arr.psnr is not None and p < arr.psnr - 0.01:
        failures.append(f"PSNR {p:.3f} dB < stored {arr.psnr:.3f} dB")
    steps = None
    if each_step and arr.has_time:
        worst = 0.0
        for t in range(arr.shape[0]):
            e = _compare(orig[t], None if valid is None else valid[t], arr[t])[0]
            worst = max(worst, e)
            if arr.max_error is not None and e > arr.max_error:
                failures.append(f"max error {e:.6g} > guaranteed {arr.max_error:.6g} (step {t})")
        steps = {"n": arr.shape[0], "max_error": worst}
    return {
        "file": arr.source,
        "decoded": what,
        "max_error": err,
        "max_error_relative": err / vr if vr > 0 else None,
        "guaranteed": arr.max_error,
        "psnr": p,
        "stored_psnr": arr.psnr,
        "ratio": ratio(math.prod(arr.shape), arr.nbytes_file),
        "steps": steps,
        "seconds": seconds,
        "device": str(resolve_device(arr.device)),
        "checked": arr.max_error is not None or (time is None and arr.psnr is not None),
        "failures": failures,
    }


def _compare(
    ref: np.ndarray, ref_valid: np.ndarray | None, decoded: np.ndarray
) -> tuple[float, float, int]:
    """(max error, mean squared error, values whose mask differs), over the valid values."""
    dec_valid = ~np.ma.getmaskarray(decoded) if np.ma.isMaskedArray(decoded) else None
    differ = 0
    if ref_valid is not None or dec_valid is not None:
        a = np.ones(ref.shape, bool) if ref_valid is None else ref_valid
        b = np.ones(ref.shape, bool) if dec_valid is None else dec_valid
        differ = int(np.count_nonzero(a != b))
        both = a & b
    else:
        both = None
    diff = ref.astype(np.float64) - np.ma.getdata(decoded).astype(np.float64)
    if both is not None:
        diff = diff[both]
    if not diff.size:
        return 0.0, 0.0, differ
    return float(np.abs(diff).max()), float(np.mean(np.square(diff))), differ


def _clock() -> float:
    return time.perf_counter()  # ``time`` is shadowed by an argument in verify()
