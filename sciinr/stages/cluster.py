"""Cluster stage: :class:`Blocks` -> :class:`Assignment` (balanced k-means).

Each fitted block is described by its normalized values average-pooled to a small grid.
k-means (scikit-learn) finds ``ceil(n_fit / blocks_per_net)`` centres; blocks are then given
to centres greedily by distance with a capacity of ``blocks_per_net``, so every network
serves the same number of blocks (the last networks' spare slots repeat their own blocks).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ..config import ClusterConfig
from ..payloads import Assignment, Blocks

logger = logging.getLogger(__name__)


def block_features(blocks: Blocks, size: int) -> np.ndarray:
    """Average-pool each fitted block to at most ``size`` cells per axis, ``(n_fit, F)``."""
    bt, bz, by, bx = blocks.block
    v = blocks.values.reshape(-1, bt, bz, by, bx)
    for axis, b in enumerate((bt, bz, by, bx), start=1):
        k = max(1, min(size, b))
        edges = np.linspace(0, b, k + 1).astype(int)
        v = np.add.reduceat(v, edges[:-1], axis=axis) / np.diff(edges).reshape(
            [-1 if i == axis else 1 for i in range(5)]
        )
    return v.reshape(v.shape[0], -1).astype(np.float64)


def cluster(blocks: Blocks, cfg: ClusterConfig, seed: int = 0) -> Assignment:
    """Group similar blocks; every group gets exactly ``cfg.blocks_per_net`` slots."""
    n = blocks.n_fit
    per = cfg.blocks_per_net
    if n == 0:
        return Assignment(block_net=np.zeros(0, np.int64), slots=np.zeros((0, per), np.int64))
    k = math.ceil(n / per)
    feats = block_features(blocks, cfg.features)
    if k == 1:
        centres = feats.mean(axis=0, keepdims=True)
    else:
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, n_init=3, random_state=seed % (2**32))
        centres = km.fit(feats).cluster_centers_
    dist = _distances(feats, centres)  # (n, k)
    block_net = _balanced_assign(dist, per)
    slots = np.zeros((k, per), np.int64)
    for net in range(k):
        members = np.flatnonzero(block_net == net)
        slots[net] = np.resize(members, per)  # repeats members to fill spare slots
    logger.info("clustered %d blocks into %d networks of %d", n, k, per)
    return Assignment(block_net=block_net, slots=slots)


DIST_CHUNK = 1 << 21  # float64 differences held at once (16 MB)


def _distances(feats: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared distances (n, k), a few rows at a time: the (rows, k, F) differences stay small.

    Each entry is summed over the same contiguous features as in one pass, so the values do
    not depend on the chunking.
    """
    n, k = feats.shape[0], centres.shape[0]
    out = np.empty((n, k))
    rows = max(1, DIST_CHUNK // max(1, k * feats.shape[1]))
    for s in range(0, n, rows):
        out[s : s + rows] = ((feats[s : s + rows, None, :] - centres[None, :, :]) ** 2).sum(-1)
    return out


def _balanced_assign(dist: np.ndarray, capacity: int) -> np.ndarray:
    """Greedy assignment by increasing distance, at most ``capacity`` blocks per centre.

    Every centre ends with at least one block: centres are filled to ``capacity`` in order of
    closeness, and the total capacity ``k * capacity`` exceeds ``n`` by less than ``capacity``.
    """
    n, k = dist.shape
    order = np.argsort(dist, axis=None, kind="stable")
    owner = np.full(n, -1, np.int64)
    count = np.zeros(k, np.int64)
    assigned = 0
    for flat in order:
        b, c = divmod(int(flat), k)
        if owner[b] >= 0 or count[c] >= capacity:
            continue
        owner[b] = c
        count[c] += 1
        assigned += 1
        if assigned == n:
            break
    empty = np.flatnonzero(count == 0)
    for c in empty:  # steal the closest block from a centre that has more than one
        donors = np.flatnonzero(count[owner] > 1)
        b = donors[np.argmin(dist[donors, c])]
        count[owner[b]] -= 1
        owner[b] = c
        count[c] += 1
    return owner
