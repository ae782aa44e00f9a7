import numpy as np
import pytest

from sciinr import FormatError
from sciinr.metrics import rmse_for_psnr
from sciinr.payloads import Model
from sciinr.stages import cluster, encode, fit, partition, read, shrink

from ..conftest import smooth_field, tiny


@pytest.fixture(scope="module")
def pipeline():
    cfg = tiny(
        psnr=28.0,
        **{"fit.max_steps": 200, "shrink.recovery_steps": 50, "shrink.finetune_steps": 50},
    )
    field = smooth_field()
    vol = read.read(field)
    vr = float(field.max() - field.min())
    blocks = partition.partition(vol, cfg.partition, rmse_for_psnr(cfg.psnr, vr))
    asg = cluster.cluster(blocks, cfg.cluster)
    fitted = fit.fit(blocks, asg, cfg.fit, target_psnr=cfg.psnr, value_range=vr)
    small = shrink.shrink(
        blocks, asg, fitted, cfg.shrink, cfg.fit, target_psnr=cfg.psnr, value_range=vr
    )
    return blocks, fitted, small


def test_shared_model_roundtrip_is_exact(pipeline):
    blocks, fitted, small = pipeline
    assert small.codebooks
    model = Model.from_fit(blocks, fitted, arrays=small.arrays)
    meta, sections = encode.encode_model(model, small)
    back = encode.decode_model(meta, sections)
    for name, arr in small.arrays.items():
        np.testing.assert_array_equal(back.arrays[name], arr)
    np.testing.assert_array_equal(back.lo, blocks.lo)
    np.testing.assert_array_equal(back.hi, blocks.hi)
    np.testing.assert_array_equal(back.trivial, blocks.trivial)
    np.testing.assert_array_equal(back.block_net, fitted.block_net)


def test_float16_model_roundtrip(pipeline):
    blocks, fitted, _ = pipeline
    meta, sections = encode.encode_model(Model.from_fit(blocks, fitted))
    back = encode.decode_model(meta, sections)
    for name, arr in fitted.arrays.items():
        np.testing.assert_allclose(back.arrays[name], arr, rtol=1e-3, atol=1e-4)


def test_inconsistent_sections_are_format_errors(pipeline):
    blocks, fitted, small = pipeline
    meta, sections = encode.encode_model(Model.from_fit(blocks, fitted, small.arrays), small)
    swapped = dict(sections)
    swapped["idx_w_in"], swapped["idx_w_out"] = sections["idx_w_out"], sections["idx_w_in"]
    with pytest.raises(FormatError):
        encode.decode_model(meta, swapped)
    missing = {k: v for k, v in sections.items() if k != "latent_q"}
    with pytest.raises(FormatError, match="missing"):
        encode.decode_model(meta, missing)
    bad = dict(meta, codebook_sizes=[5000] * len(meta["codebook_sizes"]))
    with pytest.raises(FormatError, match="codebook"):
        encode.decode_model(bad, sections)


def test_block_constants_cover_block_ranges(pipeline):
    blocks, _, _ = pipeline
    field = smooth_field()
    flat = partition.to_blocks(read.read(field).data, blocks.block)
    assert (blocks.lo <= flat.min(1)).all()
    assert (blocks.hi >= flat.max(1)).all()
