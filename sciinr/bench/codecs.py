"""Every codec the rate-distortion sweep knows, behind one small interface.

A :class:`Codec` has a name, one quality knob and a list of knob values; ``encode`` turns an
array into bytes at one knob value and ``decode`` turns the bytes back into an array of a
given shape. Knob values that are error bounds are relative to the value range of the whole
field being benchmarked, so the per-time-step and whole-array runs use the same bound.

Baselines come from their published Python packages (the ``bench`` extra). A package that is
missing or fails to import is reported by :func:`load_codecs` as one line and the codec is
left out; it never stops the run.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

REL_BOUNDS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
ZFP_TOLERANCES = (1.0, 3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
ZFP_RATES = (0.0625, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 16.0)
ZFP_MIN_BITS_PER_BLOCK = 16  # zfpy fixed rate corrupts the heap below ~9 bits per block
PSNR_TARGETS = (20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 55.0, 60.0, 70.0, 80.0)
FPZIP_PRECISIONS = (0, 12, 14, 16, 18, 20, 22, 24)  # float32: <= 9 bits keeps no mantissa
ZSTD_LEVELS = (3, 12)  # 19 gains ~10 % on our fields at ~1 MB/s
SCIINR_PSNR = (40.0, 50.0)


class Unsupported(ValueError):
    """This knob value cannot be used on this array (the point is skipped, not failed)."""


@dataclass
class Codec:
    """One codec with one knob.

    Attributes
    ----------
    name : str
        Label in tables and plots.
    knob : str
        What the knob values mean.
    values : tuple of float
        The knob values swept, coarsest first.
    modes : tuple of str
        ``"step"``: each time step on its own; ``"whole"``: the whole ``(T, Z, Y, X)`` array.
    package : str
        Package and version that implements it.
    note : str
        Caveat printed with its results (empty when none).
    lossless : bool
        Every knob value reconstructs the input exactly.
    squeeze : bool
        Drop axes of length 1 before encoding (baselines); sciinr takes the 4-D array.
    device : str
        Where it runs.
    """

    name: str
    knob: str
    values: tuple[float, ...]
    encode_fn: Callable[[np.ndarray, float, float], bytes]
    decode_fn: Callable[[bytes, tuple[int, ...]], np.ndarray]
    modes: tuple[str, ...] = ("step", "whole")
    package: str = ""
    note: str = ""
    lossless: bool = False
    squeeze: bool = True
    device: str = "cpu"
    check: Callable[[np.ndarray, float], None] | None = field(default=None, repr=False)

    def encode(self, array: np.ndarray, value: float, value_range: float) -> bytes:
        """Compress ``array`` at knob ``value``; ``value_range`` is the whole field's.

        Raises
        ------
        Unsupported
            The knob value cannot be used on an array of this shape.
        """
        if self.check is not None:
            self.check(array, value)
        return bytes(self.encode_fn(array, value, value_range))

    def decode(self, blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
        """Decompress to an array of ``shape`` (float32)."""
        out = np.asarray(self.decode_fn(blob, shape))
        if out.size != int(np.prod(shape)):
            raise ValueError(f"{self.name}: decoded {out.size} values, expected {np.prod(shape)}")
        return out.reshape(shape).astype(np.float32, copy=False)


def _version(dist: str) -> str:
    try:
        return f"{dist} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return dist


def _u8(blob: bytes) -> np.ndarray:
    """The numcodecs-wasm decoders take a uint8 array, not ``bytes``."""
    return np.frombuffer(blob, np.uint8)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send file descriptor 1 to stderr while a WebAssembly codec prints its own statistics."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# --- SZ3 ---------------------------------------------------------------------------------


def _sz3() -> Codec:
    from pysz import sz, szConfig, szErrorBoundMode

    def enc(a: np.ndarray, rel: float, vr: float) -> bytes:
        cfg = szConfig()
        cfg.errorBoundMode = szErrorBoundMode.ABS
        cfg.absErrorBound = rel * vr
        blob, _ = sz.compress(np.ascontiguousarray(a), cfg)
        return blob.tobytes()

    def dec(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
        out, _ = sz.decompress(np.frombuffer(blob, np.uint8).copy(), np.float32, shape)
        return out

    return Codec("SZ3", "abs error bound / range", REL_BOUNDS, enc, dec, package=_version("pysz"))


def _sz3_wasm() -> Codec:
    wasm = importlib.import_module("numcodecs_wasm_sz3")

    def enc(a: np.ndarray, rel: float, vr: float) -> bytes:
        return wasm.Sz3(eb_mode="abs", eb_abs=rel * vr).encode(np.ascontiguousarray(a))

    def dec(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
        return wasm.Sz3(eb_mode="abs", eb_abs=1.0).decode(_u8(blob))

    return Codec(
        "SZ3-wasm",
        "abs error bound / range",
        REL_BOUNDS,
        enc,
        dec,
        package=_version("numcodecs-wasm-sz3"),
    )


# --- ZFP ---------------------------------------------------------------------------------


def _zfp_accuracy() -> Codec:
    import zfpy

    def enc(a: np.ndarray, rel: float, vr: float) -> bytes:
        return zfpy.compress_numpy(np.ascontiguousarray(a), tolerance=rel * vr)

    def dec(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
        return zfpy.decompress_numpy(blob)

    return Codec(
        "ZFP-accuracy", "tolerance / range", ZFP_TOLERANCES, enc, dec, package=_version("zfpy")
    )


def _zfp_rate() -> Codec:
    import zfpy

    def check(a: np.ndarray, rate: float) -> None:
        if a.ndim > 4:
            raise Unsupported(f"ZFP takes at most 4-D arrays, got {a.ndim}-D")
        bits = rate * 4**a.ndim
        if bits < ZFP_MIN_BITS_PER_BLOCK:
            raise Unsupported(
                f"rate {rate:g} gives {bits:g} bits per {a.ndim}-D block "
                f"(< {ZFP_MIN_BITS_PER_BLOCK}: zfpy fixed rate corrupts memory there)"
            )

    def enc(a: np.ndarray, rate: float, vr: float) -> bytes:
        return zfpy.compress_numpy(np.ascontiguousarray(a), rate=rate)

    def dec(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
        return zfpy.decompress_numpy(blob)

    return Codec(
        "ZFP-rate",
        "bits per value",
        ZFP_RATES,
        enc,
        dec,
        package=_version("zfpy"),
        check=check,
    )


# --- TTHRESH and SPERR (WebAssembly builds) ----------------------------------------------


def _tthresh_wasm() -> Codec:
    wasm = importlib.import_module("numcodecs_wasm_tthresh")

    # numcodecs-wasm-tthresh 0.3.2 hands TTHRESH the C-order shape, which TTHRESH reads in
    # Fortran order (the tensor arrives scrambled). Passing the reversed shape over the same
    # buffer gives TTHRESH the right tensor; the decoded buffer is then reshaped back.
    def enc(a: np.ndarray, target: float, vr: float) -> bytes:
        a = np.ascontiguousarray(a)
        with _stdout_to_stderr():
            return wasm.Tthresh(eb_mode="psnr", eb_psnr=target).encode(a.reshape(a.shape[::-1]))

    def dec(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
        with _stdout_to_stderr():
            return np.asarray(wasm.Tthresh(eb_mode="psnr", eb_psnr=40.0).decode(_u8(blob)))

    return Codec(
        "TTHRESH-wasm",
        "target PSNR (dB, own range)",
        PSNR_TARGETS,
        enc,
        dec,
        package=_version("numcodecs-wasm-tthresh"),
        note="numcodecs-wasm-tthresh build, not upstream TTHRESH: it scrambles C-order shapes "
        "(we pass the shape reversed), decodes worse than upstream and fails on some 4-D "
        "streams; see /work/shared/BASELINES.md for upstream TTHRESH",
    )


TTHRESH_ENV = "SCIINR_TTHRESH"


def tthresh_binary() -> str | None:
    """The upstream ``tthresh`` program: ``$SCIINR_TTHRESH``, else ``tthresh`` on the PATH."""
    env = os.environ.get(TTHRESH_ENV)
    if env:
        return env if os.access(env, os.X_OK) else None
    return shutil.which("tthresh")


def _tthresh() -> Codec:
    exe = tthresh_binary()
    if exe is None:
        raise ImportError(
            f"tthresh: the upstream program is not on the PATH and ${TTHRESH_ENV} is not set "
            "(install upstream TTHRESH yourself to include it; see benchmarks/README.md)"
        )

    def check(a: np.ndarray, target: float) -> None:
        if a.ndim < 3:
            raise Unsupported(f"TTHRESH needs 3 or more dimensions, got {a.ndim}")

    def call(args: list[str]) -> None:
        done = subprocess.run([exe, *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no message"]
            raise RuntimeError(f"tthresh exited with {done.returncode}: {tail[0]}")

    def enc(a: np.ndarray, target: float, vr: float) -> bytes:
        with tempfile.TemporaryDirectory(prefix="sciinr-tthresh-") as tmp:
            raw, comp = Path(tmp) / "in.raw", Path(tmp) / "out.tth"
            np.ascontiguousarray(a, dtype="<f4").tofile(raw)
            # TTHRESH reads sizes in Fortran order (first varies fastest): reverse C's shape
            sizes = [str(n) for n in a.shape[::-1]]
            call(
                ["-i", str(raw), "-t", "float", "-s", *sizes, "-p", f"{target:g}", "-c", str(comp)]
            )
            return comp.read_bytes()

    def dec(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="sciinr-tthresh-") as tmp:
            comp, raw = Path(tmp) / "in.tth", Path(tmp) / "out.raw"
            comp.write_bytes(blob)
            call(["-c", str(comp), "-o", str(raw)])
            return np.fromfile(raw, dtype="<f4")

    return Codec(
        "TTHRESH",
        "target PSNR (dB, own range)",
        PSNR_TARGETS,
        enc,
        dec,
        package=f"tthresh program ({exe})",
        check=check,
        # TTHRESH's basis spans every axis it is given: per step it is both larger and, with
        # one process per call, far slower (every TTHRESH figure in BASELINES.md is "whole")
        modes=("whole",),
    )


def _sperr_wasm() -> Codec:
    wasm = importlib.import_module("numcodecs_wasm_sperr")

    def check(a: np.ndarray, target: float) -> None:
        if a.ndim > 3:
            raise Unsupported("the SPERR wrapper takes at most 3-D arrays")

    def enc(a: np.ndarray, target: float, vr: float) -> bytes:
        return wasm.Sperr(mode="psnr", psnr=target).encode(np.ascontiguousarray(a))

    def dec(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
        return wasm.Sperr(mode="psnr", psnr=40.0).decode(_u8(blob))

    return Codec(
        "SPERR-wasm",
        "target PSNR (dB, own range)",
        PSNR_TARGETS,
        enc,
        dec,
        modes=("step",),
        package=_version("numcodecs-wasm-sperr"),
        check=check,
    )


# --- lossless and near-lossless ----------------------------------------------------------


def _fpzip() -> Codec:
    import fpzip

    def enc(a: np.ndarray, precision: float, vr: float) -> bytes:
        return fpzip.compress(np.ascontiguousarray(a), precision=int(precision), order="C")

    def dec(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
        return fpzip.decompress(blob, order="C")

    return Codec(
        "fpzip",
        "bits of precision kept (0 = lossless)",
        FPZIP_PRECISIONS,
        enc,
        dec,
        package=_version("fpzip"),
    )


def _zstd() -> Codec:
    import zstandard

    def enc(a: np.ndarray, level: float, vr: float) -> bytes:
        return zstandard.ZstdCompressor(level=int(level)).compress(np.ascontiguousarray(a).data)

    def dec(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
        raw = zstandard.ZstdDecompressor().decompress(blob, max_output_size=4 * int(np.prod(shape)))
        return np.frombuffer(raw, np.float32)

    return Codec(
        "zstd",
        "level (lossless)",
        ZSTD_LEVELS,
        enc,
        dec,
        package=_version("zstandard"),
        lossless=True,
    )


# --- sciinr ------------------------------------------------------------------------------


def sciinr_codec(
    psnr_targets: Sequence[float] = SCIINR_PSNR,
    device: str = "cpu",
    config_changes: dict[str, Any] | None = None,
) -> Codec:
    """sciinr through its public API, one point per target PSNR.

    Parameters
    ----------
    psnr_targets : sequence of float
        Target PSNR values (dB over the whole field).
    device : str, default: "cpu"
        ``fit.device``.
    config_changes : dict, optional
        More :meth:`sciinr.Config.replace` changes (``{"fit.max_seconds": 300}``).
    """
    import sciinr

    changes = {"fit.device": device, **(config_changes or {})}
    base = sciinr.Config().replace(**changes)

    def enc(a: np.ndarray, target: float, vr: float) -> bytes:
        return sciinr.compress(a, config=base.replace(psnr=float(target)))

    def dec(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
        return sciinr.decompress(blob, device=device)

    return Codec(
        "sciinr",
        "target PSNR (dB)",
        tuple(float(t) for t in psnr_targets),
        enc,
        dec,
        modes=("whole",),
        package=f"sciinr {sciinr.__version__}",
        squeeze=False,
        device=device,
    )


# --- registry ----------------------------------------------------------------------------

BASELINES: dict[str, tuple[Callable[[], Codec], str]] = {
    "sz3": (_sz3, "pysz"),
    "sz3-wasm": (_sz3_wasm, "numcodecs-wasm-sz3"),
    "zfp-accuracy": (_zfp_accuracy, "zfpy"),
    "zfp-rate": (_zfp_rate, "zfpy"),
    "tthresh": (_tthresh, "tthresh"),
    "tthresh-wasm": (_tthresh_wasm, "numcodecs-wasm-tthresh"),
    "sperr-wasm": (_sperr_wasm, "numcodecs-wasm-sperr"),
    "fpzip": (_fpzip, "fpzip"),
    "zstd": (_zstd, "zstandard"),
}


def load_codecs(names: Sequence[str]) -> tuple[list[Codec], list[str]]:
    """Build the named baselines; those whose package is missing are skipped.

    Returns
    -------
    (list of Codec, list of str)
        The codecs that load, and one message per codec skipped.
    """
    codecs: list[Codec] = []
    skipped: list[str] = []
    for name in names:
        if name not in BASELINES:
            raise KeyError(name)
        factory, package = BASELINES[name]
        try:
            codecs.append(factory())
        except Exception as exc:  # an import that fails for any reason skips the baseline
            if name == "tthresh":
                msg = f"{name} skipped: {exc}"
            elif isinstance(exc, ImportError) and package.replace("-", "_") in str(exc):
                msg = f"{name} skipped: {package} is not installed (pip install -e '.[bench]')"
            else:
                msg = (
                    f"{name} skipped: {package} failed to load ({type(exc).__name__}: {exc}); "
                    "see benchmarks/README.md"
                )
            logger.warning("%s", msg)
            skipped.append(msg)
    return codecs, skipped
