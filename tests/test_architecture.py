"""The import graph of the shipped packages has no cycles (issue 16).

The graph is built from the source with the standard library's :mod:`ast`: every ``import``/``from ... import`` of a
shipped module counts, wherever it stands (module level, inside ``if TYPE_CHECKING:``, inside a function), because a
cycle hidden in a function or a type-checking block is still two modules that cannot be understood one without the
other. Packages and their directories come from ``[tool.setuptools] package-dir`` in pyproject.toml.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def packages() -> dict[str, Path]:
    """``{package name: directory}`` from pyproject.toml (``monmouth`` -> ``sidecar``, ``monmouth_rag`` -> ...)."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {name: ROOT / d for name, d in cfg["package-dir"].items()}
    out = {}
    for pkg in cfg["packages"]:
        top, _, rest = pkg.partition(".")
        out[pkg] = dirs[top] / rest.replace(".", "/") if rest else dirs[top]
    return out


def modules() -> dict[str, Path]:
    """``{dotted module name: file}`` of every shipped module (``__init__`` files under the package's name)."""
    out: dict[str, Path] = {}
    for pkg, d in packages().items():
        for f in sorted(d.glob("*.py")):
            out[pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"] = f
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The shipped modules ``name`` imports, anywhere in its file. ``from pkg import mod`` counts ``pkg.mod`` when
    that is a module, else ``pkg``."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()

    def resolve(target: str) -> None:
        while target and target not in known:  # ``import a.b.c`` of a name inside a module: its module
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                resolve(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            for alias in node.names:
                if f"{mod}.{alias.name}" in known:
                    resolve(f"{mod}.{alias.name}")
                else:
                    resolve(mod)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components of more than one module (Tarjan), each as a sorted tuple."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[tuple[str, ...]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(tuple(sorted(comp)))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(out)


def path_through(g: dict[str, set[str]], comp: tuple[str, ...]) -> str:
    """One concrete cycle inside ``comp``, for the failure message: ``a -> b -> a``."""
    members = set(comp)
    start = comp[0]
    prev: dict[str, str] = {}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(g[v] & members):
            if w == start:
                chain = [v]
                while chain[-1] != start:
                    chain.append(prev[chain[-1]])
                return " -> ".join([*reversed(chain), start])
            if w not in prev:
                prev[w] = v
                todo.append(w)
    return " <-> ".join(comp)


def test_the_graph_covers_every_shipped_package():
    g = graph()
    tops = {m.partition(".")[0] for m in g}
    assert tops == {"monmouth", "monmouth_rag", "monmouth_memory", "monmouth_integrations", "monmouth_demo"}
    assert "monmouth.engine" in g["monmouth.runner"]  # a module-level import
    assert "monmouth.journal" in g["monmouth.engine"]


#: SQL naming one of the engine's tables (``monmouth_blocks``, ``monmouth_cursor``, ``monmouth_migrations``...).
ENGINE_TABLE_SQL = re.compile(r"\b(FROM|JOIN|INTO|UPDATE|TABLE)\s+monmouth_\w+", re.IGNORECASE)


def test_plugins_meet_each_other_and_the_engine_only_through_the_core():
    """The core imports no plugin package (nor the demo's), a plugin package imports no other plugin package (what one offers another is a Protocol in
    ``monmouth.interfaces``), and no plugin's SQL names an engine table: the canonical hash of a block is
    ``monmouth.engine.canonical_hash``, the cursor ``read_cursor``, the schemas ``monmouth.store.schema_versions``."""
    g = graph()
    crossing = sorted(f"{m} -> {d}" for m, deps in g.items() for d in deps
                      if m.partition(".")[0] != "monmouth"
                      and d.partition(".")[0] not in ("monmouth", m.partition(".")[0]))
    assert crossing == []
    # ... and the core imports none of them (plugins, the demo's command package).
    assert sorted(f"{m} -> {d}" for m, deps in g.items() if m.partition(".")[0] == "monmouth" for d in deps
                  if d.partition(".")[0] != "monmouth") == []
    plugin_files = [f for name, f in modules().items() if name.partition(".")[0] != "monmouth"]
    assert len(plugin_files) > 40
    reads = [f"{f.relative_to(ROOT)}:{i}: {line.strip()}" for f in plugin_files
             for i, line in enumerate(f.read_text().splitlines(), 1) if ENGINE_TABLE_SQL.search(line)]
    assert reads == []
    # The pattern sees what it names.
    assert ENGINE_TABLE_SQL.search('conn.execute("SELECT hash FROM monmouth_blocks WHERE number = ?")')
    assert not ENGINE_TABLE_SQL.search("from monmouth.engine import canonical_hash")


#: What a plugin package creates in SQL: tables, views, virtual tables, and SQL functions it registers.
CREATED_SQL = re.compile(r"CREATE\s+(?:VIRTUAL\s+)?(?:TABLE|VIEW)\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)"
                         r"|create_scalar_function\(\s*[\"'](\w+)[\"']", re.IGNORECASE)


def sql_names_of_plugins() -> dict[str, set[str]]:
    """``{plugin package: the SQL tables, views and functions it creates}`` (not the core's)."""
    out: dict[str, set[str]] = {}
    for name, f in modules().items():
        top = name.partition(".")[0]
        if top != "monmouth":
            out.setdefault(top, set()).update(a or b for a, b in CREATED_SQL.findall(f.read_text()))
    return out


def other_plugins_sql(names: set[str]) -> re.Pattern[str]:
    """SQL naming one of ``names`` as a table (``FROM x``, ``JOIN x``...) or calling it as a function (``x(``)."""
    alt = "|".join(sorted(map(re.escape, names)))
    return re.compile(rf"\b(FROM|JOIN|INTO|UPDATE|TABLE)\s+({alt})\b|\b({alt})\(", re.IGNORECASE)


def test_no_plugin_reads_another_plugins_tables():
    """What one plugin needs of another's data goes through a typed interface of ``monmouth.interfaces`` (the
    integrations' memory global root is ``AgentMemory.global_root_at``), never through the other's tables, views or
    SQL functions, which exist on one backend only (``memory_global_roots``, ``memory_settle()``) and change with
    its migrations."""
    created = sql_names_of_plugins()
    assert {"memory_global_roots", "memory_settle", "memory_blocks"} <= created["monmouth_memory"]
    reads = []
    for name, f in modules().items():
        top = name.partition(".")[0]
        if top == "monmouth":
            continue
        others = set().union(*(v for k, v in created.items() if k != top))
        rx = other_plugins_sql(others)
        reads += [f"{f.relative_to(ROOT)}:{i}: {line.strip()}" for i, line in enumerate(f.read_text().splitlines(), 1)
                  if rx.search(line)]
    assert reads == []
    # The pattern sees the reads the integrations had before issue 16, and not the interface that replaced them.
    rx = other_plugins_sql(created["monmouth_memory"])
    assert rx.search('conn.execute("SELECT memory_settle()").fetchall()')
    assert rx.search('conn.execute("SELECT root FROM memory_global_roots WHERE block_number = ?", (block,))')
    assert not rx.search("found = memory.global_root_at(number, block_hash)")


def test_function_level_and_type_checking_imports_count(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import X\n"
                 "def g():\n    from . import c\n    import p.d\n")
    assert imports_of("p.m", f, {"p", "p.b", "p.c", "p.d", "p.m"}) == {"p.b", "p.c", "p.d"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b", "c")]
    assert path_through({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ("a", "b", "c")) == "a -> b -> c -> a"


def test_no_import_cycles():
    g = graph()
    found = cycles(g)
    assert not found, "import cycles:\n" + "\n".join(f"  {path_through(g, c)}   (modules {', '.join(c)})" for c in found)


#: Exceptions of the shipped packages outside the tree (none).
OUTSIDE_THE_TREE: set[str] = set()


def shipped_exceptions() -> list[type[BaseException]]:
    """Every exception class defined in a shipped module (the core and the built-in plugins)."""
    import importlib
    import inspect

    found = []
    for name in modules():
        if name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        for cls in vars(module).values():
            if inspect.isclass(cls) and issubclass(cls, Exception) and cls.__module__ == name:  # errors, not signals
                found.append(cls)
    return found


def test_one_exception_tree_under_monmouth_error():
    """One root: whatever the core and the built-in plugins raise on purpose is a ``MonmouthError`` (``except
    MonmouthError`` catches it), each says whether it is retryable, only ``ProblemError``, the HTTP layer's, carries
    an HTTP status, and every refused request's status comes from the one table in ``monmouth.problems``."""
    import inspect

    from monmouth.errors import MonmouthError, RequestError
    from monmouth.problems import STATUS_OF, ProblemError, status_of

    found = shipped_exceptions()
    assert len(found) > 40
    assert {c.__module__.partition(".")[0] for c in found} >= {"monmouth", "monmouth_rag", "monmouth_memory",
                                                               "monmouth_integrations"}
    outside = {f"{c.__module__}.{c.__qualname__}" for c in found if not issubclass(c, MonmouthError)}
    assert outside == OUTSIDE_THE_TREE
    assert all(isinstance(getattr(c, "retryable", None), bool) for c in found)
    retryable = {f"{c.__module__}.{c.__qualname__}" for c in found if c.retryable}
    assert {"monmouth.errors.StorageUnavailableError", "monmouth.rpcclient.TransientNodeError",
            "monmouth.rpcclient.BadAnswerError", "monmouth_integrations.errors.TransientError",
            "monmouth_integrations.errors.NotReady"} <= retryable
    assert not retryable & {"monmouth.errors.ConfigError", "monmouth.errors.StorageError",
                            "monmouth_integrations.errors.PermanentError", "monmouth_memory.errors.MemoryRequestError"}
    with_status = {c.__qualname__ for c in found if "status" in inspect.signature(c.__init__).parameters
                   or isinstance(vars(c).get("status"), int)}
    assert with_status == {ProblemError.__qualname__}
    refusals = [c for c in found if issubclass(c, RequestError)]
    assert len(refusals) >= len(STATUS_OF) + 6  # the core's kinds and memory's
    for c in refusals:
        assert 400 <= status_of(c("field", "message")) < 500, c
    # A builtin base is kept where callers catch it (``except FileNotFoundError`` around the embedding model).
    from monmouth_rag.embedder import ModelNotFoundError

    assert issubclass(ModelNotFoundError, MonmouthError) and issubclass(ModelNotFoundError, FileNotFoundError)


# ------------------------------------------------------------------------------------------------ one home each
#: Chain helpers written once (issue 16): what a hand-written copy looks like -> the one module allowed to hold it.
#: Each pattern is matched line by line against the shipped packages, bench/ and the test harness (tests/*.py that
#: are not test files, and tests/fakes/).
ONE_HOME: dict[str, tuple[str, str]] = {
    "a 0x-hex helper (use monmouth.chain.hx)": (r"^\s*def _?hx\(", "sidecar/chain.py"),
    "an address pattern or length check (use monmouth.chain's address functions)":
        (r"\[0-9a-fA-F\]\{40\}|\blen\([^)]*\)\s*[!=]=\s*4[02]\b", "sidecar/chain.py"),
    "a function selector (use monmouth.chain.selector)": (r"keccak\([^)]*\)\)?\s*\[:4\]", "sidecar/chain.py"),
    "a JSON-RPC request built by hand (use monmouth.rpcclient)":
        (r"""["']jsonrpc["']\s*:\s*["']2\.0["']\s*,\s*["']id["']\s*:[^,]+,\s*["']method["']""", "sidecar/rpcclient.py"),
    "a backoff doubled by hand (use monmouth.backoff.Backoff)":
        (r"\b\w*(backoff|delay)\w*\s*\*\s*2\b", "sidecar/backoff.py"),
    "a Solidity build (use monmouth_demo.compile_solidity)": (r"solc\.compile\(", "demo/__init__.py"),
}


def scanned_files() -> list[Path]:
    """The files :data:`ONE_HOME` is checked against."""
    dirs = set(packages().values())
    files = {f for d in dirs for f in d.glob("*.py")}
    files |= set((ROOT / "bench").glob("*.py")) | set((ROOT / "tests" / "fakes").rglob("*.py"))
    files |= {f for f in (ROOT / "tests").glob("*.py") if not f.name.startswith("test_")}
    return sorted(files)


def copies(pattern: str, files: list[Path]) -> list[str]:
    """``path:line: text`` of each line of ``files`` that matches ``pattern``."""
    rx = re.compile(pattern)
    return [f"{f.relative_to(ROOT) if f.is_relative_to(ROOT) else f}:{i}: {line.strip()}" for f in files
            for i, line in enumerate(f.read_text().splitlines(), 1) if rx.search(line)]


def test_chain_helpers_have_one_home():
    files = scanned_files()
    assert ROOT / "tests" / "anvil.py" in files and ROOT / "sidecar" / "runner.py" in files
    found = {what: [c for c in copies(pattern, files) if not c.startswith(home + ":")]
             for what, (pattern, home) in ONE_HOME.items()}
    found = {what: lines for what, lines in found.items() if lines}
    assert not found, "written again outside its home:\n" + "\n".join(
        f"  {what}:\n" + "\n".join(f"    {line}" for line in lines) for what, lines in found.items())


def test_the_one_home_patterns_catch_the_copies_they_name(tmp_path):
    """Each pattern finds the hand-written shape it was made for (the copies this tree had before issue 16)."""
    samples = {
        "a 0x-hex helper (use monmouth.chain.hx)": "    def hx(b: bytes | None) -> str | None:",
        "an address pattern or length check (use monmouth.chain's address functions)":
            '    if not (a.startswith("0x") and len(a) == 42):',
        "a function selector (use monmouth.chain.selector)": "    return keccak(text=sig)[:4]",
        "a JSON-RPC request built by hand (use monmouth.rpcclient)":
            '    r = http.post(url, json={"jsonrpc": "2.0", "id": self._id, "method": method, "params": p})',
        "a backoff doubled by hand (use monmouth.backoff.Backoff)": "    backoff = min(backoff * 2, cap)",
        "a Solidity build (use monmouth_demo.compile_solidity)":
            "const out = JSON.parse(solc.compile(JSON.stringify(input)));",
    }
    assert samples.keys() == ONE_HOME.keys()
    uses = tmp_path / "uses.py"  # what using the homes looks like: no pattern matches it
    uses.write_text("from monmouth.chain import hx, selector\nb.delay(attempts)\nc.call('eth_chainId')\n"
                    "check_address(v, 'watched')\n")
    for what, line in samples.items():
        f = tmp_path / "copy.py"
        f.write_text(f"x = 1\n{line}\n")
        assert copies(ONE_HOME[what][0], [f]) == [f"{f}:2: {line.strip()}"], what
        assert copies(ONE_HOME[what][0], [uses]) == [], what


# ---------------------------------------------------------------------------------------------------- Rust
RUST_CRATES = (ROOT / "bridge" / "crates" / "monmouth-wire" / "src", ROOT / "bridge" / "reth-exex" / "src")
#: Modules each crate must have (so that a renamed or moved tree does not pass by being empty).
RUST_MODULES = {"monmouth-wire": {"error", "message", "server", "history"},
                "reth-exex": {"convert", "forward", "head", "history", "plan"}}


def rust_graph(src: Path) -> dict[str, set[str]]:
    """``{module: modules it names}`` of one crate's top-level modules: every ``crate::<module>`` path in a module's
    files (``use`` or inline), except in their ``#[cfg(test)]`` parts. A module is ``<name>.rs`` or a directory
    ``<name>/`` (``mod.rs`` and its submodules, which belong to it). ``lib.rs``, the crate root that re-exports them,
    is not a module of the graph."""
    files: dict[str, list[Path]] = {f.stem: [f] for f in src.glob("*.rs")}
    for d in sorted(p for p in src.iterdir() if p.is_dir()):
        files.setdefault(d.name, []).extend(sorted(d.rglob("*.rs")))
    mods = set(files) - {"lib", "main"}
    g: dict[str, set[str]] = {}
    for m in sorted(mods):
        text = "\n".join(f.read_text().split("#[cfg(test)]", 1)[0] for f in files[m])
        named = set(re.findall(r"\bcrate::(\w+)", text))
        for group in re.findall(r"\buse crate::\{([^}]*)\}", text):  # use crate::{a::X, b};
            named |= {p.strip().split("::")[0] for p in group.split(",") if p.strip()}
        g[m] = (named & mods) - {m}
    return g


def rust_submodule_graph(directory: Path) -> dict[str, set[str]]:
    """``{submodule: submodules it names}`` inside one directory module (``message/``): ``mod`` is its ``mod.rs``,
    which names a submodule by ``<sub>::`` (or ``self::<sub>::``); a submodule names a sibling by ``super::<sub>``
    and its parent by ``super::<item>`` or ``crate::<directory>::<item>``. As in :func:`rust_graph`, the
    ``#[cfg(test)]`` parts do not count."""
    subs = {f.stem for f in directory.glob("*.rs")} - {"mod"}
    g: dict[str, set[str]] = {}
    for f in sorted(directory.glob("*.rs")):
        text = f.read_text().split("#[cfg(test)]", 1)[0]
        if f.stem == "mod":
            g["mod"] = {s for s in subs if re.search(rf"(?<![\w:])(self::)?{s}::", text)}
            continue
        named = set(re.findall(r"\bsuper::(\w+)", text))
        for group in re.findall(r"\buse super::\{([^}]*)\}", text):
            named |= {p.strip().split("::")[0] for p in group.split(",") if p.strip()}
        named |= {name for name in re.findall(rf"\bcrate::{directory.name}::(\w+)", text)}
        g[f.stem] = {n if n in subs else "mod" for n in named} - {f.stem}
    return g


def test_no_module_of_the_bridge_is_over_600_lines():
    """The wire crate and the ExEx stay split by concern (issue 16)."""
    for src in RUST_CRATES:
        files = list(src.rglob("*.rs"))
        assert len(files) > 5, src
        for f in files:
            assert len(f.read_text().splitlines()) <= 600, f"{f} is over 600 lines: split it by concern"


def test_no_module_cycles_in_the_rust_bridge():
    for src in RUST_CRATES:
        g = rust_graph(src)
        assert RUST_MODULES[src.parent.name] <= set(g), (src, sorted(g))
        found = cycles(g)
        assert not found, f"{src}: module cycles:\n" + "\n".join(f"  {path_through(g, c)}" for c in found)
        for d in sorted(p for p in src.iterdir() if p.is_dir() and (p / "mod.rs").exists()):
            sub = rust_submodule_graph(d)
            found = cycles(sub)
            assert not found, f"{d}: submodule cycles:\n" + "\n".join(f"  {path_through(sub, c)}" for c in found)
    # The wire crate's messages are split by concern, on shared helpers that name none of them.
    message = rust_submodule_graph(RUST_CRATES[0] / "message")
    assert message == {"mod": {"codec", "history", "session", "stream"}, "codec": set(),
                       "history": {"codec"}, "session": {"codec"}, "stream": {"codec"}}


def test_the_submodule_graph_sees_parent_sibling_and_child_names(tmp_path):
    d = tmp_path / "message"
    d.mkdir()
    (d / "mod.rs").write_text("mod a;\nmod b;\npub use a::X;\n#[cfg(test)]\nmod tests { use b::Y; }\n")
    (d / "a.rs").write_text("use super::{b::Y, Message};\n")
    (d / "b.rs").write_text("fn f() -> crate::message::Message { todo!() }\n")
    g = rust_submodule_graph(d)
    assert g == {"mod": {"a"}, "a": {"b", "mod"}, "b": {"mod"}}
    assert cycles(g) == [("a", "b", "mod")]
