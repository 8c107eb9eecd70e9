"""The opening talk's slides (``make slides``): one file, made from every notebook, that opens offline."""

from __future__ import annotations

import base64
import html
import re

from gae_workbook.tools.run import notebook_paths
from gae_workbook.tools.site import local_references, remote_references
from gae_workbook.tools.slides import KEY_FIGURES, build_slides, read_notebook

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_slides_are_one_self_contained_file_made_from_every_notebook(tmp_path):
    path, n_slides = build_slides(out=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]
    page = path.read_text()
    # nothing fetched from the network, and no file needed beside it: styles, script and figures are inside
    assert remote_references(page) == []
    assert local_references(page) == []
    assert not re.search(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=\"(?!data:)", page)
    assert page.count('<section class="slide') == n_slides
    for notebook in notebook_paths():
        slides = read_notebook(notebook)
        assert html.escape(slides.title) in page, notebook.name
        assert slides.figures, f"{notebook.name}: no figure for the talk"
    images = re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= len(notebook_paths())
    assert all(base64.b64decode(data)[:8] == PNG_MAGIC for data in images)
    assert "$" not in re.sub(r"<script>.*?</script>", "", page, flags=re.S), "formulas are MathML"


def test_key_figures_name_figures_the_notebooks_save():
    """A renamed figure drops silently from the talk; this says which name to update in KEY_FIGURES."""
    for notebook in notebook_paths():
        saved = read_notebook(notebook).saved
        missing = [name for name in KEY_FIGURES.get(notebook.stem, []) if name not in saved]
        assert not missing, f"{notebook.name} no longer saves {missing}: update gae_workbook.tools.slides.KEY_FIGURES"
