"""Compression group by group: a field larger than memory, or spread over dask workers.

The in-memory pipeline (:func:`sciinr.api.encode_networks`) fits every network of the field at
once. Here the field stays in its file (:mod:`sciinr.stages.stream`) and the work is cut into
independent *groups*, boxes of whole blocks (time windows where a window of blocks fits):

1. one streaming pass: block min/max -> value range, trivial flags, block constants (exactly
   those of the in-memory partition);
2. per group, one task (:func:`fit_group`): read its box, normalize, cluster its blocks, fit
   and prune its networks to the PSNR target over the box;
3. on the driver: the networks are concatenated in block order, the latents quantized, one
   codebook per parameter tensor shared by all groups (k-means over every group's weights);
4. per group (:func:`tune_group`): fine-tune the shared centroids on the box; the driver
   averages each centroid's change over the groups, weighted by how many weights use it;
5. per group (:func:`sse_group`): the squared error of the stored (encoded, decoded) model
   over the box, slab by slab -> the PSNR of the file. Below the target, sharing is redone with
   one more bit (as the in-memory shrink stage does).

Tasks take and return plain values (paths, NumPy arrays, bytes, frozen dataclasses): ``map``
is the builtin serial map or :func:`sciinr.parallel.client_map`. The groups depend on the
configuration only (not on the number of workers), so a serial run and a run on any number of
workers write the same file. One group covering the whole field gives the networks of the
in-memory pipeline.

Peak memory of one process: ``BASE_BYTES + BYTES_PER_VALUE * group values`` (see
docs/scale.md); the driver adds about 40 bytes per block.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import Config
from .errors import ConfigError
from .metrics import psnr_from_mse, rmse_for_psnr
from .nets import NetShape, resolve_device
from .payloads import (
    Assignment,
    BlockConstants,
    Model,
    Shrunk,
    dequantize_shared,
    dequantize_uniform,
)
from .stages import cluster, container, decode, encode, fit, shrink, stream
from .stages.shrink.quantize import SharedSiren, quantize_uniform, share

logger = logging.getLogger(__name__)

BASE_BYTES = 512 << 20  # resident before any data: interpreter, torch, scikit-learn, dask
# a group task at its peak, per value of its box: the voxels read (4), their block copy (4),
# the normalized values (4) or the trivial blocks' float64 error (8), masks, allocator slack
# (measured: 17 on vf_run01 with 2 groups under 800 MB)
BYTES_PER_VALUE = 20
SLAB_VALUES = 1 << 22  # values per slab of the streaming passes (16 MB of float32)
DEFAULT_GROUP_VALUES = 1 << 24  # values per group on workers without a memory limit

Map = Callable[..., list[Any]]


def serial_map(fn: Callable[..., Any], *iterables: Any) -> list[Any]:
    return [fn(*args) for args in zip(*iterables, strict=True)]


def group_values(cfg: Config, distributed: bool) -> int:
    """Values per group: ``scale.group_values``, else what the memory limit leaves, else (on
    workers) :data:`DEFAULT_GROUP_VALUES`, else everything in one group."""
    sc = cfg.scale
    limit = None
    if sc.memory_limit is not None:
        room = sc.memory_limit - BASE_BYTES - stream.CACHE_MAX
        if room < BYTES_PER_VALUE * math.prod(cfg.partition.block):
            raise ConfigError(
                f"scale.memory_limit {sc.memory_limit} bytes is too small: at least "
                f"{BASE_BYTES + stream.CACHE_MAX} bytes (interpreter, torch, chunk cache) plus "
                f"{BYTES_PER_VALUE} bytes per value of one block"
            )
        limit = room // BYTES_PER_VALUE
    if sc.group_values is not None:
        return sc.group_values if limit is None else min(sc.group_values, limit)
    if limit is not None:
        return limit
    return DEFAULT_GROUP_VALUES if distributed else 1 << 62


@dataclass(frozen=True)
class Job:
    """One group: everything its tasks need, as plain values."""

    index: int
    field: stream.Field
    cells: stream.Box  # grid cells of the box
    block: tuple[int, int, int, int]
    consts: BlockConstants  # the box's blocks
    trivial: np.ndarray
    cfg: Config
    value_range: float

    @property
    def seed(self) -> int:
        return self.cfg.seed + self.index

    @property
    def voxels(self) -> stream.Box:
        return stream.voxel_box(self.cells, self.block, self.field.shape4)

    def blocks(self):
        with self.field.reader(stream.cache_bytes(self.field)) as r:
            # passed on, not kept: box_blocks frees the voxels once they are cut into blocks
            return stream.box_blocks(r.read(self.voxels), self.block, self.consts, self.trivial)


@dataclass(frozen=True)
class GroupFit:
    """What :func:`fit_group` returns: the group's pruned networks (NumPy only)."""

    shape: NetShape
    arrays: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    block_net: np.ndarray
    slots: np.ndarray
    fit_psnr: float
    psnr: float
    steps: int
    n_values: int


def _common(job: Job) -> dict[str, Any]:
    return dict(target_psnr=job.cfg.psnr, value_range=job.value_range, seed=job.seed)


def fit_group(job: Job) -> GroupFit:
    """Task: read the group's box, cluster its blocks, fit and prune its networks."""
    cfg = job.cfg
    blocks = job.blocks()
    assignment = cluster.cluster(blocks, cfg.cluster, seed=job.seed)
    fitted = fit.fit(blocks, assignment, cfg.fit, **_common(job))
    pruned = shrink.prune(blocks, assignment, fitted, cfg.shrink, cfg.fit, **_common(job))
    logger.info("group %d: %d networks, PSNR %.2f dB", job.index, fitted.shape.n_nets, pruned.psnr)
    return GroupFit(
        shape=fitted.shape,
        arrays=pruned.arrays,
        masks=pruned.masks,
        block_net=fitted.block_net,
        slots=assignment.slots,
        fit_psnr=fitted.psnr,
        psnr=pruned.psnr,
        steps=fitted.steps,
        n_values=math.prod(blocks.shape4),
    )


def tune_group(
    job: Job,
    group: GroupFit,
    codebooks: dict[str, np.ndarray],
    indices: dict[str, np.ndarray],
    latents: np.ndarray,
) -> tuple[dict[str, np.ndarray], float]:
    """Task: fine-tune the shared centroids on the group's box; returns them and the PSNR."""
    cfg = job.cfg
    blocks = job.blocks()
    assignment = Assignment(block_net=group.block_net, slots=group.slots)
    net = SharedSiren(group.shape, codebooks, indices, latents)
    tune_cfg = dataclasses.replace(
        cfg.fit, lr=cfg.shrink.finetune_lr, margin_db=cfg.shrink.finetune_margin_db
    )
    res = fit.fit(
        blocks, assignment, tune_cfg, net=net, max_steps=cfg.shrink.finetune_steps, **_common(job)
    )
    return shrink._codebooks(res, net, group.shape.param_names()), res.psnr


def sse_group(job: Job, meta: dict[str, Any], sections: dict[str, bytes]) -> float:
    """Task: squared error (float64) of the stored model over the group's box, slab by slab."""
    model = encode.decode_model(meta, sections)
    device = resolve_device(job.cfg.fit.device)
    box = job.cells
    sub_grid = tuple(e - a for a, e in box)
    per_block = math.prod(job.block)
    sse = 0.0
    with job.field.reader(stream.cache_bytes(job.field)) as r:
        for local in stream.plan_boxes(sub_grid, max(1, SLAB_VALUES // per_block)):
            cells = tuple((a + o, e + o) for (a, e), (o, _) in zip(local, box, strict=True))
            voxels = stream.voxel_box(cells, job.block, job.field.shape4)
            orig = r.read(voxels).astype(np.float64)
            orig -= decode.decode(model, voxels, device=device)
            sse += float(np.einsum("i,i->", orig.ravel(), orig.ravel()))
    return sse


def plan(fld: stream.Field, cfg: Config, distributed: bool) -> tuple[stream.Field, list[Job]]:
    """The streaming pass and the groups: (the field with its value range, one job per group)."""
    shape4 = fld.shape4
    block = tuple(min(int(b), int(s)) for b, s in zip(cfg.partition.block, shape4, strict=True))
    grid = tuple(-(-s // b) for s, b in zip(shape4, block, strict=True))
    stats = stream.BlockStats(grid, block)
    stream.scan(fld, block, SLAB_VALUES, [stats])
    lo, hi = float(stats.lo.min()), float(stats.hi.max())
    fld = fld.with_range(lo, hi)
    tolerance = rmse_for_psnr(cfg.psnr, hi - lo)
    consts, trivial = stream.constants(stats, cfg.partition, tolerance)
    per_block = math.prod(block)
    jobs = []
    for i, cells in enumerate(stream.plan_boxes(grid, group_values(cfg, distributed) // per_block)):
        ids = stream.block_ids(cells, grid)
        part = BlockConstants(
            consts.base,
            consts.step,
            consts.lo_q[ids.start : ids.stop],
            consts.hi_q[ids.start : ids.stop],
        )
        jobs.append(Job(i, fld, cells, block, part, trivial[ids.start : ids.stop], cfg, hi - lo))  # type: ignore[arg-type]
    logger.info("%s: %d blocks in %d groups", fld.variable, len(trivial), len(jobs))
    return fld, jobs


def _merge(groups: list[GroupFit], cfg: Config) -> tuple[NetShape, dict, dict, np.ndarray]:
    n_nets = sum(g.shape.n_nets for g in groups)
    n_fit = sum(g.shape.n_blocks for g in groups)
    shape = fit.net_shape(cfg.fit, n_nets, n_fit)
    arrays = {k: np.concatenate([g.arrays[k] for g in groups]) for k in groups[0].arrays}
    masks = {k: np.concatenate([g.masks[k] for g in groups]) for k in groups[0].masks}
    offsets = np.cumsum([0] + [g.shape.n_nets for g in groups])
    block_net = np.concatenate([g.block_net + o for g, o in zip(groups, offsets, strict=False)])
    return shape, arrays, masks, block_net.astype(np.int64)


def _combined_psnr(groups: list[GroupFit], psnrs: list[float], vr: float) -> float:
    """PSNR of the field from each group's PSNR over its box."""
    if len(psnrs) == 1:
        return psnrs[0]
    n = sum(g.n_values for g in groups)
    sse = sum(g.n_values * vr**2 * 10 ** (-p / 10) for g, p in zip(groups, psnrs, strict=True))
    return psnr_from_mse(sse / n, vr)


def _average(
    start: dict[str, np.ndarray],
    tuned: list[dict[str, np.ndarray]],
    indices: list[dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Each centroid moved by the mean of the groups' moves, weighted by its uses in each."""
    if len(tuned) == 1:
        return tuned[0]
    out = {}
    for n, c0 in start.items():
        k = c0.size
        uses = np.stack([np.bincount(ix[n].ravel(), minlength=k + 1)[1:] for ix in indices])
        moves = np.stack([t[n].astype(np.float64) - c0 for t in tuned])
        total = uses.sum(axis=0)
        mean = (uses * moves).sum(axis=0) / np.maximum(total, 1)
        out[n] = (c0 + mean).astype(np.float32)
    return out


def compress_field(
    fld: stream.Field, cfg: Config, map_fn: Map | None = None, progress: bool = False
) -> tuple[bytes, Any]:
    """Compress a field group by group; ``map_fn`` runs the tasks (default: serially here).

    Returns the ``.sinr`` bytes and an :class:`sciinr.api.Report`.
    """
    from . import api

    if cfg.bound.target is not None:
        raise ConfigError(
            "error bounds and ratio targets need the field in memory: drop --memory-limit, "
            "--group-values and --workers, or the bound"
        )
    if cfg.base.kind != "none":
        # the whole-field base is fitted in memory; streamed, the block networks model the
        # field (a streamed base would add its accumulators to the plan's pass)
        logger.info("streamed compression: block networks only (no whole-field base)")
        cfg = cfg.replace(**{"base.kind": "none"})
    t0 = time.perf_counter()
    distributed = map_fn is not None
    run = map_fn or serial_map
    fld, jobs = plan(fld, cfg, distributed)
    vr = fld.value_range[1] - fld.value_range[0]
    groups: list[GroupFit] = run(fit_group, jobs)
    shape, arrays, masks, block_net = _merge(groups, cfg)
    pruned_psnr = _combined_psnr(groups, [g.psnr for g in groups], vr)
    sc = cfg.shrink
    names = shape.param_names()
    fitting = [(j, g) for j, g in zip(jobs, groups, strict=True) if g.shape.n_blocks]

    def stored(small: Shrunk) -> tuple[dict[str, Any], dict[str, bytes], float]:
        model = Model(
            shape4=fld.shape4,
            block=jobs[0].block,
            grid=tuple(-(-s // b) for s, b in zip(fld.shape4, jobs[0].block, strict=True)),
            consts=BlockConstants(
                jobs[0].consts.base,
                jobs[0].consts.step,
                np.concatenate([j.consts.lo_q for j in jobs]),
                np.concatenate([j.consts.hi_q for j in jobs]),
            ),
            trivial=np.concatenate([j.trivial for j in jobs]),
            net=shape,
            arrays=small.arrays,
            block_net=block_net,
        )
        meta, sections = encode.encode_model(model, small)
        sse = sum(run(sse_group, jobs, [meta] * len(jobs), [sections] * len(jobs)))
        return meta, sections, psnr_from_mse(sse / fld.size, vr)

    if sc.bits == 0 or not shape.n_blocks:
        latent_q, off, step = quantize_uniform(arrays["latents"], 16)
        small = Shrunk(shape, {}, {}, latent_q, off, step, arrays, block_net, pruned_psnr, 0.0)
        meta, sections, reached = stored(small)
    else:
        for bits in range(sc.bits, max(sc.bits, sc.max_bits) + 1):
            latent_q, off, step = quantize_uniform(arrays["latents"], sc.latent_bits)
            latents = dequantize_uniform(latent_q, off, step)
            codebooks, indices = {}, {}
            for n in names:
                codebooks[n], indices[n] = share(
                    arrays[n], masks.get(n, np.ones(arrays[n].shape, bool)), bits
                )
            net_at = np.cumsum([0] + [g.shape.n_nets for _, g in fitting])
            fit_at = np.cumsum([0] + [g.shape.n_blocks for _, g in fitting])
            parts = [
                {n: indices[n][net_at[i] : net_at[i + 1]] for n in names}
                for i in range(len(fitting))
            ]
            lats = [latents[fit_at[i] : fit_at[i + 1]] for i in range(len(fitting))]
            out = run(
                tune_group,
                [j for j, _ in fitting],
                [g for _, g in fitting],
                [codebooks] * len(fitting),
                parts,
                lats,
            )
            tuned = _average(codebooks, [o[0] for o in out], parts)
            tuned = {n: c.astype(np.float16).astype(np.float32) for n, c in tuned.items()}
            deq = {n: dequantize_shared(tuned[n], indices[n]) for n in names}
            deq["latents"] = latents
            sparsity = 1 - sum(int(m.sum()) for m in masks.values()) / max(
                1, sum(m.size for m in masks.values())
            )
            small = Shrunk(
                shape,
                tuned,
                indices,
                latent_q,
                off,
                step,
                deq,
                block_net,
                _combined_psnr([g for _, g in fitting], [o[1] for o in out], vr),
                sparsity,
            )
            meta, sections, reached = stored(small)
            logger.info("weight sharing at %d bits: PSNR %.2f dB", bits, reached)
            # one group decides as the in-memory shrink does (on the fine-tuned PSNR)
            decided = out[0][1] if len(fitting) == 1 else reached
            if decided >= cfg.psnr or pruned_psnr < cfg.psnr:
                break
    if reached < cfg.psnr:
        logger.warning(
            "%s: PSNR %.2f dB is below the target %.2f dB (streamed compression adds no "
            "residual top-up)",
            fld.variable,
            reached,
            cfg.psnr,
        )
    header = api.build_header(fld, cfg, meta, reached)  # type: ignore[arg-type]
    blob = container.pack(header, sections)
    report = api.Report(
        n_values=fld.size,
        n_bytes=len(blob),
        psnr=reached,
        seconds=time.perf_counter() - t0,
        n_nets=shape.n_nets,
        n_blocks=int(sum(len(j.trivial) for j in jobs)),
        n_trivial=int(sum(int(j.trivial.sum()) for j in jobs)),
        fit_steps=int(sum(g.steps for g in groups)),
        sections={k: len(v) for k, v in sections.items()},
    )
    logger.info(
        "compressed %s in %d groups: ratio %.1f, PSNR %.2f dB, %.1f s",
        fld.variable,
        len(jobs),
        report.ratio,
        reached,
        report.seconds,
    )
    return blob, report


def compress_source(
    data: Any,
    cfg: Config,
    *,
    var: str | None = None,
    time_dim: str | None = None,
    dims: tuple[str, ...] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    processes: bool = True,
) -> tuple[bytes, Any]:
    """Stream a field from ``data`` (a path, an array, an h5py dataset or netCDF4 variable)
    and compress it group by group, serially or on dask: ``workers`` local workers
    (``processes`` or threads), or the cluster at ``scheduler``."""
    fld = stream.open_field(data, var=var, time_dim=time_dim, dims=dims)
    if not workers and scheduler is None:
        return compress_field(fld, cfg)
    from . import parallel

    with parallel.client(workers=workers, scheduler=scheduler, processes=processes) as c:
        return compress_field(fld, cfg, map_fn=parallel.mapper(c))
