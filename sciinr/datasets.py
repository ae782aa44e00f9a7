"""Dataset manifests: which real field a benchmark reads, and proof that it is the right file.

A manifest is a small JSON file in ``data_manifests/`` naming one variable of one file: file
name, variable, shape, dtype, time axis, provenance, licence and the file's sha256. The file
itself lives outside the repository, in a data directory (``--data-dir``, else the
``SCIINR_DATA_DIR`` environment variable, else ``../shared/data`` beside the checkout).
:func:`locate` finds it and checks its size and sha256 before anything reads it, so a
benchmark never runs silently on a different or truncated file.

Examples
--------
>>> from sciinr import datasets
>>> m = datasets.load_manifest("vf_run01_density")        # doctest: +SKIP
>>> field = datasets.load_field(m, time="40:48")           # doctest: +SKIP
>>> field.data.shape                                       # doctest: +SKIP
(8, 64, 64, 64)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .stages import read

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST_DIR = REPO_ROOT / "data_manifests"
DATA_DIR_ENV = "SCIINR_DATA_DIR"
MAX_MANIFEST_BYTES = 1 << 20
_REQUIRED = {
    "name": str,
    "file": str,
    "variable": str,
    "shape": list,
    "dtype": str,
    "dims": list,
    "sha256": str,
    "bytes": int,
    "source": str,
    "licence": str,
}


@dataclass(frozen=True)
class Manifest:
    """One dataset the benchmarks know (one variable of one file).

    Attributes
    ----------
    name : str
        Short identifier, also the manifest's file stem.
    file : str
        File name, relative to the data directory (or an absolute path).
    variable : str
        HDF5 dataset path or NetCDF variable name.
    shape, dims : tuple
        Shape and dimension names on disk; time first when ``time_axis`` is 0.
    dtype : str
        dtype on disk (``int16`` for packed NetCDF; the loader unpacks to float32).
    time_axis : int or None
        0 when the first axis is time, None for a static field.
    sha256, bytes : str, int
        Checksum and size of the whole file.
    source, licence, credit, description : str
        Provenance.
    bench : dict
        Defaults for ``sciinr bench`` on this dataset (``time_steps``, ``sciinr_psnr``, ...).
    path : Path or None
        Where the manifest was read from.
    """

    name: str
    file: str
    variable: str
    shape: tuple[int, ...]
    dtype: str
    dims: tuple[str, ...]
    sha256: str
    bytes: int
    source: str
    licence: str
    time_axis: int | None = 0
    credit: str = ""
    description: str = ""
    value_range: tuple[float, float] | None = None
    bench: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


@dataclass(frozen=True)
class Field:
    """A field loaded for a benchmark: always 4-D ``(t, z, y, x)`` float32.

    ``selection`` says which part of the file it is (time steps and crop), in words.
    """

    data: np.ndarray  # (T, Z, Y, X) float32, C-contiguous
    name: str
    variable: str
    source: str
    selection: str
    dims: tuple[str, ...]  # names of the original axes kept in data (time first if present)
    sha256: str | None = None  # checksum verified against a manifest, else None


def manifest_names(directory: Path = MANIFEST_DIR) -> list[str]:
    """Names of the manifests in ``directory`` (sorted)."""
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.json"))


def load_manifest(name_or_path: str | Path, directory: Path = MANIFEST_DIR) -> Manifest:
    """Read and validate a manifest, by name (``vf_run01_density``) or by path.

    Raises
    ------
    InputError
        Unknown name, unreadable or malformed manifest.
    """
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = directory / f"{name_or_path}.json"
    if not path.is_file():
        known = ", ".join(manifest_names(directory)) or f"none in {directory}"
        raise InputError(f"{path}: no such manifest (known: {known})")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise InputError(f"{path}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable manifest ({exc})") from None
    return _manifest_from_dict(raw, path)


def _manifest_from_dict(raw: Any, path: Path) -> Manifest:
    if not isinstance(raw, dict):
        raise InputError(f"{path}: manifest must be a JSON object")
    for key, kind in _REQUIRED.items():
        if key not in raw:
            raise InputError(f"{path}: manifest lacks {key!r}")
        if not isinstance(raw[key], kind) or isinstance(raw[key], bool):
            raise InputError(f"{path}: manifest field {key!r} must be a {kind.__name__}")
    shape = raw["shape"]
    if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise InputError(f"{path}: manifest shape must be positive integers, got {shape}")
    if len(raw["dims"]) != len(shape):
        raise InputError(f"{path}: manifest dims {raw['dims']} do not match shape {shape}")
    sha = raw["sha256"].lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise InputError(f"{path}: manifest sha256 must be 64 hex digits")
    time_axis = raw.get("time_axis", 0)
    if time_axis not in (0, None):
        raise InputError(f"{path}: manifest time_axis must be 0 or null, got {time_axis!r}")
    bench = raw.get("bench", {})
    if not isinstance(bench, dict):
        raise InputError(f"{path}: manifest field 'bench' must be an object")
    vr = raw.get("value_range")
    return Manifest(
        name=raw["name"],
        file=raw["file"],
        variable=raw["variable"],
        shape=tuple(shape),
        dtype=raw["dtype"],
        dims=tuple(str(d) for d in raw["dims"]),
        sha256=sha,
        bytes=raw["bytes"],
        source=raw["source"],
        licence=raw["licence"],
        time_axis=time_axis,
        credit=str(raw.get("credit", "")),
        description=str(raw.get("description", "")),
        value_range=(float(vr[0]), float(vr[1])) if vr else None,
        bench=bench,
        path=path,
    )


def default_data_dir() -> Path:
    """``$SCIINR_DATA_DIR`` when set, else ``../shared/data`` beside the checkout."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def locate(manifest: Manifest, data_dir: str | Path | None = None) -> Path:
    """The manifest's file, after checking that it exists and matches size and sha256.

    Raises
    ------
    InputError
        The file is missing, or its size or checksum differs from the manifest's.
    """
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    path = Path(manifest.file) if Path(manifest.file).is_absolute() else base / manifest.file
    where = f"manifest {manifest.name}"
    if not path.is_file():
        raise InputError(
            f"{path}: not found ({where}); put the file there, or pass --data-dir / set "
            f"{DATA_DIR_ENV} to the directory that holds {manifest.file}"
        )
    size = path.stat().st_size
    if size != manifest.bytes:
        raise InputError(
            f"{path}: {size} bytes, {where} expects {manifest.bytes} (different or truncated file)"
        )
    digest = sha256_file(path)
    if digest != manifest.sha256:
        raise InputError(
            f"{path}: sha256 {digest[:12]}… differs from {where} ({manifest.sha256[:12]}…); "
            "the file is not the one the benchmarks were measured on"
        )
    return path


def parse_slice(text: str, length: int, what: str) -> slice:
    """``"a:b"``, ``"a:b:s"``, ``":b"`` or ``"a"`` -> a slice checked against ``length``.

    Raises
    ------
    InputError
        Not of that form, or empty within ``length``.
    """
    parts = text.strip().split(":")
    if len(parts) > 3:
        raise InputError(f"{what} {text!r}: expected start:stop[:step]")
    try:
        nums = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise InputError(f"{what} {text!r}: expected integers like 40:48 or 0:99:2") from None
    if len(nums) == 1:
        if nums[0] is None:
            raise InputError(f"{what} {text!r}: empty")
        i = nums[0] + length if nums[0] < 0 else nums[0]
        nums = [i, i + 1]
    sl = slice(*nums)
    if sl.step is not None and sl.step <= 0:
        raise InputError(f"{what} {text!r}: step must be positive")
    if len(range(length)[sl]) == 0:
        raise InputError(f"{what} {text!r}: selects nothing of an axis of length {length}")
    return sl


def select(
    data: np.ndarray,
    has_time: bool,
    n_spatial: int,
    time: str | None = None,
    every: int = 1,
    crop: str | None = None,
) -> tuple[np.ndarray, str]:
    """Cut time steps and a spatial box out of a 4-D ``(t, z, y, x)`` array.

    Parameters
    ----------
    data : numpy.ndarray
        ``(T, Z, Y, X)`` float32.
    has_time : bool
        Whether axis 0 is a real time axis (else ``time`` and ``every`` must be left unset).
    n_spatial : int
        How many of the trailing axes are real spatial axes (1 to 3); ``crop`` names these.
    time : str, optional
        Time steps, ``"40:48"`` (Python slice, stop excluded).
    every : int, default: 1
        Keep every ``every``-th of the selected time steps.
    crop : str, optional
        One slice per spatial axis, comma-separated: ``"0:32,:,16:48"``.

    Returns
    -------
    (numpy.ndarray, str)
        The C-contiguous selection and a description of it.
    """
    words = []
    if every < 1:
        raise InputError(f"--every must be >= 1, got {every}")
    if not has_time and (time is not None or every != 1):
        raise InputError("this field has no time axis: drop --time-steps/--every")
    if has_time:
        sl = parse_slice(time, data.shape[0], "time steps") if time else slice(None)
        start, stop, step = sl.indices(data.shape[0])
        sl = slice(start, stop, step * every)
        data = data[sl]
        if time or every != 1:
            words.append(f"time steps {start}:{stop}:{step * every}")
    if crop:
        parts = crop.split(",")
        if len(parts) != n_spatial:
            raise InputError(
                f"crop {crop!r}: give {n_spatial} comma-separated slices, one per spatial axis"
            )
        axes = range(4 - n_spatial, 4)
        key: list[slice] = [slice(None)] * 4
        for axis, part in zip(axes, parts, strict=True):
            key[axis] = parse_slice(part, data.shape[axis], "crop") if part.strip() else slice(None)
        data = data[tuple(key)]
        words.append(f"crop {crop}")
    return np.ascontiguousarray(data), ", ".join(words) or "all"


def load_field(
    manifest: Manifest,
    data_dir: str | Path | None = None,
    time: str | None = None,
    every: int = 1,
    crop: str | None = None,
) -> Field:
    """Locate (with checksum), read and cut a manifest's field.

    Raises
    ------
    InputError
        Missing or different file, unreadable variable, bad selection.
    """
    path = locate(manifest, data_dir)
    time_dim = manifest.dims[0] if manifest.time_axis == 0 else "none"
    volume = read.read(path, var=manifest.variable, time_dim=time_dim)
    if volume.orig_shape != manifest.shape:
        raise InputError(
            f"{path}: variable {manifest.variable!r} has shape {volume.orig_shape}, "
            f"manifest {manifest.name} says {manifest.shape}"
        )
    return _field_from_volume(volume, manifest.name, time, every, crop, manifest.sha256)


def load_path(
    path: str | Path,
    var: str | None = None,
    time_dim: str | None = None,
    time: str | None = None,
    every: int = 1,
    crop: str | None = None,
) -> Field:
    """Read and cut a field from any file sciinr reads (no checksum: there is no manifest)."""
    volume = read.read(Path(path), var=var, time_dim=time_dim)
    stem, var = Path(path).stem, volume.variable.replace("/", "_")
    name = stem if var in (stem, "data") else f"{stem}_{var}"
    return _field_from_volume(volume, name, time, every, crop, None)


def _field_from_volume(
    volume: Any, name: str, time: str | None, every: int, crop: str | None, sha: str | None
) -> Field:
    n_spatial = len(volume.orig_shape) - (1 if volume.has_time else 0)
    data, words = select(volume.data, volume.has_time, n_spatial, time, every, crop)
    return Field(
        data=data,
        name=name,
        variable=volume.variable,
        source=volume.source,
        selection=words,
        dims=tuple(volume.dims),
        sha256=sha,
    )
