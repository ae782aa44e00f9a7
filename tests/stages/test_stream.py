"""Out-of-core: streaming partition, group plans, streamed and distributed compression."""

from __future__ import annotations

import math

import h5py
import netCDF4
import numpy as np
import pytest

import sciinr
from sciinr import ConfigError, InputError, cli, scale
from sciinr.metrics import psnr, rmse_for_psnr
from sciinr.stages import container, partition, read, stream

from ..conftest import smooth_field, tiny


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    d = smooth_field(t=6, z=9, y=16, x=13)
    d[:, :, :8, :] = 2.0  # constant (trivial) blocks
    return d


@pytest.fixture(scope="module")
def h5_path(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "f.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("rho", data=data, chunks=(1, 9, 16, 13), compression="gzip")
    return path


def test_streaming_partition_equals_in_memory(data, h5_path):
    cfg = tiny()
    vol = read.read(data)
    lo, hi = vol.value_range
    tol = rmse_for_psnr(cfg.psnr, hi - lo)
    want = partition.partition(vol, cfg.partition, tol)
    fld = stream.open_field(h5_path)
    assert fld.shape4 == data.shape
    assert fld.file_chunks == (1, 9, 16, 13)
    stats = stream.BlockStats(want.grid, want.block)
    stream.scan(fld, want.block, 3 * math.prod(want.block), [stats])  # slabs of 3 blocks
    flat = partition.to_blocks(data, want.block)
    np.testing.assert_array_equal(stats.lo, flat.min(axis=1))
    np.testing.assert_array_equal(stats.hi, flat.max(axis=1))
    consts, trivial = stream.constants(stats, cfg.partition, tol)
    np.testing.assert_array_equal(trivial, want.trivial)
    np.testing.assert_array_equal(consts.lo_q, want.consts.lo_q)
    np.testing.assert_array_equal(consts.hi_q, want.consts.hi_q)
    with fld.reader() as r:
        whole = r.read(((0, 6), (0, 9), (0, 16), (0, 13)))
    got = stream.box_blocks(whole, want.block, consts, trivial)
    np.testing.assert_array_equal(got.values, want.values)
    assert got.trivial_sse == want.trivial_sse


def test_group_blocks_are_the_in_memory_blocks(data, h5_path):
    cfg = tiny(**{"scale.group_values": 3 * 2 * 8 * 8 * 8})
    vol = read.read(data)
    lo, hi = vol.value_range
    want = partition.partition(vol, cfg.partition, rmse_for_psnr(cfg.psnr, hi - lo))
    fld, jobs = scale.plan(stream.open_field(h5_path), cfg, distributed=False)
    assert fld.value_range == (lo, hi)
    assert len(jobs) > 2
    values = np.concatenate([j.blocks().values for j in jobs])
    np.testing.assert_array_equal(values, want.values)  # every fitted block once, in order


@pytest.mark.parametrize("grid", [(3, 2, 2, 2), (1, 5, 3, 7), (7, 1, 1, 1)])
@pytest.mark.parametrize("max_blocks", [1, 2, 5, 12, 1000])
def test_plan_boxes_cover_every_block_once(grid, max_blocks):
    boxes = stream.plan_boxes(grid, max_blocks)
    seen = []
    for cells in boxes:
        n = math.prod(e - a for a, e in cells)
        ids = stream.block_ids(cells, grid)
        assert len(ids) == n
        want = np.ravel_multi_index(
            tuple(
                g.ravel() for g in np.meshgrid(*[np.arange(a, e) for a, e in cells], indexing="ij")
            ),
            grid,
        )
        np.testing.assert_array_equal(np.sort(want), np.arange(ids.start, ids.stop))
        rows = math.prod(
            grid[next(i for i, (a, e) in enumerate(cells) if e - a > 1 or i == 3) + 1 :]
        )
        assert n <= max(max_blocks, rows)
        seen.extend(ids)
    assert seen == list(range(math.prod(grid)))


def test_netcdf_stream_reads_what_read_reads(data, tmp_path):
    path = tmp_path / "f.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        for name, n in zip(("lev", "lat", "lon"), data.shape[1:], strict=True):
            ds.createDimension(name, n)
        v = ds.createVariable("q", "i2", ("time", "lev", "lat", "lon"))
        v.scale_factor, v.add_offset = 0.001, 8.0
        v[:] = data
    want = read.read(path)
    fld = stream.open_field(path)
    assert (fld.has_time, fld.dims, fld.orig_shape) == (True, want.dims, want.orig_shape)
    assert fld.attrs == want.attrs
    with fld.reader() as r:
        box = ((1, 4), (2, 9), (0, 16), (5, 13))
        np.testing.assert_array_equal(r.read(box), want.data[1:4, 2:9, :, 5:13])


def test_one_group_gives_the_in_memory_file(data, h5_path):
    cfg = tiny()
    blob = sciinr.compress(h5_path, config=cfg)
    streamed = sciinr.compress(h5_path, config=cfg, memory_limit=2 << 30)
    h0, s0 = container.unpack(blob)
    h1, s1 = container.unpack(streamed)
    assert s1 == s0  # the same networks, constants and codes
    assert h1["psnr"] == pytest.approx(h0["psnr"], abs=1e-9)
    assert h1["config"]["scale"] == {"memory_limit": 2 << 30}


@pytest.fixture(scope="module")
def grouped(h5_path):
    cfg = tiny(**{"scale.group_values": 4 * 2 * 8 * 8 * 8})
    blob, report = scale.compress_source(h5_path, cfg)
    return cfg, blob, report


def test_groups_reach_the_target_and_decode(data, grouped):
    cfg, blob, report = grouped
    arr = sciinr.open(blob)
    measured = psnr(data, arr[...])
    assert measured == pytest.approx(arr.psnr, abs=1e-6)
    assert measured == pytest.approx(report.psnr, abs=1e-6)
    assert measured >= cfg.psnr
    assert report.n_nets >= 3


def test_distributed_fit_gives_the_serial_file(h5_path, grouped):
    pytest.importorskip("distributed")
    cfg, blob, _ = grouped
    on_cluster, _ = scale.compress_source(h5_path, cfg, workers=2, processes=False)
    assert on_cluster == blob


def test_limits_and_bounds_are_checked(h5_path):
    with pytest.raises(ConfigError, match="too small"):
        sciinr.compress(h5_path, config=tiny(), memory_limit=100 << 20)
    with pytest.raises(ConfigError, match="in memory"):
        sciinr.compress(h5_path, config=tiny(), memory_limit=2 << 30, max_error=0.1)
    with pytest.raises(InputError, match="no such file"):
        sciinr.compress(h5_path.with_name("nope.h5"), config=tiny(), memory_limit=2 << 30)
    with pytest.raises(ConfigError, match="positive"):
        tiny(**{"scale.group_values": 0})


def test_cli_compress_memory_limit(h5_path, tmp_path, capsys):
    out = tmp_path / "f.sinr"
    args = ["compress", str(h5_path), "-o", str(out), "--psnr", "30", "--memory-limit", "2GB"]
    args += ["--block", "2,8,8,8", "--width", "16", "--depth", "1", "--max-steps", "600"]
    args += ["--prune-steps", "1", "--recovery-steps", "100", "--finetune-steps", "100"]
    assert cli.main(args) == 0
    assert "ratio" in capsys.readouterr().out
    assert sciinr.info(out)["shape"] == [6, 9, 16, 13]
    # the whole-field base is fitted in memory only: the header says what was done
    assert sciinr.open(out).header["config"]["base"] == {"kind": "none"}
    with pytest.raises(SystemExit):
        cli.main(["compress", str(h5_path), "-o", str(out), "--memory-limit", "lots"])


def test_memory_limit_sets_the_group_size():
    gib = 1 << 30
    free = gib - scale.BASE_BYTES - stream.CACHE_MAX
    assert scale.group_values(tiny(**{"scale.memory_limit": gib}), False) == free // 20
    both = tiny(**{"scale.memory_limit": gib, "scale.group_values": 1000})
    assert scale.group_values(both, True) == 1000
    assert scale.group_values(tiny(), True) == scale.DEFAULT_GROUP_VALUES
    fld = stream.open_field(smooth_field(t=64, z=16, y=16, x=16))
    _, jobs = scale.plan(fld, tiny(**{"scale.group_values": 40 * 2 * 8 * 8 * 8}), True)
    sizes = [math.prod(b - a for a, b in j.voxels) for j in jobs]
    assert len(jobs) == 7  # 32 time rows of 8 blocks, at most 40 blocks (5 rows) per group
    assert max(sizes) <= 40 * 2 * 8 * 8 * 8
    assert sum(sizes) == 64 * 16**3
    assert {j.cells[0][1] - j.cells[0][0] for j in jobs} == {4, 5}  # balanced time windows
