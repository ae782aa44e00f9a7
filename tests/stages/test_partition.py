import numpy as np

from sciinr.config import PartitionConfig
from sciinr.stages import partition, read


def test_blocks_cover_field_and_normalize(field):
    vol = read.read(field)
    blocks = partition.partition(vol, PartitionConfig(block=(2, 8, 8, 8)), tolerance=0.0)
    assert blocks.grid == (2, 1, 2, 2)
    assert blocks.n_fit == blocks.n_blocks
    assert blocks.values.min() >= -1
    assert blocks.values.max() <= 1
    flat = partition.to_blocks(vol.data, blocks.block)
    back = partition.denormalize(blocks.values, blocks.lo[:, None], blocks.hi[:, None])
    np.testing.assert_allclose(back, flat, rtol=1e-5, atol=1e-5)


def test_edge_blocks_are_padded_and_masked():
    data = np.arange(3 * 5 * 7 * 9, dtype=np.float32).reshape(3, 5, 7, 9)
    vol = read.read(data)
    blocks = partition.partition(vol, PartitionConfig(block=(2, 4, 4, 4)), tolerance=0.0)
    assert blocks.grid == (2, 2, 2, 3)
    mask = partition.valid_mask(vol.data.shape, blocks.block, np.arange(blocks.n_blocks))
    assert mask.sum() == data.size


def test_trivial_blocks_and_their_error():
    data = np.zeros((2, 8, 8, 8), np.float32)
    data[:, :4] = 5.0
    data[0, 0, 0, 0] = 5.001
    vol = read.read(data)
    blocks = partition.partition(vol, PartitionConfig(block=(2, 4, 8, 8)), tolerance=0.01)
    assert blocks.trivial.all()
    assert blocks.n_fit == 0
    # error per voxel <= half-range + one step of the block-constant grid (0.5 * tolerance)
    assert 0 < blocks.trivial_sse <= 512 * (0.0005 + 0.005) ** 2
    mid = (blocks.lo.astype(np.float64) + blocks.hi) / 2
    assert np.abs(mid[0] - data[:, :4]).max() <= 0.5 * 0.01 + 0.5 * 0.01


def test_block_clipped_to_small_field():
    vol = read.read(np.ones((5, 6), np.float32) * np.arange(6, dtype=np.float32))
    blocks = partition.partition(vol, PartitionConfig(), tolerance=0.0)
    assert blocks.block == (1, 1, 5, 6)
