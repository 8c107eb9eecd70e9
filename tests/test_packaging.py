"""The project's own set-up: dependencies stated once, notebooks as text, version from pyproject."""

import re
import subprocess
from pathlib import Path

import pytest

import gae_utils

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"torch": "pytorch"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_exactly_the_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {CONDA_NAMES.get(_name(r), _name(r)) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {CONDA_NAMES.get(_name(r), _name(r)) for r in extra if _name(r) != project["name"]}
    text = (ROOT / "environment.yml").read_text()
    section, pip_section = text.split("dependencies:", 1)[1].split("  - pip:", 1)
    conda = {_name(line.strip()[2:]) for line in section.splitlines() if re.match(r"^  - [a-zA-Z]", line)}
    conda |= {_name(line.strip()[2:]) for line in pip_section.splitlines() if re.match(r"^      - [a-zA-Z]", line)}
    conda -= {"python", "pip"}
    assert conda == wanted, f"only in environment.yml: {conda - wanted}; only in pyproject: {wanted - conda}"
    # same lower bounds in both files
    for r in project["dependencies"]:
        bound = re.search(r">=([\d.]+)", r)
        name = CONDA_NAMES.get(_name(r), _name(r))
        if bound:
            assert f"{name}>={bound.group(1)}" in (ROOT / "environment.yml").read_text(), name


def test_version_has_one_source():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert gae_utils.__version__ in (version, "0+unknown")
    assert not list(ROOT.glob("gae_utils/_version.py"))


def test_notebooks_are_jupytext_percent_and_no_ipynb_outputs_are_stored():
    jupytext = pytest.importorskip("jupytext")
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    assert notebooks, "no notebooks found"
    for path in notebooks:
        text = path.read_text()
        assert "format_name: percent" in text, path
        nb = jupytext.reads(text, fmt="py:percent")
        assert any(c.cell_type == "markdown" for c in nb.cells) and any(c.cell_type == "code" for c in nb.cells)
        paired = path.with_suffix(".ipynb")
        if paired.exists():  # a generated copy must match its source and carry no outputs
            stored = jupytext.read(paired)
            assert [c.source for c in stored.cells] == [c.source for c in nb.cells], f"{paired} drifted from {path}"
            assert all(not c.get("outputs") for c in stored.cells if c.cell_type == "code")


def test_notebooks_stay_thin():
    """Course notebooks are thin: logic lives in the package, where it is tested.

    A notebook may write a rule out from scratch to check it against the library (a few lines, the
    point of the cell) but defines no classes and no long functions. Exercises and their solutions
    are exempt: writing the rule is the exercise, and ``tests/test_exercises.py`` runs every solution."""
    import ast

    for path in (ROOT / "notebooks").glob("[0-9][0-9]_*.py"):
        if "_ex_" in path.name or "_sol_" in path.name:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            assert not isinstance(node, ast.ClassDef), f"{path.name}: class {node.name} belongs in the package"
            if isinstance(node, ast.FunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 12, f"{path.name}: {node.name} has {length} lines; move it into the package"


def test_shipped_checkpoints_are_safetensors_only():
    weights = ROOT / "gae_workbook" / "models" / "weights"
    files = {p.suffix for p in weights.iterdir()}
    assert files <= {".safetensors", ".json"}, files
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    pickles = [f for f in tracked if f.endswith((".pt", ".pth", ".ckpt", ".pkl", ".bin"))]
    assert not pickles, pickles


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make workbook" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
