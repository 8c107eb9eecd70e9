"""The three packages depend one way: gae_utils <- shapesworld <- gae_workbook, with no import cycle.

Every import statement of every module is read from its source (top level and inside functions),
so a lazy import against the direction fails here as well as an eager one.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gae_utils", "shapesworld", "gae_workbook")
ALLOWED = {  # package -> the packages it may import
    "gae_utils": {"gae_utils"},
    "shapesworld": {"gae_utils", "shapesworld"},
    "gae_workbook": {"gae_utils", "shapesworld", "gae_workbook"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (``from a import b`` counts ``a.b`` when it is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module:  # ``from . import a`` imports the submodules only
                found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in modules}
    return {m for m in found if m.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) & set(modules) for name, path in modules.items()}


def test_dependencies_point_one_way():
    wrong = [
        f"{name} imports {target}"
        for name, targets in _graph().items()
        for target in targets
        if target.split(".")[0] not in ALLOWED[name.split(".")[0]]
    ]
    assert not wrong, wrong


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    # a package's __init__ re-exporting its submodules is not a cycle of the design: leave those edges out
    graph = {
        name: {t for t in targets if not (name == t.rpartition(".")[0] or t == name.rpartition(".")[0])}
        for name, targets in _graph().items()
    }
    assert not _cycles(graph), _cycles(graph)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_import_gae_utils_loads_no_workbook_material_nor_plotting():
    code = (
        "import sys, gae_utils; "
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in "
        "('shapesworld', 'gae_workbook', 'matplotlib', 'ipywidgets', 'seaborn', 'transformers')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


def test_gae_utils_stays_thin():
    lines = sum(len(p.read_text().splitlines()) for p in (ROOT / "gae_utils").rglob("*.py"))
    assert lines <= 4000, f"gae_utils has {lines} lines; workbook material belongs in shapesworld or gae_workbook"
