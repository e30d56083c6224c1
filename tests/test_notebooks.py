"""Static checks on the committed notebooks: stripped, in sync, structured like the course design."""

import json
import re
from pathlib import Path

import pytest

from course_utils.images import load_all
from course_utils.tools import course

NOTEBOOKS = course.notebooks()


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _src(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_course_map_matches_notebooks_on_disk():
    on_disk = {p.name for p in NOTEBOOKS}
    in_map = [lesson.file for lesson in course.COURSE_MAP]
    assert len(in_map) == len(set(in_map)), "a lesson is listed twice in the course map"
    assert on_disk == set(in_map), (f"in the map, not on disk: {sorted(set(in_map) - on_disk)}; "
                                    f"on disk, not in the map: {sorted(on_disk - set(in_map))}")
    assert [p.name for p in NOTEBOOKS] == in_map, "the course map lists the lessons in file order"


def test_every_lesson_has_its_module_and_tests():
    """notebooks/NN_topic.ipynb ↔ course_utils/lessons/<topic>.py (09: the chatbot/ package) ↔ tests/test_<topic>.py."""
    repo = course.NOTEBOOK_DIR.parent
    assert list(course.LESSON_MODULES) == [lesson.file for lesson in course.COURSE_MAP]
    for notebook, dotted in course.LESSON_MODULES.items():
        path = dotted.replace(".", "/")
        code = repo / "course_utils" / f"{path}.py"
        package = repo / "course_utils" / path / "__init__.py"
        assert code.exists() != package.exists(), f"{notebook}: expected course_utils/{path}.py or {path}/"
        assert dotted.startswith("lessons.") or dotted == "chatbot", f"{notebook}: {dotted} is not in lessons/"
        module = dotted.rpartition(".")[2]
        assert (repo / "tests" / f"test_{module}.py").exists(), f"{notebook}: tests/test_{module}.py is missing"
    stems = [n.split("_", 1)[1].removesuffix(".ipynb") for n in course.LESSON_MODULES]
    modules = [m.rpartition(".")[2] for m in course.LESSON_MODULES.values()]
    named = [m for n, m in zip(stems, modules) if m in n or n.split("_")[0] in m]
    assert len(named) >= len(stems) - 1, "a lesson module is not named after its lesson (00's preflight aside)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_valid_and_in_the_course_format(path):
    """nbformat accepts the notebook, and writing it back changes no byte (what sync and strip rely on)."""
    text = path.read_text(encoding="utf-8")
    assert course.notebook_text(json.loads(text)) == text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    dirty = [i for i, c in enumerate(_cells(path))
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"cells {dirty} have outputs or execution counts: run `make strip`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_badge_and_setup_cell_in_sync(path):
    assert course.sync_problems(path) == [], "run `make badges`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_skeleton(path):
    cells = _cells(path)
    md = "\n".join(_src(c) for c in cells if c["cell_type"] == "markdown")
    code = "\n".join(_src(c) for c in cells if c["cell_type"] == "code")
    assert "What you will learn" in md
    assert re.search(r"^## 1\. ", md, re.M), "numbered sections"
    assert "Key takeaways" in md and "핵심 정리" in md and re.search(r"[가-힣]{4,}", md), "bilingual takeaways"
    assert re.search(r"\bassert\b", code), "checkpoint cells"
    assert ".check(" in code, "exercises"
    assert "print_env()" in code
    assert "import *" not in code


OWN_DATA = re.compile(r"python -m course_utils\.core\.data check (\S+) --schema (\w+)")
LOADS = re.compile(r"\bload_(?:rows|dataset)\(\s*\"(\w+)\"|^DATA\s*=\s*\"(\w+)\"", re.M)  # nb03: DATA = "..."


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_lessons_on_bundled_data_say_how_to_use_ones_own(path, tmp_path):
    """A notebook that loads a bundled data set shows the learner how to check and load their own file."""
    from course_utils.core import data

    cells = _cells(path)
    loaded = {a or b for c in cells if c["cell_type"] == "code" for a, b in LOADS.findall(_src(c))}
    shown = {m.groups() for c in cells if c["cell_type"] == "markdown" for m in OWN_DATA.finditer(_src(c))}
    if not loaded:
        assert not shown, "an own-data line in a notebook that loads no bundled data"
        return
    assert shown, f"loads {sorted(loaded)} but never says how to use one's own file (course_utils.core.data check)"
    for fname, schema in shown:
        assert schema in loaded and schema in data.SCHEMAS, (schema, loaded)
        own = tmp_path / fname      # the command the line shows, run on a file made of bundled rows
        own.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data.load_rows(schema)[:3]),
                       encoding="utf-8")
        assert data.main(["check", str(own), "--schema", schema]) == 0
        md = "\n".join(_src(c) for c in cells if c["cell_type"] == "markdown")
        assert re.search(rf'load_(rows|dataset)\([^`]*path="{re.escape(fname)}"', md), "the line shows the load call"


def test_images_regenerate(tmp_path):
    from course_utils.images import generate

    written = generate(tmp_path)
    assert {p.name for p in written} == set(load_all()) and all(p.stat().st_size > 1000 for p in written)


def test_marked_cell_finds_exactly_one_and_names_the_notebook(tmp_path):
    nb = tmp_path / "99_demo.ipynb"
    cells = [{"cell_type": "code", "source": ["# inline: a\n", "x = 1\n"]},
             {"cell_type": "markdown", "source": "# inline: a (prose does not count)"},
             {"cell_type": "code", "source": "# inline: b\ny = 2"},
             {"cell_type": "code", "source": "# inline: b\ny = 3"}]
    nb.write_text(json.dumps({"cells": cells}), encoding="utf-8")
    assert course.marked_cell(nb, "# inline: a") == "# inline: a\nx = 1\n"
    with pytest.raises(ValueError, match=r"99_demo\.ipynb.*'# inline: b'.*found 2"):
        course.marked_cell(nb, "# inline: b")
    with pytest.raises(ValueError, match="found 0"):
        course.marked_cell(nb, "# inline: c")


def test_nbval_output_wait_is_raised_for_notebook_cells():
    import importlib.util

    spec = importlib.util.spec_from_file_location("root_conftest", course.NOTEBOOK_DIR.parent / "conftest.py")
    root = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root)
    IPyNbCell = type("IPyNbCell", (), {"output_timeout": 5})  # nbval's item class, by name
    Other = type("Function", (), {"output_timeout": 5})
    cell, other = IPyNbCell(), Other()
    root.pytest_collection_modifyitems([cell, other])
    assert cell.output_timeout == root.NBVAL_OUTPUT_TIMEOUT_S and other.output_timeout == 5


def test_colab_setup_cell_keeps_colabs_torch_and_widgets_and_says_when_to_restart():
    src = course.setup_cell_source()
    compile(src, "setup cell", "exec")
    pip_lines = [ln for ln in src.splitlines() if "pip install" in ln]
    assert not any(re.search(r"'(torch|ipywidgets)[=<>]", ln) for ln in pip_lines), "Colab's builds must stay"
    assert any("--no-deps" in ln and "unsloth==" in ln for ln in pip_lines), "Unsloth without its dependencies"
    assert any("cut_cross_entropy" in ln and "xformers" in ln for ln in pip_lines), "Unsloth's CUDA extras"
    assert "enable_custom_widget_manager" in src and "Restart session" in src
