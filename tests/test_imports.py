"""course_utils imports in one direction: no module reaches, directly or around a loop, back to itself, and
no floor imports a floor above it (core → lessons → chatbot → bench / exercises / tools, images on its own).

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
    assert len(graph) > 30 and "course_utils.core.runtime" in graph["course_utils.core.models"], "the graph was not read"
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


# The floors of the house, bottom up: a module imports its own folder and the floors below, never one above or a
# neighbour on its floor. ``course_utils`` itself (REPO_ROOT, REPO_URL) is the foundation under every floor.
FLOORS = {"core": 1, "lessons": 2, "chatbot": 3, "bench": 4, "exercises": 4, "tools": 4, "images": 4}


def floor_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up a floor or sideways into another folder of the same floor."""
    def folder(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else None   # None: the package's own __init__

    bad = []
    for module, targets in graph.items():
        here = folder(module)
        if here is None:
            continue
        for target in targets:
            there = folder(target)
            if there is not None and there != here and FLOORS[there] >= FLOORS[here]:
                bad.append(f"{module} (floor {FLOORS[here]}) imports {target} (floor {FLOORS[there]})")
    return sorted(bad)


def test_every_module_sits_in_a_floor_folder():
    top_level = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert not top_level, f"modules outside the floor folders of course_utils/: {top_level}"
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()) == \
        sorted(FLOORS), "a folder of course_utils/ is not in FLOORS (or one in FLOORS is gone)"


def test_no_floor_imports_a_floor_above_it():
    graph = import_graph()
    assert "course_utils.lessons.memory" in graph and "course_utils.core.runtime" in graph["course_utils.core.models"]
    assert not floor_violations(graph)


@pytest.mark.parametrize("source, expected", [
    ("from course_utils.lessons import qlora\n", ["course_utils.core.a (floor 1) imports course_utils.lessons (floor 2)",
                                                  "course_utils.core.a (floor 1) imports course_utils.lessons.qlora (floor 2)"]),
    ("from course_utils.tools.course import x\n", ["course_utils.core.a (floor 1) imports course_utils.tools.course (floor 4)"]),
    ("import course_utils.core.b\nfrom course_utils import REPO_ROOT\n", []),
])
def test_the_floor_check_sees_an_import_going_up(tmp_path, source, expected):
    package = tmp_path / "course_utils"
    for folder, names in {"": [], "core": ["a", "b"], "lessons": ["qlora"], "tools": ["course"]}.items():
        (package / folder).mkdir(parents=True, exist_ok=True)
        (package / folder / "__init__.py").write_text("")
        for n in names:
            (package / folder / f"{n}.py").write_text("")
    (package / "core" / "a.py").write_text(source)
    assert floor_violations(import_graph(package)) == expected


def test_the_floor_check_sees_a_sideways_import(tmp_path):
    package = tmp_path / "course_utils"
    for folder in ("", "bench", "tools"):
        (package / folder).mkdir(parents=True, exist_ok=True)
        (package / folder / "__init__.py").write_text("")
    (package / "tools" / "lab.py").write_text("")
    (package / "bench" / "quant.py").write_text("from course_utils.tools import lab\n")
    assert floor_violations(import_graph(package)) == [
        "course_utils.bench.quant (floor 4) imports course_utils.tools (floor 4)",
        "course_utils.bench.quant (floor 4) imports course_utils.tools.lab (floor 4)"]
