"""The rate-distortion sweep: every codec, every knob value, every mode, on one array.

Each :class:`Point` is measured the same way whatever the codec: bytes summed over the
pieces (one per time step in ``step`` mode, one in ``whole`` mode), PSNR and maximum error
over the whole field with the value range of the original (:mod:`sciinr.metrics`), wall
seconds to encode and to decode all pieces.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .. import metrics
from .codecs import Codec, Unsupported

logger = logging.getLogger(__name__)

MAX_FAILURES_IN_A_ROW = 2  # a (codec, mode) line stops after this many failed points


@dataclass(frozen=True)
class Point:
    """One codec at one knob value in one mode."""

    codec: str
    mode: str  # "step" or "whole"
    knob: str
    setting: float
    n_values: int
    bytes: int
    psnr: float  # dB; inf when lossless
    max_abs_error_over_range: float
    encode_s: float
    decode_s: float
    device: str

    @property
    def ratio(self) -> float:
        return metrics.ratio(self.n_values, self.bytes)

    @property
    def bits_per_value(self) -> float:
        return metrics.bits_per_value(self.n_values, self.bytes)

    @property
    def encode_mb_s(self) -> float:
        return 4e-6 * self.n_values / max(self.encode_s, 1e-9)

    @property
    def decode_mb_s(self) -> float:
        return 4e-6 * self.n_values / max(self.decode_s, 1e-9)

    @property
    def label(self) -> str:
        return f"{self.codec} ({self.mode})"

    def row(self) -> dict[str, object]:
        """A flat dict for CSV/JSON (derived columns included)."""
        d: dict[str, object] = asdict(self)
        d.update(
            ratio=self.ratio,
            bits_per_value=self.bits_per_value,
            encode_MB_s=self.encode_mb_s,
            decode_MB_s=self.decode_mb_s,
        )
        return d


def pieces(data: np.ndarray, mode: str, squeeze: bool) -> list[np.ndarray]:
    """The arrays a codec is called on: each time step (``step``) or all of it (``whole``)."""
    parts = list(data) if mode == "step" else [data]
    if squeeze:
        parts = [p.reshape([s for s in p.shape if s > 1] or [1]) for p in parts]
    return [np.ascontiguousarray(p) for p in parts]


def modes_for(codec: Codec, data: np.ndarray) -> list[str]:
    """Modes worth running: ``whole`` equals ``step`` when there is one time step."""
    modes = list(codec.modes)
    if data.shape[0] == 1 and "step" in modes and "whole" in modes:
        modes.remove("whole")
    return modes


def measure(codec: Codec, data: np.ndarray, mode: str, value: float) -> Point:
    """Encode and decode ``data`` (``(T, Z, Y, X)`` float32) once; return the measured point.

    Raises
    ------
    Unsupported
        The codec cannot use this knob value on these pieces.
    Exception
        Whatever the codec raised while encoding or decoding.
    """
    lo, hi = float(data.min()), float(data.max())
    value_range = hi - lo
    parts = pieces(data, mode, codec.squeeze)
    t0 = time.perf_counter()
    blobs = [codec.encode(p, value, value_range) for p in parts]
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    decoded = [codec.decode(b, p.shape) for b, p in zip(blobs, parts, strict=True)]
    decode_s = time.perf_counter() - t0
    recon = np.concatenate([d.reshape(-1) for d in decoded]).reshape(data.shape)
    err = float(np.max(np.abs(recon.astype(np.float64) - data)))
    return Point(
        codec=codec.name,
        mode=mode,
        knob=codec.knob,
        setting=float(value),
        n_values=int(data.size),
        bytes=sum(len(b) for b in blobs),
        psnr=metrics.psnr(data, recon),
        max_abs_error_over_range=err / value_range if value_range > 0 else math.inf,
        encode_s=encode_s,
        decode_s=decode_s,
        device=codec.device,
    )


def sweep(
    data: np.ndarray,
    codecs: Sequence[Codec],
    on_point: Callable[[Point], None] | None = None,
) -> tuple[list[Point], list[str]]:
    """Run every codec over its knob values and modes on ``data``.

    Parameters
    ----------
    data : numpy.ndarray
        ``(T, Z, Y, X)`` float32, the same array for every codec.
    codecs : sequence of Codec
        What to run, in order.
    on_point : callable, optional
        Called with each point as soon as it is measured (progress output).

    Returns
    -------
    (list of Point, list of str)
        The measured points, and one message per point skipped or failed.
    """
    if data.ndim != 4:
        raise ValueError(f"sweep takes a (T, Z, Y, X) array, got shape {data.shape}")
    data = np.ascontiguousarray(data, dtype=np.float32)
    points: list[Point] = []
    notes: list[str] = []
    for codec in codecs:
        for mode in modes_for(codec, data):
            failures = 0
            for i, value in enumerate(codec.values):
                where = f"{codec.name} ({mode}) at {codec.knob} = {value:g}"
                if failures >= MAX_FAILURES_IN_A_ROW:
                    rest = ", ".join(f"{v:g}" for v in codec.values[i:])
                    notes.append(
                        f"{codec.name} ({mode}): not run at {rest} after {failures} failures "
                        "in a row"
                    )
                    break
                try:
                    point = measure(codec, data, mode, value)
                except Unsupported as exc:
                    notes.append(f"{where}: skipped ({exc})")
                    continue
                except Exception as exc:  # a baseline's bug must not end the whole run
                    failures += 1
                    msg = str(exc).splitlines()[0] if str(exc) else ""
                    notes.append(f"{where}: failed ({type(exc).__name__}: {msg[:160]})")
                    logger.warning("%s", notes[-1])
                    continue
                failures = 0
                points.append(point)
                if on_point is not None:
                    on_point(point)
    return points, notes
