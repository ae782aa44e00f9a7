"""The pipeline, readable top to bottom: composes the stages, no math of its own.

compress:   read -> partition -> cluster -> fit -> shrink -> encode -> container (-> file)
decompress: container -> encode (inverse) -> decode (only the blocks asked for)
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .config import Config
from .errors import ConfigError, FormatError, InputError
from .metrics import bits_per_value, psnr, ratio, rmse_for_psnr
from .payloads import Model, Volume
from .stages import cluster, container, decode, encode, fit, partition, read, shrink, write

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
    volume: Volume, cfg: Config, model_meta: dict[str, Any], reached: float
) -> dict[str, Any]:
    """The JSON header of a ``.sinr`` file (without its section table)."""
    lo, hi = volume.value_range
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
        "config": cfg.to_dict(),
        "model": model_meta,
    }


def compress_volume(volume: Volume, cfg: Config, progress: bool = False) -> tuple[bytes, Report]:
    """Run the whole pipeline on a volume; returns the ``.sinr`` bytes and a :class:`Report`."""
    t0 = time.perf_counter()
    lo, hi = volume.value_range
    value_range = hi - lo
    tolerance = rmse_for_psnr(cfg.psnr, value_range)
    blocks = partition.partition(volume, cfg.partition, tolerance)
    assignment = cluster.cluster(blocks, cfg.cluster, seed=cfg.seed)
    fitted = fit.fit(
        blocks,
        assignment,
        cfg.fit,
        target_psnr=cfg.psnr,
        value_range=value_range,
        seed=cfg.seed,
        progress=progress,
    )
    small = shrink.shrink(
        blocks,
        assignment,
        fitted,
        cfg.shrink,
        cfg.fit,
        target_psnr=cfg.psnr,
        value_range=value_range,
        seed=cfg.seed,
        progress=progress,
    )
    model = Model.from_fit(blocks, fitted, arrays=small.arrays)
    meta, sections = encode.encode_model(model, small)
    stored = encode.decode_model(meta, sections)
    reached = psnr(volume.data, decode.decode(stored, device=fit.resolve_device(cfg.fit.device)))
    header = build_header(volume, cfg, meta, reached)
    blob = container.pack(header, sections)
    seconds = time.perf_counter() - t0
    report = Report(
        n_values=volume.data.size,
        n_bytes=len(blob),
        psnr=reached,
        seconds=seconds,
        n_nets=fitted.shape.n_nets,
        n_blocks=blocks.n_blocks,
        n_trivial=int(blocks.trivial.sum()),
        fit_steps=fitted.steps,
        sections={k: len(v) for k, v in sections.items()},
    )
    logger.info(
        "compressed %s: ratio %.1f, PSNR %.2f dB, %.1f s",
        volume.variable,
        report.ratio,
        reached,
        seconds,
    )
    return blob, report


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
) -> bytes | Path:
    """Compress a field.

    Parameters
    ----------
    data : numpy.ndarray, str, Path, h5py.Dataset or netCDF4.Variable
        The field (2-D to 4-D, time first), or a file holding it.
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
    if out is not None:
        write.check_destination(Path(out), overwrite)
    volume = read.read(data, var=var, time_dim=time_dim, dims=dims)
    blob, _ = compress_volume(volume, cfg, progress=progress)
    if out is None:
        return blob
    return write.write_bytes(Path(out), blob, overwrite=overwrite)


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

    def __init__(self, source: bytes | str | Path, device: str = "auto"):
        data, self.source = _read_source(source)
        self.header, self._sections = container.unpack(data, self.source)
        self.nbytes_file = len(data)
        self.format_version = container.version_of(data)
        h = self.header
        container.check_field_header(h, self.source)
        try:
            self._shape4, _, self.net = encode.validate_meta(h["model"])
        except FormatError as exc:
            raise FormatError(f"{self.source}: {exc}") from None
        self.shape: tuple[int, ...] = tuple(h["shape"])
        self.dims: tuple[str, ...] = tuple(h["dims"])
        self.has_time: bool = h["has_time"]
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
        self._device = device

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def model(self) -> Model:
        if self._model is None:
            try:
                # a valid file never overflows float32 while its model is decoded
                with np.errstate(over="raise", invalid="raise"):
                    self._model = encode.decode_model(self.header["model"], self._sections)
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
        keys = _normalize_key(key, self.shape)
        region = [(0, 1)] * 4
        post: list[Any] = []
        for axis, k in zip(self._axes(), keys, strict=True):
            if isinstance(k, int):
                region[axis] = (k, k + 1)
                post.append(0)
            else:
                start, stop, step = k
                if stop <= start:
                    region[axis] = (start, start)
                    post.append(slice(0, 0))
                else:
                    region[axis] = (start, stop)
                    post.append(slice(None, None, step))
        model = self.model
        n = math.prod(b - a for a, b in region)
        too_big = InputError(
            f"{self.source}: decoding {n} values ({n * 4 / 1e9:.1f} GB) does not fit in "
            "memory; decode one time step or a region"
        )
        if n * (4 + self.dtype.itemsize) > _physical_memory():
            raise too_big
        try:
            internal = decode.decode(model, tuple(region), device=self._resolve_device())
        except MemoryError:
            raise too_big from None
        if not np.isfinite(internal).all():  # e.g. crafted parameters that overflow float32
            raise FormatError(f"{self.source}: corrupted model (it decodes to non-finite values)")
        sub = internal.reshape([region[a][1] - region[a][0] for a in self._axes()])
        return np.ascontiguousarray(sub[tuple(post)]).astype(self.dtype, copy=False)

    def _resolve_device(self) -> Any:
        try:
            dev = fit.resolve_device(self._device)
        except RuntimeError:
            raise ConfigError(f"unknown device {self._device!r} (use auto, cpu or cuda)") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self._device!r}: no CUDA device is available")
        return dev

    def read(self) -> np.ndarray:
        """The whole field."""
        return self[...]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self.read()
        return arr if dtype is None else arr.astype(dtype)

    def __repr__(self) -> str:
        return (
            f"<SinrArray {self.variable} shape={self.shape} dims={self.dims} "
            f"dtype={self.dtype} psnr={self.psnr}>"
        )


def _normalize_key(key: Any, shape: tuple[int, ...]) -> list[Any]:
    """Basic NumPy indexing -> per-axis int or (start, stop, step>0)."""
    if not isinstance(key, tuple):
        key = (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise InputError("an index can only have a single ellipsis")
    if Ellipsis in key:
        i = key.index(Ellipsis)
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
            start, stop, step = k.indices(n)
            if step <= 0:
                raise InputError("negative slice steps are not supported")
            out.append((start, max(start, stop), step))
        else:
            raise InputError(f"unsupported index {k!r}: use integers and slices")
    return out


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


def _read_source(source: Any) -> tuple[bytes, str]:
    """The bytes of a ``.sinr`` source and a name for messages."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), "<bytes>"
    if not isinstance(source, str | PathLike):
        raise InputError(f"cannot open a {type(source).__name__} as .sinr: give a path or bytes")
    path = Path(source)
    try:
        if path.is_dir():
            raise InputError(f"{path}: is a directory, not a .sinr file")
        if not path.exists():
            raise InputError(f"{path}: no such file")
        if not path.is_file():
            raise InputError(f"{path}: not a regular file")
        with path.open("rb") as fh:  # a large file that is not a .sinr is not read whole
            head = fh.read(len(container.MAGIC))
            return (head + fh.read() if head == container.MAGIC else head), str(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _physical_memory() -> int:
    """Bytes of RAM of this machine (a decode asking for more is refused before allocating)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 1 << 62


def _shape4_of(shape: tuple[int, ...], has_time: bool) -> tuple[int, ...]:
    """The internal (t, z, y, x) shape of a field of this shape (as the read stage makes it)."""
    t, spatial = (shape[0], shape[1:]) if has_time else (1, shape)
    return (t, *((1,) * (3 - len(spatial))), *spatial)


def open(source: bytes | str | Path, device: str = "auto") -> SinrArray:
    """Open a ``.sinr`` file (or bytes) lazily; index it to decode only what is asked for.

    The whole header is verified (checksums, types, sizes) before this returns; the
    networks are decoded on the first index.

    Raises
    ------
    InputError
        The path does not exist, is a directory, or cannot be read.
    FormatError
        Not a .sinr file, truncated, corrupted, or from a newer format version.
    """
    return SinrArray(source, device=device)


def decompress(
    source: bytes | str | Path, *, time: Any = None, region: Any = None, device: str = "auto"
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
    """
    arr = SinrArray(source, device=device)
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


def info(source: bytes | str | Path) -> dict[str, Any]:
    """Describe a ``.sinr`` file without decoding its values.

    Raises
    ------
    InputError
        The path does not exist, is a directory, or cannot be read.
    FormatError
        Not a .sinr file, truncated, corrupted, or from a newer format version.
    """
    arr = SinrArray(source)
    n_values = math.prod(arr.shape)
    h = arr.header
    model_meta = h.get("model") or {}
    n_params = arr.net.n_params() + arr.net.n_blocks * arr.net.latent_dim
    net_bytes = sum(
        len(v)
        for k, v in arr._sections.items()
        if k.startswith(("idx_", "latent")) or k in ("codebooks", "params")
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
        "networks": arr.net.n_nets,
        "fitted_blocks": arr.net.n_blocks,
        "block": (h.get("model") or {}).get("block"),
        "parameters": n_params,
        "parameter_encoding": model_meta.get("params_dtype"),
        "sparsity": model_meta.get("sparsity", 0.0),
        "bits_per_parameter": 8 * net_bytes / max(n_params, 1),
        "architecture": {
            "width": arr.net.width,
            "depth": arr.net.depth,
            "latent_dim": arr.net.latent_dim,
            "omega0": arr.net.omega0,
        },
        "sections": {k: len(v) for k, v in arr._sections.items()},
        "attrs": arr.attrs,
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
    )


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj
