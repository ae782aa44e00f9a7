"""Ablation of the shrink stage: what each step buys, on real viscous-fingering data.

Each row runs the real network stages (:func:`sciinr.api.encode_networks`) under one
configuration of the shrink stage; the fit (same seed) is the same in every row:

    fp16 weights (shrink.bits 0, no pruning) -> + pruning -> + weight sharing (no
    fine-tuning) -> + centroid fine-tuning (the default; integers coded by ANS or zstd,
    whichever is smaller per stream)

Every row: file bytes, ratio, bits/value, PSNR measured after decoding the file. Then SZ3 (pysz)
at the same PSNR on the same array, when pysz is installed.

    python benchmarks/ablation.py --steps 40:48 --psnr 40
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np

import sciinr
from sciinr import api
from sciinr.metrics import bits_per_value, psnr, ratio
from sciinr.stages import read

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vf_run01.h5"


def sz3_at_psnr(field: np.ndarray, target: float) -> tuple[int, float] | None:
    """Bytes and PSNR of SZ3 (absolute error bound found by bisection) reaching ``target``."""
    try:
        from pysz import sz, szConfig, szErrorBoundMode
    except ImportError:
        print("pysz not installed: SZ3 skipped (pip install pysz)")
        return None
    vr = float(field.max() - field.min())
    lo, hi = 1e-7 * vr, 0.5 * vr
    best = None
    for _ in range(30):
        eb = np.sqrt(lo * hi)
        cfg = szConfig(field.shape)
        cfg.errorBoundMode = szErrorBoundMode.ABS
        cfg.absErrorBound = eb
        comp, _ = sz.compress(field, cfg)
        dec, _ = sz.decompress(comp, np.float32, field.shape)
        p = psnr(field, dec)
        if p >= target:
            best = (comp.nbytes, p)
            lo = eb
        else:
            hi = eb
        if hi / lo < 1.02:
            break
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--steps", default="40:48", help="time steps a:b of vf_run01 density")
    ap.add_argument("--psnr", type=float, default=40.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ablation")
    args = ap.parse_args()
    a, b = (int(x) for x in args.steps.split(":"))
    with h5py.File(args.data) as fh:
        field = fh["density"][a:b]
    cfg = sciinr.Config(psnr=args.psnr).replace(**{"fit.device": "cpu"})
    volume = read.read(field)
    s = cfg.shrink
    # each row is the real pipeline under one configuration; the fit (same seed) is the same
    variants = [
        ("fp16 weights (foundation)", {"shrink.prune": 0.0, "shrink.bits": 0}),
        ("+ pruning", {"shrink.bits": 0}),
        (
            "+ weight sharing, no fine-tuning",
            {"shrink.finetune_steps": 0, "shrink.max_bits": s.bits},
        ),
        ("+ centroid fine-tuning (the default)", {}),
    ]
    rows = []
    fit_seconds = math.nan
    for name, changes in variants:
        t1 = time.perf_counter()
        net = api.encode_networks(volume, cfg.replace(**changes))
        seconds = time.perf_counter() - t1
        fit_seconds = seconds if math.isnan(fit_seconds) else fit_seconds
        rows.append(
            {
                "step": name,
                "bytes": net.n_bytes,
                "ratio": ratio(field.size, net.n_bytes),
                "bits_per_value": bits_per_value(field.size, net.n_bytes),
                "psnr": net.psnr,
                "sparsity": net.meta.get("sparsity", 0.0),
                "seconds": seconds,
            }
        )
        print(
            f"{name:<40}{net.n_bytes:>9} B  ratio {rows[-1]['ratio']:8.1f}  "
            f"{rows[-1]['bits_per_value']:.4f} b/v  PSNR {net.psnr:6.2f} dB"
        )
    sz3 = sz3_at_psnr(field, rows[-1]["psnr"])
    if sz3:
        print(
            f"{'SZ3 (pysz) at the same PSNR':<36}{sz3[0]:>9} B  ratio "
            f"{ratio(field.size, sz3[0]):8.1f}  PSNR {sz3[1]:6.2f} dB"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    record = {
        "command": f"python benchmarks/ablation.py --steps {args.steps} --psnr {args.psnr}",
        "git": rev,
        "machine": f"{platform.machine()} {platform.processor()} nproc=2",
        "date": time.strftime("%Y-%m-%d"),
        "shape": list(field.shape),
        "fit_seconds": fit_seconds,
        "rows": rows,
        "sz3": None
        if not sz3
        else {"bytes": sz3[0], "psnr": sz3[1], "ratio": ratio(field.size, sz3[0])},
    }
    path = args.out / f"vf_{a}_{b}_psnr{args.psnr:g}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
