"""Speed of sciinr on the viscous-fingering field: encode, train, decode, one time step, memory.

Each size runs in its own subprocess (so peak memory is per size), on the first T time steps of
``vf_run01.h5`` ``density`` (64^3 per step):

    python benchmarks/speed.py                         # T = 4, 16, 40 at 40 dB
    python benchmarks/speed.py --steps 99 --psnr 40.6  # the ECNR comparison (PEERS.md)
    python benchmarks/speed.py --threads 1             # one core (steadier on a shared box)
    python benchmarks/speed.py --profile 40            # torch.profiler op table: train, decode
    python benchmarks/speed.py --fit-only --sciinr-root /tmp/old   # fit stage of another checkout

Per size it reports: encode seconds (the whole ``compress`` pipeline), fit steps and training
samples/s of the first ``fit`` call, steady-state training samples/s of one batched
forward+backward+Adam step, full decode seconds and voxels/s, ``sciinr.open(path)[t]`` for one
time step (first call, which also unpacks the model, and the median of later calls), peak RSS,
PSNR and ratio, and the load average before and after (other jobs share the cores). Wall and
process CPU seconds are both given: on a busy machine CPU seconds are the steadier measure.

Writes ``benchmarks/results/vf_run01/speed.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "vf_run01.h5"
OUT = Path(__file__).resolve().parent / "results" / "vf_run01" / "speed.json"

# ECNR, official code, 99x64^3 viscous fingering, 2 CPU cores (../shared/PEERS.md)
ECNR = {
    "steps": 99,
    "encode_s": 27 * 60,
    "train_msps": 0.9,
    "decode_s": 4.8,
    "decode_mvps": 22.0,
    "peak_mb": 2000,
    "psnr": 40.6,
    "ratio": 166,
}


class _FitLog(logging.Handler):
    """Collects the numbers of every ``fit: ...`` summary line of sciinr.stages.fit."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.calls: list[tuple] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("fit:"):
            self.calls.append(tuple(record.args))


def _timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def steady_training(volume, cfg, n_steps: int = 20, profile: bool = False) -> float:
    """Samples/s of the batched training step (forward, backward, Adam) after warm-up."""
    import torch

    from sciinr.metrics import rmse_for_psnr
    from sciinr.nets import BatchedSiren
    from sciinr.stages import cluster, fit, partition

    lo, hi = volume.value_range
    blocks = partition.partition(volume, cfg.partition, rmse_for_psnr(cfg.psnr, hi - lo))
    assignment = cluster.cluster(blocks, cfg.cluster, seed=cfg.seed)
    if blocks.n_fit == 0:
        return float("nan")
    device = fit.resolve_device(cfg.fit.device)  # imported there from sciinr.nets
    shape = fit.net_shape(cfg.fit, assignment.n_nets, blocks.n_fit)
    net = BatchedSiren(shape, torch.Generator().manual_seed(0)).to(device)
    evaluator = fit._Evaluator(blocks, device, cfg.fit.width)
    trainer = fit._Trainer(net, shape, blocks, assignment, evaluator, cfg.fit, device, 0)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.fit.lr)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        trainer.step()
        opt.step()

    for _ in range(3):
        step()
    if profile:
        _profile(step, n_steps, f"training step, {assignment.n_nets} networks")
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_step = assignment.n_nets * trainer.per * trainer.s
    return n_steps * per_step / (time.perf_counter() - t)


def _profile(fn, repeat: int, what: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeat):
            fn()
    print(f"\n{what} x {repeat}:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))


def profile_case(n_steps: int, psnr_db: float, sets: list[str]) -> None:
    """Print torch.profiler tables of the training step and of a full decode."""
    import sciinr
    from sciinr.stages import read

    with h5py.File(DATA) as fh:
        field = fh["density"][:n_steps]
    cfg = sciinr.Config().replace(psnr=psnr_db, **_changes(sets))
    volume = read.read(field, dims=("time", "z", "y", "x"))
    steady_training(volume, cfg, n_steps=10, profile=True)
    blob = sciinr.compress(field, config=cfg)
    arr = sciinr.open(blob, device=cfg.fit.device)
    _profile(lambda: arr[...], 1, "full decode")
    _profile(lambda: arr[n_steps // 2], 5, "one time step")


def _changes(sets: list[str]) -> dict:
    changes = {}
    for item in sets:
        key, value = item.split("=", 1)
        changes[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    return changes


def run_case(n_steps: int, psnr_db: float, sets: list[str]) -> dict:
    """Measure one size in this process; returns a JSON-able dict."""
    import sciinr
    from sciinr import api
    from sciinr.metrics import psnr
    from sciinr.stages import read

    load0 = os.getloadavg()
    with h5py.File(DATA) as fh:
        field = fh["density"][:n_steps]
    cfg = sciinr.Config().replace(psnr=psnr_db, **_changes(sets))
    volume = read.read(field, dims=("time", "z", "y", "x"))

    log = _FitLog()
    fit_logger = logging.getLogger("sciinr.stages.fit")
    fit_logger.addHandler(log)
    fit_logger.setLevel(logging.INFO)
    (blob, report), enc_wall, enc_cpu = _timed(lambda: api.compress_volume(volume, cfg))
    fit_logger.removeHandler(log)

    decoded, dec_wall, dec_cpu = _timed(lambda: sciinr.decompress(blob, device=cfg.fit.device))
    reached = psnr(field, decoded)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vf.sinr"
        path.write_bytes(blob)
        arr = sciinr.open(path, device=cfg.fit.device)
        _, first, _ = _timed(lambda: arr[n_steps // 2])
        warm = [_timed(lambda k=k: arr[(n_steps // 2 + 7 * k) % n_steps])[1] for k in range(1, 8)]

    train_sps = steady_training(volume, cfg)
    first_fit = log.calls[0] if log.calls else (0, 0, 0.0, float("nan"), float("nan"))
    return {
        "steps": n_steps,
        "voxels": int(field.size),
        "target_psnr": psnr_db,
        "psnr": reached,
        "ratio": field.size * 4 / len(blob),
        "bytes": len(blob),
        "n_nets": report.n_nets,
        "fitted_blocks": report.n_blocks - report.n_trivial,
        "encode_wall_s": enc_wall,
        "encode_cpu_s": enc_cpu,
        "fit_calls": len(log.calls),
        "fit_steps": first_fit[1],
        "fit_s": first_fit[2],
        "fit_msps": first_fit[4],
        "fit_total_s": sum(c[2] for c in log.calls),
        "train_msps": train_sps / 1e6,
        "decode_wall_s": dec_wall,
        "decode_cpu_s": dec_cpu,
        "decode_mvps": field.size / dec_wall / 1e6,
        "step_first_ms": first * 1e3,
        "step_warm_ms": statistics.median(warm) * 1e3,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_before": load0[0],
        "load_after": os.getloadavg()[0],
    }


def fit_only_case(n_steps: int, psnr_db: float, sets: list[str]) -> dict:
    """Time the fit stage alone to the target (public stage functions only, so that any
    checkout of sciinr can be measured with ``--sciinr-root``)."""
    import sciinr
    from sciinr.metrics import rmse_for_psnr
    from sciinr.stages import cluster, fit, partition, read

    load0 = os.getloadavg()
    with h5py.File(DATA) as fh:
        field = fh["density"][:n_steps]
    cfg = sciinr.Config().replace(psnr=psnr_db, **_changes(sets))
    volume = read.read(field)
    lo, hi = volume.value_range
    blocks = partition.partition(volume, cfg.partition, rmse_for_psnr(psnr_db, hi - lo))
    assignment = cluster.cluster(blocks, cfg.cluster, seed=cfg.seed)
    fitted, wall, cpu = _timed(
        lambda: fit.fit(
            blocks, assignment, cfg.fit, target_psnr=psnr_db, value_range=hi - lo, seed=cfg.seed
        )
    )
    return {
        "steps": n_steps,
        "n_nets": assignment.n_nets,
        "fit_steps": fitted.steps,
        "psnr": fitted.psnr,
        "wall_s": wall,
        "cpu_s": cpu,
        "load_before": load0[0],
        "load_after": os.getloadavg()[0],
    }


def _fit_row(r: dict) -> str:
    return (
        f"| {r['steps']} | {r['n_nets']} | {r['fit_steps']} | {r['wall_s']:.1f} "
        f"| {r['cpu_s']:.1f} | {r['psnr']:.2f} | {r['load_before']:.1f} / {r['load_after']:.1f} |"
    )


def _row(r: dict) -> str:
    return (
        f"| {r['steps']} | {r['voxels'] / 1e6:.1f} M | {r['fitted_blocks']} / {r['n_nets']} "
        f"| {r['encode_wall_s']:.1f} ({r['encode_cpu_s']:.1f}) | {r['fit_steps']} "
        f"| {r['fit_msps']:.2f} | {r['train_msps']:.2f} "
        f"| {r['decode_wall_s']:.2f} ({r['decode_cpu_s']:.2f}) | {r['decode_mvps']:.1f} "
        f"| {r['step_warm_ms']:.0f} ({r['step_first_ms']:.0f}) | {r['peak_mb']:.0f} "
        f"| {r['psnr']:.2f} | {r['ratio']:.0f} | {r['load_before']:.1f} / {r['load_after']:.1f} |"
    )


HEADER = (
    "| T | voxels | fitted blocks / nets | encode s wall (cpu) | fit steps "
    "| fit M samples/s | train M samples/s | decode s wall (cpu) | decode M voxels/s "
    "| one step ms warm (first) | peak MB | PSNR dB | ratio | load before / after |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", default="4,16,40", help="time-step counts (default: 4,16,40)")
    p.add_argument("--psnr", type=float, default=40.0, help="target PSNR in dB (default: 40)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--set", action="append", default=[], help="Config change KEY=VALUE")
    p.add_argument("--out", type=Path, default=OUT, help=f"JSON output (default: {OUT})")
    p.add_argument("--profile", type=int, metavar="T", help="print op profiles for T steps")
    p.add_argument("--fit-only", action="store_true", help="time the fit stage alone")
    p.add_argument(
        "--sciinr-root", type=Path, default=ROOT, help="checkout whose sciinr is measured"
    )
    p.add_argument("--case", type=int, help=argparse.SUPPRESS)  # internal: one size, JSON out
    args = p.parse_args(argv)
    sys.path.insert(0, str(args.sciinr_root.resolve()))  # not an installed sciinr elsewhere
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.profile:
        profile_case(args.profile, args.psnr, args.set)
        return 0
    if args.case is not None:
        case = fit_only_case if args.fit_only else run_case
        print(json.dumps(case(args.case, args.psnr, args.set)))
        return 0
    if not DATA.exists():
        print(f"{DATA} not found")
        return 2

    rows = []
    for n in [int(s) for s in args.steps.split(",")]:
        cmd = [sys.executable, __file__, "--case", str(n), "--psnr", str(args.psnr)]
        cmd += ["--threads", str(args.threads), "--sciinr-root", str(args.sciinr_root)]
        cmd += [f"--set={s}" for s in args.set] + (["--fit-only"] if args.fit_only else [])
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode:
            print(res.stderr[-3000:])
            return res.returncode
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print((_fit_row if args.fit_only else _row)(rows[-1]), flush=True)
    if args.fit_only:
        print("\n| T | networks | fit steps | fit s wall | fit s CPU | PSNR dB | load |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(_fit_row(r))
        return 0

    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    import torch

    record = {
        "command": "python benchmarks/speed.py " + " ".join(argv or sys.argv[1:]),
        "git": rev,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "results": rows,
        "ecnr": ECNR,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print()
    print(HEADER)
    for r in rows:
        print(_row(r))
    e = ECNR
    print(
        f"| ECNR {e['steps']} | 26.0 M | — | {e['encode_s']:.0f} | — | {e['train_msps']} | — "
        f"| {e['decode_s']} | {e['decode_mvps']} | — | {e['peak_mb']} | {e['psnr']} "
        f"| {e['ratio']} | — |"
    )
    print(f"\n{record['command']} — git {rev}, {record['date']}, {record['machine']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
