"""What decides when results are stale, and where runs go."""

import shutil
from pathlib import Path

import pytest
import torch

import dcls_lib
from dcls_lib import runtime


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of dcls_lib's source whose digests runtime computes (its own file moved there)."""
    root = tmp_path / "dcls_lib"
    shutil.copytree(Path(dcls_lib.__file__).parent, root, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(runtime, "__file__", str(root / "runtime.py"))
    return root


def test_editing_a_plotting_module_leaves_trained_runs_valid(package_copy):
    results, library = runtime.results_digest(), runtime.library_digest()
    with open(package_copy / "chapters" / "study_plots.py", "a") as f:
        f.write("\n# a figure's colours changed\n")
    assert runtime.results_digest() == results, "trained runs would retrain for a figure"
    assert runtime.library_digest() != library, "the book must re-execute its notebooks"


def test_editing_a_module_that_computes_results_makes_runs_stale(package_copy):
    results = runtime.results_digest()
    with open(package_copy / "recipe.py", "a") as f:
        f.write("\n# the recipe changed\n")
    assert runtime.results_digest() != results


def test_resolve_device():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert runtime.resolve_device() == expected and runtime.resolve_device("auto") == expected
