"""Every link of the course leads somewhere: the site (the notebooks and the docs pages), the executed copies
and the markdown a forge shows (README, docs/).

The site is built from the course notebooks as they are (converted, not executed: links live in the markdown
cells, so executing would add minutes and no link), relinked as ``gae_workbook.tools.run`` relinks its executed copies.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from urllib.parse import unquote

import jupytext
import nbformat
import pytest

from gae_workbook.tools.run import REPO, notebook_paths, relink_markdown
from gae_workbook.tools.site import build_site, local_references, remote_references

DOCS = REPO / "docs"
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _course_copy(path: Path, output: Path) -> nbformat.NotebookNode:
    notebook = jupytext.read(path)
    notebook.metadata.pop("jupytext", None)
    relink_markdown(notebook, path, output)
    return notebook


@pytest.fixture(scope="module")
def course_site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("course")
    executed = root / "notebooks"
    executed.mkdir()
    for path in notebook_paths():
        nbformat.write(_course_copy(path, executed / f"{path.stem}.ipynb"), executed / f"{path.stem}.ipynb")
    out = root / "site"
    build_site(executed, out, docs=DOCS)
    return out


def _ids(page: str) -> set[str]:
    return {html.unescape(m) for m in re.findall(r'\bid="([^"]+)"', page)}


def test_the_site_has_a_page_for_every_notebook_and_every_docs_page(course_site):
    index = (course_site / "index.html").read_text()
    names = [p.stem for p in notebook_paths()] + [p.stem for p in sorted(DOCS.glob("*.md"))]
    for name in names:
        assert (course_site / f"{name}.html").is_file(), f"no page for {name}"
        assert f'href="{name}.html"' in index, f"the index does not link {name}"
    for name in ("rules", "evaluation", "instructor"):
        assert name in names


def test_every_link_of_every_page_of_the_site_resolves(course_site):
    pages = sorted(course_site.glob("*.html"))
    checked, broken = 0, []
    for page in pages:
        text = page.read_text()
        assert remote_references(text) == [], page.name
        for href in local_references(text):
            path, _, fragment = href.partition("#")
            target = course_site / unquote(path) if path else page
            checked += 1
            if not target.is_file():
                broken.append(f"{page.name}: {href}")
            # anchors are checked on the docs pages, whose ids follow the forge's rule
            elif fragment and target.stem in {p.stem for p in DOCS.glob("*.md")}:
                if fragment not in _ids(target.read_text()):
                    broken.append(f"{page.name}: {href} (no such anchor)")
    assert not broken, f"{len(broken)} broken links of {checked}: {broken}"
    # the pages link each other: the links the notebooks write to docs/ and to 00_notation are there
    assert checked > 2 * len(pages)
    notation = (course_site / "01_vit.html").read_text()
    assert 'href="00_notation.html"' in notation and 'href="rules.html"' in notation


def test_every_link_of_the_executed_copies_resolves():
    """As `python -m gae_workbook.tools.run` writes them to outputs/notebooks (checked without writing there)."""
    out = REPO / "outputs" / "notebooks"
    course = {p.stem for p in notebook_paths()}
    broken, checked = [], 0
    for path in notebook_paths():
        notebook = _course_copy(path, out / f"{path.stem}.ipynb")
        for cell in notebook.cells:
            if cell.cell_type != "markdown":
                continue
            for href in MARKDOWN_LINK.findall(cell.source):
                if re.match(r"^(?:[a-z][a-z0-9+.-]*:|//|#)", href):
                    continue
                checked += 1
                if href.startswith("attachment:"):
                    continue
                target = Path(os.path.normpath(out / unquote(href.partition("#")[0])))
                ok = target.stem in course if target.suffix == ".ipynb" and target.parent == out else target.exists()
                if not ok:
                    broken.append(f"{path.stem}: {href}")
    assert not broken, broken
    assert checked > 0


@pytest.mark.parametrize("markdown", ["README.md", *(f"docs/{p.name}" for p in sorted(DOCS.glob("*.md")))])
def test_every_relative_link_of_the_markdown_pages_resolves_in_the_repository(markdown):
    path = REPO / markdown
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)  # code blocks hold no links
    broken = []
    for href in MARKDOWN_LINK.findall(text):
        if re.match(r"^(?:[a-z][a-z0-9+.-]*:|//)", href):
            continue
        target, _, fragment = href.partition("#")
        file = (path.parent / unquote(target)).resolve() if target else path
        if not file.exists():
            broken.append(href)
        elif fragment and file.suffix == ".md":
            slugs = {_slug(h) for h in re.findall(r"^#+\s+(.*)$", file.read_text(), flags=re.MULTILINE)}
            if fragment not in slugs:
                broken.append(f"{href} (no such heading)")
    assert not broken, f"{markdown}: {broken}"


def _slug(heading: str) -> str:
    from gae_workbook.tools.site import _slug as site_slug

    return site_slug(heading)
