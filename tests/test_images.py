"""Concept images render everywhere: each is a cell attachment written from images/ by the sync.

`make lab` serves notebooks/, Colab opens a notebook without its folder, GitHub renders the file alone: a
relative `../images/…` link works in none of them, a cell attachment in all three. The tests on the committed
notebooks fail until `python -m course_utils.tools.course images` (or `make badges`) has run; the sync itself is
tested on copies in tmp_path.
"""

import base64
import json
import shutil
from pathlib import Path

import pytest

from course_utils.images import load_all
from course_utils.tools import course

NOTEBOOKS = course.notebooks()


def _nb(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _targets(path: Path) -> list[str]:
    return [t for c in _nb(path)["cells"] if c["cell_type"] == "markdown" for t in course.image_targets(course._src(c))]


def _course_images(path: Path) -> list[str]:
    """The images/ files a notebook shows, whether linked (../images/x.png) or attached (attachment:x.png)."""
    names = []
    for t in _targets(path):
        if t.startswith("attachment:"):
            names.append(t.removeprefix("attachment:"))
        elif "images/" in t and not t.startswith(("http://", "https://")):
            names.append(t.rsplit("/", 1)[1])
    return names


@pytest.fixture
def copies(tmp_path):
    """The committed notebooks and images/, copied: the sync may rewrite these."""
    nb_dir, img_dir = tmp_path / "notebooks", tmp_path / "images"
    nb_dir.mkdir()
    for p in NOTEBOOKS:
        shutil.copy(p, nb_dir / p.name)
    shutil.copytree(course.IMAGE_DIR, img_dir)
    return sorted(nb_dir.glob("*.ipynb")), img_dir


# ------------------------------------------------------------------ the committed notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_image_renders_without_the_images_folder(path):
    problems = course.image_problems(path)
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_course_image_is_generated(path):
    generators = load_all()
    for name in _course_images(path):
        assert (course.IMAGE_DIR / name).is_file(), f"images/{name} missing: run `make images`"
        assert name in generators, f"images/{name} has no generator in course_utils.images"


def test_every_lesson_shows_its_images():
    """The sync must not lose a picture: notebooks 00–10 show at least one concept image each."""
    shown = {p.name: _course_images(p) for p in NOTEBOOKS}
    assert all(shown.values()), {k: v for k, v in shown.items() if not v}


# ------------------------------------------------------------------ the sync, on copies
def test_sync_makes_attachments_and_is_idempotent(copies):
    paths, img_dir = copies
    for p in paths:
        before = _course_images(p)
        course.sync_images(p, img_dir)
        text = p.read_bytes()
        assert course.image_problems(p, img_dir) == [], p.name
        assert _course_images(p) == before, f"{p.name}: the sync changed which images are shown"
        assert all(t.startswith(("attachment:", "http://", "https://", "data:")) for t in _targets(p))
        assert course.sync_images(p, img_dir) is False, f"{p.name}: a second sync changed the file"
        assert p.read_bytes() == text
        original = course.NOTEBOOK_DIR / p.name
        assert course.sync_problems(p) == course.sync_problems(original), "badges/setup cells untouched"


def test_synced_notebooks_are_valid_nbformat(copies):
    nbformat = pytest.importorskip("nbformat")
    paths, img_dir = copies
    for p in paths:
        course.sync_images(p, img_dir)
        nbformat.validate(nbformat.read(p, as_version=4))


def test_attachment_is_the_png_of_images(copies):
    paths, img_dir = copies
    p = next(p for p in paths if p.name.startswith("00_"))
    course.sync_images(p, img_dir)
    cell = next(c for c in _nb(p)["cells"] if "attachment:00_profiles.png" in course._src(c))
    assert base64.b64decode(cell["attachments"]["00_profiles.png"]["image/png"]) == \
        (img_dir / "00_profiles.png").read_bytes()


def test_a_changed_png_is_picked_up(copies):
    paths, img_dir = copies
    p = next(p for p in paths if p.name.startswith("00_"))
    course.sync_images(p, img_dir)
    # `make images` redraws a figure: here another real PNG takes its place
    shutil.copy(img_dir / "00_lesson_flow.png", img_dir / "00_profiles.png")
    problems = course.image_problems(p, img_dir)
    assert len(problems) == 1 and "00_profiles.png differs" in problems[0]
    assert course.sync_images(p, img_dir) is True
    assert course.image_problems(p, img_dir) == []
    cell = next(c for c in _nb(p)["cells"] if "attachment:00_profiles.png" in course._src(c))
    assert base64.b64decode(cell["attachments"]["00_profiles.png"]["image/png"]) == \
        (img_dir / "00_lesson_flow.png").read_bytes()


def test_strip_keeps_attachments(copies):
    paths, img_dir = copies
    p = paths[0]
    course.sync_images(p, img_dir)
    course.strip(p)
    assert course.image_problems(p, img_dir) == []


# ------------------------------------------------------------------ what the check catches
def _one_cell_nb(tmp_path, source, attachments=None, *, as_list=False):
    cell = {"cell_type": "markdown", "metadata": {}, "source": source.splitlines(True) if as_list else source}
    if attachments is not None:
        cell["attachments"] = attachments
    p = tmp_path / "99_demo.ipynb"
    p.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}),
                 encoding="utf-8")
    return p


def _png(img_dir, name):
    return {"image/png": base64.b64encode((img_dir / name).read_bytes()).decode()}


@pytest.mark.parametrize("link", ["../images/00_profiles.png", "images/00_profiles.png", "./images/00_profiles.png"])
def test_relative_link_is_a_problem_and_the_sync_fixes_it(tmp_path, link):
    p = _one_cell_nb(tmp_path, f"# t\n\n![profiles]({link})\n")
    assert "relative image link" in course.image_problems(p)[0]
    assert course.sync_images(p) is True
    assert course._src(_nb(p)["cells"][0]) == "# t\n\n![profiles](attachment:00_profiles.png)\n"
    assert course.image_problems(p) == []


def test_html_img_and_list_sources_are_synced_too(tmp_path):
    p = _one_cell_nb(tmp_path, 'a\n<img src="../images/03_merge.png" width="400">\nb ![x](../images/03_lora_diagram.png)\n',
                     as_list=True)
    course.sync_images(p)
    cell = _nb(p)["cells"][0]
    assert isinstance(cell["source"], list)
    assert course.image_targets(course._src(cell)) == ["attachment:03_merge.png", "attachment:03_lora_diagram.png"]
    assert sorted(cell["attachments"]) == ["03_lora_diagram.png", "03_merge.png"]
    assert course.image_problems(p) == []


def test_missing_stale_and_foreign_attachments_are_problems(tmp_path):
    img = course.IMAGE_DIR
    missing = _one_cell_nb(tmp_path, "![p](attachment:00_profiles.png)")
    assert "has no attachment" in course.image_problems(missing)[0]
    stale = _one_cell_nb(tmp_path, "![p](attachment:00_profiles.png)", {"00_profiles.png": _png(img, "03_merge.png")})
    assert "differs from images/00_profiles.png" in course.image_problems(stale)[0]
    foreign = _one_cell_nb(tmp_path, "![p](attachment:pasted.png)", {"pasted.png": _png(img, "03_merge.png")})
    assert "not a course image" in course.image_problems(foreign)[0]
    remote = _one_cell_nb(tmp_path, "![badge](https://colab.research.google.com/assets/colab-badge.svg)")
    assert course.image_problems(remote) == []


def test_unreferenced_attachments_are_dropped(tmp_path):
    p = _one_cell_nb(tmp_path, "no picture any more", {"00_profiles.png": _png(course.IMAGE_DIR, "00_profiles.png")})
    assert course.sync_images(p) is True
    assert "attachments" not in _nb(p)["cells"][0]


def test_link_to_a_missing_image_fails_loudly(tmp_path):
    p = _one_cell_nb(tmp_path, "![gone](../images/99_not_there.png)")
    with pytest.raises(FileNotFoundError, match="make images"):
        course.sync_images(p)


def test_check_command_reports_image_problems(monkeypatch, tmp_path, capsys):
    p = _one_cell_nb(tmp_path, "![p](../images/00_profiles.png)")
    monkeypatch.setattr(course, "notebooks", lambda: [p])
    monkeypatch.setattr(course, "sync_problems", lambda path: [])
    assert course.main(["check"]) == 1
    assert "relative image link" in capsys.readouterr().out
    assert course.main(["images"]) == 0 and course.main(["check"]) == 0


def test_lab_root_needs_no_images_folder():
    """With attachments `make lab` can keep serving notebooks/ (course_utils.tools.lab's default root)."""
    from course_utils.tools import lab

    assert lab.DEFAULT_ROOT == "notebooks"
