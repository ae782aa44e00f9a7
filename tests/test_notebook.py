"""notebooks/walkthrough.ipynb runs top to bottom (quick settings: a crop and a short training)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "walkthrough.ipynb"


@pytest.mark.realdata
@pytest.mark.slow
def test_walkthrough_notebook_runs(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCIINR_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("SCIINR_DATA_DIR", str(shared_data))
    # the kernel must import this checkout's sciinr, whatever the editable install points at
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), path) if p))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()  # raises CellExecutionError with the cell and traceback on any failure
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "ratio" in text
    assert "one time step (16, 32, 32)" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the slices and the RD plot
    tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert tables
    assert "| **sciinr / best** |" in tables[0]


XARRAY_NOTEBOOK = REPO / "notebooks" / "xarray.ipynb"


def _run(path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    monkeypatch.setenv("SCIINR_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("SCIINR_DATA_DIR", str(data_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path_env = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), path_env) if p))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


@pytest.mark.slow
@pytest.mark.parametrize("with_data", [True, False], ids=["eraint", "bundled excerpt"])
def test_xarray_notebook_runs(with_data, tmp_path, monkeypatch):
    pytest.importorskip("xarray")
    from importlib.metadata import entry_points

    from .conftest import SHARED_DATA

    if not any(ep.name == "sciinr" for ep in entry_points(group="xarray.backends")):
        pytest.skip("engine 'sciinr' is not installed (re-run pip install -e .)")
    if with_data and not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    outputs = _run(XARRAY_NOTEBOOK, SHARED_DATA if with_data else tmp_path, monkeypatch)
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    names = ["u", "v"] if with_data else ["density", "log_density"]
    assert "two.sinr:" in text
    assert "ratio" in text
    assert f"wrote two_back.nc: {names}" in text
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 1
