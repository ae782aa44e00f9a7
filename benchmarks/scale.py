"""Scale: encode time, peak memory, size and PSNR of fields 1x, 4x and 16x vf_run01's size.

Builds chunked HDF5 fields (chunk = one time step, uncompressed) from ``vf_run01.h5`` ``density``
tiled in time: copy ``i`` of the 99 steps is shifted by ``3 i`` voxels along x and scaled by
``1 + 0.002 i`` (small perturbations, so no copy repeats another exactly). 16x is 1584 x 64^3
float32 = 1.66 GB. Every run is its own ``sciinr compress`` child process, timed, with its peak
RSS from ``resource.getrusage(RUSAGE_CHILDREN)`` of a fresh wrapper process (the largest single
process: for a LocalCluster, the largest of the driver and its workers):

    python benchmarks/scale.py                      # sizes 1,4,16; single, workers 1 and 2,
                                                    # and --memory-limit 1GB for the largest
    python benchmarks/scale.py --sizes 1 --modes single,workers2
    python benchmarks/scale.py --quick              # smoke test: a tiny crop, seconds

Every run uses ``--base none`` (``--base``): the streamed pipeline fits block networks only, so
the rows compare the same representation. Modes: ``single`` (the in-memory pipeline),
``workers1`` / ``workers2`` (``--workers N``, a dask LocalCluster of N processes), ``limit``
(``--memory-limit``, serial, streamed). The PSNR
is the one the compressor measured over the whole decoded field (stored in the header); add
``--verify`` to check it with ``sciinr verify`` (decodes the whole field: memory!).

Writes ``benchmarks/results/scale/scale.json`` (``--out``) and prints a Markdown table with the
encode cost per voxel, from which docs/scale.md extrapolates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "vf_run01.h5"
OUT = Path(__file__).resolve().parent / "results" / "scale" / "scale.json"

WRAPPER = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.run(sys.argv[1:]).returncode
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall_s": wall, "peak_rss_mb": ru.ru_maxrss / 1024,
                  "cpu_s": ru.ru_utime + ru.ru_stime}))
"""


def build(src: Path, copies: int, dest: Path, crop: int | None) -> tuple[int, ...]:
    """Write ``copies`` perturbed copies of the source field, one time step at a time."""
    with h5py.File(src, "r") as fh:
        ds = fh["density"]
        steps = ds.shape[0] if crop is None else min(crop, ds.shape[0])
        side = ds.shape[1:] if crop is None else tuple(min(crop * 4, n) for n in ds.shape[1:])
        shape = (steps * copies, *side)
        with h5py.File(dest, "w") as out:
            dset = out.create_dataset(
                "density", shape=shape, dtype="f4", chunks=(1, *side), track_order=True
            )
            for i in range(copies):
                for t in range(steps):
                    step = ds[t][tuple(slice(0, n) for n in side)]
                    step = np.roll(step, 3 * i, axis=-1) * np.float32(1 + 0.002 * i)
                    dset[i * steps + t] = step
    return shape


def run(cmd: list[str], timeout: float) -> dict:
    wrapped = [sys.executable, "-c", WRAPPER, *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(wrapped, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"rc": proc.returncode, "error": proc.stderr[-2000:]}
    result = json.loads(lines[-1])
    if result["rc"]:
        result["error"] = proc.stderr[-2000:]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--sizes", default="1,4,16", help="copies of the field (default: 1,4,16)")
    p.add_argument("--modes", default="single,workers1,workers2,limit")
    p.add_argument("--memory-limit", default="1GB", help="for mode limit (default: 1GB)")
    p.add_argument("--limit-sizes", default=None, help="sizes run in mode limit (default: largest)")
    p.add_argument("--psnr", type=float, default=40.0)
    p.add_argument(
        "--base",
        default="none",
        help="--base of every run (default: none, block networks only, as the streamed "
        "pipeline; tucker: the in-memory default)",
    )
    p.add_argument(
        "--extra",
        default="--max-seconds 36000",
        help="more sciinr compress flags (default: '--max-seconds 36000': fits stop at the "
        "target, not at the time budget, which applies to each group of a streamed run)",
    )
    p.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per run")
    p.add_argument("--workdir", type=Path, default=None, help="where the fields go (default: tmp)")
    p.add_argument("--quick", action="store_true", help="smoke test: 4 steps of a 16^3 crop")
    p.add_argument("--verify", action="store_true", help="also run sciinr verify on each file")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)

    sizes = [int(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    limit_sizes = (
        [int(s) for s in args.limit_sizes.split(",")] if args.limit_sizes else [max(sizes)]
    )
    crop = 4 if args.quick else None
    extra = args.extra.split()
    if args.quick:
        extra += ["--block", "2,8,8,8", "--width", "16", "--depth", "1", "--max-steps", "300"]
        extra += ["--prune-steps", "1", "--recovery-steps", "50", "--finetune-steps", "50"]
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for k in sizes:
            field = Path(tmp) / f"vf_x{k}.h5"
            shape = build(args.data, k, field, crop)
            n_values = int(np.prod(shape))
            print(f"built {field.name} {shape} ({4 * n_values / 1e9:.2f} GB)", file=sys.stderr)
            for mode in modes:
                if mode == "limit" and k not in limit_sizes:
                    continue
                out = Path(tmp) / f"vf_x{k}_{mode}.sinr"
                cmd = [sys.executable, "-m", "sciinr.cli", "compress", str(field), "-o", str(out)]
                cmd += ["--psnr", str(args.psnr), "--base", args.base, "-q", *extra]
                if mode.startswith("workers"):
                    cmd += ["--workers", mode.removeprefix("workers")]
                elif mode == "limit":
                    cmd += ["--memory-limit", args.memory_limit]
                elif mode != "single":
                    raise SystemExit(f"unknown mode {mode!r}")
                load = os.getloadavg()[0]
                res = run(cmd, args.timeout)
                row = {"copies": k, "shape": list(shape), "n_values": n_values, "mode": mode}
                row.update(res, load_before=load, load_after=os.getloadavg()[0])
                if res.get("rc") == 0:
                    sys.path.insert(0, str(ROOT))
                    import sciinr

                    info = sciinr.info(out)
                    row.update(
                        bytes=info["bytes"],
                        ratio=info["ratio"],
                        psnr=info["psnr"],
                        networks=info["networks"],
                        us_per_value=1e6 * res["wall_s"] / n_values,
                    )
                    if args.verify:
                        v = run(
                            [sys.executable, "-m", "sciinr.cli", "verify", str(field), str(out)],
                            args.timeout,
                        )
                        row["verify_rc"] = v.get("rc")
                    out.unlink()
                print(json.dumps(row), file=sys.stderr)
                rows.append(row)
            field.unlink()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": " ".join(["python", "benchmarks/scale.py", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "rows": rows,
    }
    args.out.write_text(json.dumps(meta, indent=1))
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    head = (
        "| copies | values | mode | encode s | CPU s | peak RSS MB | bytes | ratio | PSNR dB "
        "| µs/value |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        if r.get("rc") != 0:
            lines.append(
                f"| {r['copies']} | {r['n_values']} | {r['mode']} | failed (rc "
                f"{r.get('rc')}) | | {r.get('peak_rss_mb', 0):.0f} | | | | |"
            )
            continue
        lines.append(
            f"| {r['copies']} | {r['n_values']} | {r['mode']} | {r['wall_s']:.1f} | "
            f"{r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['bytes']} | {r['ratio']:.1f} | "
            f"{r['psnr']:.2f} | {r['us_per_value']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
