"""The project's own import graph, read from the source (imports inside functions included, imports
under `if TYPE_CHECKING:` left out: they never run)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = ("engine", "bot")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, modules: set[str], package: str) -> tuple[set[str], set[str]]:
    """(project modules, third-party top-level names) imported anywhere in `tree` but type-only blocks."""
    own, outside = set(), set()
    todo = [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                todo.extend(child.orelse)
                continue
            todo.append(child)
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the package this module sits in
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(filter(None, [*parts, base]))
                # `from engine.x import y` runs engine.x (its __init__), and imports engine.x.y when y is a module
                names = [base, *(f"{base}.{a.name}" for a in child.names if f"{base}.{a.name}" in modules)]
            for name in names:
                if name.split(".")[0] in PACKAGES:
                    own.add(name)
                else:
                    outside.add(name.split(".")[0])
    return own, outside


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Each project module's project imports, and the third-party packages it imports."""
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    modules = {module_name(p) for p in files}
    own, outside = {}, {}
    for path in files:
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported, third_party = _imports(ast.parse(path.read_text()), modules, package)
        own[name] = {m for m in imported if m in modules and m != name}
        outside[name] = third_party
    return own, outside


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Modules `start` can load: its imports, theirs, and the packages above each (Python runs every
    `__init__` on the way to a module)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for found in graph.get(todo.pop(), ()):
            parts = found.split(".")
            for parent in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
                if parent in graph and parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
    return seen


def circles(graph: dict[str, set[str]]) -> list[str]:
    """Modules that import themselves through others (explicit imports only: a package's `__init__`
    loading its own modules is how packages work, not a circle)."""
    looped = []
    for start in sorted(graph):
        seen, todo = set(), [start]
        while todo:
            for found in graph.get(todo.pop(), ()):
                if found not in seen:
                    seen.add(found)
                    todo.append(found)
        if start in seen:
            looped.append(start)
    return looped
