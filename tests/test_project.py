"""The project's own promises: one set of pins, CI runs the README's test command."""

import re
import tomllib
from pathlib import Path

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
