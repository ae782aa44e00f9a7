"""numcodecs codec ``"sciinr"``: each chunk becomes one self-describing ``.sinr`` stream.

Registered through the ``numcodecs.codecs`` entry point, so ``numcodecs.get_codec({"id":
"sciinr", ...})`` finds it once sciinr is installed. Needs the ``zarr`` extra (numcodecs).

Examples
--------
>>> import numpy as np, zarr
>>> from sciinr.codecs import Sinr
>>> z = zarr.create_array(  # doctest: +SKIP
...     "field.zarr", shape=(12, 25, 125, 125), chunks=(4, 25, 125, 125), dtype="f4",
...     zarr_format=2, compressors=Sinr(psnr=45))
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numcodecs.abc import Codec
from numcodecs.compat import (
    ensure_bytes,
    ensure_contiguous_ndarray,
    ensure_ndarray,
    ndarray_copy,
)

from . import api
from .config import Config
from .errors import ConfigError, InputError


class Sinr(Codec):
    """Lossy codec for float32/float64 chunks of 2 to 4 dimensions (time first).

    Parameters
    ----------
    psnr : float, default: 40
        Target PSNR in dB over each chunk.
    max_error : float, optional
        Guarantee ``|original - decoded| <= max_error`` at every value of each chunk.
    config : dict, optional
        Other :class:`sciinr.Config` settings as dotted names, e.g.
        ``{"fit.device": "cpu", "fit.max_seconds": 30.0}`` (JSON values).

    Notes
    -----
    Decoding needs no setting: every chunk's bytes describe their shape and dtype. A chunk
    must hold finite values; zarr pads edge chunks with the fill value, so give the array a
    finite ``fill_value`` (0 by default).
    """

    codec_id = "sciinr"

    def __init__(
        self,
        psnr: float = 40.0,
        max_error: float | None = None,
        config: dict[str, Any] | None = None,
    ):
        self.psnr = float(psnr)
        self.max_error = None if max_error is None else float(max_error)
        # JSON values (tuples as lists), so the config survives a JSON round trip unchanged
        self.config = {
            str(k): list(v) if isinstance(v, tuple | list) else v for k, v in (config or {}).items()
        }
        self._cfg = self._build()  # invalid settings fail here, not on the first chunk

    def _build(self) -> Config:
        try:
            changes = {k: tuple(v) if isinstance(v, list) else v for k, v in self.config.items()}
            cfg = Config().replace(**changes)
            cfg = cfg.replace(psnr=self.psnr)
            if self.max_error is not None:
                cfg = cfg.replace(**{"bound.max_error": self.max_error})
        except (TypeError, KeyError) as exc:
            raise ConfigError(f"sciinr codec: bad config {self.config!r} ({exc})") from None
        return cfg

    def encode(self, buf: Any) -> bytes:
        """Compress one chunk (an array of 2 to 4 dimensions) to ``.sinr`` bytes."""
        arr = ensure_ndarray(buf)
        if arr.dtype == object:  # numcodecs' own refusal (TypeError), as for its codecs
            ensure_contiguous_ndarray(arr)
        if arr.dtype not in (np.float32, np.float64):
            raise InputError(
                f"sciinr codec: chunk of dtype {arr.dtype}; sciinr compresses float32 or float64"
            )
        if not 2 <= arr.ndim <= 4:
            raise InputError(
                f"sciinr codec: chunk of {arr.ndim} dimensions {arr.shape}; give the array "
                "2 to 4 dimensions (time first), or use the codec as a filter on such chunks"
            )
        field = np.ascontiguousarray(arr)
        return bytes(api.compress(field, config=self._cfg))

    def decode(self, buf: Any, out: Any = None) -> Any:
        """Decode ``.sinr`` bytes; into ``out`` when given (any array of as many bytes)."""
        if out is not None and ensure_ndarray(out).dtype == object:
            ensure_contiguous_ndarray(out)  # numcodecs refuses object buffers (TypeError)
        decoded = api.decompress(ensure_bytes(buf))
        if out is not None:
            return ndarray_copy(decoded, out)
        return decoded

    def get_config(self) -> dict[str, Any]:
        """``{"id": "sciinr", "psnr": ..., "max_error": ..., "config": {...}}`` (JSON values)."""
        return {
            "id": self.codec_id,
            "psnr": self.psnr,
            "max_error": self.max_error,
            "config": dict(self.config),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Sinr:
        config = {k: v for k, v in config.items() if k != "id"}
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sinr) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((self.psnr, self.max_error, tuple(sorted(map(str, self.config.items())))))

    def __repr__(self) -> str:
        parts = [f"psnr={self.psnr!r}"]
        if self.max_error is not None:
            parts.append(f"max_error={self.max_error!r}")
        if self.config:
            parts.append(f"config={self.config!r}")
        return f"Sinr({', '.join(parts)})"
