"""Execute the workbook's notebooks headless and report the figures they wrote.

    python -m gae_workbook.run                 # every notebooks/NN_*.py, in order
    python -m gae_workbook.run --smoke         # small sizes (GAE_SMOKE=1), as the tests run them;
                                               # figures to outputs/figures-smoke, not figures/

Notebooks are stored as jupytext ``py:percent`` files; each is converted in memory, executed with
nbclient (cwd = the notebooks folder) and the executed copy, outputs and figures included, is
written to ``outputs/notebooks/<name>.ipynb`` (ignored by git), a plain notebook that opens as one.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

__all__ = ["notebook_paths", "execute_notebook", "main"]

REPO = Path(__file__).resolve().parent.parent


def notebook_paths(directory: Path | None = None) -> list[Path]:
    """The numbered notebooks (``NN_name.py``) in order, without the exercises and their solutions
    (``NN_topic_ex_KK.py``, ``NN_topic_sol_KK.py``: a student's exercise does not run as it is)."""
    directory = Path(directory) if directory is not None else REPO / "notebooks"
    return sorted(p for p in directory.glob("[0-9][0-9]_*.py") if not any(tag in p.stem for tag in ("_ex_", "_sol_")))


def execute_notebook(
    path: Path, output: Path | None = None, smoke: bool = False, timeout: int = 900, figures: Path | None = None
):
    """Run one py:percent notebook top to bottom; raise on the first failing cell.

    Args:
        path: the ``.py`` notebook.
        output: where to write the executed ``.ipynb`` (None: don't write).
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
        output.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, output)
    return notebook


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description="Execute every workbook notebook and write figures/.")
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: all, in order)")
    parser.add_argument("--smoke", action="store_true", help="small sizes, as in the tests")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "notebooks")
    args = parser.parse_args(argv)
    from tqdm.auto import tqdm

    from .figures import figures_dir

    paths = args.notebooks or notebook_paths()
    # smoke-size figures never overwrite the committed full-size ones (unless GAE_FIGURES_DIR says where)
    smoke_figures = args.smoke and not os.environ.get("GAE_FIGURES_DIR")
    figures = REPO / "outputs" / "figures-smoke" if smoke_figures else figures_dir()
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
