"""Outputs of one benchmark run: CSV, PNG plot, JSON, Markdown summary, and where they came from.

Every file is written to a temporary name first and moved into place, so an interrupted run
never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import importlib.metadata
import io
import json
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .summary import Summary, lines
from .sweep import Point

CSV_COLUMNS = (
    "dataset",
    "codec",
    "mode",
    "knob",
    "setting",
    "n_values",
    "bytes",
    "ratio",
    "bits_per_value",
    "psnr",
    "max_abs_error_over_range",
    "encode_s",
    "decode_s",
    "encode_MB_s",
    "decode_MB_s",
    "device",
)
PACKAGES = (
    "sciinr",
    "torch",
    "numpy",
    "pysz",
    "zfpy",
    "fpzip",
    "zstandard",
    "numcodecs-wasm-sz3",
    "numcodecs-wasm-tthresh",
    "numcodecs-wasm-sperr",
)


def machine() -> dict[str, Any]:
    """Platform, CPU model, usable cores and memory of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 0
    mem_gb = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": cores,
        "memory_GiB": mem_gb,
    }


def git_revision(repo: Path) -> str:
    """``git describe``-like revision of ``repo``: short hash, ``+dirty`` when modified."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=10", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    """Installed versions of sciinr and the baseline packages (absent ones left out)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def provenance(command: str, repo: Path) -> dict[str, Any]:
    """Command, date, machine, git revision and package versions of this run."""
    return {
        "command": command,
        "date": dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "git_revision": git_revision(repo),
        "versions": versions(),
    }


def atomic_write(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def csv_text(points: Sequence[Point], dataset: str) -> str:
    """The points as CSV with :data:`CSV_COLUMNS`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for p in points:
        row = {"dataset": dataset, **p.row()}
        writer.writerow({k: _cell(row[k]) for k in CSV_COLUMNS})
    return buf.getvalue()


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "inf" if math.isinf(v) and v > 0 else f"{v:.6g}"
    return v


PLOT_MIN_PSNR = 15.0  # points below are in the CSV but outside the plot
PLOT_MAX_PSNR = 130.0


def plot_png(
    points: Sequence[Point],
    title: str,
    notes: Sequence[str] = (),
    targets: Sequence[float] = (40.0, 50.0, 60.0),
) -> bytes:
    """:func:`rd_figure` as PNG bytes."""
    buf = io.BytesIO()
    rd_figure(points, title, notes, targets).savefig(buf, format="png")
    return buf.getvalue()


def rd_figure(
    points: Sequence[Point],
    title: str,
    notes: Sequence[str] = (),
    targets: Sequence[float] = (40.0, 50.0, 60.0),
) -> Any:
    """PSNR against bits per value (log x), one line per codec and mode (a matplotlib Figure).

    Thin grey horizontal lines mark the summary's PSNR ``targets`` (40/50/60 dB by default).

    Colour and marker name the codec, the line style the mode (solid: each time step,
    dashed: the whole array). sciinr is drawn thick and black. Lossless lines
    (PSNR = inf) are vertical dotted lines at their bits per value.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6), dpi=110)
    ax = fig.subplots()
    codecs = list(dict.fromkeys(p.codec for p in points))
    palette = matplotlib.colormaps["tab10"].colors
    markers = "os^vD<>phX*"
    shown: list[float] = []
    for label, pts in lines(points).items():
        codec, mode = pts[0].codec, pts[0].mode
        i = codecs.index(codec)
        ours = codec == "sciinr"
        color = "black" if ours else palette[i % len(palette)]
        finite = sorted(
            (p for p in pts if math.isfinite(p.psnr) and p.psnr >= PLOT_MIN_PSNR),
            key=lambda p: p.bits_per_value,
        )
        if finite:
            ax.plot(
                [p.bits_per_value for p in finite],
                [min(p.psnr, PLOT_MAX_PSNR) for p in finite],
                marker=markers[i % len(markers)],
                markersize=6 if ours else 4,
                linewidth=2.6 if ours else 1.2,
                linestyle="--" if mode == "whole" and not ours else "-",
                color=color,
                zorder=5 if ours else 2,
                label=label,
            )
            shown += [p.bits_per_value for p in finite]
        lossless = [p for p in pts if math.isinf(p.psnr)]
        if lossless:
            best = min(lossless, key=lambda p: p.bits_per_value)
            ax.axvline(
                best.bits_per_value,
                linestyle=":",
                color=color,
                label=f"{label}: lossless, {best.ratio:.2f}x",
            )
            shown.append(best.bits_per_value)
    for db in targets:
        ax.axhline(db, color="grey", linewidth=0.8, linestyle="-.", alpha=0.7, zorder=1)
        ax.annotate(
            f"{db:g} dB",
            xy=(1.0, db),
            xycoords=("axes fraction", "data"),
            xytext=(-2, 2),
            textcoords="offset points",
            ha="right",
            fontsize=7,
            color="grey",
        )
    ax.set_xscale("log")
    if shown:
        ax.set_xlim(min(shown) / 1.5, max(shown) * 1.5)
    ax.set_ylim(bottom=PLOT_MIN_PSNR)
    ax.set_xlabel("bits per value (log scale)")
    ax.set_ylabel("PSNR (dB, value range of the whole field)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.subplots_adjust(left=0.08, right=0.72, bottom=0.1 + 0.02 * len(notes))
    if notes:
        fig.text(0.01, 0.005, "\n".join(notes), fontsize=6, va="bottom", color="dimgrey")
    return fig


def summary_markdown(
    summary_md: str,
    meta: dict[str, Any],
    header: str,
    notes: Sequence[str],
) -> str:
    """The printed/written summary: what was run, where, then the table and the notes."""
    m = meta["machine"]
    lines_ = [
        header,
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_GiB']} GiB, {m['platform']}",
        f"- sciinr git revision: {meta['git_revision']}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
        summary_md,
    ]
    if notes:
        lines_ += ["", "Notes:", *[f"- {n}" for n in notes]]
    return "\n".join(lines_) + "\n"


def write_outputs(
    out_dir: Path,
    stem: str,
    points: Sequence[Point],
    summary: Summary,
    summary_text: str,
    meta: dict[str, Any],
    png: bytes,
) -> dict[str, Path]:
    """Write ``<stem>.csv``, ``.png``, ``.json`` and ``.md`` into ``out_dir``."""
    dataset = meta.get("dataset", {}).get("name", stem)
    record = {
        **meta,
        "points": [p.row() for p in points],
        "summary": {
            "targets": list(summary.targets),
            "ratio_at": {k: [v.text() for v in vals] for k, vals in summary.table.items()},
            "sciinr_vs_best": summary.sciinr_vs_best,
        },
    }
    text = json.dumps(_jsonable(record), indent=1, allow_nan=False)
    return {
        "csv": atomic_write(out_dir / f"{stem}.csv", csv_text(points, dataset).encode()),
        "png": atomic_write(out_dir / f"{stem}.png", png),
        "json": atomic_write(out_dir / f"{stem}.json", text.encode()),
        "md": atomic_write(out_dir / f"{stem}.md", summary_text.encode()),
    }


def _jsonable(o: Any) -> Any:
    """inf -> "inf", NaN -> None, recursively (strict JSON has neither)."""
    if isinstance(o, float) and not math.isfinite(o):
        return None if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_jsonable(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    return o
