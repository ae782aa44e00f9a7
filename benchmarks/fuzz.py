"""Fuzz campaign: mutate small valid ``.sinr`` files and feed them to the public decode path.

The only exception the decoder may raise on bad bytes is :class:`sciinr.FormatError`; any
other exception (or a warning, which this script turns into an error), a decoded array of
the wrong shape or dtype, or a non-finite decoded value is counted as a crash and its input
is saved.

Resource oracle: an input whose decode (open, info, every decompress of it) raises this
process's peak RSS by more than ``128 MiB + 64 x file size + 48 x values decoded`` bytes (the
decode budget of docs/format.md, part 8.1, with the output's temporaries), or takes more CPU
time than ``2 s + 1e-4 s x (blocks and chunks touched) + (multiply-adds of the networks
evaluated) / 2e8``, is a crash too. The peak
is measured by resetting the kernel's high-water mark (``/proc/self/clear_refs``) before each
input and reading ``VmHWM`` after it (Linux); the address space is capped so that a runaway
allocation raises ``MemoryError`` (a crash) instead of stopping the campaign.

Engine: atheris (coverage-guided libFuzzer over sciinr's own bytecode) with a
structure-aware mutator. Each mutated input is, at random:

- libFuzzer's byte-level mutation of the whole file,
- a mutation of one value of the JSON header (types, huge/negative/odd numbers, strings,
  deleted or added keys) or of the raw header text,
- a mutation inside one decompressed section (byte flips, float16/float32 words set to
  inf/nan/huge), recompressed,
- a structural change of the section table (drop, duplicate, rename, reorder, add),
- a truncation, an extension, or a version change,

and most are then *resealed* (all CRC-32s recomputed) so that they get past the checksums
and exercise the validation behind them.

Usage (from the repository root; needs ``pip install atheris``)::

    python benchmarks/fuzz.py --runs 100000

writes ``benchmarks/results/fuzz.json`` (counts, crashes, command, machine, git revision);
crashing inputs go to ``benchmarks/results/tmp/fuzz/crashes/``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's sciinr, not another installed copy
RESULTS = ROOT / "benchmarks" / "results"
WORK = RESULTS / "tmp" / "fuzz"
DECODE_LIMIT = 1 << 20  # values: larger claimed fields decode only a small corner
WORK_LIMIT = 1 << 30  # multiply-adds: a costlier full decode is replaced by a corner
MEMORY_BASE = 128 << 20  # resource oracle (docs/format.md, part 8.1)
MEMORY_PER_FILE_BYTE = 64
MEMORY_PER_VALUE = 48  # decoded value: result, float64 prediction, residual, cast
SECONDS_BASE = 2.0  # CPU seconds any input may take
SECONDS_PER_TILE = 1e-4  # a decode walks the blocks and chunks it touches in Python
MACS_PER_SECOND = 2e8  # a floor on one core's speed for the networks' multiply-adds
TILE_LIMIT = 1 << 14  # blocks + chunks: a field with more decodes only a corner
ADDRESS_SPACE_HEADROOM = 6 << 30  # bytes of address space beyond the start: then MemoryError

MAGIC = b"\x89SINR\r\n\x1a"
PREFIX = struct.Struct("<8sHHI")

INTS = [0, 1, -1, 2, 3, 4, 7, 8, 16, 255, 256, 1023, 1024, 1025, 4096, 65535, 65536]
INTS += [2**31 - 1, 2**31, 2**31 + 1, 2**32, 2**40, 2**40 + 1, 2**53, 2**63, -(2**63), 10**30]
INTS += [2**64 - 1, 2**64, 10**400]
FLOATS = [0.0, -0.0, 0.5, 1e-320, 1e-45, 65504.0, 65520.0, 3.4e38, 3.5e38, 1e308, -1e308]
STRINGS = ["", "x", "float32", "float64", "float16", "uint16", "uint32", "int8", "/", ".."]
STRINGS += ["\x00", "time", "a/b", "é" * 3, "x" * 2000]
SPECIAL_TEXT = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"9" * 5000, b"[" * 5000]
HALF_SPECIAL = np.array([np.inf, -np.inf, np.nan, 65504, -65504, 6e-8, 0], np.float16)
SINGLE_SPECIAL = np.array([np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 1e-45, 0], np.float32)


# ------------------------------------------------------------------ seeds


def make_seeds() -> dict[str, bytes]:
    """Small valid files: fitted, trivial-only, 2-D, float64, residual layers, attrs."""
    import h5py

    import sciinr

    def cfg(**kw: object) -> sciinr.Config:
        base = {
            "partition.block": (2, 4, 4, 4),
            "fit.width": 8,
            "fit.depth": 1,
            "fit.latent_dim": 2,
            "fit.max_steps": 30,
            "fit.eval_every": 10,
            "fit.device": "cpu",
            "cluster.blocks_per_net": 2,
            "base.kind": "none",  # block networks; the Tucker seed below sets it back
        }
        base.update(kw)
        return sciinr.Config(psnr=20.0).replace(**base)

    g = np.random.default_rng(0)
    t, z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in (2, 4, 8, 8)], indexing="ij")
    wave = (np.sin(6 * x + 3 * y - 2 * t) + 0.3 * z).astype(np.float32)
    mixed = np.zeros((12, 20), np.float32)
    mixed[:, 10:] = g.normal(size=(12, 10))
    seeds = {
        "wave4d": sciinr.compress(wave, config=cfg()),
        "constant3d": sciinr.compress(np.full((3, 5, 7), 2.5, np.float32), config=cfg()),
        "mixed2d": sciinr.compress(mixed, config=cfg(**{"partition.block": (1, 1, 4, 5)})),
        "f64_tyx": sciinr.compress(
            (wave[:, 0] * 1e3).astype(np.float64), dims=("time", "y", "x"), config=cfg()
        ),
    }
    seeds["tucker_base"] = sciinr.compress(wave, config=cfg(**{"base.kind": "tucker"}))
    seeds["residual_only"] = sciinr.compress(
        wave, config=cfg(**{"bound.max_error": 0.05, "bound.split": (0,)})
    )
    seeds["residual_nets"] = sciinr.compress(
        wave, config=cfg(**{"bound.rel_error": 0.01, "bound.split": (1,)})
    )
    from tests import crafted  # tiny files that declare huge decodes

    for name, make in crafted.CASES.items():
        seeds[f"crafted_{name}"] = make()
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "attrs.h5"
        with h5py.File(p, "w") as fh:
            ds = fh.create_dataset("grp/rho", data=wave[:, :2])
            ds.attrs["units"] = "kg m-3"
            ds.attrs["levels"] = np.arange(3, dtype=np.int32)
            ds.attrs["scale"] = 2.5
        seeds["attrs_h5"] = sciinr.compress(p, var="grp/rho", config=cfg())
    return seeds


# ------------------------------------------------------------------ reseal / split


def split(data: bytes) -> tuple[dict, bytes] | None:
    """(header with its table, payload) of a file whose prefix and JSON parse; else None."""
    if len(data) < PREFIX.size + 4 or data[:8] != MAGIC:
        return None
    _, _, _, head_len = PREFIX.unpack_from(data)
    end = PREFIX.size + head_len
    if end + 4 > len(data):
        return None
    try:
        header = json.loads(data[PREFIX.size : end])
    except (ValueError, RecursionError):
        return None
    return (header, data[end + 4 :]) if isinstance(header, dict) else None


def assemble(header: dict, payload: bytes, major: int = 1, minor: int = 0) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    prefix = PREFIX.pack(MAGIC, major, minor, len(head)) + head
    return prefix + struct.pack("<I", zlib.crc32(prefix)) + payload


def reseal(data: bytes) -> bytes:
    """Recompute every CRC-32 (sections, then header) wherever the structure allows."""
    parts = split(data)
    if parts is None:
        if len(data) >= PREFIX.size + 4 and data[:8] == MAGIC:
            end = PREFIX.size + PREFIX.unpack_from(data)[3]
            if end + 4 <= len(data):
                crc = struct.pack("<I", zlib.crc32(data[:end]))
                return data[:end] + crc + data[end + 4 :]
        return data
    header, payload = parts
    table = header.get("sections")
    if isinstance(table, list):
        for entry in table:
            if isinstance(entry, dict):
                off, length = entry.get("offset"), entry.get("length")
                if type(off) is int and type(length) is int and 0 <= off <= off + length:
                    entry["crc32"] = zlib.crc32(payload[off : off + length])
    _, major, minor, _ = PREFIX.unpack_from(data)
    try:
        return assemble(header, payload, major, minor)
    except (ValueError, TypeError, RecursionError):
        return data


def sections_of(header: dict, payload: bytes) -> dict[str, bytes] | None:
    table = header.get("sections")
    if not isinstance(table, list):
        return None
    out = {}
    for e in table:
        if not (isinstance(e, dict) and isinstance(e.get("name"), str)):
            return None
        off, length = e.get("offset"), e.get("length")
        if not (type(off) is int and type(length) is int and off >= 0 and length >= 0):
            return None
        out[e["name"]] = payload[off : off + length]
    return out


def pack_sections(header: dict, sections: dict[str, bytes]) -> bytes:
    table, off = [], 0
    for name, chunk in sections.items():
        table.append({"name": name, "offset": off, "length": len(chunk), "crc32": 0})
        off += len(chunk)
    return assemble({**header, "sections": table}, b"".join(sections.values()))


# ------------------------------------------------------------------ mutations


def _interesting(rng: random.Random) -> object:
    pick = rng.random()
    if pick < 0.35:
        return rng.choice(INTS)
    if pick < 0.5:
        return rng.choice(FLOATS)
    if pick < 0.7:
        return rng.choice(STRINGS)
    if pick < 0.8:
        return rng.choice([None, True, False, [], {}, [1, 2, 3], {"a": 1}])
    if pick < 0.9:
        return [rng.choice(INTS) for _ in range(rng.randint(0, 5))]
    nested: object = 1
    for _ in range(rng.randint(1, 50)):
        nested = [nested]
    return nested


def _nodes(obj: object, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _nodes(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _nodes(v, (*path, i))
    return out


def mutate_header_value(header: dict, rng: random.Random) -> dict:
    paths = [p for p in _nodes(header) if p]
    if not paths:
        return header
    path = rng.choice(paths)
    parent = header
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    action = rng.random()
    old = parent[last]
    if action < 0.15 and isinstance(parent, dict):
        del parent[last]
    elif action < 0.25 and isinstance(parent, list):
        parent.insert(last, old)
    elif action < 0.4 and type(old) is int:
        parent[last] = old + rng.choice([-1, 1, -old, old, 2**31, -(2**31)])
    elif action < 0.5 and isinstance(parent, dict):
        parent[rng.choice([*STRINGS, "extra", "shape4"])] = _interesting(rng)
    else:
        parent[last] = _interesting(rng)
    return header


def mutate_section(header: dict, payload: bytes, rng: random.Random) -> bytes | None:
    import zstandard

    secs = sections_of(header, payload)
    if not secs:
        return None
    name = rng.choice(list(secs))
    chunk = secs[name]
    try:
        raw = bytearray(zstandard.ZstdDecompressor().decompress(chunk, max_output_size=1 << 20))
    except (zstandard.ZstdError, MemoryError, ValueError):
        raw = None
    action = rng.random()
    if raw is not None and action < 0.7:
        if raw and rng.random() < 0.5:
            words = HALF_SPECIAL if rng.random() < 0.6 else SINGLE_SPECIAL
            size = words.itemsize
            if len(raw) >= size:
                pos = rng.randrange(0, len(raw) - size + 1) // size * size
                raw[pos : pos + size] = words[rng.randrange(len(words))].tobytes()
        elif raw:
            for _ in range(rng.randint(1, 4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        else:
            raw = bytearray(rng.randbytes(rng.randint(1, 8)))
        if rng.random() < 0.1:
            raw = raw[: rng.randint(0, len(raw))]
        secs[name] = zstandard.ZstdCompressor(level=3).compress(bytes(raw))
    elif action < 0.8:
        del secs[name]
    elif action < 0.85:
        secs[name + "_x"] = chunk
    elif action < 0.9:
        secs = dict(reversed(list(secs.items())))
    elif action < 0.95:
        other = rng.choice(list(secs))
        secs[name], secs[other] = secs[other], secs[name]
    else:
        secs[name] = zstandard.ZstdCompressor(write_content_size=False).compress(
            bytes(raw) if raw is not None else chunk
        )
    return pack_sections(header, secs)


def mutate(data: bytes, max_size: int, seed: int, byte_mutate=None) -> bytes:
    """One structure-aware mutation of ``data`` (deterministic in ``seed``)."""
    try:
        return _mutate(data, max_size, seed, byte_mutate)
    except Exception:  # the mutator must never stop the campaign; fall back to bytes
        rng = random.Random(seed)
        buf = bytearray(data)
        if buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        return bytes(buf[:max_size])


def _mutate(data: bytes, max_size: int, seed: int, byte_mutate=None) -> bytes:
    rng = random.Random(seed)
    parts = split(data)
    action = rng.random()
    out: bytes | None = None
    if parts is not None and action < 0.35:
        header, payload = parts
        header = mutate_header_value(header, rng)
        try:
            out = reseal(assemble(header, payload, *PREFIX.unpack_from(data)[1:3]))
        except (ValueError, TypeError, RecursionError):
            out = None
    elif parts is not None and action < 0.55:
        out = mutate_section(*parts, rng)
        out = reseal(out) if out is not None else None
    elif parts is not None and action < 0.65:
        end = PREFIX.size + PREFIX.unpack_from(data)[3]
        text = bytearray(data[PREFIX.size : end])
        if text:
            pos = rng.randrange(len(text))
            if rng.random() < 0.5:
                text[pos : pos + rng.randint(0, 8)] = rng.choice(SPECIAL_TEXT)
            else:
                text[pos] = rng.randrange(32, 127)
        prefix = PREFIX.pack(MAGIC, *PREFIX.unpack_from(data)[1:3], len(text)) + bytes(text)
        out = reseal(prefix + b"\0\0\0\0" + data[end + 4 :])
    elif action < 0.72:
        out = data[: rng.randrange(max(1, len(data)))]
    elif action < 0.76:
        out = data + rng.randbytes(rng.randint(1, 64))
    elif action < 0.8 and len(data) >= PREFIX.size:
        major = rng.choice([0, 1, 1, 2, 65535])
        minor = rng.choice([0, 1, 65535])
        out = reseal(data[:8] + struct.pack("<HH", major, minor) + data[12:])
    if out is None:
        if byte_mutate is not None:
            out = byte_mutate(data, max_size)
        else:
            buf = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                if buf:
                    buf[rng.randrange(len(buf))] = rng.randrange(256)
            out = bytes(buf)
        if rng.random() < 0.6:
            out = reseal(out)
    return out[:max_size]


# ------------------------------------------------------------------ harness


class PeakMemory:
    """Peak resident memory of this process since :meth:`reset` (Linux ``VmHWM``)."""

    def __init__(self) -> None:
        self.ok = True
        try:
            self.reset()
        except OSError:
            self.ok = False
        self.base = 0

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        raise OSError(f"no {key} in /proc/self/status")

    def reset(self) -> None:
        with open("/proc/self/clear_refs", "w") as fh:  # 5: reset the peak RSS to the current
            fh.write("5")
        self.base = self._status("VmRSS:")

    def rise(self) -> int:
        """Bytes the peak rose above the resident size at the last reset."""
        return max(0, self._status("VmHWM:") - self.base) if self.ok else 0


def cap_address_space() -> None:
    """A runaway allocation raises MemoryError (counted as a crash) instead of killing us."""
    import resource

    with contextlib.suppress(OSError, ValueError):
        size = PeakMemory._status("VmSize:")
        limit = size + ADDRESS_SPACE_HEADROOM
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def tiles(arr, region: tuple[int, ...] | None = None) -> int:
    """Blocks plus residual chunks a decode of ``region`` (a corner; default: all) touches."""
    shape4 = arr._shape4
    corner = region or tuple(shape4)
    model = arr.header.get("model")  # none in a file whose field is a whole-field base
    tilings = [model["block"]] if isinstance(model, dict) else []
    residual = arr.header.get("residual")
    if isinstance(residual, dict) and isinstance(residual.get("chunk"), list):
        tilings.append(residual["chunk"])
    return sum(
        math.prod(-(-min(c, s) // t) for c, s, t in zip(corner, shape4, tile, strict=True))
        for tile in tilings
    )


def network_macs(net, n_values: int) -> int:
    """Multiply-adds of evaluating the networks at ``n_values`` voxels (an upper bound).

    A file whose field is a whole-field (Tucker) base has no networks: 0.
    """
    if net is None:
        return 0
    w = net.width
    return n_values * w * (4 + net.latent_dim + w * net.depth + 2)


class Campaign:
    """Runs one input through sciinr's public decode path and keeps the tally."""

    def __init__(self, runs: int, stats_path: Path, command: str):
        import sciinr

        self.sciinr = sciinr
        self.runs = runs
        self.stats_path = stats_path
        self.command = command
        self.count = 0
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.crashes: dict[str, dict] = {}
        self.slowest = (0.0, "")
        self.heaviest = (0, "")  # (peak RSS rise in bytes, input digest)
        self.memory = PeakMemory()
        self.t0 = time.time()
        self.rev = git_rev()  # the code under test: fixed when the campaign starts
        (WORK / "crashes").mkdir(parents=True, exist_ok=True)
        self.scratch = WORK / "scratch"
        self.scratch.mkdir(parents=True, exist_ok=True)

    def decode(self, data: bytes, asked: list[int]) -> str:
        """Decode ``data`` every way; appends to ``asked`` (values, multiply-adds) decoded."""
        sciinr = self.sciinr

        arr = sciinr.open(data, device="cpu")
        sciinr.info(data)
        n = math.prod(arr.shape)
        macs = network_macs(arr.net, n)
        full = n <= DECODE_LIMIT and macs <= WORK_LIMIT and tiles(arr) <= TILE_LIMIT
        asked[:] = [n, macs, 2 * tiles(arr)] if full else [0, 0, 0]  # full + last step
        if full:
            out = sciinr.decompress(data, device="cpu")
            expect = arr.shape
            if arr.has_time:
                step = sciinr.decompress(data, time=arr.shape[0] - 1, device="cpu")
                if step.shape != arr.shape[1:]:
                    raise AssertionError(f"time step shape {step.shape}")
            for suffix in (".h5", ".nc"):  # the header's names and attrs reach the writers
                try:
                    sciinr.api.write_decoded(
                        self.scratch / f"out{suffix}", out, arr, overwrite=True
                    )
                except sciinr.OutputError:
                    self.outcomes["write_refused"] += 1
        else:
            expect = tuple(min(s, 3) for s in arr.shape)
            corner = math.prod(expect)
            pad = (1,) * (4 - len(expect))
            region4 = (expect[0], *pad, *expect[1:]) if arr.has_time else (*pad, *expect)
            asked[:] = [corner, network_macs(arr.net, corner), tiles(arr, region4)]
            out = arr[tuple(slice(0, e) for e in expect)]
        if out.shape != expect or out.dtype != arr.dtype:
            raise AssertionError(f"decoded {out.shape} {out.dtype}, header {expect} {arr.dtype}")
        if not np.isfinite(out).all():
            raise AssertionError("decoded non-finite values")
        return "decoded" if full else "decoded_corner"

    def __call__(self, data: bytes) -> None:
        t = time.perf_counter()
        cpu = time.process_time()
        asked = [0, 0, 0]
        if self.memory.ok:
            self.memory.reset()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                outcome = self.decode(data, asked)
        except self.sciinr.FormatError as exc:
            outcome = "format_error"
            self.errors[_kind(str(exc))] += 1
        except Exception as exc:  # a crash: anything but the documented error
            outcome = "crash"
            self._record_crash(data, exc)
        seconds = time.perf_counter() - t
        cpu = time.process_time() - cpu
        rise = self.memory.rise()
        digest = hashlib.sha1(data).hexdigest()
        if seconds > self.slowest[0]:
            self.slowest = (seconds, digest)
        if rise > self.heaviest[0]:
            self.heaviest = (rise, digest)
        n_values, macs, n_tiles = asked
        memory_bound = MEMORY_BASE + MEMORY_PER_FILE_BYTE * len(data) + MEMORY_PER_VALUE * n_values
        cpu_bound = SECONDS_BASE + SECONDS_PER_TILE * n_tiles + macs / MACS_PER_SECOND
        if outcome != "crash" and rise > memory_bound:
            outcome = "crash"
            self._record_resource(data, "memory", f"peak RSS rose {rise} > {memory_bound} bytes")
        elif outcome != "crash" and cpu > cpu_bound:
            outcome = "crash"
            self._record_resource(data, "time", f"{cpu:.2f} s CPU > {cpu_bound:.2f} s")
        self.outcomes[outcome] += 1
        self.count += 1
        if self.count % 2000 == 0 or self.count >= self.runs:
            self.write_stats()

    def _record_crash(self, data: bytes, exc: BaseException) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        where = next(
            (
                f"{Path(f.filename).name}:{f.lineno}"
                for f in reversed(frames)
                if "sciinr" in f.filename
            ),
            "?",
        )
        key = f"{type(exc).__name__} at {where}"
        digest = hashlib.sha1(data).hexdigest()
        (WORK / "crashes" / f"{digest}.sinr").write_bytes(data)
        item = self.crashes.setdefault(
            key, {"count": 0, "example": digest, "message": str(exc)[:300]}
        )
        item["count"] += 1

    def _record_resource(self, data: bytes, kind: str, message: str) -> None:
        digest = hashlib.sha1(data).hexdigest()
        (WORK / "crashes" / f"{digest}.sinr").write_bytes(data)
        item = self.crashes.setdefault(
            f"resource: {kind}", {"count": 0, "example": digest, "message": message}
        )
        item["count"] += 1

    def write_stats(self) -> None:
        summary = {
            "command": self.command,
            "engine": "atheris (libFuzzer) + structure-aware mutator",
            "machine": machine(),
            "git_rev": self.rev,
            "inputs_tried": self.count,
            "seconds": round(time.time() - self.t0, 1),
            "outcomes": dict(self.outcomes),
            "crashes": sum(c["count"] for c in self.crashes.values()),
            "crash_kinds": self.crashes,
            "format_errors_by_kind": dict(self.errors.most_common()),
            "slowest_input_seconds": round(self.slowest[0], 3),
            "resource_oracle": {
                "memory_bound": "128 MiB + 64 x file size + 48 x values decoded (peak RSS rise)",
                "cpu_bound": "2 s + 1e-4 s x blocks and chunks touched + multiply-adds / 2e8",
                "peak_rss_measured": self.memory.ok,
                "largest_peak_rss_rise_bytes": self.heaviest[0],
                "largest_peak_rss_rise_input": self.heaviest[1],
                "resource_crashes": sum(
                    c["count"] for k, c in self.crashes.items() if k.startswith("resource")
                ),
            },
        }
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, self.stats_path)


def _kind(message: str) -> str:
    """A FormatError message without its source and numbers, for the tally."""
    text = message.split(": ", 1)[-1]
    text = re.sub(r"(= |: ).*?\)", r"\1...)", text)
    return re.sub(r"\d+", "N", text)[:90]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def git_rev() -> str:
    """Short revision, with ``+dirty`` when sciinr/ has uncommitted changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "sciinr"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (rev or "unknown") + ("+dirty" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="inputs to try")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer seed")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "fuzz.json", help="where the summary goes"
    )
    args, extra = parser.parse_known_args()
    import atheris
    import torch

    torch.set_num_threads(1)
    sys.setrecursionlimit(1000)
    logging.getLogger("sciinr").setLevel(logging.ERROR)  # skipped attributes are expected
    with atheris.instrument_imports(include=["sciinr"]):
        import sciinr.api  # noqa: F401

    corpus = WORK / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = make_seeds()
    for name, blob in seeds.items():
        (corpus / f"seed_{name}.sinr").write_bytes(blob)
    command = "python benchmarks/fuzz.py " + " ".join(sys.argv[1:])
    campaign = Campaign(args.runs, args.out, command.strip())
    for blob in seeds.values():  # warm up: first-use allocations of torch and numpy
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            campaign.decode(blob, [0, 0, 0])
    cap_address_space()
    libfuzzer = [
        sys.argv[0],
        f"-runs={args.runs}",
        f"-seed={args.seed}",
        "-max_len=16384",
        "-timeout=60",
        "-rss_limit_mb=6144",
        "-print_final_stats=1",
        *extra,
        str(corpus),
    ]

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        return mutate(data, max_size, seed, byte_mutate=atheris.Mutate)

    atheris.Setup(libfuzzer, campaign, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
