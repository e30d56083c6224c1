"""One source of truth for versions: pyproject extras; environment.yml points at them; pip check is known."""

import re
import subprocess
import sys
from pathlib import Path

from course_utils.core import deps

ROOT = Path(__file__).resolve().parent.parent


def _env_pip_lines() -> list[str]:
    lines = (ROOT / "environment.yml").read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() == "- pip:")
    return [ln.strip()[2:].strip() for ln in lines[start + 1:] if ln.strip().startswith("- ")]


def test_environment_yml_points_at_pyproject_extras():
    pip_lines = _env_pip_lines()
    assert pip_lines, "environment.yml has no pip section"
    groups = deps.pyproject()["project"]["optional-dependencies"]
    for line in pip_lines:
        m = re.fullmatch(r"-e \.\[([\w,-]+)\]", line)
        assert m, f"environment.yml pins {line!r} itself; point at pyproject extras instead"
        for extra in m.group(1).split(","):
            assert extra in groups, f"environment.yml asks for extra {extra!r}, which pyproject lacks"
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    make_extras = re.search(r"^EXTRAS\s*\?=\s*(\S+)", makefile, re.M).group(1).split(",")
    assert set(make_extras) == set(re.fullmatch(r"-e \.\[([\w,-]+)\]", pip_lines[0]).group(1).split(","))


def test_python_floor_is_supported_and_checked():
    """requires-python promises 3.10: tomllib's PyPI twin is a base dependency there (deps.py needs it before
    any extra is installed), and `make lint` runs vermin with the same floor."""
    from packaging.requirements import Requirement

    project = deps.pyproject()["project"]
    floor = re.fullmatch(r">=(3\.\d+)", project["requires-python"]).group(1)
    assert floor == "3.10"
    tomli = next(r for r in map(Requirement, project["dependencies"]) if r.name == "tomli")
    assert tomli.marker.evaluate({"python_version": "3.10"}) and not tomli.marker.evaluate({"python_version": "3.11"})
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert re.search(rf"/vermin .*--violations .*-t={re.escape(floor)}- ", lint), lint
    assert any(r.startswith("vermin==") for r in deps.extras("dev"))


def test_every_pin_is_exact_or_justified():
    for group, reqs in deps.pyproject()["project"]["optional-dependencies"].items():
        for req in reqs:
            assert "==" in req or req.startswith(("psutil", "wheel")), f"{group}: {req} is not pinned"
    assert all("==" in p for p in deps.no_deps())


def test_installed_versions_match_pins():
    from importlib.metadata import version

    for group in ("torch", "course", "dev"):
        for req in deps.extras(group):
            if "==" in req:
                name, pin = req.split("==")
                assert version(name) == pin or version(name).startswith(pin + "+"), f"{name} {version(name)} ≠ {pin}"


def test_pip_check_reports_only_documented_gaps():
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
    unexplained = []
    for line in out.splitlines():
        m = re.match(r"\S+ \S+ (?:requires|has requirement) ([A-Za-z0-9_.-]+)", line)
        if m and m.group(1).lower() not in deps.KNOWN_UNMET:
            unexplained.append(line)
    assert not unexplained, "pip check problems not documented in deps.KNOWN_UNMET/README:\n" + "\n".join(unexplained)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert all(name in readme for name in deps.KNOWN_UNMET), "README must name every known pip check gap"
