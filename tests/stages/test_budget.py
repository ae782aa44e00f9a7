"""The decode budget: a few-kB file never costs gigabytes (``sciinr/stages/budget.py``).

Every crafted file of ``tests/crafted.py`` declares a decode that would cost gigabytes or
minutes; ``sciinr info``, ``sciinr decompress`` and ``sciinr.open(f)[0]`` must each end in a
one-line ``FormatError`` within 2 s of CPU time and 200 MB of peak RSS above the same
commands on a valid small file, both measured in a child process (``RUSAGE_CHILDREN``).
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zstandard

import sciinr
from sciinr import FormatError
from sciinr.stages import budget, entropy

from .. import crafted

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "v1.0.sinr"
MAX_RSS_ABOVE_BASELINE = 200 << 20
MAX_CPU_SECONDS = 2.0

# The child runs the three commands on each file and reports CPU seconds, exit codes and
# stderr; the parent of the child (a small wrapper without torch) reports the child's peak RSS.
CHILD = r"""
import contextlib, io, json, sys, time
import sciinr
from sciinr import cli

out = {}
for path in sys.argv[1:]:
    rec = {}
    for op in ("info", "decompress", "open0"):
        err = io.StringIO()
        t0, w0 = time.process_time(), time.perf_counter()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if op == "info":
                rc = cli.main(["info", "-q", path])
            elif op == "decompress":
                rc = cli.main(["decompress", "-q", path, "-o", path + ".npy", "--overwrite"])
            else:
                try:
                    sciinr.open(path)[0]
                    rc = 0
                except sciinr.FormatError as exc:
                    print(f"FormatError: {exc}", file=sys.stderr)
                    rc = 2
        rec[op] = {"rc": rc, "cpu": time.process_time() - t0, "wall": time.perf_counter() - w0,
                   "stderr": err.getvalue()}
    out[path] = rec
print(json.dumps(out))
"""
WRAPPER = r"""
import json, resource, subprocess, sys
proc = subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], capture_output=True,
                      text=True)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr[-2000:],
                  "max_rss": usage.ru_maxrss * 1024, "cpu": usage.ru_utime + usage.ru_stime}))
"""


def run_child(paths: list[str]) -> tuple[dict, int]:
    """(per-file results, peak RSS in bytes) of the three commands in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, CHILD, *paths],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    report = json.loads(proc.stdout)
    assert report["rc"] == 0, report["stderr"]
    return json.loads(report["stdout"]), report["max_rss"]


BUDGET = r"corrupted header \(.* more than a \d+-byte file may cost: \d+ MB\)"
MESSAGES = {  # besides the budget: a frame that lies about its size
    "residual_frame_claims_a_tebibyte": r"corrupted section 'residual_index' \(holds "
    r"1099511627776 bytes, expected 16 bytes\)",
}


@pytest.fixture(scope="module")
def crafted_paths(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("crafted")
    paths = {}
    for name, make in crafted.CASES.items():
        p = d / f"{name}.sinr"
        p.write_bytes(make())
        paths[name] = str(p)
    return paths


@pytest.mark.parametrize("name", sorted(crafted.CASES))
def test_crafted_file_is_small_and_refused_when_opened(crafted_paths, name):
    path = crafted_paths[name]
    assert Path(path).stat().st_size < 10_000
    for call in (sciinr.info, sciinr.decompress, lambda p: sciinr.open(p)[0]):
        with pytest.raises(FormatError, match=MESSAGES.get(name, BUDGET)) as exc:
            call(path)
        assert "\n" not in str(exc.value)


def test_crafted_files_cost_little_memory_and_time(crafted_paths, tmp_path):
    """Peak RSS and CPU of info/decompress/open()[0] on every crafted file, in a child."""
    golden = tmp_path / "golden.sinr"
    golden.write_bytes(GOLDEN.read_bytes())
    base, base_rss = run_child([str(golden)])
    assert all(r["rc"] == 0 for r in base[str(golden)].values()), base
    results, rss = run_child(list(crafted_paths.values()))
    for name, path in crafted_paths.items():
        for op, r in results[path].items():
            lines = r["stderr"].strip().splitlines()
            assert r["rc"] == 2, (path, op, r)
            assert len(lines) == 1, (path, op, r)
            assert re.search(MESSAGES.get(name, BUDGET), lines[0]), lines
            assert r["cpu"] <= MAX_CPU_SECONDS, (path, op, r)
            assert r["wall"] <= 60, (path, op, r)  # generous: the machine may be loaded
    assert rss - base_rss <= MAX_RSS_ABOVE_BASELINE, (rss, base_rss)


def _decode_peak(blob: bytes) -> tuple[int, int]:
    """(budget estimate, tracemalloc peak) of opening a file and decoding one value."""
    arr = sciinr.open(blob)
    tracemalloc.start()
    try:
        arr[(0,) * arr.ndim]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return arr._model_bytes, peak


@pytest.mark.parametrize(
    ("shape4", "net", "kind"),
    [
        ([1, 64, 64, 64], crafted._net(0, 0), "float16"),  # 2**18 constant blocks
        ([1, 32, 64, 64], crafted._net(1, 1 << 17), "float16"),  # 2**17 fitted blocks
        ([1, 1, 64, 128], crafted._net(1, 1 << 13, latent=64), "shared"),  # latents
        ([1, 1, 1, 4], crafted._net(4, 4, width=128, depth=8), "shared"),  # weights
    ],
)
def test_budget_estimate_bounds_the_measured_peak(shape4, net, kind):
    """A model inside its budget decodes, and never holds more than the estimate says."""
    blob = crafted.model_file(shape4, [1, 1, 1, 1], net, kind)
    need, peak = _decode_peak(blob)
    assert need <= budget.allowance(len(blob))
    assert peak <= need, (peak, need)
    assert peak >= need / 8  # the estimate is an upper bound, not a wild one


def test_budget_estimate_bounds_a_residual_index():
    """2**18 residual chunks: opening holds no more than the estimate (index and offsets)."""
    n = 1 << 18
    index = crafted._zip(np.zeros(n, crafted._INDEX).tobytes())
    blob = crafted.residual_file([1, 64, 64, 64], [1, 1, 1, 1], index)
    need = budget.residual_bytes(n, 1)
    assert need <= budget.allowance(len(blob))
    tracemalloc.start()
    try:
        arr = sciinr.open(blob)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= need, (peak, need)
    assert arr[0, 1, 2, 3] == arr[...][0, 1, 2, 3]


def test_the_allowance_grows_with_the_file():
    net = crafted._net(1, 1, width=1024, depth=16)  # 16.8 M weights: ~400 MB to decode
    need = budget.model_bytes(1, net)
    with pytest.raises(FormatError, match="may cost"):
        budget.check_model(1, net, 10_000)
    budget.check_model(1, net, need // budget.PER_FILE_BYTE)  # a 6 MB file may hold it


def test_ans_words_that_constriction_refuses_are_a_format_error():
    """constriction refuses a word sequence ending in a zero word when the coder is built."""
    table = zstandard.ZstdCompressor().compress(np.array([3, 1], "<u2").tobytes())
    stream = struct.pack("<BiI", 1, 0, 2) + struct.pack("<I", len(table)) + table + bytes(4)
    with pytest.raises(FormatError, match="ans stream does not decode"):
        entropy.decode_ints(stream, 10, "x")


def test_zstd_frame_claims_are_bounded_by_its_length():
    frame = zstandard.ZstdCompressor().compress(bytes(1 << 20))
    assert len(frame) * budget.ZSTD_MAX_RATIO < 1 << 30
    with pytest.raises(FormatError, match="cannot hold"):
        entropy.unzip_exact(frame, 1 << 30, "x")
    assert entropy.unzip_exact(frame, 1 << 20, "x") == bytes(1 << 20)


def test_fuzz_resource_oracle_catches_a_decode_over_its_budget(monkeypatch, tmp_path):
    """benchmarks/fuzz.py counts an over-budget decode as a crash (here: budget switched off)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import fuzz
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    monkeypatch.setattr(fuzz, "WORK", tmp_path)
    campaign = fuzz.Campaign(3, tmp_path / "fuzz.json", "test")
    if not campaign.memory.ok:
        pytest.skip("no /proc/self/clear_refs: peak RSS cannot be measured here")
    heavy = crafted.model_file([1, 64, 256, 256], [1, 1, 1, 1], crafted._net(0, 0), "float16")
    campaign(GOLDEN.read_bytes())  # a valid file decodes within its bound
    campaign(heavy)  # 2**22 blocks, ~270 MB: refused by the budget
    monkeypatch.setattr(budget, "BASE", 1 << 40)
    campaign(heavy)  # now decoded: the oracle must see it
    campaign.write_stats()
    stats = json.loads((tmp_path / "fuzz.json").read_text())
    assert stats["outcomes"] == {"decoded": 1, "format_error": 1, "crash": 1}, stats
    assert stats["resource_oracle"]["resource_crashes"] == 1
    assert list(stats["crash_kinds"]) == ["resource: memory"]
