"""The rendered site: every executed notebook becomes a page that embeds its figures and opens offline."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import nbformat
import pytest

from gae_workbook.tools.run import execute_notebook
from gae_workbook.tools.site import build_site, remote_references, tex_to_mathml

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

NOTEBOOK = """# %% [markdown]
# # A tiny page
#
# Inline $\\bar A = \\mathbb{E}_h[(\\nabla A \\odot A)^+]$ and a block formula:
#
# $$R \\leftarrow R + \\bar A \\cdot R, \\qquad R \\in \\mathbb{R}^{s \\times s}$$
#
# ![a figure linked from markdown](linked.png)

# %%
import ipywidgets
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(2, 2))
ax.imshow([[0, 1], [1, 0]])
plt.show()

# %%
fig, ax = plt.subplots(figsize=(2, 2))
ax.plot([0, 1], [1, 0])
plt.show()

# %%
ipywidgets.IntSlider(3)
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, Path]:
    """A small notebook (two figures, formulas, a linked image, a widget), executed, then built into a site."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = tmp_path_factory.mktemp("site")
    src = root / "notebooks"
    src.mkdir()
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    fig.savefig(src / "linked.png")
    plt.close(fig)
    (src / "01_tiny.py").write_text(NOTEBOOK)
    executed = root / "executed"
    execute_notebook(src / "01_tiny.py", executed / "01_tiny.ipynb", smoke=True, timeout=120)
    nbformat.write(nbformat.read(executed / "01_tiny.ipynb", as_version=4), executed / "02_copy.ipynb")
    out = root / "site"
    build_site(executed, out, base=src)
    return executed, out


def _png_outputs(path: Path) -> int:
    notebook = nbformat.read(path, as_version=4)
    return sum("image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", []))


def test_every_notebook_has_a_page_linked_from_the_index(site):
    executed, out = site
    index = (out / "index.html").read_text()
    for notebook in sorted(executed.glob("*.ipynb")):
        page = out / f"{notebook.stem}.html"
        assert page.is_file(), f"no page for {notebook.name}"
        assert f'href="{page.name}"' in index
    assert "A tiny page" in index, "the index names each page by its notebook's title"


def test_pages_embed_every_figure_and_linked_image(site):
    executed, out = site
    for notebook in sorted(executed.glob("*.ipynb")):
        n_figures = _png_outputs(notebook)
        assert n_figures == 2, "the inline backend should have put both figures into the executed notebook"
        page = (out / f"{notebook.stem}.html").read_text()
        images = re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', page)
        # the two output figures plus the image the markdown cell links to
        assert len(images) == n_figures + 1, f"{notebook.name}: {len(images)} embedded images"
        for data in images:
            assert base64.b64decode(data)[:8] == PNG_MAGIC
        assert "linked.png" not in re.sub(r'alt="[^"]*"', "", page), "a linked image must be embedded, not linked"


def test_pages_open_offline(site):
    _, out = site
    for page in sorted(out.glob("*.html")):
        text = page.read_text()
        assert remote_references(text) == [], page.name
        assert "<script src" not in text, f"{page.name}: pages need no script"
        if page.name != "index.html":
            assert text.count("<math") == 2, "both formulas are MathML, rendered without MathJax"
            assert "$$" not in text and "\\mathbb" not in text
            assert "make lecture" in text, "the widget output is replaced by a note on how to run it"
            assert "application/vnd.jupyter.widget-state+json" not in text


def test_remote_references_catches_what_a_browser_would_fetch():
    page = (
        '<script src="https://cdn.example.org/require.js"></script><link rel="stylesheet" href="//fonts.example/x.css">'
        '<a href="https://arxiv.org/abs/2103.15679">paper</a><img src="data:image/png;base64,AAAA">'
    )
    found = remote_references(page)
    assert len(found) == 2 and "require.js" in found[0] and "fonts" in found[1]


def test_tex_to_mathml_handles_matrices_and_shows_source_it_cannot_read():
    matrix = tex_to_mathml(r"\begin{pmatrix}1&0\\0&1\end{pmatrix}", display=True)
    assert matrix.count("<mtr>") == 2 and 'display="block"' in matrix
    assert tex_to_mathml(r"\frac{1}{") == r"<code>\frac{1}{</code>"


def test_missing_notebooks_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="gae_workbook.tools.run"):
        build_site(tmp_path, tmp_path / "site")
