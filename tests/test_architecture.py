"""The shape of the library, read from its source: the import graph of ``sparsekit`` has no cycle, no
module takes a private name from another subpackage, the library imports no Streamlit and plotly
only in ``viz``, and modules stay small.

Every ``import`` statement counts, wherever it stands: at module level, inside a function, or under
``if TYPE_CHECKING`` (a type-only import is still an arrow a reader must follow).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sparsekit"
MAX_LINES = 480
"""Hard limit per module (the aim is about 450)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p): p for p in sorted(package.rglob("*.py"))}


def imports(name: str, path: Path) -> list[tuple[str, str]]:
    """``(imported module, imported name or '')`` for every import in the file, relative ones resolved."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out += [(base, alias.name) for alias in node.names]
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the sparsekit modules it imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        for base, item in imports(name, path):
            target = f"{base}.{item}" if f"{base}.{item}" in mods else base
            if target in mods and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def subpackage(name: str) -> str:
    """``sparsekit.study.cells`` -> ``sparsekit.study``; a top-level module is its own."""
    parts = name.split(".")
    return ".".join(parts[:2])


def test_cycle_finder_finds_cycles():
    # The finder itself, on hand-made graphs: a 3-cycle, a self-import, and a DAG.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_graph_reads_every_kind_of_import(tmp_path):
    pkg = tmp_path / "sparsekit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..top import T\n")
    (pkg / "top.py").write_text("def f():\n    from .sub.leaf import g\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        graph = import_graph(modules(pkg))
    finally:
        ROOT = saved
    assert graph["sparsekit.sub"] == {"sparsekit.sub.leaf"}
    assert graph["sparsekit.sub.leaf"] == {"sparsekit.top"}  # type-only import counted
    assert graph["sparsekit.top"] == {"sparsekit.sub.leaf"}  # function-level import counted
    assert cycles(graph) == [["sparsekit.sub.leaf", "sparsekit.top"]]


def test_no_import_cycle():
    found = cycles(import_graph(modules()))
    assert not found, "import cycles in sparsekit: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_private_name_across_subpackages():
    mods = modules()
    bad = []
    for name, path in mods.items():
        for base, item in imports(name, path):
            if not base.startswith("sparsekit") or not item.startswith("_") or item.startswith("__"):
                continue
            if subpackage(base) != subpackage(name):
                bad.append(f"{name} imports {base}.{item}")
    assert not bad, bad


def test_library_imports_no_streamlit_and_plotly_only_in_viz():
    bad = []
    for name, path in modules().items():
        for base, _ in imports(name, path):
            top = base.split(".")[0]
            if top == "streamlit" or (top == "plotly" and not name.startswith("sparsekit.viz")):
                bad.append(f"{name} imports {base}")
    assert not bad, bad


def test_module_size():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    large = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert not large, f"modules over {MAX_LINES} lines (split them by concept): {large}"
