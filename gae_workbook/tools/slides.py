"""Slides for the instructor's opening talk, made from the notebooks' own markdown and figures.

    python -m gae_workbook.tools.slides                       # -> outputs/slides/index.html (make slides)
    python -m gae_workbook.tools.slides --figures DIR --out DIR

One self-contained HTML file: styles and the small script that turns the pages are written here, the
figures are embedded as ``data:`` URIs and formulas are MathML, so the file opens offline, from a USB
stick or a mail attachment, with nothing to install. Keys: right / left arrow (or space, Page Down /
Page Up, a click) to move, Home / End, ``#7`` in the address jumps to slide 7. Printing gives one
slide per page.

What goes on the slides is read from the course, so the talk changes when the course does:

* a title slide with the course map (``00_course_map``) and every notebook with its estimated time;
* per notebook: its title, learning objectives, time and prerequisite (the notebook's first cell); its
  key figures (:data:`KEY_FIGURES`, else the first figure it saves) with the "What to notice" note that
  follows each in the notebook; its take-aways;
* a closing slide on how to run the course.
"""

from __future__ import annotations

import argparse
import base64
import html
import re
from pathlib import Path

from .run import REPO, notebook_paths
from .site import _ANCHOR, _is_relative, _MathMLRenderer, remote_references

__all__ = ["KEY_FIGURES", "NotebookSlides", "read_notebook", "build_slides", "main"]

# the figures a talk shows per notebook, in order; a name the notebook no longer saves is skipped
KEY_FIGURES = {
    "00_notation": ["00_course_map"],
    "01_vit": ["01_rule_diagram", "01_class_specific"],
    "02_dual_encoders": ["02_clip_image_per_caption"],
    "03_vqa_coattention": ["03_rule_blocks", "03_vqa_flow"],
    "04_detr": ["04_rule_blocks", "04_detr_methods"],
    "05_seq2seq": ["05_translation_tokens"],
    "06_language_model": ["06_lm_tokens_methods"],
}

_SAVED = re.compile(r"save_figure\([^,]+,\s*[\"']([\w-]+)[\"']")


class NotebookSlides:
    """What one notebook contributes: its title, opening cell, figures with their notes, take-aways."""

    def __init__(
        self, stem: str, title: str, opening: str, figures: list[tuple[str, str]], take_aways: str, saved: list[str]
    ):
        self.stem = stem
        self.saved = saved  # every figure the notebook saves, in order
        self.title = title
        self.opening = opening
        self.figures = figures  # (figure name, its "What to notice" note or "")
        self.take_aways = take_aways


def _section(markdown: str, heading: str) -> str:
    """The text under ``## heading`` up to the next heading or bold paragraph label, without the heading."""
    match = re.search(rf"^#+\s*{heading}\s*$(.*?)(?=^#|^\*\*\w[^*]*\.\*\*|\Z)", markdown, re.M | re.S)
    return match.group(1).strip() if match else ""


def read_notebook(path: Path) -> NotebookSlides:
    """Read the slide material of one ``py:percent`` notebook.

    Args:
        path: the notebook.

    Returns:
        Its :class:`NotebookSlides`.
    """
    import jupytext

    cells = jupytext.read(path).cells
    markdown = [c.source for c in cells if c.cell_type == "markdown"]
    opening = markdown[0] if markdown else ""
    title = next((line.lstrip("#").strip() for line in opening.splitlines() if line.startswith("#")), path.stem)
    opening = "\n".join(line for line in opening.splitlines() if not line.startswith("# "))
    # keep the opening to what a slide can hold: objectives, time, prerequisites
    paragraphs = [p for p in re.split(r"\n\s*\n", opening) if re.match(r"\s*(\*\*|\d\.|-)", p)]
    notes: dict[str, str] = {}
    saved: list[str] = []
    for i, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        for name in _SAVED.findall(cell.source):
            saved.append(name)
            following = next((c.source for c in cells[i + 1 :] if c.cell_type == "markdown"), "")
            notes[name] = following if following.lstrip().startswith("**What to notice") else ""
    wanted = [n for n in KEY_FIGURES.get(path.stem, []) if n in saved] or saved[:1]
    take_aways = next((_section(m, "Take-aways") for m in markdown if re.search(r"^#+\s*Take-aways", m, re.M)), "")
    return NotebookSlides(path.stem, title, "\n\n".join(paragraphs), [(n, notes[n]) for n in wanted], take_aways, saved)


def _markdown(text: str) -> str:
    """Markdown as HTML with MathML formulas; relative links keep their text (a slide has no files beside it)."""
    from nbconvert.filters.markdown_mistune import MarkdownWithMath

    rendered = MarkdownWithMath(renderer=_MathMLRenderer(escape=False, exclude_anchor_links=True)).render(text)
    return _ANCHOR.sub(lambda m: m.group(0) if not _is_relative(html.unescape(m.group(2))) else m.group(4), rendered)


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'


_STYLE = """
html, body { margin: 0; height: 100%; background: #222; font-family: sans-serif; }
.slide { display: none; box-sizing: border-box; width: 100vw; height: 100vh; padding: 3vh 5vw;
         background: #fff; color: #111; overflow: auto; font-size: 2.4vh; line-height: 1.4; }
.slide.current { display: flex; flex-direction: column; }
.slide h1 { font-size: 4.2vh; margin: 0 0 1.5vh; }
.slide h2 { font-size: 3.2vh; margin: 0 0 1vh; color: #444; }
.slide img { max-width: 100%; max-height: 58vh; object-fit: contain; align-self: center; }
.slide .note { font-size: 2vh; }
.slide.figure { justify-content: flex-start; }
.slide table { border-collapse: collapse; }
.slide td, .slide th { border-bottom: 1px solid #ddd; padding: 0.3em 1em 0.3em 0; text-align: left; }
.counter { position: fixed; right: 1.5vw; bottom: 1vh; color: #888; font-size: 1.6vh; }
code { background: #f2f2f2; }
@media print {
  html, body { background: #fff; height: auto; }
  .slide { display: flex; flex-direction: column; page-break-after: always; height: auto; min-height: 95vh; }
  .counter { display: none; }
}
"""

# the page turner: arrows, space, Page Up/Down, Home/End, a click; the slide number lives in the address
_SCRIPT = """
(function () {
  var slides = document.querySelectorAll('.slide');
  var counter = document.querySelector('.counter');
  var current = 0;
  function show(n) {
    current = Math.max(0, Math.min(slides.length - 1, n));
    for (var i = 0; i < slides.length; i++) { slides[i].classList.toggle('current', i === current); }
    counter.textContent = (current + 1) + ' / ' + slides.length;
    if (location.hash !== '#' + (current + 1)) { history.replaceState(null, '', '#' + (current + 1)); }
  }
  document.addEventListener('keydown', function (e) {
    if (['ArrowRight', 'ArrowDown', 'PageDown', ' '].indexOf(e.key) >= 0) { show(current + 1); e.preventDefault(); }
    else if (['ArrowLeft', 'ArrowUp', 'PageUp'].indexOf(e.key) >= 0) { show(current - 1); e.preventDefault(); }
    else if (e.key === 'Home') { show(0); }
    else if (e.key === 'End') { show(slides.length - 1); }
  });
  document.addEventListener('click', function (e) {
    if (e.target.tagName !== 'A') { show(current + (e.clientX < window.innerWidth / 3 ? -1 : 1)); }
  });
  window.addEventListener('hashchange', function () { show(parseInt(location.hash.slice(1), 10) - 1 || 0); });
  show(parseInt(location.hash.slice(1), 10) - 1 || 0);
})();
"""


def _slide(body: str, kind: str = "") -> str:
    return f'<section class="slide {kind}">\n{body}\n</section>'


def _times(notebook: NotebookSlides) -> str:
    match = re.search(r"Estimated time:?\**:?\s*([^.(]*)", notebook.opening)
    return match.group(1).strip(" *") if match else ""


def build_slides(
    notebooks: Path | None = None, figures: Path | None = None, out: Path | None = None
) -> tuple[Path, int]:
    """Write the opening talk as one self-contained HTML file.

    Args:
        notebooks: folder of the course notebooks (default ``notebooks/``).
        figures: folder of the PNG figures (default the committed ``figures/``).
        out: the folder to write ``index.html`` into (default ``outputs/slides``).

    Returns:
        The file written and its number of slides.

    Raises:
        ValueError: the file would load something from the network.
    """
    notebooks = Path(notebooks) if notebooks is not None else REPO / "notebooks"
    figures = Path(figures) if figures is not None else REPO / "figures"
    out = Path(out) if out is not None else REPO / "outputs" / "slides"
    course = [read_notebook(p) for p in notebook_paths(notebooks)]

    rows = "\n".join(f"<tr><td>{html.escape(nb.title)}</td><td>{html.escape(_times(nb))}</td></tr>" for nb in course)
    course_map = figures / "00_course_map.png"
    slides = [
        _slide(
            "<h1>Explaining transformers with their own attention</h1>\n"
            "<h2>Generic Attention-model Explainability (Chefer, Gur &amp; Wolf, ICCV 2021): the course</h2>\n"
            f"<table>\n<tr><th>notebook</th><th>estimated time</th></tr>\n{rows}\n</table>"
        )
    ]
    if course_map.is_file() and not any(n == "00_course_map" for nb in course for n, _ in nb.figures):
        slides.append(_slide(f"<h1>The course map</h1>\n{_figure(course_map)}", "figure"))
    for nb in course:
        slides.append(_slide(f"<h1>{html.escape(nb.title)}</h1>\n{_markdown(nb.opening)}"))
        for name, note in nb.figures:
            png = figures / f"{name}.png"
            if not png.is_file():
                continue
            slides.append(
                _slide(
                    f'<h2>{html.escape(nb.title)}</h2>\n{_figure(png)}\n<div class="note">{_markdown(note)}</div>',
                    "figure",
                )
            )
        if nb.take_aways:
            slides.append(_slide(f"<h2>{html.escape(nb.title)}</h2>\n<h1>Take-aways</h1>\n{_markdown(nb.take_aways)}"))
    slides.append(
        _slide(
            "<h1>Running the course</h1>\n<ul>\n"
            "<li><code>make workbook</code>: install, then execute every notebook (outputs in "
            "<code>outputs/</code>).</li>\n"
            "<li><code>make lab</code>: JupyterLab on <code>notebooks/</code>; double-click a <code>.py</code> "
            "notebook to open it.</li>\n"
            "<li><code>make site</code>: the executed notebooks and the docs as offline HTML, for a room "
            "whose installation fails.</li>\n"
            "<li><code>make lecture</code>: each explorer as an app.</li>\n</ul>"
        )
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>GAE workbook: opening talk</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(slides)
        + f'\n<div class="counter"></div>\n<script>{_SCRIPT}</script>\n</body>\n</html>\n'
    )
    remote = remote_references(page)
    if remote:
        raise ValueError(f"the slides would load from the network: {remote[:3]}")
    out.mkdir(parents=True, exist_ok=True)
    target = out / "index.html"
    target.write_text(page, encoding="utf-8")
    return target, len(slides)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Build the opening talk's slides from the notebooks (one HTML file).")
    parser.add_argument("--notebooks", type=Path, default=REPO / "notebooks", help="the course notebooks")
    parser.add_argument("--figures", type=Path, default=REPO / "figures", help="PNG figures to show")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "slides", help="folder for index.html")
    args = parser.parse_args(argv)
    path, n = build_slides(args.notebooks, args.figures, args.out)
    print(f"wrote {n} slides to {path} ({path.stat().st_size / 1e6:.1f} MB, opens offline)")
    return path


if __name__ == "__main__":
    main()
