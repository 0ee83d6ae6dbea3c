"""The layering rules, checked on the source: no import circle inside `tunetl/` (imports inside functions
count, since a lazy import is still a dependency), `ray` only under `tunetl/search/`, `mlflow` only under
`tunetl/tracking/`, and the torch engine free of both."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tunetl"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str) -> set[str]:
    """Every module `path` imports, absolute or relative, at any depth of the file, TYPE_CHECKING excluded."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {t for t in _imports(path, name) if t in modules and t != name}
        # Importing a submodule runs its package's __init__ first; a package's own __init__ importing
        # its submodules is not a circle through the package.
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_sees_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_inside_tunetl() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import circles (lazy imports count): " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize(("library", "home"), [("ray", "tunetl.search"), ("mlflow", "tunetl.tracking")])
def test_library_lives_in_its_layer(library: str, home: str) -> None:
    outside = sorted(
        name
        for name, path in _modules().items()
        if not (name == home or name.startswith(home + "."))
        and any(t == library or t.startswith(library + ".") for t in _imports(path, name))
    )
    assert not outside, f"{library} is imported outside {home}: {outside}"


def test_meta_is_analysis_without_torch() -> None:
    """`tunetl.meta` works on the trials table; torch forward passes live in `tunetl.features`."""
    users = sorted(name for name, path in _modules().items()
                   if name.startswith("tunetl.meta") and any(t == "torch" or t.startswith("torch.")
                                                             for t in _imports(path, name)))
    assert not users, f"torch is imported in tunetl.meta: {users}"
