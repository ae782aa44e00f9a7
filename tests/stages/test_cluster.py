import numpy as np

from sciinr.config import ClusterConfig, PartitionConfig
from sciinr.stages import cluster, partition, read

from ..conftest import smooth_field


def _blocks(n_t=8):
    vol = read.read(smooth_field(t=n_t, z=8, y=32, x=32))
    return partition.partition(vol, PartitionConfig(block=(2, 8, 8, 8)), tolerance=0.0)


def test_balanced_sizes():
    blocks = _blocks()
    a = cluster.cluster(blocks, ClusterConfig(blocks_per_net=4), seed=0)
    counts = np.bincount(a.block_net, minlength=a.n_nets)
    assert a.n_nets == int(np.ceil(blocks.n_fit / 4))
    assert counts.max() <= 4
    assert counts.min() >= 1
    # every slot holds a block of its own network
    for net in range(a.n_nets):
        assert (a.block_net[a.slots[net]] == net).all()
        assert set(a.slots[net]) == set(np.flatnonzero(a.block_net == net))


def test_uneven_count_and_seed_determinism():
    blocks = _blocks(n_t=6)
    a = cluster.cluster(blocks, ClusterConfig(blocks_per_net=5), seed=3)
    b = cluster.cluster(blocks, ClusterConfig(blocks_per_net=5), seed=3)
    np.testing.assert_array_equal(a.block_net, b.block_net)
    assert sorted(np.bincount(a.block_net))[0] >= 1


def test_distances_are_chunked_without_changing_them(monkeypatch):
    rng = np.random.default_rng(3)
    feats, centres = rng.standard_normal((300, 64)), rng.standard_normal((75, 64))
    want = ((feats[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    monkeypatch.setattr(cluster, "DIST_CHUNK", 64 * 75 * 7)  # 7 rows at a time
    np.testing.assert_array_equal(cluster._distances(feats, centres), want)
