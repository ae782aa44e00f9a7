"""Error-bounded compression: sciinr (``--rel-error``) against SZ3 at the same max error.

For every dataset (or excerpt) and every bound E (a fraction of the value range), runs the
command line exactly as a user would::

    python -m sciinr.cli compress ORIGINAL -o OUT.sinr --rel-error E [fit options]
    python -m sciinr.cli verify ORIGINAL OUT.sinr --json --each-step

and compresses the same values with SZ3 (``pysz``, absolute bound ``E * range``), decoding
it to measure its max error. Excerpts are written as ``.npy`` files to ``--workdir`` first.
Prints a Markdown table and writes ``benchmarks/results/bounds.json``.

``--psnr P,...`` and ``--ratio R,...`` instead check the PSNR target (hit from above, within
0.5 dB) and the ratio target (within 5 %) with ``compress --psnr P`` / ``--ratio R``.

Usage::

    python benchmarks/bounds.py [--only NAME ...] [--bounds 1e-2,1e-3,1e-4]
        [--psnr 40] [--ratio 20] [--max-seconds 120] [--workdir /tmp/sciinr-bounds]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SCIINR_DATA", ROOT.parent / "shared" / "data"))
# name: (file, variable, excerpt as a numpy index string or None for the whole field)
DATASETS = {
    "vf_run01": ("vf_run01.h5", "density", "40:48"),
    "isabel": ("isabel_velmag.nc", "velocityMag", "0:4"),
    "colpex": ("small_theta_colpex.nc", "air_potential_temperature", None),
    "eraint_z": ("eraint_uvz.nc", "z", None),
    "eraint_u": ("eraint_uvz.nc", "u", None),
    "eraint_v": ("eraint_uvz.nc", "v", None),
    "combustion": ("combustion_chi.h5", "chi", None),
}


def original_file(name: str, workdir: Path) -> tuple[Path, str | None, np.ndarray]:
    """The file the CLI reads (an excerpt is saved as .npy), its variable, and its values."""
    sys.path.insert(0, str(ROOT))
    from sciinr.stages import read

    fname, var, excerpt = DATASETS[name]
    volume = read.read(DATA / fname, var=var)
    values = volume.data.reshape(volume.orig_shape)
    if excerpt is None:
        return DATA / fname, var, values
    index = tuple(slice(*[int(p) if p else None for p in s.split(":")]) for s in excerpt.split(","))
    values = np.ascontiguousarray(values[index])
    path = workdir / f"{name}_{excerpt.replace(':', '-').replace(',', '_')}.npy"
    np.save(path, values)
    return path, None, values


def run(cmd: list[str]) -> tuple[str, float]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    return done.stdout, seconds


def sz3(values: np.ndarray, bound: float) -> dict:
    from pysz import sz, szConfig, szErrorBoundMode

    conf = szConfig()
    conf.errorBoundMode = szErrorBoundMode.ABS
    conf.absErrorBound = bound
    x = np.ascontiguousarray(values, dtype=np.float32)
    t0 = time.perf_counter()
    comp, _ = sz.compress(x, conf)
    seconds = time.perf_counter() - t0
    out, _ = sz.decompress(comp, np.float32, x.shape)
    err = float(np.abs(out.astype(np.float64) - x).max())
    return {"ratio": x.nbytes / comp.nbytes, "max_error": err, "seconds": seconds}


def targets(results: dict, name: str, path: Path, var: str | None, args) -> None:
    """``--psnr P`` and ``--ratio R`` runs: did the file land on its target?"""
    jobs = [("psnr", float(p)) for p in (args.psnr or "").split(",") if p]
    jobs += [("ratio", float(r)) for r in (args.ratio or "").split(",") if r]
    for kind, target in jobs:
        out = args.workdir / f"{name}_{kind}{target:g}.sinr"
        compress = [sys.executable, "-m", "sciinr.cli", "compress", str(path), "-o", str(out)]
        compress += ["--var", var] if var else []
        compress += [f"--{kind}", f"{target:g}", "--max-seconds", f"{args.max_seconds:g}"]
        compress += ["--eval-every", "50", "--device", "cpu", "--overwrite", "-q"]
        _, enc_s = run(compress)
        verify = [sys.executable, "-m", "sciinr.cli", "verify", str(path), str(out)]
        verify += (["--var", var] if var else []) + ["--json", "--device", "cpu"]
        ver = json.loads(run(verify)[0])
        info = json.loads(run([sys.executable, "-m", "sciinr.cli", "info", str(out), "--json"])[0])
        got = ver["psnr"] if kind == "psnr" else ver["ratio"]
        hit = target <= got <= target + 0.5 if kind == "psnr" else abs(got / target - 1) <= 0.05
        res = info.get("residual") or {}
        row = {
            "dataset": name,
            kind: target,
            "got": got,
            "hit": hit,
            "psnr": ver["psnr"],
            "ratio": ver["ratio"],
            "network_psnr": res.get("network_psnr", info["psnr"]),
            "residual_bytes": res.get("residual_bytes", 0),
            "split": res.get("split"),
            "encode_s": enc_s,
            "commands": [" ".join(compress[2:]), " ".join(verify[2:])],
        }
        results.setdefault(kind, [])
        results[kind] = [
            r for r in results[kind] if not (r["dataset"] == name and r[kind] == target)
        ] + [row]
        print(
            f"| {name} | {kind} {target:g} | {got:.2f} | {'yes' if hit else 'NO'} "
            f"| PSNR {ver['psnr']:.2f}, ratio {ver['ratio']:.1f} "
            f"| networks {row['network_psnr']} dB, residual {row['residual_bytes']} B |",
            flush=True,
        )


def tables(results: dict) -> str:
    """Markdown tables of a results file (bounds, then PSNR and ratio targets)."""
    lines = [
        "| dataset (values) | E / range | sciinr max err / range | sciinr ratio | networks "
        "+ residual bytes | SZ3 max err / range | SZ3 ratio | sciinr / SZ3 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results.get("runs", []):
        s, z = r["sciinr"], r["sz3"]
        n = int(np.prod(r["shape"]))
        where = f"{r['dataset']} [{r['excerpt']}]" if r["excerpt"] else r["dataset"]
        split = "no networks" if s["split"] == 0 else f"split {s['split']}"
        lines.append(
            f"| {where} ({n / 1e6:.2f} M) | {r['rel_error']:g} | {s['max_error_rel']:.4g}"
            f"{'' if s['ok'] else ' FAILED'} | {s['ratio']:.1f} | {s['network_bytes']} + "
            f"{s['residual_bytes']} ({split}) | {z['max_error_rel']:.4g} | {z['ratio']:.1f} "
            f"| {s['ratio'] / z['ratio']:.2f} |"
        )
    for kind in ("psnr", "ratio"):
        if not results.get(kind):
            continue
        lines += [
            "",
            f"| dataset | --{kind} | got | hit | PSNR | ratio | networks alone (dB) "
            "| residual bytes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results[kind]:
            net = r["network_psnr"]
            lines.append(
                f"| {r['dataset']} | {r[kind]:g} | {r['got']:.2f} | {'yes' if r['hit'] else 'no'}"
                f" | {r['psnr']:.2f} | {r['ratio']:.1f} | "
                f"{f'{net:.2f}' if isinstance(net, float) else net} | {r['residual_bytes']} |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=sorted(DATASETS), help="datasets to run")
    ap.add_argument("--bounds", default="1e-2,1e-3,1e-4", help="E as fractions of the range")
    ap.add_argument("--psnr", help="check these PSNR targets instead of bounds")
    ap.add_argument("--ratio", help="check these ratio targets instead of bounds")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="training budget per file")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sciinr-bounds"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bounds.json")
    ap.add_argument("--table", action="store_true", help="only print the tables of --out")
    args = ap.parse_args()
    if args.table:
        print(tables(json.loads(args.out.read_text())))
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    results["machine"] = f"{platform.node()} {platform.processor() or platform.machine()}"
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True)
    results["git"] = rev.stdout.decode().strip()
    for name in args.only or list(DATASETS):
        path, var, values = original_file(name, args.workdir)
        if args.psnr or args.ratio:
            targets(results, name, path, var, args)
            args.out.write_text(json.dumps(results, indent=1))
            continue
        vr = float(values.max() - values.min())
        for rel in (float(b) for b in args.bounds.split(",")):
            out = args.workdir / f"{name}_{rel:g}.sinr"
            compress = [sys.executable, "-m", "sciinr.cli", "compress", str(path), "-o", str(out)]
            compress += ["--var", var] if var else []
            compress += ["--rel-error", f"{rel:g}", "--max-seconds", f"{args.max_seconds:g}"]
            compress += ["--eval-every", "50", "--device", "cpu", "--overwrite", "-q"]
            _, enc_s = run(compress)
            verify = [sys.executable, "-m", "sciinr.cli", "verify", str(path), str(out)]
            verify += (["--var", var] if var else []) + ["--json", "--each-step", "--device", "cpu"]
            text, _ = run(verify)
            ver = json.loads(text)
            info, _ = run([sys.executable, "-m", "sciinr.cli", "info", str(out), "--json"])
            res = json.loads(info)["residual"]
            base = sz3(values, rel * vr)
            row = {
                "dataset": name,
                "shape": list(values.shape),
                "excerpt": DATASETS[name][2],
                "rel_error": rel,
                "sciinr": {
                    "ratio": ver["ratio"],
                    "max_error_rel": ver["max_error_relative"],
                    "step_max_error_rel": (ver["steps"] or {}).get("max_error", ver["max_error"])
                    / vr,
                    "psnr": ver["psnr"],
                    "ok": not ver["failures"],
                    "network_bytes": res["network_bytes"],
                    "residual_bytes": res["residual_bytes"],
                    "split": res["split"],
                    "exact_voxels": res["exact_voxels"],
                    "encode_s": enc_s,
                    "decode_s": ver["seconds"],
                },
                "sz3": {**base, "max_error_rel": base["max_error"] / vr},
                "commands": [" ".join(compress[2:]), " ".join(verify[2:])],
            }
            results["runs"] = [
                r for r in results["runs"] if not (r["dataset"] == name and r["rel_error"] == rel)
            ] + [row]
            args.out.write_text(json.dumps(results, indent=1))
            s = row["sciinr"]
            print(
                f"| {name} | {rel:g} | {s['max_error_rel']:.4g} | {s['ratio']:.2f} "
                f"| {s['split']} | {s['network_bytes']} + {s['residual_bytes']} "
                f"| {row['sz3']['max_error_rel']:.4g} | {row['sz3']['ratio']:.2f} "
                f"| {'ok' if s['ok'] else 'FAILED'} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
