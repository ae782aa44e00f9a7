"""Interrupted and failed writes never leave a (partial) output and never touch the input.

A real ``sciinr compress`` runs in a subprocess and is stopped in the middle of training
with SIGINT (Ctrl-C) or SIGKILL; the CLI turns SIGTERM and SIGHUP into the same clean stop
as Ctrl-C. Outputs are written atomically (temporary file, fsync, rename), which the
in-process tests below check directly.
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from sciinr import OutputError, cli
from sciinr.stages import write

from .conftest import smooth_field

ROOT = Path(__file__).resolve().parents[1]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(directory: Path, name: str) -> list[Path]:
    return [p for p in directory.iterdir() if p.name == name or p.name.startswith(f".{name}.")]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupted_compress_leaves_no_output(tmp_path):
    src = tmp_path / "in.h5"
    with h5py.File(src, "w") as fh:
        fh["rho"] = smooth_field(t=4, z=8, y=16, x=16)
    digest = _sha(src)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    runs = {}
    for sig in (signal.SIGINT, signal.SIGKILL):
        out_dir = tmp_path / sig.name
        out_dir.mkdir()
        cmd = [
            sys.executable,
            "-m",
            "sciinr.cli",
            "compress",
            str(src),
            "--var",
            "rho",
            "-o",
            str(out_dir / "out.sinr"),
            "--psnr",
            "140",  # unreachable: training only ends when stopped
            "--base",
            "none",
            "--block",
            "2,8,8,8",
            "--max-steps",
            "1000000",
            "--eval-every",
            "25",
            "--samples-per-net",
            "4096",
            "--device",
            "cpu",
            "-vv",
        ]
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            preexec_fn=_default_sigint,  # a background shell may have set SIGINT to "ignore"
        )
        runs[sig] = (proc, out_dir)
    try:
        for sig, (proc, _) in runs.items():
            seen = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                line = proc.stderr.readline()
                seen.append(line)
                if not line or " step " in line or line.startswith("DEBUG sciinr.stages.fit"):
                    break
            assert proc.poll() is None, "".join(seen)  # still training
            proc.send_signal(sig)
        for sig, (proc, out_dir) in runs.items():
            err = proc.stderr.read()
            rc = proc.wait(timeout=60)
            if sig == signal.SIGKILL:
                assert rc == -signal.SIGKILL
            else:
                assert rc == 130, err
                assert "sciinr: interrupted; no output written" in err
                assert "Traceback" not in err
            assert _leftovers(out_dir, "out.sinr") == []
    finally:
        for proc, _ in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
    assert _sha(src) == digest


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_stop_signals_become_keyboard_interrupt(name):
    sig = getattr(signal, name)
    before = signal.getsignal(sig)
    with pytest.raises(KeyboardInterrupt, match=name):
        _signal_self(sig)
    assert signal.getsignal(sig) == before


def _signal_self(sig: int) -> None:
    with cli._stop_signals_interrupt():
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the handler raises long before this ends


def _write_then_fail(path: Path, overwrite: bool, error: BaseException) -> None:
    with write.atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(b"half of the new")
        raise error


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_mid_write_keeps_the_old_file(tmp_path, error):
    out = tmp_path / "o.sinr"
    out.write_bytes(b"old")
    with pytest.raises(type(error)):
        _write_then_fail(out, True, error)
    assert out.read_bytes() == b"old"
    assert _leftovers(tmp_path, "o.sinr") == [out]
    new = tmp_path / "new.sinr"
    with pytest.raises(type(error)):
        _write_then_fail(new, False, error)
    assert _leftovers(tmp_path, "new.sinr") == []


def test_overwrite_is_required_and_replaces_atomically(tmp_path):
    out = tmp_path / "o.sinr"
    write.write_bytes(out, b"first")
    with pytest.raises(OutputError, match="already exists"):
        write.write_bytes(out, b"second")
    assert out.read_bytes() == b"first"
    write.write_bytes(out, b"second", overwrite=True)
    assert out.read_bytes() == b"second"
    assert _leftovers(tmp_path, "o.sinr") == [out]


def test_outputs_get_the_usual_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        fresh = write.write_bytes(tmp_path / "fresh.sinr", b"x")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o640  # 0666 minus the umask
    finally:
        os.umask(old)
    kept = tmp_path / "kept.sinr"
    kept.write_bytes(b"x")
    kept.chmod(0o604)
    write.write_bytes(kept, b"y", overwrite=True)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o604  # a replaced file keeps its mode
