"""The package's import structure, read from the source with `ast`: no import cycles, no private names across modules.

Every import counts, module-level and inside functions (also under `if TYPE_CHECKING:`), absolute and relative. An
import of `hf_ipt.a.b` runs `hf_ipt/__init__.py` and `hf_ipt/a/__init__.py` first, so it is an edge to each of those
packages too, except to the importer's own enclosing packages (Python has already started those when it runs the
importer, and does not run them again).
"""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

PACKAGE = "hf_ipt"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# Exceptions, each with its reason. Empty: an entry may only be added with a comment saying why it cannot be fixed.
ALLOWED_CYCLES: list[set[str]] = []
ALLOWED_PRIVATE_IMPORTS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_modules() -> dict[str, tuple[Path, ast.Module]]:
    """Every module under hf_ipt, by dotted name, with its parsed source."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        modules[module_name(path)] = (path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return modules


MODULES = read_modules()


def is_package(name: str) -> bool:
    return MODULES[name][0].name == "__init__.py"


def ancestors(name: str) -> list[str]:
    """The enclosing packages of a dotted name, outermost first: 'hf_ipt.a.b' -> ['hf_ipt', 'hf_ipt.a']."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def from_base(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` reads from, relative forms resolved against the importer."""
    if not node.level:
        return node.module or ""
    package = importer if is_package(importer) else importer.rpartition(".")[0]
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def imports_of(importer: str, tree: ast.Module) -> list[tuple[str, str | None, int]]:
    """(module, imported name or None, line) of each hf_ipt import anywhere in `tree`. A `from X import y` where
    X.y is a module is reported as an import of X.y."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = from_base(importer, node)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in MODULES:
                    found.append((submodule, None, node.lineno))
                else:
                    found.append((base, alias.name, node.lineno))
    return [(module, name, line) for module, name, line in found if module.split(".")[0] == PACKAGE]


def import_graph() -> dict[str, dict[str, int]]:
    """importer -> {imported module: first line}, with the package `__init__` edges each import implies."""
    graph: dict[str, dict[str, int]] = {name: {} for name in MODULES}
    for importer, (_, tree) in MODULES.items():
        own_packages = set(ancestors(importer))
        for module, _, line in imports_of(importer, tree):
            if module not in MODULES:
                continue  # e.g. hf_ipt.templates data, or a name the module does not have (a test catches that)
            targets = [package for package in ancestors(module) if package not in own_packages] + [module]
            for target in targets:
                if target != importer and target in MODULES:
                    graph[importer].setdefault(target, line)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a path that returns to its start) through each strongly connected component of the graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the graph is small, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)

    found = []
    for component in components:
        members = set(component)
        start = min(component)
        # breadth-first from start back to start inside the component: the shortest cycle through start
        paths = {start: [start]}
        queue = [start]
        cycle = None
        while queue and cycle is None:
            node = queue.pop(0)
            for nxt in sorted(graph[node]):
                if nxt == start:
                    cycle = paths[node] + [start]
                    break
                if nxt in members and nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    queue.append(nxt)
        found.append(cycle)
    return found


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return (
        " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)) + f" -> {cycle[-1]}"
    )


class FakeModules:
    """Replace the modules read from hf_ipt by the given sources for the duration of a `with` block."""

    def __init__(self, sources: dict[str, str], packages: tuple[str, ...] = ()) -> None:
        self.sources, self.packages = sources, packages

    def __enter__(self) -> None:
        self.saved = dict(MODULES)
        MODULES.clear()
        for name, source in self.sources.items():
            leaf = name.removeprefix(f"{PACKAGE}.").replace(".", "/")
            path = ROOT / (f"{leaf}/__init__.py" if name in self.packages else f"{leaf}.py")
            MODULES[name] = (path, ast.parse(source))

    def __exit__(self, *exc: object) -> None:
        MODULES.clear()
        MODULES.update(self.saved)


def test_the_graph_sees_function_level_relative_and_package_edges():
    # a cycle hidden in a function body
    with FakeModules({"hf_ipt.a": "from hf_ipt.b import x\n", "hf_ipt.b": "def f():\n    from hf_ipt.a import y\n"}):
        assert cycles(import_graph()) == [["hf_ipt.a", "hf_ipt.b", "hf_ipt.a"]]
    # relative imports, and one under TYPE_CHECKING
    relative = {"hf_ipt.a": "from . import b\n", "hf_ipt.b": "if TYPE_CHECKING:\n    from .a import y\n"}
    with FakeModules(relative):
        assert cycles(import_graph()) == [["hf_ipt.a", "hf_ipt.b", "hf_ipt.a"]]
    # hf_ipt/p/__init__.py imports hf_ipt.p.m, which imports hf_ipt.q.n; hf_ipt/q/__init__.py imports hf_ipt.p.m
    init_edges = {
        "hf_ipt.p": "from hf_ipt.p.m import x\n",
        "hf_ipt.p.m": "from hf_ipt.q.n import y\n",
        "hf_ipt.q": "from hf_ipt.p.m import x\n",
        "hf_ipt.q.n": "z = 1\n",
    }
    with FakeModules(init_edges, packages=("hf_ipt.p", "hf_ipt.q")):
        graph = import_graph()
        assert "hf_ipt.q" in graph["hf_ipt.p.m"]  # importing hf_ipt.q.n runs hf_ipt/q/__init__.py first
        assert "hf_ipt.p" not in graph["hf_ipt.p.m"]  # its own package is already running: no edge
        assert cycles(graph) == [["hf_ipt.p", "hf_ipt.p.m", "hf_ipt.q", "hf_ipt.p"]]


def test_no_import_cycles():
    graph = import_graph()
    found = [c for c in cycles(graph) if set(c) not in ALLOWED_CYCLES]
    assert not found, "import cycles among hf_ipt modules:\n" + "\n".join(describe(c, graph) for c in found)


def test_the_engines_import_nothing_from_synthesis():
    graph = import_graph()
    engines = [name for name in MODULES if name == "hf_ipt.engines" or name.startswith("hf_ipt.engines.")]
    reached = set()
    todo = list(engines)
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in reached:
                reached.add(nxt)
                todo.append(nxt)
    assert not {name for name in reached if name.startswith("hf_ipt.synthesis")}


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports() -> list[tuple[str, str, int]]:
    """(importer, module.name, line) for each `_private` name taken from another hf_ipt module, by `from` import or
    by attribute access on a name bound to an imported hf_ipt module."""
    found = []
    for importer, (_, tree) in MODULES.items():
        for module, name, line in imports_of(importer, tree):
            if name is not None and private(name) and module != importer:
                found.append((importer, f"{module}.{name}", line))
        bound: dict[str, str] = {}  # local name -> the hf_ipt module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == PACKAGE:
                        bound[alias.asname or PACKAGE] = alias.name if alias.asname else PACKAGE
            elif isinstance(node, ast.ImportFrom):
                base = from_base(importer, node)
                for alias in node.names:
                    if f"{base}.{alias.name}" in MODULES:
                        bound[alias.asname or alias.name] = f"{base}.{alias.name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and private(node.attr):
                target = dotted(node.value, bound)
                if target in MODULES and target != importer:
                    found.append((importer, f"{target}.{node.attr}", node.lineno))
    return found


def dotted(node: ast.expr, bound: dict[str, str]) -> str | None:
    """The hf_ipt module an expression such as `C` or `hf_ipt.engines` names, if it names one."""
    if isinstance(node, ast.Name):
        return bound.get(node.id)
    if isinstance(node, ast.Attribute):
        base = dotted(node.value, bound)
        return f"{base}.{node.attr}" if base else None
    return None


def test_no_private_names_imported_across_modules():
    found = [(a, b, line) for a, b, line in private_imports() if (a, b) not in ALLOWED_PRIVATE_IMPORTS]
    assert not found, (
        "private names used across hf_ipt modules (make them public with a docstring, or move them):\n"
        + ("\n".join(f"{importer}:{line} uses {name}" for importer, name, line in found))
    )


def test_the_allow_lists_name_only_real_offenders():
    # an entry that no longer offends must be removed, so the lists can only shrink
    assert ALLOWED_PRIVATE_IMPORTS <= {(a, b) for a, b, _ in private_imports()}
    graph = import_graph()
    assert all(allowed in [set(c) for c in cycles(graph)] for allowed in ALLOWED_CYCLES)
    assert not any(name.startswith(("hf_ipt.engines", "hf_ipt.synthesis")) for name, _ in ALLOWED_PRIVATE_IMPORTS)


def test_private_imports_are_found_by_from_and_attribute():
    sources = {
        "hf_ipt": "",
        "hf_ipt.a": "_x = 1\n",
        "hf_ipt.b": "from hf_ipt.a import _x\nimport hf_ipt.a\nfrom hf_ipt import a as A\n"
        "A._x, hf_ipt.a._x, A.__doc__\n",
        "hf_ipt.c": "from . import a\n\ndef f():\n    return a._x\n",
    }
    with FakeModules(sources, packages=("hf_ipt",)):
        assert sorted(private_imports()) == [
            ("hf_ipt.b", "hf_ipt.a._x", 1),
            ("hf_ipt.b", "hf_ipt.a._x", 4),
            ("hf_ipt.b", "hf_ipt.a._x", 4),
            ("hf_ipt.c", "hf_ipt.a._x", 4),
        ]


@pytest.mark.parametrize(
    ("old", "new", "names"),
    [
        ("hf_ipt.synthesize", "hf_ipt.synthesis", ["Synthesizer", "SynthesisConfig", "synthesize_batch"]),
        ("hf_ipt.server_engine", "hf_ipt.engines", ["ServerEngine", "ServerEngineConfig"]),
    ],
)
def test_old_module_paths_still_import_with_a_deprecation_warning(old, new, names):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shim = importlib.import_module(old)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
    current = importlib.import_module(new)
    for name in names:
        assert getattr(shim, name) is getattr(current, name)
