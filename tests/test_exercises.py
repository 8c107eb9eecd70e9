"""The exercises beside the notebooks: every exercise has its solution (and vice versa), states its
time, leaves the student a place to write and ends with a checking cell that tells the student whether
the answer is right; every solution ends with the same checking cell, runs and passes it.

Picked up by file name, ``notebooks/NN_topic_ex_KK.py`` / ``notebooks/NN_topic_sol_KK.py``, so a new
notebook's exercises are tested without editing this file.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
EXERCISES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*_ex_[0-9][0-9].py"))
SOLUTIONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*_sol_[0-9][0-9].py"))
PLACEHOLDER = "# Write your code here."
BUDGET_S = 240  # per solution, 2 CPU cores


def _solution_of(exercise: Path) -> Path:
    return exercise.with_name(exercise.name.replace("_ex_", "_sol_"))


def _exercise_of(solution: Path) -> Path:
    return solution.with_name(solution.name.replace("_sol_", "_ex_"))


def test_exercises_exist():
    assert EXERCISES, f"no exercises found in {NOTEBOOKS} (expected NN_topic_ex_KK.py files)"


@pytest.mark.parametrize("exercise", EXERCISES, ids=[p.stem for p in EXERCISES])
def test_exercise_has_solution_and_a_place_to_write(exercise):
    assert _solution_of(exercise).exists(), f"{exercise.name} has no solution {_solution_of(exercise).name}"
    text = exercise.read_text()
    assert PLACEHOLDER in text, f"{exercise.name} must contain {PLACEHOLDER!r} where the student writes"
    assert text.startswith("# ---\n# jupyter:"), f"{exercise.name} is not a jupytext py:percent notebook"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_solution_has_exercise_and_checks_its_answer(solution):
    assert _exercise_of(solution).exists(), f"{solution.name} has no exercise {_exercise_of(solution).name}"
    text = solution.read_text()
    assert PLACEHOLDER not in text, f"{solution.name} still holds the exercise's placeholder"
    last_cell = text.rsplit("# %%", 1)[-1]
    assert "assert " in last_cell, f"{solution.name} must end with a check that its answer is right"


CHECK = "# ## Check your answer"


def _last_code_cell(text: str) -> str:
    """The source of the file's last ``# %%`` code cell, without ruff directives."""
    cell = text.rsplit("\n# %%\n", 1)[-1]
    return "\n".join(line for line in cell.splitlines() if not line.startswith("# ruff: noqa")).strip()


@pytest.mark.parametrize("exercise", EXERCISES, ids=[p.stem for p in EXERCISES])
def test_exercise_states_its_time_and_ends_with_the_solutions_check(exercise):
    text = exercise.read_text()
    title = text.split("# %% [markdown]", 1)[1].split("# %%\n", 1)[0]  # the first markdown cell
    assert re.search(r"About \d+ minutes", title), f"{exercise.name}: say 'About N minutes' in the first cell"
    assert CHECK in text, f"{exercise.name}: end with a '## Check your answer' cell"
    check = _last_code_cell(text)
    assert "assert " in check and "print(" in check, f"{exercise.name}: the check asserts and says when all is right"
    solution = _solution_of(exercise).read_text()
    assert CHECK in solution and _last_code_cell(solution) == check, (
        f"{_solution_of(exercise).name} must end with the exercise's own checking cell (so the solution passes it)"
    )


def test_each_notebook_with_exercises_has_at_least_two():
    per_notebook: dict[str, int] = {}
    for exercise in EXERCISES:
        prefix = exercise.name.split("_ex_")[0]
        per_notebook[prefix] = per_notebook.get(prefix, 0) + 1
    assert all(n >= 2 for n in per_notebook.values()), per_notebook


@pytest.mark.timeout(BUDGET_S + 60)
@pytest.mark.parametrize("solution", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_solution_runs_and_passes(solution, tmp_path):
    """Run the solution as a script (jupytext py:percent files are valid Python) in the notebooks
    folder, as the notebook runner does, with the smoke sizes and a private figures folder."""
    env = {
        **os.environ,
        "GAE_SMOKE": "1",
        "GAE_FIGURES_DIR": str(tmp_path / "figures"),
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    }
    done = subprocess.run(
        [sys.executable, solution.name],
        cwd=NOTEBOOKS,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUDGET_S,
    )
    assert done.returncode == 0, f"{solution.name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
