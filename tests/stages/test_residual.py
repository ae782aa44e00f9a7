"""The residual layer: the error bound holds at every voxel, for every kind of decode."""

import numpy as np
import pytest
import torch

import sciinr
from sciinr import Config, ConfigError, FormatError
from sciinr.metrics import psnr
from sciinr.nets import block_bias, fold, local_coords, siren_eval
from sciinr.stages import container, entropy, residual

from ..conftest import smooth_field, tiny

CHUNK = (2, 4, 8, 8)


def _fast(**changes) -> Config:
    base = {"fit.samples_per_net": 256, "fit.eval_every": 10, "fit.max_steps": 20}
    return tiny(**{**base, "bound.split": (1,), **changes})


def _front(shape=(3, 8, 16, 16)) -> np.ndarray:
    """A sharp front moving in time: a jump of 100 over one voxel, plus a gentle slope."""
    t, z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (np.where(x + 0.5 * y > 6 + 3 * t, 100.0, 0.0) + 0.1 * z).astype(np.float32)


def _code(original, prediction, max_error, margin=0.0, chunk=CHUNK):
    """fit -> entropy coding -> the reader of the coded sections, as a file gets them."""
    corr = residual.fit(original, prediction, max_error, chunk=chunk, margin=margin)
    meta, sections = entropy.encode_residual(corr)
    return corr, meta, sections, entropy.ResidualCodes(meta, sections, original.shape)


def _check_layer(original, prediction, max_error, margin=0.0, chunk=CHUNK):
    corr, meta, sections, layer = _code(original, prediction, max_error, margin, chunk)
    full = tuple((0, s) for s in original.shape)
    out = residual.apply(prediction, layer, full)
    assert out.dtype == np.float32
    assert np.abs(out.astype(np.float64) - original).max() <= max_error
    residual.check(original, prediction, layer)
    region = tuple((n // 3, n - n // 4) for n in original.shape)
    sub = residual.apply(prediction[tuple(slice(a, b) for a, b in region)], layer, region)
    np.testing.assert_array_equal(sub, out[tuple(slice(a, b) for a, b in region)])
    return corr, meta, sections, out


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_bound_holds_on_random_fields(scale):
    rng = np.random.default_rng(1)
    original = (rng.standard_normal((3, 8, 16, 16)) * scale).astype(np.float32)
    # a poor prediction with heavy tails: exercises large integers and escapes
    prediction = original + rng.standard_cauchy(original.shape) * scale * 0.1
    corr, meta, _, _ = _check_layer(original, prediction, 1e-3 * scale)
    assert corr.n_exact == 0
    assert meta["alphabet_half"] >= 1


def test_bound_holds_on_sharp_fronts():
    original = _front()
    smooth = np.full(original.shape, original.mean(), np.float64)  # misses the front entirely
    _check_layer(original, smooth, 0.01)
    _check_layer(original, smooth, 1e-6)  # below float32 spacing at 100: exact voxels


def test_interpolation_and_lorenzo_chunks_both_decode_within_bound():
    t, z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in (2, 8, 32, 32)], indexing="ij")
    field = (100 * (x**2 + 0.5 * y**2 - 0.3 * x * y + 0.2 * z + 0.1 * t)).astype(np.float32)
    flat = np.full(field.shape, float(field.mean()))
    noisy = field + np.random.default_rng(2).normal(0, 30, field.shape)
    for prediction, bound in ((flat, 1.0), (noisy, 0.5)):
        *_, layer = _code(field, prediction, bound, chunk=field.shape)
        _check_layer(field, prediction, bound, chunk=field.shape)
        used = set(layer.index["transform"][layer.index["method"] != 0].tolist())
        assert used, "nothing was coded"
        if prediction is flat:  # a smooth residual at a coarse bound: interpolation wins
            assert max(used) >= len(residual.TRANSFORMS)
        else:  # noise: a Lorenzo transform of the quantized values
            assert max(used) < len(residual.TRANSFORMS)


def test_integers_beyond_the_quantizer_store_voxels_exactly():
    original = np.full((2, 4, 8, 8), 1.0e6, np.float32)
    original[0, 0, 0, :4] += np.float32(0.0625) * np.arange(4, dtype=np.float32)
    # |residual| / step ~ 1e10 > 2**31: those voxels are stored as they are
    corr, _, _, out = _check_layer(original, np.zeros(original.shape), 1e-4)
    assert corr.n_exact == original.size
    np.testing.assert_array_equal(out, original)


def test_all_zero_residual_costs_almost_nothing():
    original = smooth_field(t=2, z=4, y=16, x=16)
    _, _, sections, out = _check_layer(original, original.astype(np.float64), 0.5)
    assert sections["residual_codes"] == b""
    np.testing.assert_array_equal(out, original)


def test_forward_error_bound_covers_float32_evaluation():
    """The rigorous bound (float32 roundoff) covers a real float32 evaluation."""
    field = smooth_field(t=2, z=8, y=16, x=16)
    blob = sciinr.compress(field, config=_fast(**{"bound.max_error": 0.1}))
    arr = sciinr.open(blob)
    model = arr.model
    bound32 = residual.forward_error_bound(model, unit_roundoff=2.0**-24)
    bound64 = residual.forward_error_bound(model)
    assert np.all(bound64 < bound32 * 1e-8)
    ids = torch.arange(model.net.n_blocks)
    nets = torch.from_numpy(model.block_net)
    y = {}
    for dt in (torch.float32, torch.float64):
        params = {k: torch.from_numpy(v).to(dt) for k, v in model.arrays.items()}
        coords = local_coords(model.block, dtype=dt)
        bias = block_bias(params, params["latents"], model.net, nets, ids).unsqueeze(1)
        folded = fold(params, model.net).select(nets)
        y[dt] = siren_eval(folded, bias, coords).double()
    diff = (y[torch.float32] - y[torch.float64]).abs().amax(dim=1).numpy()
    assert np.all(diff <= bound32[model.block_net])
    assert 0 < residual.prediction_margin(model) < 1e-9 * (field.max() - field.min())


@pytest.fixture(scope="module")
def undertrained():
    """A random field and one network trained for a single step, bounded by 1e-2 of range."""
    rng = np.random.default_rng(3)
    field = (rng.standard_normal((4, 8, 16, 16)) * 5 + 20).astype(np.float32)
    cfg = _fast(**{"fit.max_steps": 1, "bound.rel_error": 1e-2})
    return field, sciinr.compress(field, config=cfg)


def test_bound_holds_with_undertrained_network(undertrained):
    field, blob = undertrained
    bound = 1e-2 * float(field.max() - field.min())
    info = sciinr.info(blob)
    assert info["max_error"] == pytest.approx(bound)
    assert info["residual"]["residual_bytes"] > 0
    full = sciinr.decompress(blob)
    assert np.abs(full.astype(np.float64) - field).max() <= bound
    for t in range(field.shape[0]):
        step = sciinr.decompress(blob, time=t)
        assert np.abs(step.astype(np.float64) - field[t]).max() <= bound
    region = sciinr.decompress(blob, region="1:3, 2:7, 3:15, ::3")
    assert np.abs(region.astype(np.float64) - field[1:3, 2:7, 3:15, ::3]).max() <= bound
    assert sciinr.info(blob)["psnr"] == pytest.approx(psnr(field, full), abs=1e-6)


def test_bound_holds_on_front_through_the_pipeline():
    field = _front()
    blob = sciinr.compress(field, config=_fast(**{"bound.split": (0, 1)}), max_error=0.05)
    assert np.abs(sciinr.decompress(blob).astype(np.float64) - field).max() <= 0.05
    step = sciinr.decompress(blob, time=1)
    assert np.abs(step.astype(np.float64) - field[1]).max() <= 0.05
    tried = container.unpack(blob)[0]["residual"]["tried"]
    assert [t["split"] for t in tried] == [0, 1]
    total = min(t["network_bytes"] + t["residual_bytes"] for t in tried)
    kept = sciinr.info(blob)["residual"]
    assert kept["network_bytes"] + kept["residual_bytes"] == total


def test_psnr_target_is_met_from_above_by_the_residual():
    field = smooth_field()
    cfg = _fast(**{"fit.max_steps": 5}).replace(psnr=45.0)
    blob = sciinr.compress(field, config=cfg)
    reached = psnr(field, sciinr.decompress(blob))
    assert 45.0 <= reached <= 45.5
    info = sciinr.info(blob)
    assert info["residual"]["mode"] == "psnr"
    assert info["residual"]["network_psnr"] < 45.0
    assert np.abs(sciinr.decompress(blob).astype(np.float64) - field).max() <= info["max_error"]


def test_ratio_lands_within_five_percent():
    field = smooth_field(t=4, z=16, y=32, x=32)
    blob = sciinr.compress(field, config=_fast(**{"bound.split": (0,)}), ratio=8.0)
    got = sciinr.info(blob)["ratio"]
    assert 8.0 * 0.95 <= got <= 8.0 * 1.05
    out = sciinr.decompress(blob)
    assert np.abs(out.astype(np.float64) - field).max() <= sciinr.info(blob)["max_error"]


def test_unreachable_ratio_is_a_clear_error():
    field = smooth_field(t=2, z=4, y=8, x=8)
    with pytest.raises(ConfigError, match="out of reach"):
        sciinr.compress(field, config=_fast(**{"bound.split": (0,)}), ratio=5000.0)


def test_corrupted_residual_header_is_refused(undertrained):
    _, blob = undertrained
    header, sections = container.unpack(blob)
    for key, value in (("chunks", 3), ("step", -1.0), ("version", 99), ("exact_voxels", 5)):
        bad = {**header, "residual": {**header["residual"], key: value}}
        with pytest.raises(FormatError):
            sciinr.open(container.pack(bad, sections))
    missing = {k: v for k, v in sections.items() if k != "residual_codes"}
    with pytest.raises(FormatError, match="missing sections"):
        sciinr.open(container.pack(header, missing))


def test_garbled_residual_codes_are_refused(undertrained):
    _, blob = undertrained
    header, sections = container.unpack(blob)
    codes = bytearray(sections["residual_codes"])
    codes[: len(codes) // 2] = bytes(len(codes) // 2)  # zero half of the code words
    bad = container.pack(header, {**sections, "residual_codes": bytes(codes)})
    with pytest.raises(FormatError, match="residual_codes"):
        sciinr.decompress(bad)


def test_bound_options_are_validated():
    with pytest.raises(ConfigError, match="at most one"):
        Config().replace(**{"bound.max_error": 1.0, "bound.ratio": 10.0})
    with pytest.raises(ConfigError, match="rel_error"):
        Config().replace(**{"bound.rel_error": 2.0})
    with pytest.raises(ConfigError, match="split"):
        Config().replace(**{"bound.split": (1, 1)})
    cfg = Config().replace(**{"bound.rel_error": 1e-3, "bound.split": (0, 2)})
    assert Config.from_dict(cfg.to_dict()) == cfg
