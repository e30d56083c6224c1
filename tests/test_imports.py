"""course_utils imports in one direction: no module reaches, directly or around a loop, back to itself.

Every import counts, wherever it stands: at the top, inside a function (a lazy import is still a dependency),
under ``if TYPE_CHECKING:``. Read with ``ast`` from the source, nothing is imported.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "course_utils"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The course_utils module that importing ``name`` runs (``a.b.c`` may name a function c of module a.b)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the course_utils modules it imports}, from every import statement of its source."""
    files = {_module_name(p, package.parent): p for p in package.rglob("*.py")}
    modules = set(files)
    graph = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {_resolve(a.name, modules) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package that holds this module
                    pkg = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(pkg[:len(pkg) - node.level + 1] + ([node.module] if node.module else []))
                targets |= {_resolve(f"{base}.{a.name}", modules) for a in node.names} | {_resolve(base, modules)}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_course_utils_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 30 and "course_utils.runtime" in graph["course_utils.models"], "the graph was not read"
    found = cycles(graph)
    detail = ["; ".join(f"{a} -> {b}" for a in group for b in sorted(graph[a]) if b in group) for group in found]
    assert not found, f"import cycles: {detail}"


@pytest.mark.parametrize("source, expected", [
    ("def f():\n    from course_utils.a import x\n", [["course_utils.a", "course_utils.b"]]),   # a lazy import
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from course_utils import a\n",
     [["course_utils.a", "course_utils.b"]]),                                                   # typing only
    ("from . import a\n", [["course_utils.a", "course_utils.b"]]),                             # relative
    ("import course_utils.c\n", []),                                                           # no loop
])
def test_the_check_sees_every_kind_of_import(tmp_path, source, expected):
    package = tmp_path / "course_utils"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("import course_utils.b\n")
    (package / "b.py").write_text(source)
    (package / "c.py").write_text("")
    assert cycles(import_graph(package)) == expected
