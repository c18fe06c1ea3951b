"""The package's layering, checked from source: imports only point down the room order, and no modules import
each other in a circle.

A *room* is the first name under ``compresskit`` (``compresskit.harness.variant`` lives in ``harness``; the
top-level modules ``settings`` and ``errors`` are rooms of their own). :data:`ROOMS` is the order, lowest
first; ARCHITECTURE.md explains it. A module may import its own room and any room of a lower tier; an import of a
higher tier, or of another room of its own tier (the technique packages are siblings), is a violation.

What counts:

- direction: every import of a compresskit module, wherever it is written (module level, inside a function, under
  ``if TYPE_CHECKING:``). A deferred import is still a dependency, and an annotation-only import still ties the
  lower room to the higher one's names.
- cycles: the same graph, function-level and ``TYPE_CHECKING`` imports included. A cycle through a deferred import
  does not break at import time, but it means neither module can be understood (or moved) without the other.

``compresskit/__init__.py`` (the lazy loader, which names every room) and ``compresskit/__main__.py`` are exempt.
The checker is plain ``ast``: nothing is imported, so the test takes well under a second.
"""

from __future__ import annotations

import ast
import functools
import textwrap
from pathlib import Path
from typing import Iterable, NamedTuple

import pytest

PACKAGE = "compresskit"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

# The room order, lowest tier first; rooms of one tier are siblings and must not import each other.
ROOMS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("settings",),
    ("data",),
    ("models",),
    ("runtimes",),
    ("measure",),
    ("engine",),
    ("prune", "quantize", "distill", "backbones"),
    ("report",),
    ("harness",),
    ("cli",),
)
EXEMPT = frozenset({PACKAGE, f"{PACKAGE}.__main__"})


class Import(NamedTuple):
    """One import of a package module: who imports what, from which line, and where the statement sits."""

    source: str  # dotted module name
    target: str  # dotted module name (a submodule when ``from pkg import sub`` names one, else the package)
    path: str
    line: int
    where: str  # "module", "function" or "type-checking"


def module_names(package_dir: Path, package: str = PACKAGE) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file under ``package_dir`` (a package ``__init__`` is named
    after its package)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.Module) -> Iterable[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement of a module with where it sits: at module level (under ``if``/``try`` and in class
    bodies too: they run on import), in a function body, or under ``if TYPE_CHECKING:``."""
    def visit(node: ast.AST, where: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, where
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from visit(child, "function" if where == "module" else where)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for statement in child.body:
                    yield from visit(ast.Module(body=[statement], type_ignores=[]), "type-checking")
                for statement in child.orelse:
                    yield from visit(ast.Module(body=[statement], type_ignores=[]), where)
            else:
                yield from visit(child, where)

    yield from visit(tree, "module")


def _resolve(node: ast.Import | ast.ImportFrom, source: str, is_package: bool, modules: set[str]) -> list[str]:
    """The package modules one import statement names (``from a import b`` names ``a.b`` when that is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: counted from the importing module's package
        package = source.split(".") if is_package else source.split(".")[:-1]
        anchor = package[:len(package) - (node.level - 1)]
        base = ".".join([*anchor, *([base] if base else [])])
    named = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
    return named if len(named) == len(node.names) else [*named, base]


def collect_imports(package_dir: Path, package: str = PACKAGE) -> list[Import]:
    """Every import of a ``package`` module by a ``package`` module."""
    names = module_names(package_dir, package)
    modules = set(names)
    imports = []
    for source, path in names.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, where in _import_nodes(tree):
            for target in _resolve(node, source, path.name == "__init__.py", modules):
                if target == package or target.startswith(package + "."):
                    shown = path.relative_to(package_dir.parent).as_posix()
                    imports.append(Import(source, target, shown, node.lineno, where))
    return imports


def room_of(module: str) -> str | None:
    """``compresskit.harness.variant`` -> ``harness``; None for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def upward_imports(imports: Iterable[Import], rooms: tuple[tuple[str, ...], ...] = ROOMS,
                   exempt: frozenset[str] = EXEMPT) -> list[str]:
    """One readable line per import that points up the room order or sideways into a sibling room (and per room
    missing from the order)."""
    tier = {room: index for index, tier_rooms in enumerate(rooms) for room in tier_rooms}
    problems = []
    for item in imports:
        if item.source in exempt:
            continue
        source_room, target_room = room_of(item.source), room_of(item.target)
        if target_room is None or source_room == target_room:
            continue
        unknown = [room for room in (source_room, target_room) if room not in tier]
        if unknown:
            problems.append(f"{item.path}:{item.line}: room {unknown[0]!r} is not in the room order (ROOMS)")
        elif tier[target_room] > tier[source_room]:
            problems.append(f"{item.path}:{item.line}: {item.source} imports {item.target} ({item.where}): "
                            f"{source_room} is below {target_room}")
        elif tier[target_room] == tier[source_room]:
            problems.append(f"{item.path}:{item.line}: {item.source} imports {item.target} ({item.where}): "
                            f"{source_room} and {target_room} are siblings")
    return problems


def import_cycles(imports: Iterable[Import]) -> list[list[str]]:
    """Each group of modules that import each other in a circle (a strongly connected component of the import
    graph, Tarjan's algorithm), as a sorted list of names. A module naming itself (a package ``__init__`` that
    imports one of its own attributes) is no cycle."""
    graph: dict[str, set[str]] = {}
    for item in imports:
        graph.setdefault(item.source, set())
        graph.setdefault(item.target, set())
        if item.target != item.source:
            graph[item.source].add(item.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def connect(node: str) -> None:  # recursion depth is bounded by the longest import chain: small
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(cycles)


def describe_cycles(imports: list[Import], cycles: list[list[str]]) -> list[str]:
    """Each cycle with the import lines that close it."""
    lines = []
    for cycle in cycles:
        members = set(cycle)
        lines.append("cycle: " + " <-> ".join(cycle))
        lines += [f"    {item.path}:{item.line}: {item.source} imports {item.target} ({item.where})"
                  for item in imports if item.source in members and item.target in members]
    return lines


@functools.cache
def _package_imports() -> list[Import]:
    return collect_imports(PACKAGE_DIR)


def test_imports_point_down_the_room_order():
    imports = _package_imports()
    problems = upward_imports(imports)
    assert not problems, ("imports that point up the room order or between sibling rooms (see ARCHITECTURE.md):\n"
                          + "\n".join(problems))


def test_no_import_cycles():
    imports = _package_imports()
    assert len({item.source for item in imports}) > 50  # the checker really read the package
    cycles = import_cycles(imports)
    assert not cycles, "modules that import each other in a circle:\n" + "\n".join(describe_cycles(imports, cycles))


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    return root / PACKAGE


@pytest.fixture
def planted(tmp_path) -> list[Import]:
    """A small package with one upward import (in a function), one sibling import (relative, TYPE_CHECKING) and
    one cycle inside harness; everything else points down."""
    package_dir = _write_package(tmp_path, {
        "__init__.py": "from compresskit import harness\n",  # exempt: the loader names every room
        "errors.py": "",
        "data/__init__.py": "from compresskit.errors import *\n",
        "engine/__init__.py": "def train():\n    from compresskit.report import tables\n",  # up
        "prune/__init__.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from ..distill import losses
            """,  # sideways
        "distill/__init__.py": "",
        "distill/losses.py": "from compresskit import data\n",
        "report/__init__.py": "",
        "report/tables.py": "from compresskit.data import *\n",
        "harness/__init__.py": "",
        "harness/combined.py": "from compresskit.harness import errata\n",
        "harness/errata.py": "from . import targets\n",
        "harness/targets.py": "from .combined import FINAL\n",
    })
    return collect_imports(package_dir)


def test_checker_catches_a_planted_upward_and_sideways_import(planted):
    problems = upward_imports(planted)
    assert len(problems) == 2, problems
    assert problems[0].startswith("compresskit/engine/__init__.py:2: compresskit.engine imports "
                                  "compresskit.report.tables (function): engine is below report")
    assert problems[1].startswith("compresskit/prune/__init__.py:4: compresskit.prune imports "
                                  "compresskit.distill.losses (type-checking): prune and distill are siblings")


def test_checker_catches_a_planted_cycle(planted):
    cycles = import_cycles(planted)
    assert cycles == [["compresskit.harness.combined", "compresskit.harness.errata", "compresskit.harness.targets"]]
    lines = describe_cycles(planted, cycles)
    assert "compresskit/harness/targets.py:1: compresskit.harness.targets imports compresskit.harness.combined" \
           in lines[-1]


def test_checker_names_a_room_missing_from_the_order(tmp_path):
    package_dir = _write_package(tmp_path, {"__init__.py": "", "errors.py": "",
                                            "plugins.py": "import compresskit.errors\n"})
    imports = collect_imports(package_dir)
    assert upward_imports(imports) == ["compresskit/plugins.py:1: room 'plugins' is not in the room order (ROOMS)"]
