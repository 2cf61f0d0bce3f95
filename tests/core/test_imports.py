"""No import cycles inside the package: read from the source with ``ast``, nothing is imported.

Rule: every ``import`` statement of a module counts, at module level and inside functions alike; only
imports under ``if TYPE_CHECKING:`` (which never run) are left out. An import deferred into a function
avoids the crash of a partly initialised module but leaves the two modules depending on each other, which
is what the layering (data and models never import training, a registry apart from what registers) rules
out. Were a deferred import ever the right answer, it goes in ``ALLOWED`` with its reason. An import is an
edge to the module it names, not to the packages above it: ``import a.b`` runs ``a/__init__.py`` too, but
counting that would forbid a package's ``__init__`` from importing its own modules to register them.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "semisup"

# (importing module, imported module) -> why this edge may close a cycle; keep it empty where possible
ALLOWED: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    """semisup/data/idx.py -> semisup.data.idx; a package's __init__.py -> the package's name."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_nodes(node: ast.AST):
    """Every Import / ImportFrom under ``node``, in functions too, but not in the body of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif _is_type_checking(child):
            yield from _import_nodes(ast.Module(body=child.orelse, type_ignores=[]))  # the else branch runs
        else:
            yield from _import_nodes(child)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """Modules of the package that ``name`` imports -> the line of the first such import.
    ``from P import n`` is an edge to the module P.n when there is one, else to P (n is a name in P)."""
    is_package = path.name == "__init__.py"
    out: dict[str, int] = {}
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:  # relative: the current package, then one level up per extra dot
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
        for t in targets:
            if t in modules and t != name:
                out.setdefault(t, node.lineno)
    return out


def import_graph() -> dict[str, dict[str, int]]:
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search; ``path`` is the chain being followed)."""
    finished: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in finished:
            return None
        path.append(node)
        for nxt in sorted(graph[node]):
            cycle = visit(nxt)
            if cycle:
                return cycle
        path.pop()
        finished.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node)
        if cycle:
            return cycle
    return None


def test_no_import_cycles_in_the_package():
    graph = import_graph()
    assert len(graph) > 50 and "semisup.errors" in graph["semisup.registry"]  # the walk found the package
    for (a, b) in ALLOWED:
        graph[a].pop(b, None)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(
        f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


FAKE = {  # a package that uses every form of import the rule must resolve
    "pkg/__init__.py": "from . import a\n",
    "pkg/a.py": "from typing import TYPE_CHECKING\nfrom .b import x\nimport os\n\n"
                "def f():\n    import pkg.c\n\nif TYPE_CHECKING:\n    from . import d\n",
    "pkg/b.py": "from . import VERSION\n",
    "pkg/c.py": "",
    "pkg/d.py": "",
    "pkg/sub/__init__.py": "from .. import b\nfrom ..c import y\nfrom .leaf import z\n",
    "pkg/sub/leaf.py": "",
}


def test_imports_resolve_relative_absolute_and_deferred(tmp_path):
    for rel, text in FAKE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    names = {rel.removesuffix(".py").removesuffix("/__init__").replace("/", "."): tmp_path / rel for rel in FAKE}
    graph = {n: imports_of(n, p, names) for n, p in names.items()}
    assert graph["pkg"] == {"pkg.a": 1}
    assert graph["pkg.a"] == {"pkg.b": 2, "pkg.c": 6}  # deferred counts; TYPE_CHECKING and os do not
    assert graph["pkg.b"] == {"pkg": 1}  # VERSION is no module: an edge to the package itself
    assert graph["pkg.sub"] == {"pkg.b": 1, "pkg.c": 2, "pkg.sub.leaf": 3}
    assert find_cycle(graph) == ["pkg", "pkg.a", "pkg.b", "pkg"]
    del graph["pkg.b"]["pkg"]
    assert find_cycle(graph) is None


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b": 1}, "b": {"c": 1}, "c": {}}, None),
    ({"a": {"b": 1, "c": 1}, "b": {"c": 1}, "c": {}}, None),  # a diamond is no cycle
    ({"a": {"b": 1}, "b": {"c": 1}, "c": {"b": 1}}, ["b", "c", "b"]),
])
def test_find_cycle(graph, cycle):
    assert find_cycle(graph) == cycle
