"""Rate control: what a compression runs, packs and decodes, and the searches it uses."""

from __future__ import annotations

import numpy as np
import pytest

import sciinr
from sciinr import api, rate
from sciinr.metrics import psnr
from sciinr.stages import container, decode, residual

from .conftest import smooth_field, tiny


@pytest.fixture
def calls(monkeypatch):
    """Count the real calls of the pipeline's expensive steps (each still runs)."""
    seen: dict[str, list] = {"networks": [], "pack": [], "decode": []}

    def wrap(module, name, key, describe):
        real = getattr(module, name)

        def counted(*args, **kwargs):
            seen[key].append(describe(*args, **kwargs))
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)

    wrap(api, "encode_networks", "networks", lambda volume, cfg, **kw: cfg.psnr)
    wrap(container, "pack", "pack", lambda header, sections, version=None: len(sections))

    def region_and_dtype(model, region=None, device="cpu", dtype=np.float32):
        n = model.shape4 if region is None else tuple(b - a for a, b in region)
        return int(np.prod(n)), np.dtype(dtype).name

    wrap(decode, "decode", "decode", region_and_dtype)
    return seen


def test_plain_psnr_compression_runs_everything_once(calls):
    field = smooth_field()
    blob, report = api.compress_volume(sciinr.stages.read.read(field), tiny(psnr=30.0))
    assert report.psnr >= 30.0
    assert report.max_error is None  # no residual was needed
    assert calls["networks"] == [30.0]
    assert calls["pack"] == [len(container.unpack(blob)[1])]
    assert calls["decode"] == [(field.size, "float32")]  # the PSNR check, nothing else
    assert report.n_bytes == len(blob)


def test_default_whole_field_base_packs_once_and_fits_no_network(calls):
    field = smooth_field()
    blob, report = api.compress_volume(sciinr.stages.read.read(field), sciinr.Config(psnr=30.0))
    assert report.n_nets == 0  # the whole-field base served the target
    assert report.psnr >= 30.0
    assert calls["networks"] == []
    assert calls["pack"] == [len(container.unpack(blob)[1])]
    assert calls["decode"] == []  # the base's own evaluation measured the PSNR


def test_psnr_topup_decodes_the_float64_prediction_once(calls):
    field = smooth_field()
    cfg = tiny(psnr=45.0, **{"fit.max_steps": 5, "shrink.prune": 0.0})
    blob, report = api.compress_volume(sciinr.stages.read.read(field), cfg)
    assert report.max_error is not None
    assert report.psnr >= 45.0
    assert len(calls["networks"]) == 1
    assert len(calls["pack"]) == 1
    assert calls["decode"] == [(field.size, "float32"), (field.size, "float64")]
    assert psnr(field, sciinr.decompress(blob)) == pytest.approx(report.psnr, abs=1e-6)


def test_computed_sizes_equal_packed_sizes():
    field = smooth_field(t=2, z=4, y=8, x=8)
    header = {"a": [1, 2.5, "x"], "psnr": None}
    sections = {"one": field.tobytes(), "two": b"", "three": b"\x00" * 7}
    assert container.packed_size(header, sections) == len(container.pack(header, sections))


def test_ratio_search_keeps_the_finest_step_within_budget():
    # a file size that falls with the step like a real residual's: bits ~ log2(range / step)
    def size(step: float) -> int:
        return int(1000 + 100 * max(0.0, np.log2(1.0 / step)))

    step = rate.step_for_ratio(size, budget=1500.0, fine=1e-6, coarse=1.0)
    assert size(step) <= 1500 * (1 + rate.RATIO_TOLERANCE)
    assert size(step) >= 1500 * (1 - rate.RATIO_TOLERANCE)
    assert rate.step_for_ratio(size, budget=500.0, fine=1e-6, coarse=1.0) is None
    assert rate.step_for_ratio(size, budget=1e6, fine=1e-6, coarse=1.0) == 1e-6


def test_step_for_psnr_reaches_the_target_and_no_more_than_needed():
    rng = np.random.default_rng(0)
    original = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    prediction = original + rng.normal(0, 0.3, original.shape)
    vr = float(original.max() - original.min())
    step = rate.step_for_psnr(original, prediction, 50.0, vr)
    goal = original.size * vr**2 * 10 ** (-50.0 / 10)
    assert residual.squared_error(original, prediction, step) <= goal
    assert residual.squared_error(original, prediction, step * 1.1) > goal * 0.9


def test_network_psnr_follows_the_bound():
    cfg = sciinr.Config(psnr=40.0).replace(**{"bound.max_error": 1e-1})
    assert rate.max_error_of(cfg, 0.0, 10.0) == 1e-1
    # RMS of the bound's quantizer: 0.1 / sqrt(3) over a range of 10 -> ~44.8 dB > 40
    assert rate.network_psnr(cfg, 1e-1, 10.0) == 40.0
    assert rate.network_psnr(cfg, 1.0, 10.0) == pytest.approx(20 * np.log10(10 * 3**0.5 / 1.0))
    rel = sciinr.Config().replace(**{"bound.rel_error": 1e-2})
    assert rate.max_error_of(rel, 2.0, 6.0) == pytest.approx(4e-2)
