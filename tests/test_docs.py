"""docs/instructor-guide.md names only things that exist: paths, `make` targets, `python -m` modules, hub models.

Everything inside code (backtick spans and fenced blocks) is checked:
- a token with a ``/`` is a repository path (it must exist), a hub model id (it must be in
  ``course_utils.core.models.REGISTRY``) or an absolute Colab path (it must occur in notebook 00's setup cell);
- a token ending in a file extension (``README.md``) must exist; a bare notebook name (``03_lora_math``) must
  be a notebook in ``notebooks/``;
- ``make TARGET`` must be a target of the Makefile; ``python -m MODULE`` must be importable;
- ``course_utils.module.NAME`` must be a module of the package that defines ``NAME``.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from course_utils.core.models import REGISTRY

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "instructor-guide.md"
EXTENSIONS = ("ipynb", "py", "md", "json", "jsonl", "toml", "yml", "yaml", "txt", "png", "cfg", "sh")
HUB_IDS = {ids["gpu"] for ids in REGISTRY.values() if ids.get("gpu")}

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
_SPAN = re.compile(r"`([^`]+)`")
_TOKEN = re.compile(r"[A-Za-z0-9_.\-/%]+")
_NOTEBOOK = re.compile(r"^\d\d_[a-z0-9_]+$")
_MAKE = re.compile(r"(?<![\w-])make((?:\s+[^\s`;&|]+)+)")
_PYTHON_M = re.compile(r"python3?\s+-m\s+([\w.]+)")
_DOTTED = re.compile(r"(?<![\w./-])(course_utils(?:\.\w+)+)")


def code_parts(markdown: str) -> list[str]:
    """The fenced blocks and the inline code spans of a markdown text."""
    fenced = _FENCE.findall(markdown)
    prose = _FENCE.sub("", markdown)
    assert prose.count("`") % 2 == 0, "unbalanced backticks outside fenced blocks"
    return fenced + _SPAN.findall(prose)


def makefile_targets(makefile: Path = REPO / "Makefile") -> set[str]:
    """Explicit targets of a Makefile (rule lines ``a b: deps``; not variables, not ``.PHONY``)."""
    targets = set()
    for line in makefile.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9_][A-Za-z0-9_.\- ]*?)\s*::?(?![=])", line)
        if m and not re.match(r"^\s*[\w.]+\s*[:?+!]?=", line):
            targets.update(m.group(1).split())
    return targets


def _colab_setup_source() -> str:
    cells = json.loads((REPO / "notebooks" / "00_setup_and_tour.ipynb").read_text(encoding="utf-8"))["cells"]
    return "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def _module_exists(name: str) -> bool:
    if name == "course_utils" or name.startswith("course_utils."):
        rel = Path(*name.split("."))
        return (REPO / rel.with_suffix(".py")).is_file() or (REPO / rel / "__init__.py").is_file()
    return importlib.util.find_spec(name) is not None


def _check_dotted(ref: str) -> str | None:
    parts = ref.split(".")
    for i in range(len(parts), 0, -1):
        if _module_exists(".".join(parts[:i])):
            rest = parts[i:]
            if not rest:
                return None
            rel = Path(*parts[:i])
            file = REPO / rel.with_suffix(".py")
            if not file.is_file():
                file = REPO / rel / "__init__.py"
            text = file.read_text(encoding="utf-8")
            if re.search(rf"^(?:def|class)\s+{rest[0]}\b|^{rest[0]}\s*[:=]", text, re.M):
                return None
            return f"`{ref}`: {file.relative_to(REPO)} defines no {rest[0]}"
    return f"`{ref}`: no such module"


def check_text(markdown: str) -> list[str]:
    """Problems with what a markdown text names in code (empty when everything exists)."""
    problems = []
    targets = makefile_targets()
    colab = _colab_setup_source()
    for part in code_parts(markdown):
        for token in _TOKEN.findall(part):
            token = token.rstrip(".,:;")
            if not token or token.startswith("%") or "://" in token:
                continue
            if "/" in token:
                if token.startswith("/"):
                    if token not in colab:
                        problems.append(f"absolute path {token}: not in notebook 00's Colab setup cell")
                elif token in HUB_IDS:
                    continue
                elif not (REPO / token).exists():
                    problems.append(f"{token}: no such path in the repository (nor a REGISTRY model id)")
            elif _NOTEBOOK.match(token):
                if not (REPO / "notebooks" / f"{token}.ipynb").is_file():
                    problems.append(f"{token}: no such notebook in notebooks/")
            elif re.search(rf"\.(?:{'|'.join(EXTENSIONS)})$", token) and not token.startswith("."):
                if not (REPO / token).exists():
                    problems.append(f"{token}: no such file in the repository root")
        for m in _MAKE.finditer(part):
            for word in m.group(1).split():
                if "=" in word or word.startswith("-"):
                    break
                if word not in targets:
                    problems.append(f"make {word}: no such target in the Makefile")
        for module in _PYTHON_M.findall(part):
            if not _module_exists(module):
                problems.append(f"python -m {module}: no such module")
        for ref in _DOTTED.findall(part):
            problem = _check_dotted(ref)
            if problem:
                problems.append(problem)
    return problems


def test_guide_exists_in_both_languages():
    text = GUIDE.read_text(encoding="utf-8")
    assert re.search(r"^## English$", text, re.M) and re.search(r"^## 한국어$", text, re.M)


def test_everything_the_guide_names_exists():
    problems = check_text(GUIDE.read_text(encoding="utf-8"))
    assert not problems, "docs/instructor-guide.md names things that do not exist:\n" + "\n".join(problems)


def test_both_languages_name_the_same_things():
    """The Korean half is the whole guide, not a summary: it names the same paths, targets and commands."""
    text = GUIDE.read_text(encoding="utf-8")
    english, korean = re.split(r"^## 한국어$", text.split("## English", 1)[1], flags=re.M)

    def named(section):
        out = set()
        for part in code_parts(section):
            out.update(t.rstrip(".,:;") for t in _TOKEN.findall(part) if "/" in t or _NOTEBOOK.match(t))
            out.update(f"make {w}" for m in _MAKE.finditer(part) for w in m.group(1).split()[:1])
            out.update(f"python -m {mod}" for mod in _PYTHON_M.findall(part))
        return out

    assert named(english) == named(korean), (named(english) ^ named(korean))


def test_cpu_times_are_the_readme_course_map():
    """The guide's cpu run times are the README map's measured ones (update both together)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    guide = GUIDE.read_text(encoding="utf-8").split("## 한국어")[0]
    readme_times = dict(re.findall(r"^\| `(\d\d_\w+)` \| [^|]* \| ([\d–]+ s) \|", readme, re.M))
    guide_times = dict(re.findall(r"^\| `(\d\d_\w+)` \| ([\d–]+ s) \|", guide, re.M))
    assert readme_times and guide_times.keys() == readme_times.keys()
    assert guide_times == readme_times


def test_makefile_parser():
    targets = makefile_targets()
    assert {"setup", "lab", "test", "unit", "notebooks", "badges", "clean"} <= targets
    assert not {"VENV", "PY", ".PHONY", "$(STAMP)"} & targets


@pytest.mark.parametrize("bogus, expected", [
    ("`notebooks/99_missing.ipynb`", "no such path"),
    ("run `make rehearse-everything`", "make rehearse-everything: no such target"),
    ("```bash\nmake lab LAB_IP=0.0.0.0 && make nope\n```", "make nope: no such target"),
    ("`python -m course_utils.nonexistent check`", "python -m course_utils.nonexistent: no such module"),
    ("`someone/unknown-model`", "someone/unknown-model: no such path"),
    ("`/content/elsewhere`", "not in notebook 00's Colab setup cell"),
    ("`11_missing_lesson`", "no such notebook"),
    ("`course_utils.core.models.NO_SUCH_NAME`", "defines no NO_SUCH_NAME"),
    ("`CHANGELOG.md`", "no such file"),
])
def test_checker_catches_what_does_not_exist(bogus, expected):
    problems = check_text(f"Some prose.\n\n{bogus}\n")
    assert any(expected in p for p in problems), problems


def test_checker_accepts_what_exists():
    ok = ("`README.md` `course_utils/core/data.py` `make setup` `make lab LAB_IP=0.0.0.0` `03_lora_math`\n"
          "`python -m course_utils.core.data check data/domain_qa.jsonl --schema domain_qa` `/content/course`\n"
          "`course_utils.core.models.REGISTRY` `unsloth/Phi-3-mini-4k-instruct-bnb-4bit` `%env COURSE_PROFILE=cpu`\n")
    assert check_text(ok) == []
