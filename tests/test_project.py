"""The project's own promises: one set of pins, CI runs the README's test command, code fits the page."""

import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    pins = {}
    for line in lines:
        match = re.fullmatch(r"\s*-?\s*\"?([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s\";]+)\"?,?\s*", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_environment_yml_pins_the_same_versions_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    from_pyproject = _pins(declared)
    from_conda = _pins((ROOT / "environment.yml").read_text().splitlines())
    assert len(from_pyproject) == len(declared), "every dependency in pyproject.toml is pinned with =="
    assert from_conda == from_pyproject


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_no_unused_imports_or_undefined_names():
    """pyflakes-class checks (ruff's F rules) over the library, tests, benchmarks, book scripts and notebooks."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F", "--output-format", "concise",
                             "dcls_lib", "tests", "benchmarks", "book", "notebooks"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# Characters a code cell shows without scrolling in the browser test's 1280 px window (14 px
# monospace, measured in the built book): 77 in a cell, 75 in a folded (hide-input) one.
CODE_WIDTH, FOLDED_CODE_WIDTH = 77, 75
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _code_lines(path: Path):
    """(cell index, width limit, line) for every line of code: code cells and fenced blocks in text."""
    for index, cell in enumerate(json.loads(path.read_text())["cells"]):
        lines = "".join(cell["source"]).splitlines()
        if cell["cell_type"] == "code":
            folded = "hide-input" in cell.get("metadata", {}).get("tags", [])
            for line in lines:
                yield index, FOLDED_CODE_WIDTH if folded else CODE_WIDTH, line
        elif cell["cell_type"] == "markdown":
            fenced = False
            for line in lines:
                if line.lstrip().startswith(("```", "~~~")):
                    fenced = not fenced
                elif fenced:
                    yield index, CODE_WIDTH, line


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_code_lines_fit_the_page(notebook):
    """No code line wider than its cell shows: a reader would see half of it."""
    wide = [f"cell {i}: {line.strip()[:50]}... ({len(line)} > {limit} characters)"
            for i, limit, line in _code_lines(notebook) if len(line) > limit]
    assert not wide, f"{notebook.name} has {len(wide)} lines wider than the page: " + "; ".join(wide[:3])
