"""No import cycle between the modules of ``src/blockipc``.

Every import counts, wherever it is written: at module level, inside a function (an
import made late to keep a dependency optional is still a dependency), and under
``if TYPE_CHECKING:`` (the type checker follows it, and a cycle there is one module
knowing another's insides). Imports are read with :mod:`ast`, nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import blockipc

PACKAGE = Path(blockipc.__file__).parent

# Imports left out of the check, each with its way out. When one goes, remove it here
# (the test says so).
NOT_YET: dict[tuple[str, str], str] = {}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports. ``from . import x`` names the
    module ``x`` if there is one, else the package (``x`` is defined in its
    ``__init__``); ``from .m import f`` names ``m``."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                targets.add(sub if sub in modules else target)
    deps = set()
    for target in targets:
        while target and target not in modules:  # (a module outside, or a name)
            target = target.rpartition(".")[0]
        if target and target != name:
            deps.add(target)
    return deps


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of the package at ``root`` and the package's modules it imports."""
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(p, root) for p in paths}
    return {module_name(p, root): imported(p, root, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None``. A package's
    ``__init__`` importing its own modules is no cycle, unless one of them imports the
    package back."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(mod: str) -> list[str] | None:
        state[mod] = 1
        path.append(mod)
        for dep in sorted(graph.get(mod, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)) is not None:
                return cycle
        path.pop()
        state[mod] = 2
        return None

    for mod in sorted(graph):
        if mod not in state and (cycle := visit(mod)) is not None:
            return cycle
    return None


def test_no_import_cycle_in_the_package() -> None:
    graph = import_graph()
    assert graph.get("blockipc._server.coordinator"), "the walk found no imports"
    for (mod, dep), why in NOT_YET.items():
        assert dep in graph[mod], f"{mod} no longer imports {dep} ({why}): remove it from NOT_YET"
        graph[mod].discard(dep)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_walk_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The checker itself: imports inside a function, under ``TYPE_CHECKING``, absolute
    ones and ``from . import`` (of a module, of a name the package defines) all count."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from ._a import A\nVERSION = 1\n")
    (pkg / "_a.py").write_text("import os\ndef f():\n    from ._b import B\nA = 1\n")
    (pkg / "_b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import _c\nB = 1\n"
    )
    (pkg / "_c.py").write_text("from pkg._a import A\n")
    graph = import_graph(pkg)
    assert graph == {
        "pkg": {"pkg._a"},
        "pkg._a": {"pkg._b"},
        "pkg._b": {"pkg._c"},
        "pkg._c": {"pkg._a"},
    }
    assert find_cycle(graph) == ["pkg._a", "pkg._b", "pkg._c", "pkg._a"]
    (pkg / "_c.py").write_text("from . import VERSION\n")  # the package's __init__ itself
    assert find_cycle(import_graph(pkg)) == ["pkg", "pkg._a", "pkg._b", "pkg._c", "pkg"]
    (pkg / "_c.py").write_text("X = 1\n")
    assert find_cycle(import_graph(pkg)) is None
