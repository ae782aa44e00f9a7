"""The whole-field Tucker base and its coefficient coder."""

from __future__ import annotations

import numpy as np
import pytest

from sciinr.errors import FormatError
from sciinr.metrics import psnr
from sciinr.stages import coefficients as cc
from sciinr.stages import tucker

from ..conftest import smooth_field


def _target_mse(x: np.ndarray, db: float) -> float:
    return float(x.max() - x.min()) ** 2 * 10 ** (-db / 10)


@pytest.mark.parametrize("q", [[0, 1, -1, 15, -16, 17, 1023, -(2**38) + 1], [0, 0, 0]])
def test_classes_and_bits_round_trip(q):
    q = np.array(q, np.int64)
    cls = cc.classes(q)
    assert cls[q == 0].sum() == 0
    bits = cc.pack_bits(q, cls)
    assert bits.size == cc.n_bits(cls)
    back, pos = cc.unpack_bits(bits, cls, 0, "t")
    np.testing.assert_array_equal(back, q)
    assert pos == bits.size


def test_classes_at_powers_of_two():
    for e in range(4, 39):
        for v in (2**e - 1, 2**e, 2**e + 1):
            c = int(cc.classes(np.array([v]))[0])
            assert int(cc.log_class(np.array([c]))[0]) == int(np.floor(np.log2(v))) + 1


def test_magnitude_limit():
    with pytest.raises(ValueError, match="beyond"):
        cc.classes(np.array([2**40]))


def test_adaptive_classes_round_trip():
    rng = np.random.default_rng(1)
    steps = [
        (rng.integers(0, 4, n), np.minimum(rng.geometric(0.5, n) - 1, cc.N_CLASSES - 1))
        for n in (0, 5, 100, 3000)
    ]
    data = cc.encode_classes(iter(steps), 4)
    got = {}
    cc.decode_classes(data, len(steps), lambda k: steps[k][0], got.__setitem__, 4, "t")
    for k, (_, cls) in enumerate(steps):
        np.testing.assert_array_equal(got[k], cls)


@pytest.mark.parametrize("shape", [(4, 8, 16, 16), (1, 8, 16, 16), (6, 1, 16, 24), (1, 1, 9, 7)])
@pytest.mark.parametrize("db", [35.0, 50.0])
def test_fit_reaches_target_and_round_trips(shape, db):
    x = smooth_field(*shape)
    target = _target_mse(x, db)
    base = tucker.fit(x, target)
    rec = tucker.evaluate(base)
    reached = psnr(x, rec.astype(np.float32))
    assert reached >= db - 0.01
    if x.size >= 1000:  # a handful of coefficients cannot land finely
        assert reached <= db + 0.3
    meta, sections = tucker.encode(base)
    back = tucker.decode(meta, sections, x.shape)
    np.testing.assert_array_equal(back.core_q, base.core_q)
    for a, b in zip(back.factor_q, base.factor_q, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(tucker.evaluate(back), rec)


def test_region_and_samples_agree_with_the_whole():
    x = smooth_field(4, 8, 16, 16)
    base = tucker.fit(x, _target_mse(x, 40))
    full = tucker.evaluate(base)
    region = ((1, 3), (0, 8), (5, 9), (2, 16))
    np.testing.assert_allclose(
        tucker.evaluate(base, region), full[1:3, :, 5:9, 2:16], rtol=0, atol=1e-9
    )
    pts = np.array([[0, 0, 0, 0], [3, 7, 15, 15], [2, 3, 4, 5]], float)
    np.testing.assert_allclose(
        tucker.sample(base, pts), full[(0, 3, 2), (0, 7, 3), (0, 15, 4), (0, 15, 5)], atol=1e-9
    )
    # halfway along x: the mean of the two neighbours (multilinear interpolation)
    mid = tucker.sample(base, np.array([[2, 3, 4, 5.5]]))[0]
    assert mid == pytest.approx((full[2, 3, 4, 5] + full[2, 3, 4, 6]) / 2, abs=1e-9)


def test_longer_series_cost_less_per_step():
    """A basis that spans the time axis: 8 times the steps cost far less than 8 times the bytes."""
    short, long = smooth_field(4, 8, 16, 16), smooth_field(32, 8, 16, 16)
    size = []
    for x in (short, long):
        _, sections = tucker.encode(tucker.fit(x, _target_mse(x, 45)))
        size.append(sum(len(v) for v in sections.values()))
    assert size[1] < 2 * size[0]


def test_masked_voxels_do_not_count():
    x = smooth_field(4, 8, 16, 16)
    mask = np.ones(x.shape, bool)
    mask[:, :, :4, :4] = False
    y = np.where(mask, x, 1e20).astype(np.float32)
    base = tucker.fit(y, _target_mse(x, 40), mask=mask)
    rec = tucker.evaluate(base)
    err = (rec - x)[mask]
    assert 20 * np.log10(np.ptp(x)) - 10 * np.log10(np.mean(err**2)) >= 40 - 0.01


def _coded(x):
    base = tucker.fit(x, _target_mse(x, 40))
    return tucker.encode(base)


def test_declared_counts_beyond_the_bytes_are_refused():
    x = smooth_field(4, 8, 16, 16)
    meta, sections = _coded(x)
    big = dict(meta, ranks=[4, 8, 16, 16])
    huge_shape = (4096, 4096, 4096, 4096)
    with pytest.raises(FormatError, match="cannot carry"):
        tucker.decode(dict(meta, ranks=[4096, 4096, 4096, 4096]), sections, huge_shape)
    # a rank larger than its axis
    with pytest.raises(FormatError, match="ranks"):
        tucker.decode(dict(meta, ranks=[5, 8, 16, 16]), sections, x.shape)
    # plausible counts but the wrong streams: a clean FormatError, never garbage
    with pytest.raises(FormatError):
        tucker.decode(big, sections, x.shape)


@pytest.mark.parametrize("name", ["base_core", "base_factors", "base_bits", "base_columns"])
def test_damaged_sections_are_refused(name):
    x = smooth_field(4, 8, 16, 16)
    meta, sections = _coded(x)
    with pytest.raises(FormatError):
        tucker.decode(meta, {**sections, name: sections[name][:-4]}, x.shape)
    missing = {k: v for k, v in sections.items() if k != name}
    with pytest.raises(FormatError, match="missing"):
        tucker.decode(meta, missing, x.shape)


@pytest.mark.parametrize(
    ("key", "value"), [("step", 0.0), ("step", -1.0), ("rho", 0.9), ("kind", "x")]
)
def test_bad_meta_is_refused(key, value):
    x = smooth_field(4, 8, 16, 16)
    meta, sections = _coded(x)
    with pytest.raises(FormatError):
        tucker.decode(dict(meta, **{key: value}), sections, x.shape)


# ------------------------------------------------------------------ through the public API


def test_open_sample_and_resample_a_base_file():
    import sciinr

    x = smooth_field(4, 8, 16, 16)
    arr = sciinr.open(sciinr.compress(x, psnr=40))
    full = arr[...]
    pts = np.array([[1, 2, 3, 4], [1, 2, 3, 4.5], [0, 0, 0, 0]])
    got = arr.sample(pts)
    assert got[0] == pytest.approx(full[1, 2, 3, 4], abs=1e-5)
    assert got[1] == pytest.approx((full[1, 2, 3, 4] + full[1, 2, 3, 5]) / 2, abs=1e-5)
    fine = arr.resample(2)
    assert fine.shape == (7, 15, 31, 31)
    np.testing.assert_allclose(fine[::2, ::2, ::2, ::2], full, atol=1e-5)
    with pytest.raises(sciinr.InputError, match="points must be"):
        arr.sample(np.zeros((3, 2)))


def test_sampling_needs_a_base(tiny_config):
    import sciinr

    arr = sciinr.open(sciinr.compress(smooth_field(2, 8, 16, 16), config=tiny_config))
    with pytest.raises(sciinr.InputError, match="whole-field base"):
        arr.sample([[0, 0, 0, 0]])


def test_cli_decompress_scale(tmp_path, capsys):
    from sciinr.cli import main

    src, out, fine = tmp_path / "f.npy", tmp_path / "f.sinr", tmp_path / "fine.npy"
    np.save(src, smooth_field(4, 1, 16, 16))  # 2-D + time
    assert main(["compress", str(src), "-o", str(out), "-q"]) == 0
    assert main(["decompress", str(out), "-o", str(fine), "--scale", "3", "-q"]) == 0
    assert np.load(fine).shape == (10, 1, 46, 46)
    capsys.readouterr()


def test_effort_max_is_never_larger():
    import sciinr

    x = smooth_field(4, 8, 16, 16)
    sizes = {}
    for effort in ("default", "max"):
        blob = sciinr.compress(x, config=sciinr.Config(effort=effort))
        sizes[effort] = sum(sciinr.info(blob)["sections"].values())  # the header says "max"
    assert sizes["max"] <= sizes["default"]
    with pytest.raises(sciinr.ConfigError, match="effort"):
        sciinr.Config(effort="huge")
