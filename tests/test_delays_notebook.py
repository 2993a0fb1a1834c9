"""The delay chapter runs top to bottom in smoke mode."""

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "08_delays.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_runs_in_smoke_mode(monkeypatch):
    monkeypatch.setenv("DCLS_PROFILE", "smoke")
    monkeypatch.delenv("DCLS_SHD_ROOT", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "profile smoke" in text
    assert "output spikes at [5, 10, 11]" in text
    assert "without delays, every sample gets the same class scores: True" in text
    assert "SHD is not run" in text
    assert "| fixed random delays |" in text and "| shuffled among synapses |" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 6
