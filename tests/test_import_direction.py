"""The three packages depend one way: gae_utils and shapesworld <- gae_workbook, with no import cycle.

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
    "shapesworld": {"shapesworld"},  # a dataset package: it knows nothing of explanations
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
        "('shapesworld', 'gae_workbook', 'matplotlib', 'ipywidgets', 'seaborn', 'transformers', 'safetensors')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


def test_import_gae_utils_loads_torch_and_the_standard_library_only():
    """CONTRIBUTING's claim: beyond what ``import torch`` loads, ``import gae_utils`` adds no
    top-level package but itself (transformers, safetensors, matplotlib are imported on use)."""
    code = (
        "import sys; top = lambda: {m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names); "
        "import torch; before = top(); import gae_utils; print(' '.join(sorted(top() - before)))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == ["gae_utils"]


FLOORS = {  # gae_utils's units by floor: a unit imports only units of lower floors (and itself)
    "rules": 0, "layers": 0, "layout": 0, "heatmaps": 0, "plotting": 0,  # pure: tensors in, tensors out
    "propagation": 1, "capture": 1,  # Eq. 6-11 over layer records; the recorder, its sites and switches
    "methods": 2, "targets": 2,  # the comparison set; what is explained
    "adapters": 3, "explanation": 3,  # per-family facts, built from capture; the result object
    "explainer": 4,  # record / explain: the one recording skeleton
    "generation": 5, "dual": 5, "similarity": 5, "attribution": 5,  # entry points wrapping record
}  # fmt: skip


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each gae_utils module's layer: 0 when it imports no gae_utils module, else 1 + the highest
    layer it imports (package __init__ re-exports left out, as in the cycle test)."""
    inner = {
        n: {t for t in ts if t.startswith("gae_utils") and t.rpartition(".")[0] != n and t != n.rpartition(".")[0]}
        for n, ts in graph.items()
        if n.startswith("gae_utils")
    }
    layer: dict[str, int] = {}

    def depth(n: str) -> int:
        if n not in layer:
            layer[n] = 1 + max((depth(t) for t in inner.get(n, ())), default=-1)
        return layer[n]

    for n in inner:
        depth(n)
    return layer


def test_gae_utils_has_no_upward_arrow_and_prints_its_layers():
    graph = _graph()
    layers = _layers(graph)
    for n in sorted(layers, key=lambda m: (layers[m], m)):
        print(f"layer {layers[n]}: {n}")
    units = {_unit(n) for n in layers} - {"__init__"}
    assert units == set(FLOORS), f"new or removed units: {units ^ set(FLOORS)}; give each a floor"
    upward = [
        f"{n} imports {t}"
        for n, targets in graph.items()
        if n.startswith("gae_utils.")
        for t in targets
        if t.startswith("gae_utils.") and _unit(t) != _unit(n) and FLOORS[_unit(t)] >= FLOORS[_unit(n)]
    ]
    assert not upward, upward
    strict = {n: {t for t in ts if t != n} for n, ts in graph.items() if n.startswith("gae_utils")}
    assert not _cycles(strict), _cycles(strict)  # also through package __init__ re-exports
    # capture knows no model family
    assert not [t for n, ts in graph.items() if n.startswith("gae_utils.capture") for t in ts if "adapters" in t]


CORE_LINES, ADAPTER_LINES, LINE_LENGTH = 4257, 200, 100  # core: issue 17 aims at 2,500


def test_gae_utils_sizes():
    """The core (everything but adapters/) reads in a few sittings, each adapter in one, and no
    line of gae_utils is longer than LINE_LENGTH characters (ruff enforces the same)."""
    files = {p: p.read_text().splitlines() for p in (ROOT / "gae_utils").rglob("*.py")}
    core = sum(len(lines) for p, lines in files.items() if "adapters" not in p.parts)
    adapters = {p.name: len(lines) for p, lines in files.items() if "adapters" in p.parts}
    largest = max(adapters.items(), key=lambda item: item[1])
    print(f"core {core} lines; adapters {sum(adapters.values())} lines, largest {largest}")
    assert core <= CORE_LINES, f"gae_utils's core has {core} lines (cap {CORE_LINES})"
    big = {name: n for name, n in adapters.items() if n > ADAPTER_LINES}
    assert not big, f"adapter files over {ADAPTER_LINES} lines: {big}"
    long = [f"{p.relative_to(ROOT)}:{i + 1}" for p, lines in files.items() for i, line in enumerate(lines)
            if len(line) > LINE_LENGTH]  # fmt: skip
    assert not long, f"{len(long)} lines over {LINE_LENGTH} characters, e.g. {long[:5]}"
