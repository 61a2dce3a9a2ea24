"""The import structure of ``src/napari_kaizen``: no module imports one that imports it back.

Every ``import`` and ``from ... import`` in every module is read with :mod:`ast`, at
module level and inside functions alike (an import deferred into a function still ties
the two modules together: it only hides the circle until that function runs). Relative
imports are resolved against the importing module's package. ``from pkg import name``
counts as an import of ``pkg.name`` when that is a module of ours, else of ``pkg``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "napari_kaizen"


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def imports_of(module: str, path: Path, modules: set[str]) -> dict[str, int]:
    """Our modules that ``module`` imports, each with the line of its first import."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        # The longest prefix that is one of our modules (``a.b.func`` -> ``a.b``).
        parts = name.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        if parts:
            target = ".".join(parts)
            if target != module:
                found.setdefault(target, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in modules else base, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    files = module_files()
    names = set(files)
    return {m: imports_of(m, p, names) for m, p in files.items()}


def circular_groups(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Groups of modules that each reach one another through imports (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest circle through each group of :func:`circular_groups`."""
    return [_shortest_circle(graph, set(g)) for g in circular_groups(graph)]


def _shortest_circle(graph: dict[str, dict[str, int]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    return paths[v] + [start]
                if w in group and w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return sorted(group)


def describe(graph: dict[str, dict[str, int]], circle: list[str]) -> str:
    hops = [f"{a} (line {graph[a][b]}) -> {b}" for a, b in zip(circle, circle[1:])]
    return " ; ".join(hops)


def test_the_walk_sees_module_and_function_level_and_relative_imports():
    graph = import_graph()
    assert len(graph) > 50
    # Module level, absolute package path resolved from a relative import.
    assert "napari_kaizen.errors" in graph["napari_kaizen.cli"]
    # A function-level relative import (cmd_evaluate imports metrics inside the function).
    assert "napari_kaizen.metrics" in graph["napari_kaizen.cli"]


def test_find_cycles_names_a_circle():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    circles = find_cycles(graph)
    assert circles == [["a", "b", "c", "a"]]
    assert describe(graph, circles[0]) == "a (line 1) -> b ; b (line 2) -> c ; c (line 3) -> a"


def test_no_import_circles_in_src():
    graph = import_graph()
    groups = circular_groups(graph)
    if groups:
        lines = []
        for members in groups:
            group = set(members)
            circle = _shortest_circle(graph, group)
            inside = [f"    {a} (line {line}) -> {b}" for a in sorted(group) for b, line in sorted(graph[a].items())
                      if b in group]
            lines.append(f"{describe(graph, circle)}\n  every import among these modules:\n" + "\n".join(inside))
        pytest.fail("import circles (module (line of the import) -> module it imports):\n" + "\n".join(lines))


PRIVATE = f"{PACKAGE}.engines._common"


def private_imports(module: str, path: Path) -> list[str]:
    """``file:line name`` of every import in ``module`` that reaches into :data:`PRIVATE`.

    Every ``import`` and ``from ... import`` is resolved to absolute names (``from
    ..engines import _common`` is ``napari_kaizen.engines._common``), at module level and
    inside functions alike.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == PRIVATE or name.startswith(PRIVATE + "."):
                hits.append(f"{path.relative_to(SRC)}:{node.lineno} {name}")
                break
    return hits


def test_the_private_import_walk_sees_every_spelling(tmp_path):
    mod = tmp_path / "napari_kaizen" / "widgets" / "_x.py"
    mod.parent.mkdir(parents=True)
    mod.write_text("from ..engines._common.scale import parse_diameter\n"
                   "def f():\n    from ..engines import _common\n    import napari_kaizen.engines._common.stitch\n"
                   "from ..engines import parse_diameter\n", encoding="utf-8")
    global SRC
    saved, SRC = SRC, tmp_path
    try:
        hits = private_imports("napari_kaizen.widgets._x", mod)
    finally:
        SRC = saved
    assert [h.split(" ")[0].rsplit(":", 1)[1] for h in hits] == ["1", "3", "4"]


def test_nothing_outside_the_engines_imports_their_private_common_package():
    """The jobs, tiled runs, the CLI, the API and the widgets use the names ``napari_kaizen.engines`` exports."""
    hits = []
    for module, path in module_files().items():
        if module == f"{PACKAGE}.engines" or module.startswith(f"{PACKAGE}.engines."):
            continue
        hits += private_imports(module, path)
    assert not hits, "import napari_kaizen.engines._common from outside engines/ (use napari_kaizen.engines):\n" + \
        "\n".join(hits)


def test_what_the_engines_export_to_the_layers_above_them_resolves():
    """Every name of ``engines.SHARED`` exists where the table says, and importing the package loads none of it."""
    import importlib

    import napari_kaizen.engines as engines

    for name, where in engines.SHARED.items():
        assert hasattr(importlib.import_module(where, "napari_kaizen.engines"), name), (name, where)
        assert getattr(engines, name) is getattr(importlib.import_module(where, "napari_kaizen.engines"), name)
