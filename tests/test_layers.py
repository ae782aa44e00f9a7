"""The package's layering: what imports what, and what the code may say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sciinr"


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return out.stdout.strip()


def test_payloads_do_not_import_torch():
    # loaded alone, as a file: nothing of the package's __init__ runs first
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('p', {str(PACKAGE / 'payloads.py')!r})\n"
        "mod = sys.modules['p'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "print(sorted(m for m in ('torch', 'sciinr') if m in sys.modules))"
    )
    assert _run(code) == "[]"


def test_import_sciinr_leaves_the_benchmarks_out():
    code = "import sys, sciinr; print([m for m in sys.modules if m.startswith('sciinr.bench')])"
    assert _run(code) == "[]"


def test_cli_uses_only_public_api_names():
    text = (PACKAGE / "cli.py").read_text()
    assert re.findall(r"\bapi\._\w+", text) == []


def test_no_code_comment_names_an_issue():
    hits = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bissue\s*#?\d", line, re.IGNORECASE)
    ]
    assert hits == []


def test_cli_imports_the_benchmarks_only_for_sciinr_bench(tmp_path):
    code = (
        "import sys\nfrom sciinr import cli\n"
        f"rc = cli.main(['info', {str(tmp_path / 'missing.sinr')!r}])\n"
        "print(rc, [m for m in sys.modules if m.startswith('sciinr.bench')])"
    )
    assert _run(code) == "2 []"
    bench_help = subprocess.run(
        [sys.executable, "-m", "sciinr.cli", "bench", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "--codecs" in bench_help
