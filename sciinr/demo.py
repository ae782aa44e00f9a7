"""``sciinr demo``: the main job on the real excerpt that ships with the package."""

from __future__ import annotations

import hashlib
import tempfile
import time
from importlib import resources
from pathlib import Path

from . import api
from .config import Config
from .errors import InputError
from .metrics import psnr

EXCERPT = "vf_excerpt.h5"
EXCERPT_VAR = "density"
EXCERPT_SHA256 = "fbb236f95d9f5af8dbd884e131613635099d35bf080588fd6b0f3eb2e3c96995"


def excerpt_path() -> Path:
    """Path of the bundled excerpt, checked against its sha256."""
    path = Path(str(resources.files("sciinr") / "data" / EXCERPT))
    if not path.exists():
        raise InputError(f"{path}: bundled demo excerpt is missing (reinstall sciinr)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != EXCERPT_SHA256:
        raise InputError(f"{path}: sha256 {digest[:12]}… differs from the bundled excerpt's")
    return path


def run_demo(psnr_db: float = 40.0, device: str = "auto", progress: bool = True) -> int:
    """Compress, decompress and report; prints to stdout (this is a CLI command)."""
    src = excerpt_path()
    cfg = Config(psnr=psnr_db).replace(**{"fit.device": device})
    volume = api.read.read(src, var=EXCERPT_VAR)
    print(
        f"demo: {src.name} variable {EXCERPT_VAR!r} {volume.orig_shape} float32 "
        f"({volume.data.nbytes / 1e6:.1f} MB), target {psnr_db:g} dB, device {device}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo.sinr"
        blob, report = api.compress_volume(volume, cfg, progress=progress)
        api.write.write_bytes(out, blob)
        t0 = time.perf_counter()
        decoded = api.decompress(out, device=device)
        seconds = time.perf_counter() - t0
    measured = psnr(volume.data.reshape(volume.orig_shape), decoded)
    print(f"{'ratio':<16}{report.ratio:.1f}x  ({report.n_bytes} bytes)")
    print(f"{'PSNR':<16}{measured:.2f} dB (measured after decompression)")
    print(f"{'bits/value':<16}{report.bits_per_value:.4f}")
    print(f"{'encode':<16}{report.seconds:.1f} s")
    print(f"{'decode':<16}{seconds:.2f} s")
    return 0
