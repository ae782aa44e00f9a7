"""Rate-distortion benchmarks: sciinr against SZ3, ZFP, TTHRESH, SPERR, fpzip and zstd.

- :mod:`~sciinr.bench.codecs`: every codec behind one small interface (:class:`Codec`);
- :mod:`~sciinr.bench.sweep`: measure each codec at each knob value on the same array;
- :mod:`~sciinr.bench.summary`: ratio at 40/50/60 dB by log-linear interpolation;
- :mod:`~sciinr.bench.report`: CSV, PNG, JSON, Markdown, with command, date, machine, git rev;
- :mod:`~sciinr.bench.run`: the whole run from command-line options (``sciinr bench``).

This package needs the ``bench`` extra for the baselines (``pip install -e '.[bench]'``);
a baseline whose package is missing is skipped with a message.
"""

from .codecs import BASELINES, Codec, Unsupported, load_codecs, sciinr_codec
from .summary import AtTarget, Summary, markdown, ratio_at, summarize
from .sweep import Point, measure, sweep

__all__ = [
    "BASELINES",
    "AtTarget",
    "Codec",
    "Point",
    "Summary",
    "Unsupported",
    "load_codecs",
    "markdown",
    "measure",
    "ratio_at",
    "sciinr_codec",
    "summarize",
    "sweep",
]
