"""Execute the workbook's notebooks headless and report the figures they wrote.

    python -m gae_workbook.tools.run                 # every notebooks/NN_*.py, in order; figures to figures/
    python -m gae_workbook.tools.run --smoke         # small sizes (GAE_SMOKE=1), as the tests run them;
                                               # figures to outputs/figures-smoke

A run leaves the git tree clean unless a figure changed: :func:`gae_workbook.exploration.figures.save_figure`
leaves a figure's PNG and PDF untouched when the new PNG has the same bytes, since a PDF's vector
data follows the last digits of the computed values (machines, thread counts) where no pixel moves.
Smoke runs write to ``outputs/figures-smoke`` (ignored by git). ``GAE_FIGURES_DIR``, when set, is
where the figures go unless ``--figures`` says otherwise.

Notebooks are stored as jupytext ``py:percent`` files; each is converted in memory, executed with
nbclient (cwd = the notebooks folder) and the executed copy, outputs and figures included, is
written to ``outputs/notebooks/<name>.ipynb`` (ignored by git), a plain notebook that opens as one.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path
from urllib.parse import quote, unquote

__all__ = ["notebook_paths", "execute_notebook", "relink_markdown", "default_figures_dir", "main"]

REPO = Path(__file__).resolve().parents[2]


def notebook_paths(directory: Path | None = None) -> list[Path]:
    """The numbered notebooks (``NN_name.py``) in order, without the exercises and their solutions
    (``NN_topic_ex_KK.py``, ``NN_topic_sol_KK.py``: a student's exercise does not run as it is)."""
    directory = Path(directory) if directory is not None else REPO / "notebooks"
    return sorted(p for p in directory.glob("[0-9][0-9]_*.py") if not any(tag in p.stem for tag in ("_ex_", "_sol_")))


# a markdown link or image, [text](target) or ![alt](target "title"), and an HTML href / src
_MARKDOWN_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")
_HTML_LINK = re.compile(r"""(\b(?:href|src)\s*=\s*["'])([^"']+)(["'])""", re.IGNORECASE)


def _is_relative(href: str) -> bool:
    """A link to a file (not a web address, an anchor on the page, a data URI, mail or an attachment)."""
    return bool(href) and not re.match(r"^(?:[a-z][a-z0-9+.-]*:|//|#|/)", href, re.IGNORECASE)


def relink_markdown(notebook, source: Path, output: Path) -> int:
    """Point the relative links of ``notebook``'s markdown cells, written for the ``.py`` notebook in its folder,
    at the same files from the executed copy's folder, in place.

    A link to another course notebook (``00_notation.py``) becomes its executed copy (``00_notation.ipynb``,
    written beside this one); any other file keeps its target (``../docs/rules.md`` from ``outputs/notebooks``
    becomes ``../../docs/rules.md``). An image a markdown cell shows (``![alt](figure.png)``) becomes an
    attachment of the cell, so the copy shows it wherever it is opened.

    Args:
        notebook: the notebook node (changed in place).
        source: the ``.py`` notebook the links were written for.
        output: where the executed copy is written.

    Returns:
        The number of links changed.
    """
    import base64
    import mimetypes

    source, output = Path(source).resolve(), Path(output).resolve()
    course = {p.stem for p in notebook_paths(source.parent)}
    changed = 0

    def new_target(href: str, cell=None) -> str:
        nonlocal changed
        if not _is_relative(href):
            return href
        path, hash_, fragment = href.partition("#")
        target = Path(os.path.normpath(source.parent / unquote(path)))
        mime = mimetypes.guess_type(target.name)[0] or ""
        if cell is not None and mime.startswith("image/") and target.is_file():
            data = base64.b64encode(target.read_bytes()).decode("ascii")
            cell.setdefault("attachments", {})[target.name] = {mime: data}
            new = f"attachment:{quote(target.name)}"
        elif target.suffix == ".py" and target.parent == source.parent and target.stem in course:
            new = f"{target.stem}.ipynb" + hash_ + fragment
        else:
            new = quote(Path(os.path.relpath(target, output.parent)).as_posix()) + hash_ + fragment
        changed += new != href
        return new

    def markdown_link(match: re.Match, cell) -> str:
        image = match.group(1).startswith("!")
        return match.group(1) + new_target(match.group(2), cell if image else None) + match.group(3)

    for cell in notebook.cells:
        if cell.cell_type != "markdown":
            continue
        text = _MARKDOWN_LINK.sub(lambda m, cell=cell: markdown_link(m, cell), cell.source)
        cell.source = _HTML_LINK.sub(lambda m: m.group(1) + new_target(m.group(2)) + m.group(3), text)
    notebook.metadata["gae_workbook"] = {"source": Path(os.path.relpath(source, output.parent)).as_posix()}
    return changed


def execute_notebook(
    path: Path, output: Path | None = None, smoke: bool = False, timeout: int = 900, figures: Path | None = None
):
    """Run one py:percent notebook top to bottom; raise on the first failing cell.

    Args:
        path: the ``.py`` notebook.
        output: where to write the executed ``.ipynb`` (None: don't write); its markdown links are rewritten
            to lead from there where the ``.py``'s lead (:func:`relink_markdown`).
        smoke: set ``GAE_SMOKE=1`` for the kernel (small sizes).
        timeout: seconds allowed per cell.
        figures: set ``GAE_FIGURES_DIR`` for the kernel.

    Returns:
        The executed notebook node.
    """
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    notebook = jupytext.read(path)
    # the inline backend puts every figure a cell draws into the executed copy as an image/png output
    env = {"GAE_SMOKE": "1" if smoke else "0", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    # the kernel imports this checkout's package, also where another checkout is installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    if figures is not None:
        env["GAE_FIGURES_DIR"] = str(figures)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the environment of this process
    try:
        client = NotebookClient(
            notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        )
        client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    # the executed copy is an output, not a jupytext pair of the .py: without this JupyterLab refuses to open it
    notebook.metadata.pop("jupytext", None)
    if output is not None:
        # its links lead where the .py's do (docs/, the other notebooks' executed copies)
        relink_markdown(notebook, path, output)
        output.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, output)
    return notebook


def default_figures_dir(smoke: bool = False) -> Path:
    """Where a run writes its figures unless told otherwise: ``$GAE_FIGURES_DIR``, else the committed
    ``figures/`` (``outputs/figures-smoke``, ignored by git, at smoke sizes)."""
    if os.environ.get("GAE_FIGURES_DIR"):
        return Path(os.environ["GAE_FIGURES_DIR"])
    return REPO / "outputs" / "figures-smoke" if smoke else REPO / "figures"


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(
        description="Execute every workbook notebook: executed copies to outputs/notebooks, figures to figures/."
    )
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: all, in order)")
    parser.add_argument("--smoke", action="store_true", help="small sizes, as in the tests")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "outputs" / "notebooks",
        help="folder of the executed copies (default: outputs/notebooks)",
    )
    parser.add_argument(
        "--figures",
        type=Path,
        default=None,
        help="where figures go (default: $GAE_FIGURES_DIR, else figures/, or outputs/figures-smoke with --smoke)",
    )
    args = parser.parse_args(argv)
    from tqdm.auto import tqdm

    paths = args.notebooks or notebook_paths()
    figures = default_figures_dir(args.smoke) if args.figures is None else args.figures.resolve()
    started = time.time()
    for path in tqdm(paths, desc="notebooks"):
        t = time.perf_counter()
        execute_notebook(path, args.out / f"{path.stem}.ipynb", smoke=args.smoke, figures=figures)
        print(f"ran {path.name} in {time.perf_counter() - t:.0f} s -> {args.out / (path.stem + '.ipynb')}")
    written = sorted(p for p in figures.glob("*") if p.stat().st_mtime >= started)
    print(f"wrote {len(written)} figure files to {figures}:")
    for p in written:
        print(f"  {p.name}")
    return written


if __name__ == "__main__":
    main()
