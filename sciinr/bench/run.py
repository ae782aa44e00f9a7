"""One benchmark run from command-line arguments: load, sweep, summarize, write.

Shared by ``sciinr bench`` (:mod:`sciinr.cli`) and ``benchmarks/rd.py``; both pass their
``print`` in as ``echo`` because the library itself never prints.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import datasets
from ..errors import ConfigError, InputError
from . import codecs as codecs_mod
from . import report
from .summary import DEFAULT_TARGETS, Summary, markdown, summarize
from .sweep import Point, sweep

logger = logging.getLogger(__name__)

ALL_CODECS = (*codecs_mod.BASELINES, "sciinr")
_DEFAULT_TARGETS = ",".join(f"{t:g}" for t in DEFAULT_TARGETS)
_OPTIONS = (
    "var",
    "time_dim",
    "data_dir",
    "time_steps",
    "every",
    "crop",
    "codecs",
    "sciinr_psnr",
    "sciinr_set",
    "device",
    "targets",
    "out",
)
DEFAULT_OUT = datasets.REPO_ROOT / "benchmarks" / "results"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``bench`` options (used by the CLI sub-command and by ``benchmarks/rd.py``)."""
    p.add_argument(
        "dataset",
        help="a manifest name (" + ", ".join(datasets.manifest_names()) + "), a manifest "
        ".json, or a data file (HDF5, NetCDF, .npy; no checksum then)",
    )
    p.add_argument("--var", help="variable, when DATASET is a data file")
    p.add_argument("--time-dim", help="time dimension, when DATASET is a data file")
    p.add_argument(
        "--data-dir",
        help=f"directory holding the manifests' files (default: ${datasets.DATA_DIR_ENV} "
        "or ../shared/data beside the checkout)",
    )
    p.add_argument(
        "--time-steps",
        help="time steps start:stop[:step], stop excluded, or 'all' "
        "(default: the manifest's bench.time_steps, else all)",
    )
    p.add_argument("--every", type=int, default=1, help="keep every N-th selected time step")
    p.add_argument(
        "--crop", help="spatial box, one slice per spatial axis: '0:32,:,16:48' (default: all)"
    )
    p.add_argument(
        "--codecs",
        default="all",
        help="comma-separated subset of: " + ", ".join(ALL_CODECS) + " (default: all)",
    )
    p.add_argument(
        "--sciinr-psnr",
        help="sciinr's target PSNR values in dB, e.g. 35,40,45,50 "
        "(default: the manifest's bench.sciinr_psnr, else 40,50)",
    )
    p.add_argument(
        "--sciinr-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a sciinr Config change for every sciinr point, e.g. fit.max_seconds=300 (repeatable)",
    )
    p.add_argument("--device", default="cpu", help="sciinr's fit.device (default: cpu)")
    p.add_argument(
        "--targets",
        default=_DEFAULT_TARGETS,
        help="PSNR targets of the summary table (default: 40,50,60)",
    )
    p.add_argument(
        "-o",
        "--out",
        help="output directory (default: ./<dataset> for sciinr bench, "
        "benchmarks/results/<dataset> for benchmarks/rd.py)",
    )


def command_line(prefix: str, args: argparse.Namespace) -> str:
    """The command that reproduces ``args``: ``prefix``, the dataset, every option set."""
    import shlex

    parts = [*shlex.split(prefix), args.dataset]
    defaults = {"every": 1, "codecs": "all", "device": "cpu", "targets": _DEFAULT_TARGETS}
    for key in _OPTIONS:
        value = getattr(args, key, None)
        if value is None or value == [] or defaults.get(key) == value:
            continue
        flag = "--" + key.replace("_", "-")
        for v in value if isinstance(value, list) else [value]:
            parts += [flag, str(v)]
    return shlex.join(parts)


@dataclass(frozen=True)
class BenchResult:
    points: list[Point]
    summary: Summary
    text: str  # the Markdown summary that is printed and written
    files: dict[str, Path]
    notes: list[str]


def _floats(text: str, what: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} {text!r}: expected numbers separated by commas") from None
    if not vals:
        raise ConfigError(f"{what}: give at least one value")
    return vals


def _config_changes(items: Sequence[str]) -> dict[str, Any]:
    import json

    changes: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--sciinr-set {item!r}: expected KEY=VALUE, e.g. fit.width=24")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        changes[key.strip()] = tuple(value) if isinstance(value, list) else value
    return changes


def _codec_names(text: str) -> tuple[list[str], list[str]]:
    """The codecs asked for, and notes on what ``all`` left out."""
    if text.strip() == "all":
        if codecs_mod.tthresh_binary() is not None:
            note = (
                "tthresh-wasm left out: the upstream tthresh program is used instead "
                "(add it with --codecs to compare)"
            )
            return [n for n in ALL_CODECS if n != "tthresh-wasm"], [note]
        return list(ALL_CODECS), []
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_CODECS]
    if unknown or not names:
        raise ConfigError(f"--codecs: unknown {unknown or text!r} (known: {', '.join(ALL_CODECS)})")
    return names, []


def load(args: argparse.Namespace) -> tuple[datasets.Field, dict[str, Any]]:
    """The field to benchmark and the manifest's ``bench`` defaults (empty for a data file)."""
    target = Path(args.dataset)
    is_manifest = target.suffix == ".json" or (
        not target.exists() and args.dataset in datasets.manifest_names()
    )
    time_arg = None if args.time_steps in (None, "all") else args.time_steps
    if is_manifest:
        manifest = datasets.load_manifest(args.dataset)
        if args.var or args.time_dim:
            raise InputError("--var/--time-dim are for data files; a manifest names its variable")
        if args.time_steps is None:
            time_arg = manifest.bench.get("time_steps")
        field = datasets.load_field(manifest, args.data_dir, time_arg, args.every, args.crop)
        return field, manifest.bench
    if not target.exists():
        known = ", ".join(datasets.manifest_names()) or "none"
        raise InputError(f"{target}: no such file, and not a known manifest (known: {known})")
    return datasets.load_path(target, args.var, args.time_dim, time_arg, args.every, args.crop), {}


def run(
    args: argparse.Namespace,
    command: str,
    echo: Callable[[str], None],
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run the benchmark described by ``args`` (see :func:`add_arguments`).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options.
    command : str
        The command line, recorded in every output.
    echo : callable
        Receives the summary text (the CLI passes ``print``).
    progress : callable, optional
        Receives one line per measured point and per skipped codec.

    Raises
    ------
    SciinrError
        Bad options, missing or different data file.
    """
    meta = report.provenance(command, datasets.REPO_ROOT)  # the revision as the run starts
    names, left_out = _codec_names(args.codecs)
    targets = _floats(args.targets, "--targets")
    field, bench_defaults = load(args)
    say = progress or (lambda s: None)
    baselines, notes = codecs_mod.load_codecs([n for n in names if n != "sciinr"])
    notes = left_out + notes
    for msg in notes:
        say(msg)
    chosen: list[codecs_mod.Codec] = list(baselines)
    if "sciinr" in names:
        psnrs = (
            _floats(args.sciinr_psnr, "--sciinr-psnr")
            if args.sciinr_psnr
            else [float(x) for x in bench_defaults.get("sciinr_psnr", codecs_mod.SCIINR_PSNR)]
        )
        chosen.append(codecs_mod.sciinr_codec(psnrs, args.device, _config_changes(args.sciinr_set)))
    shape = "x".join(map(str, field.data.shape))
    say(f"{field.name}: {field.variable} {shape} float32 ({field.selection}), {field.source}")

    def on_point(p: Point) -> None:
        say(
            f"  {p.label:<24} {p.setting:<8g} {p.ratio:10.1f}x {p.bits_per_value:9.4f} b/v "
            f"{p.psnr:7.2f} dB  enc {p.encode_s:7.2f} s  dec {p.decode_s:6.2f} s"
        )

    points, point_notes = sweep(field.data, chosen, on_point)
    codec_notes = [f"{c.name}: {c.note}" for c in chosen if c.note]
    all_notes = notes + codec_notes + point_notes
    summary = summarize(points, targets)
    meta["dataset"] = {
        "name": field.name,
        "variable": field.variable,
        "source": field.source,
        "sha256": field.sha256,
        "selection": field.selection,
        "shape": list(field.data.shape),
        "value_range": [float(field.data.min()), float(field.data.max())],
    }
    meta["codecs"] = {
        c.name: {
            "knob": c.knob,
            "values": list(c.values),
            "modes": list(c.modes),
            "package": c.package,
        }
        for c in chosen
    }
    meta["notes"] = all_notes
    header = f"### {field.name}: {field.variable} {shape} ({field.selection})"
    text = report.summary_markdown(markdown(summary), meta, header, all_notes)
    title = f"{field.name}: {field.variable} {shape} ({field.selection}) — {meta['git_revision']}"
    png = report.plot_png(points, title, targets=targets)
    out_dir = (
        Path(args.out) if args.out else Path(getattr(args, "out_root", DEFAULT_OUT)) / (field.name)
    )
    files = report.write_outputs(out_dir, "rd", points, summary, text, meta, png)
    echo(text)
    echo("wrote " + ", ".join(str(p) for p in files.values()))
    return BenchResult(points, summary, text, files, all_notes)
