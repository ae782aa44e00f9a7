"""PSNR against bits per value: sciinr and the classical baselines on one real field.

    python benchmarks/rd.py vf_run01_density              # defaults from the manifest
    python benchmarks/rd.py isabel_velmag --sciinr-psnr 40,50
    python benchmarks/rd.py my.nc --var T --time-steps 0:4 --codecs sz3,zfp-rate,sciinr

Same options as ``sciinr bench`` (``--help``). Writes rd.csv, rd.png, rd.json and rd.md to
benchmarks/results/<dataset>/ and prints the summary table.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# measure the sciinr of this checkout (the one whose git revision the outputs record), even
# when an editable install elsewhere is first on the path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sciinr.bench import run
from sciinr.errors import SciinrError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    run.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = run.command_line("python benchmarks/rd.py", args)
    try:
        run.run(args, command, echo=print, progress=lambda s: print(s, file=sys.stderr, flush=True))
    except SciinrError as exc:
        print(f"rd.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
