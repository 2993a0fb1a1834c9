"""Every notebook in notebooks/ is a chapter of the book and executes top to bottom in smoke mode."""

from __future__ import annotations

import json

import pytest

from toc import NOTEBOOKS, toc_files


def test_there_are_chapters():
    assert len(NOTEBOOKS) >= 3, "notebooks/ should hold the book's chapters"


def test_execution_cache_is_keyed_by_profile_and_library(smoke_book):
    """Jupyter-cache keys notebooks by their code only: outputs computed under another profile or
    with another version of dcls_lib must not be reused."""
    from dcls_lib.runtime import library_digest

    caches = smoke_book.html.parent / ".jupyter_cache"
    assert [p.name for p in caches.iterdir()] == [f"smoke-{library_digest()}"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(notebook):
    """The book executes the notebooks: stored outputs would be stale and bloat the repository."""
    nb = json.loads(notebook.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, f"{notebook.name} has no code cells"
    dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, f"{notebook.name}: code cells {dirty} have stored outputs; clear them before committing"
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", f"{notebook.name}: kernel must be python3"
    assert "widgets" not in nb["metadata"], f"{notebook.name}: stored widget state; clear it"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_in_the_table_of_contents(notebook):
    assert f"notebooks/{notebook.stem}" in toc_files(), f"add `- file: notebooks/{notebook.stem}` to book/_toc.yml"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_in_smoke_mode(smoke_book, notebook):
    executed = smoke_book.executed / "notebooks" / notebook.name
    assert executed.is_file(), f"{notebook.name} was not executed by the book build ({smoke_book.log})"
    nb = json.loads(executed.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and c["source"]]
    not_run = [i for i, c in enumerate(code) if c.get("execution_count") is None]
    assert not not_run, f"{notebook.name}: code cells {not_run} did not run"
    errors = [o for c in code for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, f"{notebook.name} raised: {errors[0]['ename']}: {errors[0]['evalue']}"
    text = "".join(
        "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", "")) +
        "".join(o.get("data", {}).get("text/markdown", ""))
        for c in code for o in c.get("outputs", [])
    )
    # the run label of every chapter says which profile produced it: the smoke profile reached the kernel
    assert "profile smoke" in text, f"{notebook.name} does not print run_label(); or DCLS_PROFILE did not reach it"
    assert "profile cpu" not in text and "profile gpu" not in text
    # a figure, or a widget (the explorer's pictures live in its widget state)
    figures = sum(bool({"image/png", "application/vnd.jupyter.widget-view+json"} & set(o.get("data", {})))
                  for c in code for o in c.get("outputs", []))
    assert figures >= 1, f"{notebook.name} draws no figure"
    assert (smoke_book.html / "notebooks" / f"{notebook.stem}.html").is_file()
