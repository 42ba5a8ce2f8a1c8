"""The house rules, checked on the source: rooms talk through public doors, lower floors
never import upper ones, and the module-level imports have no circle (docs/architecture.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ralf"

# Each module's floor; a module imports only from its own floor and the ones below.
FLOORS = {
    0: ("ralf.errors", "ralf.clock", "ralf.durations", "ralf.faults", "ralf.schema",
        "ralf.logs"),
    1: ("ralf.operators", "ralf.policies", "ralf.ivm", "ralf.sources", "ralf.storage"),
    2: ("ralf.engine",),
    3: ("ralf.pipeline", "ralf.table", "ralf.evolve"),
    4: ("ralf.server", "ralf.client", "ralf.http", "ralf.cli", "ralf.testing", "ralf"),
}


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text())
    return found


def _floor(module: str) -> int:
    matches = [(len(prefix), floor) for floor, prefixes in FLOORS.items() for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} has no floor in tests/test_layout.py"
    return max(matches)[1]


def _module_level_imports(tree: ast.Module) -> list[str]:
    """The ralf modules a module imports when it is imported (not inside functions, not
    for type checking only)."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ralf"):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("ralf")]
    return found


def test_no_module_imports_a_private_name_of_another():
    offenders = [
        f"{name}: from {node.module} import {alias.name}"
        for name, tree in _modules().items() for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ralf")
        for alias in node.names if alias.name.startswith("_")]
    assert offenders == []


def test_lower_floors_never_import_upper_ones():
    offenders = [f"{name} (floor {_floor(name)}) imports {target} (floor {_floor(target)})"
                 for name, tree in _modules().items() if name != "ralf"
                 for target in _module_level_imports(tree) if _floor(target) > _floor(name)]
    assert offenders == []


def test_the_module_level_imports_have_no_circle():
    modules = _modules()
    graph = {name: {t for t in _module_level_imports(tree) if t in modules and t != name}
             for name, tree in modules.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(name):]
                                                                 + [name]))
        if name in done:
            return
        for target in graph[name]:
            visit(target, [*path, name])
        done.add(name)

    for name in graph:
        visit(name, [])
