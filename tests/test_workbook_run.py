"""The workbook runner's side effects and messages: a run leaves the git tree alone, the executed copies' links
lead where the notebooks' do, and offline cells say what they miss."""

from __future__ import annotations

import base64
from pathlib import Path

import nbformat
import pytest

from gae_workbook.models import zoo
from gae_workbook.tools.run import REPO, default_figures_dir, relink_markdown

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def test_full_runs_write_the_committed_figures_smoke_runs_write_outside(monkeypatch):
    monkeypatch.delenv("GAE_FIGURES_DIR", raising=False)
    assert default_figures_dir() == REPO / "figures"
    assert default_figures_dir(smoke=True).is_relative_to(REPO / "outputs")
    monkeypatch.setenv("GAE_FIGURES_DIR", "/somewhere/else")
    assert default_figures_dir() == Path("/somewhere/else")


def test_an_unchanged_picture_leaves_both_files_untouched(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gae_workbook.exploration.figures import save_figure

    def figure(value: float):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [0, value])
        return fig

    png, pdf = save_figure(figure(1.0), "f", tmp_path)
    pdf.write_bytes(b"stale vector data")  # what a run on another machine would leave
    save_figure(figure(1.0 + 1e-12), "f", tmp_path)  # the same pixels: nothing is rewritten
    assert pdf.read_bytes() == b"stale vector data"
    save_figure(figure(0.3), "f", tmp_path)  # a picture that changed: both files are rewritten
    assert pdf.read_bytes().startswith(b"%PDF")
    plt.close("all")


def test_ci_fails_when_the_workbook_changes_the_tree():
    ci = (REPO / ".ci" / "run").read_text()
    assert "git status --porcelain" in ci
    assert ci.index("make workbook") < ci.rindex("git status --porcelain") < ci.index("make test")
    ignore = (REPO / ".gitignore").read_text().split()
    assert ".venv-*/" in ignore and "/outputs/" in ignore, "CI's venvs and the run's outputs must be ignored"


def test_executed_copies_link_the_docs_the_other_notebooks_and_carry_their_images(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "rules.md").write_text("# rules\n")
    src = tmp_path / "notebooks"
    src.mkdir()
    (src / "00_notation.py").write_text("# %%\n")
    (src / "figure.png").write_bytes(PNG)
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell(
                "See [the rules](../docs/rules.md#notation), [00](00_notation.py), [the paper](https://arxiv.org), "
                '[below](#take-aways), <a href="../docs/rules.md">rules</a> and ![a figure](figure.png).'
            ),
            nbformat.v4.new_code_cell("x = '[not](a/link.md)'"),
        ]
    )
    output = tmp_path / "outputs" / "notebooks" / "01_vit.ipynb"
    assert relink_markdown(notebook, src / "01_vit.py", output) == 4
    text = notebook.cells[0].source
    assert "[the rules](../../docs/rules.md#notation)" in text and 'href="../../docs/rules.md"' in text
    assert "[00](00_notation.ipynb)" in text, "a course notebook becomes its executed copy, written beside it"
    assert "(https://arxiv.org)" in text and "(#take-aways)" in text
    assert "![a figure](attachment:figure.png)" in text
    assert base64.b64decode(notebook.cells[0].attachments["figure.png"]["image/png"]) == PNG
    assert notebook.cells[1].source == "x = '[not](a/link.md)'", "code cells are left alone"
    assert notebook.metadata["gae_workbook"]["source"] == "../../notebooks/01_vit.py"


def test_pretrained_marian_offline_says_it_needs_the_network(monkeypatch):
    transformers = pytest.importorskip("transformers")

    def no_vocabulary(*args, **kwargs):  # what the tokenizer raises offline without a cache
        raise TypeError("expected str, bytes or os.PathLike object, not NoneType")

    monkeypatch.setattr(zoo, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(transformers.MarianTokenizer, "from_pretrained", no_vocabulary)
    with pytest.raises(zoo.PretrainedUnavailableError) as caught:
        zoo.load_marian()
    message = str(caught.value)
    assert "needs the network" in message and "shapes-translate" in message
    assert "TypeError" not in message and "NoneType" not in message
    assert len(message) <= 240, "notebook 05 prints the first 240 characters"
