"""Ratios at fixed PSNR targets (log-linear interpolation) and sciinr against the best baseline."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .sweep import Point

DEFAULT_TARGETS = (40.0, 50.0, 60.0)


@dataclass(frozen=True)
class AtTarget:
    """A codec's compression ratio at one target PSNR.

    ``kind`` says how it was found:

    - ``"interp"``: log-linear interpolation between the two points around the target;
    - ``"above"``: even the coarsest point swept is above the target, so ``ratio`` (that
      point's) is a lower bound;
    - ``"lossless"``: a lossless codec, whose ratio holds at every target;
    - ``"unreached"``: no point reaches the target (``ratio`` is NaN).
    """

    ratio: float
    kind: str

    def text(self) -> str:
        if self.kind == "unreached":
            return "—"
        prefix = {"interp": "", "above": ">", "lossless": "="}[self.kind]
        return f"{prefix}{_fmt(self.ratio)}"


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "—"
    return f"{x:.3g}" if x < 1000 else f"{x:.0f}"


def ratio_at(points: Sequence[Point], target: float) -> AtTarget:
    """Compression ratio at ``target`` dB for one codec line.

    Sorted by PSNR, the first two consecutive points with ``psnr_a <= target <= psnr_b`` are
    interpolated linearly in (PSNR, log ratio). Lossless points (PSNR = inf) hold at any target.
    """
    lossless = [p for p in points if math.isinf(p.psnr) and p.psnr > 0]
    if lossless:
        return AtTarget(max(p.ratio for p in lossless), "lossless")
    pts = sorted((p for p in points if math.isfinite(p.psnr)), key=lambda p: (p.psnr, -p.ratio))
    if not pts:
        return AtTarget(math.nan, "unreached")
    if pts[0].psnr > target:
        return AtTarget(max(p.ratio for p in pts if p.psnr == pts[0].psnr), "above")
    for a, b in itertools.pairwise(pts):
        if a.psnr <= target <= b.psnr:
            if b.psnr == a.psnr:
                return AtTarget(max(a.ratio, b.ratio), "interp")
            w = (target - a.psnr) / (b.psnr - a.psnr)
            return AtTarget(math.exp((1 - w) * math.log(a.ratio) + w * math.log(b.ratio)), "interp")
    if pts[-1].psnr == target:
        return AtTarget(pts[-1].ratio, "interp")
    return AtTarget(math.nan, "unreached")


def lines(points: Sequence[Point]) -> dict[str, list[Point]]:
    """Points grouped by ``"codec (mode)"``, in the order they were measured."""
    out: dict[str, list[Point]] = {}
    for p in points:
        out.setdefault(p.label, []).append(p)
    return out


@dataclass(frozen=True)
class Summary:
    """Ratio at each target for each line, the best baseline, and sciinr's ratio to it."""

    targets: tuple[float, ...]
    table: dict[str, list[AtTarget]]  # line label -> one AtTarget per target
    best_baseline: list[tuple[str, AtTarget] | None]  # per target: (label, value)
    sciinr_vs_best: list[str]  # per target: formatted ratio of ratios ("—" when unknown)


def summarize(
    points: Sequence[Point], targets: Sequence[float] = DEFAULT_TARGETS, ours: str = "sciinr"
) -> Summary:
    """Build the summary table; ``ours`` names the codec compared with the best baseline.

    The best baseline at a target is the highest ratio among the other codecs' lines. A
    ``>X`` (lower bound) counts with its bound. sciinr's quotient is written ``≥`` or ``≤``
    when one side is only a bound, and ``—`` when either side did not reach the target.
    """
    grouped = lines(points)
    table = {label: [ratio_at(pts, t) for t in targets] for label, pts in grouped.items()}
    best: list[tuple[str, AtTarget] | None] = []
    versus: list[str] = []
    ours_labels = [label for label, pts in grouped.items() if pts[0].codec == ours]
    for i, _ in enumerate(targets):
        cands = [
            (label, vals[i])
            for label, vals in table.items()
            if label not in ours_labels and vals[i].kind != "unreached"
        ]
        top = max(cands, key=lambda c: c[1].ratio) if cands else None
        best.append(top)
        mine = [table[label][i] for label in ours_labels if table[label][i].kind != "unreached"]
        if top is None or not mine:
            versus.append("—")
            continue
        m = max(mine, key=lambda a: a.ratio)
        q = m.ratio / top[1].ratio
        lower = m.kind == "above"  # ours is at least this
        upper = top[1].kind == "above"  # the baseline is at least this, so q is at most
        sign = "?" if lower and upper else "≥" if lower else "≤" if upper else ""
        versus.append(f"{sign}{q:.2f}")
    return Summary(tuple(targets), table, best, versus)


def markdown(summary: Summary) -> str:
    """The summary as a Markdown table (one row per line, then best baseline and sciinr/best)."""
    heads = [f"CR@{t:g}" for t in summary.targets]
    out = [
        "| codec (mode) | " + " | ".join(heads) + " |",
        "|---|" + "---|" * len(heads),
    ]
    for label, vals in summary.table.items():
        out.append(f"| {label} | " + " | ".join(v.text() for v in vals) + " |")
    best = [f"{b[1].text()} {b[0]}" if b else "—" for b in summary.best_baseline]
    out.append("| **best baseline** | " + " | ".join(best) + " |")
    out.append("| **sciinr / best** | " + " | ".join(summary.sciinr_vs_best) + " |")
    return "\n".join(out)
