"""Every notebook runs top to bottom on the embedded models (smoke sizes) and writes its figures."""

import time

import pytest

from gae_workbook.tools.run import execute_notebook, notebook_paths

NOTEBOOKS = notebook_paths()
BUDGET_S = 240  # per notebook, smoke sizes, 2 CPU cores


@pytest.mark.timeout(BUDGET_S + 60)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_and_saves_figures(path, tmp_path):
    started = time.perf_counter()
    nb = execute_notebook(
        path, output=tmp_path / f"{path.stem}.ipynb", smoke=True, figures=tmp_path / "figures", timeout=BUDGET_S
    )
    elapsed = time.perf_counter() - started
    assert elapsed < BUDGET_S, f"{path.name} took {elapsed:.0f} s"
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors
    written = sorted(p.name for p in (tmp_path / "figures").iterdir())
    prefix = path.stem.split("_")[0]
    assert written and all(name.startswith(prefix) for name in written), written
    assert {p.rsplit(".", 1)[1] for p in written} == {"png", "pdf"}
    # the executed copy shows its figures and opens as a plain notebook
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= len(written) // 2
    assert not any("PosixPath(" in str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "jupytext" not in nb.metadata
