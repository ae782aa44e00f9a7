"""The rate-distortion suite: interpolation, sweep, skipped baselines, outputs, CLI."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from sciinr import cli
from sciinr.bench import codecs as bench_codecs
from sciinr.bench import report
from sciinr.bench.codecs import Codec, load_codecs
from sciinr.bench.summary import markdown, ratio_at, summarize
from sciinr.bench.sweep import Point, measure, sweep

from .conftest import smooth_field

N = 120_000  # values per made-up point (4 N / ratio is a whole number of bytes below)


def _pt(codec: str, psnr: float, ratio: float, mode: str = "whole") -> Point:
    return Point(
        codec=codec,
        mode=mode,
        knob="k",
        setting=0.0,
        n_values=N,
        bytes=round(4 * N / ratio),
        psnr=psnr,
        max_abs_error_over_range=0.0,
        encode_s=1.0,
        decode_s=1.0,
        device="cpu",
    )


def test_ratio_interpolates_log_linearly() -> None:
    pts = [_pt("a", 30.0, 400.0), _pt("a", 40.0, 100.0), _pt("a", 60.0, 4.0)]
    at = ratio_at(pts, 50.0)  # halfway between 100x and 4x in log: sqrt(400) = 20
    assert at.kind == "interp"
    assert at.ratio == pytest.approx(20.0, rel=1e-3)
    assert ratio_at(pts, 35.0).ratio == pytest.approx(200.0, rel=1e-3)
    assert ratio_at(pts, 40.0).ratio == pytest.approx(100.0, rel=1e-3)
    assert ratio_at(pts[::-1], 50.0).ratio == pytest.approx(20.0, rel=1e-3)  # order-free


def test_ratio_bounds_and_lossless() -> None:
    pts = [_pt("a", 45.0, 50.0), _pt("a", 55.0, 10.0)]
    above = ratio_at(pts, 40.0)
    assert (above.kind, above.text()) == ("above", ">50")
    assert ratio_at(pts, 60.0).kind == "unreached"
    assert ratio_at(pts, 60.0).text() == "—"
    lossless = ratio_at([_pt("z", math.inf, 1.5)], 60.0)
    assert (lossless.kind, lossless.text()) == ("lossless", "=1.5")


def test_summary_divides_by_the_best_baseline() -> None:
    pts = [
        _pt("sciinr", 38.0, 800.0),
        _pt("sciinr", 42.0, 200.0),  # 400x at 40 dB
        _pt("SZ3", 35.0, 400.0, "step"),
        _pt("SZ3", 45.0, 25.0, "step"),  # 100x at 40 dB
        _pt("ZFP", 42.0, 60.0),  # >60x at 40 dB: a bound, smaller than SZ3's
        _pt("zstd", math.inf, 1.5),
    ]
    s = summarize(pts, (40.0,))
    assert s.best_baseline[0][0] == "SZ3 (step)"
    assert s.best_baseline[0][1].ratio == pytest.approx(100.0, rel=1e-3)
    assert s.sciinr_vs_best == ["4.00"]
    table = markdown(s)
    assert "| SZ3 (step) | 100 |" in table
    assert "| **sciinr / best** | 4.00 |" in table
    # a baseline that is only bounded from below makes sciinr's quotient an upper bound
    s2 = summarize([*pts[:2], _pt("ZFP", 42.0, 600.0)], (40.0,))
    assert s2.sciinr_vs_best == ["≤0.67"]


def _tiny() -> np.ndarray:
    return smooth_field(t=3, z=8, y=16, x=16)


def test_sweep_zstd_is_lossless_and_counts_every_step() -> None:
    (zstd,), skipped = load_codecs(["zstd"])
    assert skipped == []
    data = _tiny()
    points, notes = sweep(data, [zstd])
    assert notes == []
    assert {p.mode for p in points} == {"step", "whole"}
    for p in points:
        assert p.psnr == math.inf
        assert p.n_values == data.size
        assert p.max_abs_error_over_range == 0.0
    step = next(p for p in points if p.mode == "step" and p.setting == 3)
    import zstandard

    expected = sum(len(zstandard.ZstdCompressor(level=3).compress(s.tobytes())) for s in data)
    assert step.bytes == expected


def test_sz3_meets_its_error_bound() -> None:
    pytest.importorskip("pysz")
    (sz3,), _ = load_codecs(["sz3"])
    data = _tiny()
    for rel in (1e-2, 1e-4):
        p = measure(sz3, data, "step", rel)
        assert p.max_abs_error_over_range <= rel * (1 + 1e-6)
        assert p.max_abs_error_over_range > 0
        assert p.ratio > 1
    coarse, fine = measure(sz3, data, "whole", 1e-2), measure(sz3, data, "whole", 1e-4)
    assert coarse.ratio > fine.ratio
    assert coarse.psnr < fine.psnr


def test_zfp_rate_below_16_bits_per_block_is_skipped_not_run() -> None:
    pytest.importorskip("zfpy")
    (rate,), _ = load_codecs(["zfp-rate"])
    data = _tiny()
    points, notes = sweep(data, [rate])
    step_rates = {p.setting for p in points if p.mode == "step"}
    assert 0.125 not in step_rates  # 8 bits per 3-D block
    assert 0.25 in step_rates
    assert any("0.125 gives 8 bits per 3-D block" in n for n in notes)
    for p in points:  # fixed rate: bits/value is the rate (plus a small header)
        assert p.bits_per_value == pytest.approx(p.setting, rel=0.5, abs=0.2)


def test_missing_baseline_is_skipped_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pysz", None)  # import pysz now raises ImportError
    monkeypatch.setenv(bench_codecs.TTHRESH_ENV, "/nonexistent/tthresh")
    loaded, skipped = load_codecs(["sz3", "tthresh", "zstd"])
    assert [c.name for c in loaded] == ["zstd"]
    assert skipped[0] == "sz3 skipped: pysz is not installed (pip install -e '.[bench]')"
    assert skipped[1].startswith("tthresh skipped: tthresh: the upstream program is not")


def test_a_failing_codec_stops_its_line_and_the_run_goes_on() -> None:
    calls = []

    def broken(a: np.ndarray, v: float, vr: float) -> bytes:
        calls.append(v)
        raise RuntimeError("wasm trap")

    bad = Codec("broken", "k", (1.0, 2.0, 3.0, 4.0), broken, lambda b, s: b, modes=("whole",))
    (zstd,), _ = load_codecs(["zstd"])
    points, notes = sweep(_tiny(), [bad, zstd])
    assert calls == [1.0, 2.0]
    assert "broken (whole) at k = 1: failed (RuntimeError: wasm trap)" in notes
    assert any("not run at 3, 4 after 2 failures" in n for n in notes)
    assert {p.codec for p in points} == {"zstd"}


def test_csv_columns_and_values() -> None:
    pts = [_pt("SZ3", 40.0, 100.0), _pt("zstd", math.inf, 2.0)]
    rows = list(csv.DictReader(report.csv_text(pts, "tiny").splitlines()))
    assert tuple(rows[0]) == report.CSV_COLUMNS
    assert float(rows[0]["ratio"]) == pytest.approx(100.0)
    assert float(rows[0]["bits_per_value"]) == pytest.approx(0.32)
    assert rows[1]["psnr"] == "inf"
    assert rows[0]["dataset"] == "tiny"


def test_cli_bench_writes_csv_png_json_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "tiny.npy"
    np.save(src, smooth_field(t=2, z=8, y=16, x=16))
    out = tmp_path / "out"
    argv = ["bench", str(src), "--codecs", "zstd,sciinr", "--sciinr-psnr", "25", "-o", str(out)]
    for change in (
        "partition.block=[2,8,8,8]",
        "fit.width=16",
        "fit.depth=1",
        "fit.samples_per_net=512",
        "fit.max_steps=30",
        "fit.eval_every=10",
    ):
        argv += ["--sciinr-set", change]
    assert cli.main([*argv, "-q"]) == 0
    printed = capsys.readouterr().out
    assert "| **sciinr / best** |" in printed
    assert "command: `sciinr bench" in printed
    assert "--sciinr-psnr 25" in printed
    rows = list(csv.DictReader((out / "rd.csv").read_text().splitlines()))
    sciinr_rows = [r for r in rows if r["codec"] == "sciinr"]
    assert len(sciinr_rows) == 1
    assert 5 < float(sciinr_rows[0]["psnr"]) < 60  # measured on the decoded field
    assert float(sciinr_rows[0]["ratio"]) > 1
    assert (out / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '"git_revision"' in (out / "rd.json").read_text()
    assert (out / "rd.md").read_text().startswith("### tiny: tiny 2x8x16x16 (all)")


def test_cli_bench_writes_to_the_current_directory_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in" / "tiny.npy"
    src.parent.mkdir()
    np.save(src, smooth_field(t=2, z=8, y=16, x=16))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert cli.main(["bench", str(src), "--codecs", "zstd", "-q"]) == 0
    assert sorted(p.name for p in (work / "tiny").iterdir()) == [
        "rd.csv",
        "rd.json",
        "rd.md",
        "rd.png",
    ]


def test_plot_marks_the_target_psnr_lines() -> None:
    pytest.importorskip("matplotlib")
    points = [_pt("sciinr", 35.0, 100.0), _pt("sciinr", 45.0, 20.0)]
    (ax,) = report.rd_figure(points, "t").axes
    flat = [ln.get_ydata() for ln in ax.lines if len(set(ln.get_ydata())) == 1]
    assert sorted(float(y[0]) for y in flat) == [40.0, 50.0, 60.0]
    assert [t.get_text() for t in ax.texts] == ["40 dB", "50 dB", "60 dB"]
    assert report.plot_png(points, "t")[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bench_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["bench", "no_such_dataset", "-o", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "not a known manifest" in err[0]
    assert not list(tmp_path.iterdir())
    assert cli.main(["bench", "small_theta_colpex", "--codecs", "zpaq", "-q"]) == 2
    assert "--codecs: unknown ['zpaq']" in capsys.readouterr().err


def test_all_prefers_upstream_tthresh_over_the_wasm_build(monkeypatch: pytest.MonkeyPatch) -> None:
    from sciinr.bench import run

    monkeypatch.setenv(bench_codecs.TTHRESH_ENV, sys.executable)  # any executable file
    names, notes = run._codec_names("all")
    assert "tthresh" in names
    assert "tthresh-wasm" not in names
    assert notes[0].startswith("tthresh-wasm left out")
    monkeypatch.setenv(bench_codecs.TTHRESH_ENV, "/nonexistent/tthresh")
    assert "tthresh-wasm" in run._codec_names("all")[0]
    assert run._codec_names("sz3, zstd") == (["sz3", "zstd"], [])
