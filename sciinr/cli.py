"""The ``sciinr`` command line: thin sub-commands over :mod:`sciinr.api`.

Errors that sciinr raises on purpose are printed as one line on stderr (exit code 2);
anything else is a bug and keeps its traceback. Ctrl-C (SIGINT), SIGTERM and SIGHUP stop
the command with exit code 130 and leave no output file (outputs are written atomically,
see :mod:`sciinr.stages.write`); once the output is complete, an interrupt exits with 0 and
says that the file was written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from . import api
from ._version import __version__
from .config import BoundConfig, Config
from .errors import SciinrError
from .metrics import ratio as file_ratio
from .stages import read, write

logger = logging.getLogger("sciinr")

_SECTIONS = ("base", "partition", "cluster", "fit", "shrink")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    defaults = Config()
    p.add_argument(
        "--psnr",
        type=float,
        default=None,
        help=f"target PSNR in dB over the whole field (default: {defaults.psnr})",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="seed of every random choice (default: 0)"
    )
    p.add_argument(
        "--effort",
        choices=("fast", "default", "max"),
        default=None,
        help="how hard rate control searches for the smallest file (default: default)",
    )
    for section in _SECTIONS:
        group = p.add_argument_group(f"{section} options")
        for f in dataclasses.fields(getattr(defaults, section)):
            default = getattr(getattr(defaults, section), f.name)
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            kind: Any = _int_list if isinstance(default, tuple) else type(default)
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            group.add_argument(
                flag,
                dest=f"{section}.{f.name}",
                type=kind,
                default=None,
                metavar=f.name.upper(),
                help=f"{f.metadata.get('help', '')} (default: {shown})",
            )


def _int_list(text: str) -> tuple[int, ...]:
    """``"2,8,8,8"`` -> ``(2, 8, 8, 8)`` (argparse shows the ValueError as one line)."""
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None


def _refuse_same_file(src: str, out: Path) -> None:
    """An output must never replace its own input."""
    write.refuse_same_file(src, out)


def _config_from_args(args: argparse.Namespace) -> Config:
    changes = {
        k: v
        for k, v in vars(args).items()
        if v is not None and (k.split(".")[0] in _SECTIONS and "." in k)
    }
    if args.psnr is not None:
        changes["psnr"] = args.psnr
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.effort is not None:
        changes["effort"] = args.effort
    return _bound_from_args(args, Config().replace(**changes))


def _line(key: str, value: str) -> None:
    print(f"{key:<14}{value}")


def _dims_text(dims: Any) -> str:
    """``time=12 z=25 y=125 x=125``."""
    return " ".join(f"{name}={size}" for name, size in dims)


def _error_text(err: float | None, vr: float | None, guaranteed: bool) -> str:
    if err is None:
        return "not recorded (no pointwise guarantee)"
    rel = f" = {100 * err / vr:.3g} % of the range" if vr else ""
    if guaranteed:
        return f"{err:.4g}{rel} (guaranteed at every value)"
    return f"{err:.4g}{rel} (measured; no pointwise guarantee)"


def _print_report(report: api.Report, out: Path | None, name: str | None = None) -> None:
    """One compressed field: ratio, PSNR, max error relative to the range, sizes."""
    if name is not None:
        _line("variable", name)
    if report.dims:
        _line("dims", _dims_text(report.dims))
    _line(
        "ratio",
        f"{report.ratio:.1f}x  ({report.n_bytes:,} bytes for {report.n_values:,} values, "
        f"{report.bits_per_value:.3f} bits/value)",
    )
    _line("PSNR", f"{report.psnr:.2f} dB")
    vr = report.value_range[1] - report.value_range[0] if report.value_range else None
    if report.max_error is not None:  # a residual layer bounds the error
        _line("max error", _error_text(report.max_error, vr, True))
        _line(
            "split",
            f"{report.n_bytes - report.residual_bytes:,} bytes networks and header"
            f" + {report.residual_bytes:,} bytes residual",
        )
    else:
        _line("max error", _error_text(report.measured_max_error, vr, False))
    if report.base_ranks is not None:
        ranks = " x ".join(map(str, report.base_ranks))
        _line("base", f"Tucker, ranks {ranks} (t, z, y, x), no block networks")
        _line("encode", f"{report.seconds:.1f} s")
    else:
        _line("networks", f"{report.n_nets} ({report.n_blocks} blocks, {report.n_trivial} trivial)")
        _line("encode", f"{report.seconds:.1f} s ({report.fit_steps} training steps)")


class _OnceList(argparse.Action):
    """``--var u,v`` or ``--var all``; giving the option twice is a usage error."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option} given twice; list several as {option} a,b (or 'all')")
        names = [v.strip() for v in str(values).split(",") if v.strip()]
        if not names:
            parser.error(f"{option} needs a name, a comma-separated list or 'all'")
        setattr(namespace, self.dest, names)


def _progress(args: argparse.Namespace) -> bool:
    """Bars unless -q; with -vv the debug log reports progress line by line instead."""
    return not args.quiet and args.verbose < 2


def _is_netcdf(path: str) -> bool:
    p = Path(path)
    read.regular_file(p)  # never opens a FIFO or device (opening one may block)
    try:
        with open(p, "rb") as fh:
            magic = fh.read(8)
    except OSError:
        return False
    return magic.startswith(read.NETCDF3_MAGICS) or (
        magic == read.HDF5_MAGIC and p.suffix.lower() in read.NETCDF_SUFFIXES
    )


def cmd_compress(args: argparse.Namespace) -> int:
    from . import datafile

    cfg = _config_from_args(args)
    out = Path(args.output)
    _refuse_same_file(args.input, out)
    write.check_destination(out, args.overwrite)
    cfg = _scale_from_args(args, cfg)
    select = api.make_select(args.time, args.crop)
    dims = tuple(d.strip() for d in args.dims.split(",")) if args.dims else None
    names = args.var
    if _is_netcdf(args.input):  # a dataset: the variables asked for, with their coordinates
        blob, reports = datafile.compress_dataset_volumes(
            args.input,
            names,
            cfg,
            time_dim=args.time_dim,
            select=select,
            progress=_progress(args),
        )
        write.write_bytes(out, blob, overwrite=args.overwrite)
        if not args.quiet:
            _line("output", str(out))
            for name, report in reports.items():
                print()
                _print_report(report, None, name=name)
            if len(reports) > 1:
                n_values = sum(r.n_values for r in reports.values())
                total = file_ratio(n_values, len(blob))
                print()
                _line(
                    "total",
                    f"{total:.1f}x  ({len(blob):,} bytes for {n_values:,} values, "
                    "coordinates and attributes included)",
                )
        return 0
    if names is not None and (len(names) > 1 or names == ["all"]):
        raise api.ConfigError(
            f"{args.input}: several variables (--var a,b or all) need a NetCDF input"
        )
    var = names[0] if names else None
    if cfg.scale.streaming or args.workers is not None or args.scheduler is not None:
        from . import scale

        if select is not None:
            raise api.ConfigError("--time/--crop are not supported with --memory-limit or dask")
        blob, report = scale.compress_source(
            args.input,
            cfg,
            var=var,
            time_dim=args.time_dim,
            workers=args.workers,
            scheduler=args.scheduler,
        )
        name = var or Path(args.input).stem
    else:
        volume = read.read(args.input, var=var, time_dim=args.time_dim, dims=dims, select=select)
        blob, report = api.compress_volume(volume, cfg, progress=_progress(args))
        name = volume.variable
    write.write_bytes(out, blob, overwrite=args.overwrite)
    if not args.quiet:
        _line("output", str(out))
        _print_report(report, out, name=name)
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    from . import datafile

    out = Path(args.output)
    _refuse_same_file(args.input, out)
    write.check_array_destination(out, args.overwrite)
    whole = args.var is None and args.time is None and args.region is None and args.scale == 1
    if whole and out.suffix.lower() != ".npy" and _is_dataset_file(args.input):
        t0 = time.perf_counter()
        df = datafile.open_dataset_file(args.input, device=args.device)
        df.write(out, overwrite=args.overwrite)
        if not args.quiet:
            print(
                f"wrote {out} ({len(df.variables)} variables, {len(df.fields)} decoded) in "
                f"{time.perf_counter() - t0:.2f} s"
            )
        return 0
    arr = api.open(args.input, device=args.device, variable=args.var)
    key: Any = ...
    if args.region is not None:
        key = api.parse_index(args.region)
    if args.time is not None:
        key = (api.parse_index(args.time)[0],) + (tuple(key) if args.region else ())
        if args.region is not None:
            raise api.InputError("give --time or --region, not both (--region includes time)")
    t0 = time.perf_counter()
    if args.scale != 1:
        if args.region is not None or args.time is not None:
            raise api.InputError("--scale decodes the whole field: give no --time or --region")
        data = arr.resample(args.scale)
    elif args.workers > 1 or args.scheduler:
        from . import parallel

        data = parallel.decode(arr, key, workers=args.workers, scheduler=args.scheduler)
    else:
        data = arr[key]
    seconds = time.perf_counter() - t0
    dims = _kept_dims(arr, key)
    api.write_decoded(out, data, arr, dims=dims, overwrite=args.overwrite)
    if not args.quiet:
        print(f"wrote {out} {data.shape} {data.dtype} in {seconds:.2f} s")
    return 0


def _is_dataset_file(path: str) -> bool:
    data, name = api.read_source(path)
    header, _ = api.container.unpack(data, name)
    return api.dataset.is_dataset(header)


def _kept_dims(arr: api.SinrArray, key: Any) -> tuple[str, ...]:
    keys = api.normalize_key(key, arr.shape)
    return tuple(d for d, k in zip(arr.dims, keys, strict=True) if not isinstance(k, int))


def cmd_info(args: argparse.Namespace) -> int:
    meta = api.info(args.input, variable=args.var)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    if "variables" in meta:  # a dataset file
        _line("source", str(meta["source"]))
        _line("format", f"{meta['format_version']} (dataset, written by {meta['written_by']})")
        _line("dims", _dims_text(meta["dims"].items()))
        _line("bytes", f"{meta['bytes']:,}")
        _line("ratio", f"{meta['ratio']:.1f}x  ({meta['bits_per_value']:.3f} bits/value)")
        _line("lossless", ", ".join(meta["stored_losslessly"]) or "-")
        for name in meta["variables"]:
            print()
            _print_field_info(api.info(args.input, variable=name))
        return 0
    _line("source", str(meta["source"]))
    _line("format", f"{meta['format_version']} (written by {meta['written_by']})")
    _print_field_info(meta)
    print("sections")
    for name, size in meta["sections"].items():
        print(f"  {name:<16}{size:>10,} bytes")
    return 0


def _print_field_info(meta: dict[str, Any]) -> None:
    _line("variable", str(meta["variable"]))
    _line("dims", _dims_text(zip(meta["dims"], meta["shape"], strict=True)) + f"  {meta['dtype']}")
    _line(
        "ratio",
        f"{meta['ratio']:.1f}x  ({meta['bytes']:,} bytes, {meta['bits_per_value']:.3f} bits/value)",
    )
    psnr = meta["psnr"]
    target = meta.get("target_psnr")
    _line(
        "PSNR",
        ("exact" if psnr is None else f"{psnr:.2f} dB")
        + (f" (target {target:g} dB)" if target is not None else ""),
    )
    vr = meta.get("value_range")
    span = vr[1] - vr[0] if isinstance(vr, list) and len(vr) == 2 else None
    if meta.get("max_error") is not None:
        _line("max error", _error_text(meta["max_error"], span, True))
    else:
        _line("max error", _error_text(meta.get("measured_max_error"), span, False))
    if vr is not None:
        _line("range", f"{vr[0]:.6g} .. {vr[1]:.6g}")
    if meta.get("base"):
        b = meta["base"]
        _line("base", f"{b['kind']}, ranks {' x '.join(map(str, b['ranks']))}, no block networks")
        _line("parameters", f"{meta['parameters']:,} ({meta['bits_per_parameter']:.2f} bits each)")
    else:
        _line(
            "networks",
            f"{meta['networks']} ({meta['fitted_blocks']} fitted blocks of {meta['block']}), "
            f"{meta['parameters']:,} parameters",
        )
        arch = meta["architecture"]
        _line(
            "architecture",
            f"width {arch['width']}, depth {arch['depth']}, latent {arch['latent_dim']}, "
            f"omega0 {arch['omega0']:g}",
        )
        _line(
            "encoding",
            f"{meta['parameter_encoding']}, sparsity {meta['sparsity']:.2f}, "
            f"{meta['bits_per_parameter']:.2f} bits/parameter",
        )
    if meta.get("missing_values"):
        _line("missing", f"{meta['missing_values']:,} values (stored as a mask)")
    if meta.get("selection"):
        sel = meta["selection"]
        _line(
            "selection",
            " ".join(f"{a}:{b}" for a, b in zip(sel["start"], sel["stop"], strict=True))
            + f" of {sel['source_shape']}",
        )


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(psnr_db=args.psnr, device=args.device, progress=_progress(args))


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run as bench_run

    args.out_root = Path.cwd()  # results go to ./<dataset> unless -o is given
    command = bench_run.command_line("sciinr bench", args)
    progress = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    bench_run.run(args, command, echo=print, progress=progress)
    return 0


# ----------------------------------------------------------------------------- bounds


def _add_bound_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "error bounds and rate (a residual layer; give at most one of these three)"
    )
    b = BoundConfig()
    group.add_argument(
        "--max-error", type=float, metavar="E", help="|original - decoded| <= E at every value"
    )
    group.add_argument(
        "--rel-error",
        type=float,
        metavar="R",
        help="|original - decoded| <= R * (max - min) at every value",
    )
    group.add_argument(
        "--ratio", type=float, metavar="R", help="compression ratio R within 5%% (best PSNR)"
    )
    group.add_argument(
        "--split",
        type=lambda v: tuple(int(x) for x in v.split(",")),
        metavar="K,K",
        help=f"network sizes tried under a bound or ratio: 0 = none, k = k times blocks per "
        f"network; smallest file wins (default: {','.join(map(str, b.split))})",
    )


def _bound_from_args(args: argparse.Namespace, cfg: Config) -> Config:
    changes: dict[str, Any] = {}
    for name in ("max_error", "rel_error", "ratio", "split"):
        value = getattr(args, name, None)
        if value is not None:
            changes[f"bound.{name}"] = value
    bounded = any(getattr(args, n, None) is not None for n in ("max_error", "rel_error", "ratio"))
    if bounded and args.psnr is not None:  # with a bound, --psnr is the networks' target
        changes["bound.network_psnr"] = args.psnr
    return cfg.replace(**changes) if changes else cfg


def cmd_verify(args: argparse.Namespace) -> int:
    arr = api.open(args.input, device=args.device, variable=args.var)
    time_dim = args.time_dim or (arr.dims[0] if arr.has_time else "none")
    volume = read.read(args.original, var=args.var or arr.variable, time_dim=time_dim)
    result = api.verify(volume, arr, time=args.time, each_step=args.each_step)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key in ("file", "decoded", "max_error", "max_error_relative", "guaranteed"):
            print(f"{key:<20}{result[key]}")
        print(f"{'psnr':<20}{result['psnr']:.3f} dB (stored: {result['stored_psnr']})")
        print(f"{'ratio':<20}{result['ratio']:.2f}x")
        if result["steps"] is not None:
            print(f"{'each step alone':<20}worst max error {result['steps']['max_error']}")
        print(f"{'decode':<20}{result['seconds']:.2f} s on {result['device']}")
    if result["failures"]:
        for failure in result["failures"]:
            print(f"sciinr: verify FAILED: {failure}", file=sys.stderr)
        return 1
    if not args.json:
        print("verify OK" if result["checked"] else "verify OK (the file stores no guarantee)")
    return 0


def _add_dask_flags(p: argparse.ArgumentParser, what: str, default: int | None = 1) -> None:
    group = p.add_argument_group("parallel (needs sciinr[dask])")
    group.add_argument(
        "--workers",
        type=_positive_int,
        default=default,
        metavar="N",
        help=f"{what} on N workers (a dask LocalCluster; default: no dask)"
        if default is None
        else f"{what} on N threads (default: {default}, no dask)",
    )
    group.add_argument(
        "--scheduler", metavar="ADDRESS", help=f"{what} on the dask cluster at ADDRESS"
    )


def _add_scale_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("fields larger than memory (docs/scale.md)")
    group.add_argument(
        "--memory-limit",
        type=_byte_size,
        metavar="SIZE",
        help="memory one process may use, e.g. 1GB or 512MB: the field streams from its file "
        "in groups sized to fit (default: none, the field is read whole)",
    )
    group.add_argument(
        "--group-values",
        type=_positive_int,
        metavar="N",
        help="values per independent group (default: what the memory limit allows, or 2**24 "
        "on workers)",
    )


def _scale_from_args(args: argparse.Namespace, cfg: Config) -> Config:
    changes = {
        f"scale.{k}": getattr(args, k)
        for k in ("memory_limit", "group_values")
        if getattr(args, k, None) is not None
    }
    return cfg.replace(**changes) if changes else cfg


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _byte_size(text: str) -> int:
    """``"1GB"``, ``"512M"``, ``"1.5GiB"``, ``"1000000"`` -> bytes (K, M, G, T are powers of 2)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] else ""
    try:
        n = float(t[: len(t) - len(unit)] if unit else t)
    except ValueError:
        n = -1.0
    if not n > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1GB, 512MB)")
    return int(n * _UNITS[unit])


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return n


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (exit code 2), like sciinr's own errors."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(bench: bool = True) -> argparse.ArgumentParser:
    """The ``sciinr`` parser; ``bench=False`` leaves out the options of ``sciinr bench``.

    Those come from the optional :mod:`sciinr.bench` package, imported only when that
    command runs (or ``bench`` is true).
    """
    parser = _Parser(
        allow_abbrev=False,
        prog="sciinr",
        description="Compress time-varying scientific fields with implicit neural representations.",
    )
    parser.add_argument("--version", action="version", version=f"sciinr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, errors only")

    p = sub.add_parser(
        allow_abbrev=False,
        name="compress",
        help="compress a field from HDF5, NetCDF or .npy to .sinr",
        description="Compress one variable of an HDF5/NetCDF/.npy file to .sinr.",
    )
    p.add_argument("input", help="HDF5, NetCDF or .npy file")
    p.add_argument("-o", "--output", required=True, help="the .sinr file to write")
    p.add_argument(
        "--var",
        action=_OnceList,
        metavar="NAME[,NAME]",
        help="variable(s) (NetCDF) or dataset path (HDF5); a,b or 'all' for several (NetCDF)",
    )
    p.add_argument("--time-dim", help="name of the time dimension, or 'none' for a static field")
    p.add_argument("--time", metavar="A:B", help="compress only time steps A to B-1")
    p.add_argument(
        "--crop",
        metavar="Z0:Z1,Y0:Y1,X0:X1",
        help="compress only this box (one range per spatial axis; ':' keeps an axis whole)",
    )
    p.add_argument(
        "--dims",
        metavar="T,Y,X",
        help="axis names of a .npy input, e.g. t,y,x for a 2-D time series",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _add_config_flags(p)
    _add_bound_flags(p)
    _add_scale_flags(p)
    _add_dask_flags(p, "fit the groups", default=None)
    common(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser(
        allow_abbrev=False,
        name="decompress",
        help="decode a .sinr file to .npy, HDF5 or NetCDF",
        description="Decode all of a .sinr file, one time step, or a region.",
    )
    p.add_argument("input", help="the .sinr file")
    p.add_argument("-o", "--output", required=True, help="output: .npy, .h5 or .nc")
    p.add_argument("--time", help="only this time step (or range a:b)")
    p.add_argument("--region", help="index over all axes, e.g. '3,0:32,:,10:20'")
    p.add_argument("--var", help="the variable of a dataset file to decode (default: all)")
    p.add_argument(
        "--scale",
        type=_positive_int,
        default=1,
        help="a grid this many times finer along every axis, time included (files with a "
        "whole-field base: multilinear between voxels; default: 1)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _add_dask_flags(p, "decode")
    common(p)
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser(
        allow_abbrev=False,
        name="info",
        help="describe a .sinr file without decoding it",
        description="Shape, variable, ratio, PSNR, networks, bytes per section.",
    )
    p.add_argument("input", help="the .sinr file")
    p.add_argument("--var", help="one variable of a dataset file")
    p.add_argument("--json", action="store_true", help="print JSON")
    common(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        allow_abbrev=False,
        name="verify",
        help="decode a .sinr file and compare it with the original",
        description="Decode a .sinr file and report max error, max error / value range, PSNR "
        "and ratio against the original. Exits with 1 if the file's stored guarantee (max "
        "error) is violated or its stored PSNR is not reached.",
    )
    p.add_argument("original", help="the original HDF5, NetCDF or .npy file")
    p.add_argument("input", help="the .sinr file")
    p.add_argument("--var", help="variable in the original (default: the one the file names)")
    p.add_argument("--time-dim", help="time dimension of the original (default: as the file)")
    p.add_argument("--time", type=int, help="verify this time step, decoded alone")
    p.add_argument(
        "--each-step", action="store_true", help="also decode every time step alone and check it"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--json", action="store_true", help="print JSON")
    common(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        allow_abbrev=False,
        name="demo",
        help="compress the bundled real excerpt and report",
        description="Compress the viscous-fingering excerpt that ships with "
        "sciinr, decompress it, and print ratio, PSNR, bits/value and timings.",
    )
    p.add_argument("--psnr", type=float, default=40.0, help="target PSNR (default: 40)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        allow_abbrev=False,
        name="bench",
        help="rate-distortion benchmark against SZ3, ZFP, TTHRESH, SPERR, fpzip, zstd",
        description="Sweep sciinr and the baselines on one field; write CSV, PNG, JSON and a "
        "summary (ratio at 40/50/60 dB) to ./<dataset>/ (or -o DIR).",
    )
    if bench:
        from .bench.run import add_arguments as add_bench_arguments

        add_bench_arguments(p)
    common(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    parser = build_parser(bench=words[:1] == ["bench"])
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * args.verbose if not args.quiet else logging.ERROR
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s"
    )
    previous_level = logger.level
    logger.setLevel(max(level, logging.DEBUG))  # also where logging was configured before
    output = Path(args.output) if isinstance(getattr(args, "output", None), str) else None
    before = _identity(output)
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        ctx = logging_redirect_tqdm() if not args.quiet else contextlib.nullcontext()
        with ctx, _stop_signals_interrupt():
            return int(args.func(args))
    except SciinrError as exc:
        print(f"sciinr: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"sciinr: error: {getattr(args, 'input', '')}: out of memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted(output, before)
    finally:
        logger.setLevel(previous_level)


def _identity(path: Path | None) -> tuple[int, int] | None:
    """(device, inode) of a file, or None: a new inode under the name is a new, whole file."""
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st is not None else None


def _interrupted(output: Path | None, before: tuple[int, int] | None) -> int:
    """Exit code and message of an interrupt: 0 when the output was already published.

    Outputs appear under their name in one atomic step (:mod:`sciinr.stages.write`), so a
    file under that name that was not there before the command is complete.
    """
    now = _identity(output)
    if now is not None and now != before:
        print(f"sciinr: interrupted after {output} was written completely", file=sys.stderr)
        return 0
    print("sciinr: interrupted; no output written", file=sys.stderr)
    return 130


@contextlib.contextmanager
def _stop_signals_interrupt() -> Any:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt (like Ctrl-C) so temporary files are removed."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {}
    try:
        for name in ("SIGTERM", "SIGHUP"):
            sig = getattr(signal, name, None)
            if sig is not None:
                with contextlib.suppress(ValueError, OSError):  # not the main thread
                    previous[sig] = signal.signal(sig, interrupt)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
