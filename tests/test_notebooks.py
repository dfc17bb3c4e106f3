"""Every notebook in notebooks/ runs top to bottom at tiny settings and is committed without outputs.

Notebooks switch to tiny settings when ``INFDIFF_NOTEBOOK_TINY=1`` (set here) and write their
files into ``INFDIFF_NOTEBOOK_WORKDIR`` (here a pytest temporary folder) when it is set; they run
in a kernel started with this Python, with the working directory ``notebooks/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

nbformat = pytest.importorskip("nbformat", reason="pip install -e .[dev] (nbformat, nbclient, ipykernel)")
nbclient = pytest.importorskip("nbclient", reason="pip install -e .[dev] (nbformat, nbclient, ipykernel)")
pytest.importorskip("ipykernel", reason="pip install -e .[dev] (nbformat, nbclient, ipykernel)")


def test_there_are_notebooks():
    assert {"quickstart.ipynb", "ablation_analysis.ipynb"} <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {i} has outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_at_tiny_settings(path, monkeypatch, tmp_path):
    monkeypatch.setenv("INFDIFF_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("INFDIFF_NOTEBOOK_WORKDIR", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend renders figures as PNG
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} showed no image"
