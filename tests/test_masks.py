"""Missing values end to end: masked arrays, ``_FillValue``/``missing_value``, NaN.

The mask is stored losslessly, the networks and the residual layer never see masked voxels,
PSNR and errors are over valid voxels, and decoding gives the mask back.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib

import h5py
import netCDF4
import numpy as np
import pytest
import torch

import sciinr
from sciinr import FormatError, InputError, scale
from sciinr.cli import main
from sciinr.metrics import psnr
from sciinr.stages import cluster, container, entropy, fit, partition, read, residual
from sciinr.stages import mask as mask_stage

from .conftest import smooth_field, tiny
from .test_cli import TINY

SHAPE = (2, 8, 16, 16)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _field() -> np.ndarray:
    return smooth_field(*SHAPE, seed=1)


def _masks() -> dict[str, np.ndarray]:
    """True = missing: 10 % random voxels, and a block-shaped "land" region (~10 %)."""
    rng = np.random.default_rng(5)
    land = np.zeros(SHAPE, bool)
    land[:, :, 10:, 11:] = True  # 6 x 5 of 16 x 16 = 11.7 %
    return {"random": rng.random(SHAPE) < 0.1, "land": land}


@pytest.mark.parametrize("base", ["none", "tucker"])
@pytest.mark.parametrize("kind", ["random", "land"])
def test_masked_array_round_trip(kind, base):
    field = _field()
    missing = _masks()[kind]
    data = field.copy()
    data[missing] = 1e20  # netCDF4's default fill: must not reach the fit or the PSNR
    cfg = tiny(30.0, **{"base.kind": base})  # block networks, or the whole-field base
    blob = sciinr.compress(np.ma.MaskedArray(data, mask=missing), config=cfg)
    out = sciinr.decompress(blob, device="cpu")
    assert isinstance(out, np.ma.MaskedArray)
    np.testing.assert_array_equal(np.ma.getmaskarray(out), missing)
    assert psnr(field, out.data, ~missing) >= 30.0
    assert np.isnan(out.data[missing]).all()  # no fill value declared: NaN under the mask
    meta = sciinr.info(blob)
    assert meta["missing_values"] == int(missing.sum())
    assert meta["format_version"] == "{}.{}".format(*mask_stage.VERSION)
    lo, hi = field[~missing].min(), field[~missing].max()
    assert meta["value_range"] == [float(lo), float(hi)]
    assert meta["psnr"] >= 30.0
    # a region decode reads its own part of the mask
    part = sciinr.decompress(blob, region=(1, slice(2, 7), slice(9, 16), slice(3, 14)))
    np.testing.assert_array_equal(np.ma.getmaskarray(part), missing[1, 2:7, 9:16, 3:14])
    np.testing.assert_allclose(part.data, out.data[1, 2:7, 9:16, 3:14], rtol=0, atol=1e-5)


@pytest.mark.parametrize("coding", mask_stage.CODINGS)
@pytest.mark.parametrize("kind", ["random", "static land", "moving ice"])
def test_mask_coding_round_trip(kind, coding):
    """Both codings decode to the same mask, for any region."""
    rng = np.random.default_rng(2)
    shape4 = (5, 3, 13, 11)  # a slab of 143 bits: rows do not end on a byte
    land = rng.random(shape4[2:]) < 0.3
    static = np.broadcast_to(~land, shape4[1:])
    valid = {
        "random": rng.random(shape4) > 0.1,
        "static land": np.broadcast_to(static, shape4).copy(),
        "moving ice": np.stack([np.roll(static, t, 2) for t in range(5)]),
    }[kind]
    meta, data = mask_stage.encode(valid, 1e20, coding)
    m = mask_stage.Mask.from_header(meta, {"mask": data}, shape4)
    rows = m.bits()
    np.testing.assert_array_equal(m.region(rows, tuple((0, s) for s in shape4)), valid)
    sub = ((1, 4), (2, 3), (3, 12), (0, 7))
    np.testing.assert_array_equal(m.region(rows, sub), valid[1:4, 2:3, 3:12, 0:7])
    best = mask_stage.encode(valid, None)[1]
    assert len(best) == min(len(mask_stage.encode(valid, None, c)[1]) for c in mask_stage.CODINGS)


def test_land_mask_section_is_small():
    field = _field()
    missing = _masks()["land"]
    blob = sciinr.compress(np.ma.MaskedArray(field, mask=missing), config=tiny(25.0))
    assert sciinr.info(blob)["sections"]["mask"] <= 40  # 4096 voxels, 512 bytes of bits


def test_fit_ignores_masked_values():
    """Values under the mask change nothing the fit does: same steps, same parameters."""
    field = _field()
    valid = ~_masks()["random"]
    volume = read.read(np.ma.MaskedArray(field, mask=~valid))
    tol = 0.05
    blocks = partition.partition(volume, tiny().partition, tol)
    assert blocks.mask is not None
    assert not blocks.mask.all()
    rng = np.random.default_rng(0)
    noisy = np.where(blocks.mask, blocks.values, rng.uniform(-1, 1, blocks.values.shape))
    other = dataclasses.replace(blocks, values=noisy.astype(np.float32))
    assignment = cluster.cluster(blocks, tiny().cluster)
    cfg = dataclasses.replace(tiny().fit, max_steps=60)
    vr = float(np.ptp(field[valid.reshape(field.shape)]))
    a = fit.fit(blocks, assignment, cfg, target_psnr=30.0, value_range=vr)
    b = fit.fit(other, assignment, cfg, target_psnr=30.0, value_range=vr)
    assert (a.steps, a.psnr) == (b.steps, b.psnr)
    for name, arr in a.arrays.items():
        np.testing.assert_array_equal(arr, b.arrays[name])
    # without the mask the noise is fitted: another result
    c = fit.fit(
        dataclasses.replace(other, mask=None), assignment, cfg, target_psnr=30.0, value_range=vr
    )
    assert not np.array_equal(c.arrays["w_out"], a.arrays["w_out"])


def test_partition_ranges_are_over_valid_voxels():
    field = _field()
    missing = _masks()["land"]
    data = field.copy()
    data[missing] = -5e3
    volume = read.read(np.ma.MaskedArray(data, mask=missing))
    assert volume.value_range == (float(field[~missing].min()), float(field[~missing].max()))
    assert volume.n_valid == int((~missing).sum())
    blocks = partition.partition(volume, tiny().partition, 0.05)
    assert blocks.lo.min() >= field[~missing].min() - 0.05
    assert blocks.n_values == volume.n_valid


def test_netcdf_fill_value_through_cli(tmp_path, capsys):
    field = _field()
    missing = _masks()["land"] | (_masks()["random"] & (field > 11))
    src = tmp_path / "in.nc"
    with netCDF4.Dataset(src, "w") as ds:
        for name, n in zip(("time", "z", "y", "x"), SHAPE, strict=True):
            ds.createDimension(name, n)
        v = ds.createVariable("sst", "f4", ("time", "z", "y", "x"), fill_value=-999.0)
        v.units = "K"
        v[...] = np.ma.MaskedArray(field, mask=missing)
    sinr = tmp_path / "f.sinr"
    assert main(["compress", str(src), "-o", str(sinr), "--var", "sst", "--psnr", "30", *TINY]) == 0
    for name in ("o.nc", "o.h5", "o.npy"):
        assert main(["decompress", str(sinr), "-o", str(tmp_path / name), "-q"]) == 0
    with netCDF4.Dataset(tmp_path / "o.nc") as ds:
        v = ds["sst"]
        assert (float(v._FillValue), v.units) == (-999.0, "K")
        got = v[...]
    np.testing.assert_array_equal(np.ma.getmaskarray(got), missing)
    assert psnr(field, got.data, ~missing) >= 30.0
    assert (got.data[missing] == -999.0).all()
    with h5py.File(tmp_path / "o.h5") as fh:
        assert float(fh["sst"].attrs["_FillValue"]) == -999.0
        np.testing.assert_array_equal(fh["sst"][()] == -999.0, missing)
    np.testing.assert_array_equal(np.isnan(np.load(tmp_path / "o.npy")), missing)
    # the HDF5 output reads back with the same mask (h5py does not mask: the reader does)
    again = read.read(tmp_path / "o.h5")
    np.testing.assert_array_equal(again.mask.reshape(SHAPE), ~missing)


def test_nan_npy_input(tmp_path):
    field = _field()
    missing = _masks()["random"]
    src = tmp_path / "f.npy"
    np.save(src, np.where(missing, np.nan, field).astype(np.float32))
    out = tmp_path / "f.sinr"
    sciinr.compress(src, config=tiny(30.0), out=out)
    got = sciinr.decompress(out)
    np.testing.assert_array_equal(np.ma.getmaskarray(got), missing)
    assert psnr(field, got.data, ~missing) >= 30.0
    result = sciinr.api.verify(read.read(src), sciinr.open(out))
    assert result["failures"] == []
    assert result["psnr"] >= 30.0


def test_verify_reports_a_different_mask(tmp_path):
    field = _field()
    missing = _masks()["land"]
    out = tmp_path / "f.sinr"
    sciinr.compress(np.ma.MaskedArray(field, mask=missing), config=tiny(25.0), out=out)
    result = sciinr.api.verify(read.read(field), sciinr.open(out))
    assert result["failures"] == [
        f"mask differs from the original's at {missing.sum()} values (full field)"
    ]


@pytest.mark.parametrize("source", ["masked", "nan"])
def test_all_missing_is_a_constant_masked_output(source):
    field = _field()
    data = (
        np.ma.MaskedArray(field, mask=np.ones(SHAPE, bool))
        if source == "masked"
        else np.full(SHAPE, np.nan, np.float32)
    )
    blob = sciinr.compress(data, config=tiny(30.0))
    out = sciinr.decompress(blob)
    assert isinstance(out, np.ma.MaskedArray)
    assert out.mask.all()
    meta = sciinr.info(blob)
    assert (meta["missing_values"], meta["networks"]) == (field.size, 0)
    assert meta["value_range"] == [0.0, 0.0]


def test_infinity_is_refused():
    field = _field()
    field[0, 0, 0, :3] = [np.inf, -np.inf, np.nan]
    with pytest.raises(InputError, match="has 2 infinite values"):
        read.read(field)
    # under a mask an infinity is just a masked value
    masked = np.ma.MaskedArray(field, mask=~np.isfinite(field))
    assert read.read(masked).n_valid == field.size - 3


def test_hdf5_fill_attributes_mask(tmp_path):
    field = _field()
    p = tmp_path / "f.h5"
    with h5py.File(p, "w") as fh:
        a = fh.create_dataset("a", data=np.where(field > 12, -1e30, field).astype(np.float32))
        a.attrs["_FillValue"] = np.float32(-1e30)
        b = fh.create_dataset("b", data=np.where(field < 9, 7777.0, field).astype(np.float32))
        b.attrs["missing_value"] = np.float32(7777.0)
    va, vb = read.read(p, var="a"), read.read(p, var="b")
    np.testing.assert_array_equal(va.mask.reshape(SHAPE), field <= 12)
    np.testing.assert_array_equal(vb.mask.reshape(SHAPE), field >= 9)
    assert (va.fill_value, vb.fill_value) == (float(np.float32(-1e30)), 7777.0)
    assert np.isfinite(va.data).all()
    assert va.value_range[1] <= 12


def test_no_missing_values_no_mask(tmp_path):
    field = _field()
    plain = sciinr.compress(field, config=tiny(25.0))
    nothing_masked = sciinr.compress(
        np.ma.MaskedArray(field, mask=np.zeros(SHAPE, bool)), config=tiny(25.0)
    )
    assert plain == nothing_masked
    assert container.version_of(plain) == container.BASE_VERSION
    assert not isinstance(sciinr.decompress(plain), np.ma.MaskedArray)


def test_error_bound_holds_on_valid_voxels():
    field = _field()
    missing = _masks()["land"]
    data = field.copy()
    data[missing] = 1e20
    bound = 0.01
    blob = sciinr.compress(
        np.ma.MaskedArray(data, mask=missing), config=tiny(25.0), max_error=bound
    )
    out = sciinr.decompress(blob)
    np.testing.assert_array_equal(np.ma.getmaskarray(out), missing)
    err = np.abs(out.data[~missing].astype(np.float64) - field[~missing])
    assert err.max() <= bound
    assert sciinr.info(blob)["max_error"] == bound


def test_residual_ignores_masked_voxels():
    """The residual layer's bytes do not depend on the values under the mask."""
    field = _field()
    valid = ~_masks()["land"]
    rng = np.random.default_rng(1)
    prediction = field.astype(np.float64) + rng.normal(0, 0.05, SHAPE)
    other = np.where(valid, field, rng.normal(0, 1e6, SHAPE)).astype(np.float32)

    def coded(original, mask):
        corr = residual.fit(original, prediction, 0.01, chunk=(2, 8, 8, 8), valid=mask)
        return corr, entropy.encode_residual(corr)[1]

    a, a_sections = coded(field, valid)
    b, b_sections = coded(other, valid)
    assert a_sections == b_sections
    assert (a.sse, a.n_exact) == (b.sse, 0)
    _, unmasked = coded(other, None)
    assert sum(map(len, unmasked.values())) > sum(map(len, a_sections.values()))


def _reseal(blob: bytes, edit) -> bytes:
    """Apply ``edit`` to the header JSON of ``blob`` and fix the header checksum."""
    (head_len,) = struct.unpack_from("<I", blob, 12)
    header = json.loads(blob[16 : 16 + head_len])
    edit(header)
    head = json.dumps(header, separators=(",", ":")).encode()
    prefix = blob[:12] + struct.pack("<I", len(head)) + head
    return prefix + struct.pack("<I", zlib.crc32(prefix)) + blob[16 + head_len + 4 :]


def test_corrupted_mask_entry_is_refused():
    field = _field()
    blob = sciinr.compress(np.ma.MaskedArray(field, mask=_masks()["land"]), config=tiny(25.0))
    wrong_count = _reseal(blob, lambda h: h["mask"].update(valid=h["mask"]["valid"] - 1))
    with pytest.raises(FormatError, match="'mask' \\(its count of valid voxels disagrees\\)"):
        sciinr.decompress(wrong_count)
    too_many = _reseal(blob, lambda h: h["mask"].update(valid=field.size + 1))
    with pytest.raises(FormatError, match="mask valid"):
        sciinr.open(too_many)
    no_entry = _reseal(blob, lambda h: h["mask"].update(fill_value="x"))
    with pytest.raises(FormatError, match="mask fill_value"):
        sciinr.open(no_entry)


def test_mask_bits_budget_is_fixed_by_the_shape():
    """A section claiming more bytes than the shape needs is refused before decompressing."""
    shape4 = (1, 1, 4, 5)
    big = mask_stage.encode(np.ones((1, 1, 40, 50), bool), None)[1]
    meta = {"valid": 20, "fill_value": None, "coding": "bits"}
    m = mask_stage.Mask.from_header(meta, {"mask": big}, shape4)
    with pytest.raises(FormatError, match="corrupted section 'mask'"):
        m.bits()


def test_mask_bits_count_in_the_decode_budget():
    """A header whose mask would need more memory than the file may cost is refused at open."""
    blob = sciinr.compress(np.full((8, 8), np.nan, np.float32), config=tiny(30.0))
    side = 1 << 20

    def huge(h):
        h["shape"] = [side, side]
        h["model"]["shape4"] = h["model"]["block"] = [1, 1, side, side]

    with pytest.raises(FormatError, match="a model and a mask of 1099511627776 values"):
        sciinr.open(_reseal(blob, huge))


def test_parallel_decode_keeps_the_mask(tmp_path):
    pytest.importorskip("dask")
    from sciinr import parallel

    field = _field()
    missing = _masks()["land"]
    sinr = tmp_path / "f.sinr"
    sciinr.compress(np.ma.MaskedArray(field, mask=missing), config=tiny(25.0), out=sinr)
    arr = sciinr.open(sinr, device="cpu")
    out = parallel.decode(arr, (1, slice(2, 7)), workers=2)
    np.testing.assert_array_equal(np.ma.getmaskarray(out), missing[1, 2:7])
    np.testing.assert_allclose(out.data, arr[1, 2:7].data, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(np.ma.getmaskarray(arr.to_dask().compute()), missing)
    nc = tmp_path / "o.nc"
    assert main(["decompress", str(sinr), "-o", str(nc), "--workers", "2", "-q"]) == 0
    with netCDF4.Dataset(nc) as ds:
        np.testing.assert_array_equal(np.ma.getmaskarray(ds["data"][...]), missing)


def test_streaming_compression_refuses_missing_values_clearly(tmp_path):
    src = tmp_path / "f.npy"
    np.save(src, np.where(_masks()["land"], np.nan, _field()).astype(np.float32))
    cfg = tiny(25.0).replace(**{"scale.group_values": 2048})
    with pytest.raises(InputError, match="NaN values, which out-of-core compression"):
        scale.compress_source(src, cfg)


def test_psnr_topup_reaches_the_target_over_valid_voxels():
    field = _field()
    missing = _masks()["random"]
    data = field.copy()
    data[missing] = 1e20
    cfg = tiny(45.0, **{"fit.max_steps": 5, "shrink.prune": 0.0})  # networks fall short
    blob = sciinr.compress(np.ma.MaskedArray(data, mask=missing), config=cfg)
    out = sciinr.decompress(blob)
    assert sciinr.info(blob)["residual"]["mode"] == "psnr"
    np.testing.assert_array_equal(np.ma.getmaskarray(out), missing)
    assert psnr(field, out.data, ~missing) >= 45.0
