"""Build a static HTML site of the executed workbook that opens offline: one page per notebook and an index.

    python -m gae_workbook.tools.site                            # executed notebooks + docs/*.md -> outputs/site/
    python -m gae_workbook.tools.site --notebooks DIR --out DIR  # elsewhere

Run ``python -m gae_workbook.tools.run`` first: the pages show the executed notebooks, figures included.
The reference pages of ``docs/`` (the rules, the evaluation protocols, the instructor guide, the model
reference, ...) become pages of the site too, and every link between them is rewritten to the page it
names: ``../docs/rules.md`` -> ``rules.html``, ``00_notation.py`` -> ``00_notation.html``. A relative
link to a file that has no page (a source file) keeps its text and loses its link; the build lists them.

Why nbconvert's HTML exporter (``lab`` template) rather than jupyter-book or mkdocs-jupyter: it is
already a dependency of the workbook (JupyterLab and nbclient need it), it renders a notebook exactly
as JupyterLab shows it, and it adds no configuration tree and no second build system to keep in
step with the notebooks. jupyter-book 1 pulls in Sphinx and a theme that load their scripts and
fonts as their authors ship them, and mkdocs-jupyter wraps the same exporter in a MkDocs site; both
are more to maintain for a site of a handful of pages with one index.

Offline: the stock template loads require.js, MathJax and the ipywidgets renderer from a CDN. The
exporter here drops all three (the pages need no script at all):

* equations are converted to MathML when the page is built (``latex2mathml``), which browsers
  render natively, so ``$...$``, ``$$...$$`` and ``\\begin{...}`` environments show without MathJax;
* figures are already inside the executed notebooks as ``image/png`` outputs and become ``data:``
  URIs; images a markdown cell links to are embedded as well (``embed_images``);
* an interactive explorer (an ipywidgets output) cannot run without a kernel: its output is replaced
  by a note that says how to open it (JupyterLab or the lecture app).

:func:`remote_references` lists everything a page would fetch from the network; the build refuses a
page that has any, and the tests check every page again.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import time
from pathlib import Path

import nbformat
from jinja2 import DictLoader, pass_context
from nbconvert import HTMLExporter
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

__all__ = [
    "tex_to_mathml",
    "remote_references",
    "local_references",
    "OfflineHTMLExporter",
    "build_page",
    "build_doc_page",
    "build_site",
    "main",
]

REPO = Path(__file__).resolve().parents[2]

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
EXPLORER_NOTE = (
    '<div class="gae-explorer-note"><strong>Interactive explorer.</strong> It needs a running kernel: open '
    "<code>notebooks/{stem}.py</code> in JupyterLab (<code>make lab</code>) and run all cells, or start the "
    "lecture app (<code>make lecture</code>).</div>"
)

# The lab template with every remote script removed (require.js, MathJax, mermaid, the widget renderer).
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block extra_css -%}
<style type="text/css">
math[display="block"] { display: block; margin: 0.6em 0; padding: 0.2em 0; overflow-x: auto; overflow-y: hidden; }
.gae-explorer-note { border-left: 4px solid #888; padding: 0.4em 0.8em; background: #f4f4f4; }
.gae-nav { font-family: sans-serif; padding: 0.5em 1em; border-bottom: 1px solid #ccc; }
</style>
{%- endblock extra_css -%}
{%- block body_header -%}
{{ super() }}
<nav class="gae-nav"><a href="index.html">Workbook index</a></nav>
{%- endblock body_header -%}
"""

_REMOTE = re.compile(
    r"""<(?:script|img|iframe|embed|source|audio|video)\b[^>]*\bsrc\s*=\s*["']?(?:https?:)?//"""
    r"""|<link\b[^>]*\bhref\s*=\s*["']?(?:https?:)?//"""
    r"""|@import\s+(?:url\()?\s*["']?(?:https?:)?//"""
    r"""|url\(\s*["']?(?:https?:)?//""",
    re.IGNORECASE,
)


def remote_references(page: str) -> list[str]:
    """Everything in an HTML page that a browser would fetch from the network (scripts, styles, images, fonts).

    Links a reader may click (``<a href="https://...">``) are not fetched and are not listed.

    Args:
        page: the HTML text.

    Returns:
        The offending snippets (up to 120 characters each); empty when the page opens offline.
    """
    return [page[m.start() : m.start() + 120] for m in _REMOTE.finditer(page)]


def tex_to_mathml(tex: str, display: bool = False) -> str:
    """One LaTeX formula as MathML, which browsers render without a script.

    Args:
        tex: the formula without its delimiters (``$``, ``$$``).
        display: a block formula (own line, centred) rather than inline.

    Returns:
        A ``<math>`` element; where the converter cannot read the formula, the LaTeX source in ``<code>``
        so the page still says what the formula is.
    """
    import latex2mathml.converter

    # the converter reads "\\0" as a command: a row break followed by a digit needs a space
    tex = re.sub(r"\\\\(?=\S)", r"\\\\ ", tex.strip())
    try:
        return latex2mathml.converter.convert(tex, display="block" if display else "inline")
    except Exception:  # any formula the converter does not support: show its source, never fail the page
        return f"<code>{html.escape(tex)}</code>"


class _MathMLRenderer(IPythonRenderer):
    """nbconvert's markdown renderer with formulas written as MathML instead of left for MathJax."""

    def block_math(self, body: str) -> str:
        return tex_to_mathml(body, display=True)

    def inline_math(self, body: str) -> str:
        return tex_to_mathml(body)

    def latex_environment(self, name: str, body: str) -> str:
        return tex_to_mathml(f"\\begin{{{name}}}{body}\\end{{{name}}}", display=True)

    def block_html(self, html: str) -> str:
        # nbconvert re-parses every HTML block to embed its images, which closes a tag left open on purpose
        # (a quiz's <details> whose answer is the markdown that follows): only blocks with an image need it
        if "<img" not in html:
            return super(IPythonRenderer, self).block_html(html)
        return super().block_html(html)


class OfflineHTMLExporter(HTMLExporter):
    """The ``lab`` HTML exporter with no remote script, formulas as MathML and every image embedded."""

    def __init__(self, **kw):
        kw.setdefault("extra_loaders", [DictLoader({"gae_offline.html.j2": _TEMPLATE})])
        super().__init__(**kw)
        self.template_file = "gae_offline.html.j2"
        self.embed_images = True
        self.exclude_anchor_links = True

    @pass_context
    def markdown2html(self, context, source):
        cell = context.get("cell", {})
        path = context.get("resources", {}).get("metadata", {}).get("path", "")
        renderer = _MathMLRenderer(
            escape=False,
            attachments=cell.get("attachments", {}),
            embed_images=self.embed_images,
            path=path,
            anchor_link_text=self.anchor_link_text,
            exclude_anchor_links=self.exclude_anchor_links,
            **self.lexer_options,
        )
        return MarkdownWithMath(renderer=renderer).render(source)


def _without_widgets(notebook: nbformat.NotebookNode, stem: str) -> nbformat.NotebookNode:
    """A copy of ``notebook`` whose widget outputs are a note (they cannot run without a kernel)."""
    notebook = nbformat.from_dict(notebook)
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if WIDGET_VIEW in output.get("data", {}):
                output["data"] = {"text/html": EXPLORER_NOTE.format(stem=stem), "text/plain": "interactive explorer"}
    return notebook


def _title(notebook: nbformat.NotebookNode, default: str) -> str:
    """The first markdown heading of a notebook (its title), else ``default``."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return default


_ANCHOR = re.compile(r"<a\b([^>]*?)\bhref=\"([^\"]*)\"([^>]*)>(.*?)</a>", re.IGNORECASE | re.DOTALL)
_LOCAL_ATTR = re.compile(
    r"""<(?:a|img|link|script|source|iframe|embed|audio|video)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']*)["']""",
    re.IGNORECASE,
)


def _is_relative(href: str) -> bool:
    """A link to a file next to the page (not a web address, an anchor on the page, a data URI or mail)."""
    return bool(href) and not re.match(r"^(?:[a-z][a-z0-9+.-]*:|//|#|/)", href, re.IGNORECASE)


def local_references(page: str) -> list[str]:
    """Every relative ``href`` and ``src`` of an HTML page (files a browser would open next to the page).

    Args:
        page: the HTML text.

    Returns:
        The link targets as written, fragments included (``rules.html#notation``), in page order.
    """
    return [html.unescape(m.group(1)) for m in _LOCAL_ATTR.finditer(page) if _is_relative(html.unescape(m.group(1)))]


class _SiteLinks:
    """Which page of the site a file of the repository becomes: notebooks (``.py`` or executed ``.ipynb``)
    by their stem, the docs pages by their stem, the README as the index."""

    def __init__(self, notebook_stems: set[str], docs: Path | None):
        self.notebooks = notebook_stems
        self.docs = docs.resolve() if docs is not None else None
        self.doc_stems = {p.stem for p in docs.glob("*.md")} if docs is not None else set()
        self.dropped: list[tuple[str, str]] = []  # (page, link) without a page of the site

    def page_for(self, target: Path) -> str | None:
        if target.suffix in (".py", ".ipynb") and target.stem in self.notebooks:
            return f"{target.stem}.html"
        if target.suffix == ".md" and self.docs is not None and target.parent == self.docs:
            return f"{target.stem}.html" if target.stem in self.doc_stems else None
        if target == REPO / "README.md":
            return "index.html"
        return None

    def rewrite(self, page: str, folders: list[Path], name: str) -> str:
        """``page`` with every relative link pointing at the site's page for its target, or unlinked."""
        from urllib.parse import unquote

        def relink(match: re.Match) -> str:
            before, href, after, text = match.groups()
            if not _is_relative(html.unescape(href)):
                return match.group(0)
            path, _, fragment = html.unescape(href).partition("#")
            if "/" not in path and path.endswith(".html") and path[:-5] in self.notebooks | self.doc_stems | {"index"}:
                return match.group(0)  # already a page of the site (the navigation bar)
            target = None
            for folder in folders:
                target = self.page_for(Path(os.path.normpath(folder / unquote(path))))
                if target:
                    break
            if target is None:
                self.dropped.append((name, href))
                return text
            # the index stands in for the README, whose sections it does not have
            new = target + (f"#{fragment}" if fragment and target != "index.html" else "")
            return f'<a{before}href="{html.escape(new)}"{after}>{text}</a>'

        return _ANCHOR.sub(relink, page)


def _slug(text: str) -> str:
    """A heading's anchor as GitHub writes it: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"<[^>]+>", "", html.unescape(text)).strip().lower()
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


class _DocRenderer(_MathMLRenderer):
    """The renderer of the docs pages: MathML formulas, embedded images and an ``id`` on every heading
    (so that ``rules.html#notation`` lands where ``rules.md#notation`` does on a forge)."""

    def heading(self, text: str, level: int, **attrs) -> str:
        return f'<h{level} id="{_slug(text)}">{text}</h{level}>\n'


_DOC_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 56em; margin: 0 auto 3em; padding: 0 1em; line-height: 1.5; }}
table {{ border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; }}
pre {{ background: #f6f6f6; padding: 0.6em; overflow-x: auto; }}
code {{ background: #f6f6f6; }}
img {{ max-width: 100%; }}
math[display="block"] {{ display: block; margin: 0.6em 0; overflow-x: auto; }}
.gae-nav {{ padding: 0.5em 0; border-bottom: 1px solid #ccc; margin-bottom: 1em; }}
</style>
</head>
<body>
<nav class="gae-nav"><a href="index.html">Workbook index</a></nav>
{body}
</body>
</html>
"""


def _markdown_title(text: str, default: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return default


def build_doc_page(markdown_path: Path, out: Path) -> Path:
    """Write one reference page (``docs/<stem>.md``) as ``out/<stem>.html``: formulas as MathML, images
    the page links to embedded. Its links are rewritten by :func:`build_site`.

    Args:
        markdown_path: the markdown file.
        out: the site folder.

    Returns:
        The page written.
    """
    text = markdown_path.read_text(encoding="utf-8")
    renderer = _DocRenderer(escape=False, embed_images=True, path=str(markdown_path.parent), exclude_anchor_links=True)
    body = MarkdownWithMath(renderer=renderer).render(text)
    page = _DOC_PAGE.format(title=html.escape(_markdown_title(text, markdown_path.stem)), body=body)
    remote = remote_references(page)
    if remote:
        raise ValueError(f"{markdown_path.name}: the page would load from the network: {remote[:3]}")
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{markdown_path.stem}.html"
    target.write_text(page, encoding="utf-8")
    return target


def build_page(notebook_path: Path, out: Path, base: Path | None = None) -> Path:
    """Write one executed notebook as ``out/<stem>.html``.

    Args:
        notebook_path: an executed ``.ipynb``.
        out: the site folder.
        base: where relative image links of markdown cells point from (default: ``notebooks/``, where the
            notebooks ran; the executed copies of ``gae_workbook.tools.run`` carry their images as attachments).

    Returns:
        The page written.

    Raises:
        ValueError: the page would fetch something from the network.
    """
    notebook = nbformat.read(notebook_path, as_version=4)
    stem = notebook_path.stem
    base = Path(base) if base is not None else REPO / "notebooks"
    page, _ = OfflineHTMLExporter().from_notebook_node(
        _without_widgets(notebook, stem), resources={"metadata": {"name": stem, "path": str(base)}}
    )
    remote = remote_references(page)
    if remote:
        raise ValueError(f"{notebook_path.name}: the page would load from the network: {remote[:3]}")
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{stem}.html"
    target.write_text(page, encoding="utf-8")
    return target


def _index(entries: list[tuple[str, str, int]], docs: list[tuple[str, str]] | None = None) -> str:
    """The index page: one link per notebook with its title and the number of figures it holds, then one
    link per reference page (``docs/``)."""
    items = "\n".join(
        f'<li><a href="{html.escape(href)}">{html.escape(title)}</a> <small>({n} figures)</small></li>'
        for href, title, n in entries
    )
    reference = ""
    if docs:
        links = "\n".join(f'<li><a href="{html.escape(href)}">{html.escape(title)}</a></li>' for href, title in docs)
        reference = f"<h2>Reference pages</h2>\n<ul>\n{links}\n</ul>\n"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>GAE workbook</title>\n'
        "<style>body { font-family: sans-serif; max-width: 48em; margin: 2em auto; line-height: 1.5; }</style>\n"
        "</head>\n<body>\n<h1>GAE workbook: executed notebooks</h1>\n"
        "<p>Each page is a notebook as <code>python -m gae_workbook.tools.run</code> executed it, figures included. "
        "The interactive explorers need a kernel: open the notebooks in JupyterLab (<code>make lab</code>) "
        "or start the lecture app (<code>make lecture</code>). Start with 00, then 01 to 06 in order.</p>\n"
        f"<ol>\n{items}\n</ol>\n{reference}</body>\n</html>\n"
    )


def build_site(
    notebooks: Path | None = None, out: Path | None = None, base: Path | None = None, docs: Path | None = None
) -> list[Path]:
    """Write one page per executed notebook, one per reference page of ``docs`` and an ``index.html``
    linking them all; every relative link between them points at the page it names.

    Args:
        notebooks: folder of executed notebooks (default ``outputs/notebooks``).
        out: the site folder (default ``outputs/site``).
        base: see :func:`build_page`; also where a notebook's relative links are looked up when they do not
            resolve from the executed copy's own folder.
        docs: folder of markdown reference pages to include (None: notebooks only; ``make site`` passes
            ``docs/``).

    Returns:
        The pages written, index first.

    Raises:
        FileNotFoundError: no executed notebook in ``notebooks`` (run ``python -m gae_workbook.tools.run``).
        ValueError: a reference page has the name of a notebook.
    """
    notebooks = Path(notebooks) if notebooks is not None else REPO / "outputs" / "notebooks"
    out = Path(out) if out is not None else REPO / "outputs" / "site"
    base = Path(base) if base is not None else REPO / "notebooks"
    paths = sorted(notebooks.glob("*.ipynb"))
    if not paths:
        raise FileNotFoundError(
            f"no executed notebook in {notebooks}: run `python -m gae_workbook.tools.run` (or `make workbook`) first"
        )
    doc_paths = sorted(Path(docs).glob("*.md")) if docs is not None else []
    clash = {p.stem for p in doc_paths} & {p.stem for p in paths} | {p.stem for p in doc_paths} & {"index"}
    if clash:
        raise ValueError(f"reference pages named like a notebook or the index: {sorted(clash)}")
    links = _SiteLinks({p.stem for p in paths}, Path(docs) if docs is not None else None)
    from tqdm.auto import tqdm

    pages, entries, doc_entries = [], [], []
    for path in tqdm(paths, desc="pages"):
        page = build_page(path, out, base)
        page.write_text(links.rewrite(page.read_text(encoding="utf-8"), [path.parent, base], page.name), "utf-8")
        notebook = nbformat.read(path, as_version=4)
        n_figures = sum("image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", []))
        pages.append(page)
        entries.append((page.name, _title(notebook, path.stem), n_figures))
    for path in doc_paths:
        page = build_doc_page(path, out)
        page.write_text(links.rewrite(page.read_text(encoding="utf-8"), [path.parent], page.name), "utf-8")
        pages.append(page)
        doc_entries.append((page.name, _markdown_title(path.read_text(encoding="utf-8"), path.stem)))
    if links.dropped:
        print(f"{len(links.dropped)} relative links have no page in the site and are shown as text:")
        for name, href in links.dropped:
            print(f"  {name}: {href}")
    index = out / "index.html"
    index.write_text(_index(entries, doc_entries), encoding="utf-8")
    return [index, *pages]


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(
        description="Build the offline HTML site of the executed notebooks and the docs pages."
    )
    parser.add_argument("--notebooks", type=Path, default=REPO / "outputs" / "notebooks", help="executed .ipynb")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "site", help="site folder")
    parser.add_argument("--docs", type=Path, default=REPO / "docs", help="markdown reference pages to include")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    pages = build_site(args.notebooks, args.out, docs=args.docs)
    print(f"wrote {len(pages)} pages to {args.out} in {time.perf_counter() - started:.1f} s; open {pages[0]}")
    return pages


if __name__ == "__main__":
    main()
