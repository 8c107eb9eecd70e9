"""The course's structure: every main notebook states what it teaches and how long it takes, checks
the student's understanding with a quiz whose answers are given and explained, and ends with its
take-aways; the instructor guide covers every notebook, exercise and quiz.

Picked up by file name (``notebooks/NN_topic.py``, NN from 01), so a new notebook is held to the
same standard without editing this file. Notebook 00 (prerequisites, notation and glossary) ends with
a quiz too. A sentence about a computed result must come from the result: every cell that prints a
results table is followed by asserts on it (the prose beside it says what they check).
"""

import re
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")

from gae_workbook.tools.run import notebook_paths  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MAIN = [p for p in notebook_paths() if not p.name.startswith("00_")]
GUIDE = REPO / "docs" / "instructor.md"
ANSWER = re.compile(r"<details><summary>Answer</summary>\s*(.*?)\s*</details>", re.S)
QUESTION = re.compile(r"\*\*(\d+)\.\*\*(.*?)(?=<details>)", re.S)


def _markdown(path: Path) -> list[str]:
    return [c.source for c in jupytext.read(path).cells if c.cell_type == "markdown"]


def test_main_notebooks_are_found():
    assert [p.name[:2] for p in MAIN] == ["01", "02", "03", "04", "05", "06", "07"], [p.name for p in MAIN]


@pytest.mark.parametrize("path", MAIN, ids=[p.stem for p in MAIN])
def test_notebook_states_objectives_time_and_take_aways(path):
    cells = _markdown(path)
    head = "\n".join(cells[:2])  # the title cell (and a second intro cell at most)
    assert "Learning objectives" in head, f"{path.name}: the opening cell has no 'Learning objectives'"
    assert re.search(r"Estimated time:?\**:?\s*\**\s*\d+", head), f"{path.name}: no 'Estimated time: N minutes'"
    objectives = head.split("Learning objectives", 1)[1]
    assert len(re.findall(r"^\s*(?:-|\d+\.)\s+\S", objectives, re.M)) >= 2, f"{path.name}: list 2+ objectives"
    take_aways = [c for c in cells if re.search(r"^#+ Take-aways", c, re.M)]
    assert take_aways, f"{path.name}: no '## Take-aways' section"
    listed = take_aways[-1].split("Take-aways", 1)[1]
    assert len(re.findall(r"^\s*-\s+\S", listed, re.M)) >= 2, f"{path.name}: list 2+ take-aways"


ALL = notebook_paths()


def _code(path: Path) -> list[str]:
    return [c.source for c in jupytext.read(path).cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_notebook_ends_with_a_quiz_whose_answers_are_options(path):
    cells = _markdown(path)
    quiz = [c for c in cells if re.search(r"^#+ Check yourself", c, re.M)]
    assert len(quiz) == 1, f"{path.name}: expected one '## Check yourself' cell, found {len(quiz)}"
    text = quiz[0]
    answers = ANSWER.findall(text)
    questions = QUESTION.findall(text)
    assert len(answers) >= 3, f"{path.name}: the quiz needs 3+ answers in <details><summary>Answer</summary> blocks"
    assert len(questions) == len(answers), f"{path.name}: {len(questions)} questions but {len(answers)} answers"
    for (number, question), answer in zip(questions, answers):
        options = re.findall(r"\(([a-e])\)", question)
        assert len(options) >= 3, f"{path.name} question {number}: give 3+ options (a), (b), (c)"
        chosen = re.match(r"\(([a-e])\)\.\s+(\S.*)", answer, re.S)
        assert chosen, f"{path.name} question {number}: the answer must start '(x). why ...'"
        assert chosen.group(1) in options, f"{path.name} question {number}: answer ({chosen.group(1)}) is no option"
        assert len(chosen.group(2).split()) >= 6, f"{path.name} question {number}: say why in a sentence"
    # the quiz comes after the teaching: after the first figure's notes, before the take-aways
    index = cells.index(text)
    take_aways = max(i for i, c in enumerate(cells) if re.search(r"^#+ Take-aways", c, re.M))
    assert index > len(cells) // 2 and index <= take_aways, f"{path.name}: put the quiz near the end"


def test_instructor_guide_covers_every_notebook_exercise_and_quiz():
    assert GUIDE.exists(), "docs/instructor.md is missing"
    text = GUIDE.read_text()
    for path in notebook_paths():
        assert path.name in text, f"docs/instructor.md does not mention {path.name}"
    for solution in sorted((REPO / "notebooks").glob("[0-9][0-9]_*_sol_[0-9][0-9].py")):
        assert solution.name in text, f"docs/instructor.md does not point at {solution.name}"
    for path in MAIN:  # the quiz key, "NN quiz answers: 1 (b), 2 (a), ...", agrees with the notebook
        line = re.search(rf"{path.name[:2]} quiz answers:([^\n]*)", text)
        assert line, f"docs/instructor.md has no line '{path.name[:2]} quiz answers: 1 (x), 2 (y), ...'"
        quiz = next(c for c in _markdown(path) if re.search(r"^#+ Check yourself", c, re.M))
        in_notebook = [a[1] for a in ANSWER.findall(quiz)]
        assert re.findall(r"\(([a-e])\)", line.group(1)) == in_notebook, f"{path.name}: quiz key != notebook"
    # every notebook or document the guide points at exists
    for name in set(re.findall(r"`((?:notebooks|docs)/[\w./-]+|\d\d_[\w]+\.py)`", text)):
        target = REPO / name if "/" in name else REPO / "notebooks" / name
        assert target.exists(), f"docs/instructor.md points at {name}, which does not exist"
    for target in re.findall(r"`make (\w+)", text):
        assert re.search(rf"^{target}:", (REPO / "Makefile").read_text(), re.M), f"no Makefile target {target!r}"


@pytest.mark.parametrize("path", MAIN[:1] + MAIN[2:3], ids=[p.stem for p in MAIN[:1] + MAIN[2:3]])
def test_quiz_answers_stay_hidden_on_the_site(path):
    """The static site (``make site``) keeps each answer inside its collapsed ``<details>`` block."""
    bs4 = pytest.importorskip("bs4")
    nbformat = pytest.importorskip("nbformat")
    from gae_workbook.tools.site import OfflineHTMLExporter

    quiz = next(c for c in _markdown(path) if re.search(r"^#+ Check yourself", c, re.M))
    page, _ = OfflineHTMLExporter().from_notebook_node(
        nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(quiz)])
    )
    blocks = bs4.BeautifulSoup(page, "html.parser").find_all("details")
    assert len(blocks) == len(ANSWER.findall(quiz))
    for block in blocks:
        answer = block.get_text(" ", strip=True).removeprefix("Answer").strip()
        assert re.match(r"\([a-e]\)\. \S+", answer), f"{path.name}: an answer left its <details> block: {block}"
    assert "<math" in str(blocks[0].parent) or "$" not in quiz  # formulas in answers are rendered too


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_results_tables_are_checked_where_the_prose_reads_them(path):
    """A printed table is read by the notes after it ("GAE wins ...", "rollout wins all four panels"):
    the same code cell, or the next one, asserts what those notes claim, so a changed result fails the
    notebook instead of leaving a sentence that contradicts the table."""
    cells = _code(path)
    for k, cell in enumerate(cells):
        if "format_table(" in cell:
            checked = "assert " in cell or (k + 1 < len(cells) and "assert " in cells[k + 1])
            assert checked, f"{path.name}: code cell {k} prints a table but nothing asserts the claims about it"


def test_notation_notebook_teaches_the_prerequisites_on_three_tokens():
    path = next(p for p in ALL if p.name.startswith("00_"))
    text = "\n".join(_markdown(path))
    for topic in ("Softmax attention", "Heads", "The CLS token", "The residual connection"):
        assert re.search(rf"^#+ \d\. {topic}", text, re.M), f"00: no section '{topic}'"
    code = "\n".join(_code(path))
    assert 'tokens = ["[CLS]", "p1", "p2"]' in code and "00_prerequisites" in code
    assert "Vaswani" in text and "Dosovitskiy" in text  # the standard reading
