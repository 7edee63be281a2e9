"""The package's import structure, read from the source with `ast`: no import cycles, no private names across modules.

Every import counts, module-level and inside functions (also under `if TYPE_CHECKING:`), absolute and relative. An
import of `hf_ipt.a.b` runs `hf_ipt/__init__.py` and `hf_ipt/a/__init__.py` first, so it is an edge to each of those
packages too, except to the importer's own enclosing packages (Python has already started those when it runs the
importer, and does not run them again).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
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


SHIMS = ["hf_ipt.synthesize", "hf_ipt.server_engine", "hf_ipt.hub", "hf_ipt.plots", "hf_ipt.cards", "hf_ipt.parallel"]


@pytest.mark.parametrize("old", SHIMS)
def test_no_shim_module_is_left(old):
    # 0.1.0 was never released: modules that only re-exported others' names were removed, not kept as shims
    assert old not in MODULES
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


# --- layers: which rooms may use which ------------------------------------------------------------------------------


def room(module: str) -> str:
    """The room of a module: its top-level part of hf_ipt (`hf_ipt.stages.mix` -> `hf_ipt.stages`)."""
    return ".".join(module.split(".")[:2])


def room_graph(graph: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The import graph between rooms, the package face (hf_ipt/__init__.py, which imports every room) left out."""
    rooms: dict[str, dict[str, int]] = {}
    for importer, targets in graph.items():
        if importer == PACKAGE:
            continue
        entry = rooms.setdefault(room(importer), {})
        for target, line in targets.items():
            if target != PACKAGE and room(target) != room(importer):
                entry.setdefault(room(target), line)
    return rooms


def reaches(graph: dict[str, dict[str, int]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), {}):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_room_imports_a_room_that_imports_it_back():
    rooms = room_graph(import_graph())
    for name in rooms:
        rooms[name] = {target: line for target, line in rooms[name].items() if target in rooms}
    found = cycles(rooms)
    assert not found, "rooms of hf_ipt that import each other (package level):\n" + "\n".join(
        " -> ".join(cycle) for cycle in found
    )


@pytest.mark.parametrize(
    ("lower", "higher", "why"),
    [
        ("hf_ipt.quality", "hf_ipt.release", "a release may use the quality report, never the reverse"),
        ("hf_ipt.synthesis", "hf_ipt.execution", "synthesis may use hf_ipt.placement, never an executor"),
        ("hf_ipt.stats", "hf_ipt.stages", "stats holds generic machinery only"),
        ("hf_ipt.engines", "hf_ipt.preflight", "an engine checks its own settings"),
        ("hf_ipt.store", "hf_ipt.stages", "the store knows no stage"),
        ("hf_ipt.execution", "hf_ipt.stages", "the executors and shard phases run any stage's work and know none"),
        ("hf_ipt.export", "hf_ipt.stages", "the export's formats know no stage: the export stage uses them"),
        ("hf_ipt.export", "hf_ipt.release", "a release may carry the export's files, never the reverse"),
        ("hf_ipt.export", "hf_ipt.execution", "the export's formats and pieces know no executor: its stage runs them"),
    ],
)
def test_layers_point_one_way(lower, higher, why):
    graph = import_graph()
    offenders = {
        module: sorted(target for target in reaches(graph, module) if room(target) == higher)
        for module in MODULES
        if room(module) == lower
    }
    offenders = {module: targets for module, targets in offenders.items() if targets}
    assert not offenders, f"{why}: {offenders}"


def test_the_generic_modules_import_no_other_hf_ipt_module():
    graph = import_graph()
    for module in (
        "hf_ipt.stats",
        "hf_ipt.store",
        "hf_ipt.process",
        "hf_ipt.memory",
        "hf_ipt.version",
        "hf_ipt.plotting",
        "hf_ipt.deadline",
    ):
        assert set(graph[module]) <= {"hf_ipt._deps"}, (module, sorted(graph[module]))


def test_the_operations_modules_stay_low():
    # the log files and progress lines are imported by the executors' worker bodies and the CLI: they may use the
    # scrubbing and the store, nothing of a stage; the language identifier is used by quality, estimate and check
    graph = import_graph()
    assert set(graph["hf_ipt.logs"]) <= {"hf_ipt.redaction", "hf_ipt.store"}, sorted(graph["hf_ipt.logs"])
    assert set(graph["hf_ipt.language"]) <= {"hf_ipt._deps"}, sorted(graph["hf_ipt.language"])


def test_production_code_never_imports_the_test_helpers_or_the_package_face():
    graph = import_graph()
    for importer, targets in graph.items():
        if importer in (PACKAGE, "hf_ipt.testing"):
            continue
        assert "hf_ipt.testing" not in targets, f"{importer} imports hf_ipt.testing (line {targets['hf_ipt.testing']})"
    # `from hf_ipt import name` of a name that is not a module reads the package face, which imports everything
    for importer, (_, tree) in MODULES.items():
        faced = [line for module, name, line in imports_of(importer, tree) if module == PACKAGE and name is not None]
        assert not faced, f"{importer} imports names from the package face (lines {faced})"


def test_storage_options_travel_inside_one_run_folder_object():
    # a run's location is a RunFolder / Store (URL and options together), not a pair passed by hand
    mentions = sum(path.read_text(encoding="utf-8").count("storage_options") for path, _ in MODULES.values())
    assert mentions <= 40, f"`storage_options` is named {mentions} times in hf_ipt/ (at most 40)"


def test_the_stages_are_listed_in_one_place():
    import hf_ipt.stages as stages

    assert [stage.name for stage in stages.STAGES] == ["synthesize", "templify", "mix", "export", "release"]
    from hf_ipt.config import RecipeConfig

    sections = {f.name for f in dataclasses.fields(RecipeConfig)}  # `release` is a recipe section too
    folders = {stage.folder for stage in stages.STAGES} - sections
    # no other module spells a stage's output folder as a string of its own
    for module, (_, tree) in MODULES.items():
        if module.startswith("hf_ipt.stages"):
            continue
        literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not literals & folders, f"{module} names the stage folder(s) {sorted(literals & folders)}"


def test_engine_names_are_known_only_to_the_engines():
    # an engine owns its contract (arguments, packages, devices, counters): nothing outside hf_ipt/engines branches on
    # an engine's name (a recipe field's default and its help text are data, not branches)
    from hf_ipt.engines import ENGINES

    for module, (_, tree) in MODULES.items():
        if module.startswith("hf_ipt.engines"):
            continue
        compared = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            if all(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):  # engine == "vllm"
                constants = operands
            else:  # engine in ("vllm", "server"): the literal collection's items
                constants = [
                    item for op in operands if isinstance(op, ast.Tuple | ast.List | ast.Set) for item in op.elts
                ]
            compared |= {c.value for c in constants if isinstance(c, ast.Constant) and c.value in ENGINES}
        assert not compared, f"{module} compares against the engine name(s) {sorted(compared)}"
