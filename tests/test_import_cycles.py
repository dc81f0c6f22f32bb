"""No import cycles inside the plugin packages: every ``import`` and ``from ... import`` counts, at module level or
inside a function, under ``TYPE_CHECKING`` or not (a cycle hidden in a function is still a cycle to a reader).
``PACKAGES`` lists the packages checked; add one once it is free of cycles."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"monmouth_rag": "plugins/rag", "monmouth_memory": "plugins/memory",
            "monmouth_integrations": "plugins/integrations"}


def _modules() -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is a package's __init__)}`` of every module of :data:`PACKAGES`."""
    out = {}
    for pkg, d in PACKAGES.items():
        for f in (ROOT / d).rglob("*.py"):
            parts = [pkg, *(p for p in f.relative_to(ROOT / d).with_suffix("").parts if p != "__init__")]
            out[".".join(parts)] = (f, f.name == "__init__.py")
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of PACKAGES it imports}``."""
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, (f, is_init) in mods.items():
        package = m.split(".") if is_init else m.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ImportFrom):
                base = ".".join([*package[:len(package) - node.level + 1], node.module or ""]).rstrip(".") \
                    if node.level else node.module or ""
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            target = next((n for n in names if n in mods and n != m), None)
            if target is not None:
                edges[m].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_plugins():
    graph = import_graph()
    assert "monmouth_memory.core" in graph and "monmouth_rag.plugin" in graph  # the packages were read
    assert graph["monmouth_memory.core"] >= {"monmouth_memory.items", "monmouth_memory.worker"}
    assert cycles(graph) == []
