"""``make drift``: the unit tests and every notebook (cpu profile) in up to three dependency lanes.

Each lane has its own virtual environment (``--dir``, default ``~/.cache/course-kit/drift/<lane>``):

- ``pinned``: exactly what ``make setup`` installs (the project's pins; the reference);
- ``latest``: the newest releases of the moving stack (``MOVING``); Unsloth is left out (it declares
  transformers <= 5.17, trl <= 1.15, datasets < 5), so notebook 07 runs its documented Unsloth-missing path;
- ``pre``: as ``latest`` with ``pip install --pre``; allowed to fail.

    $ python scripts/drift.py run --lanes latest          # setup + unit tests + notebooks + report
    $ python scripts/drift.py setup latest                # the venv only
    $ python scripts/drift.py test latest                 # unit tests and notebooks (junit xml per file)
    $ python scripts/drift.py report                      # docs/drift.md from what the lanes left

Results stay in the lane folder (``versions.json``, ``setup.json``, ``junit/*.xml``); ``report`` turns all lanes
found into ``docs/drift.md``: versions, pass/fail per test file and per notebook cell, and for each failure its
first error line and the API that moved. A failure is reported, never skipped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: pyproject's base dependency `tomli`
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
LANES = ("pinned", "latest", "pre")
EXTRAS = "torch,course,unsloth-support,lab,dev"  # the Makefile's EXTRAS (tests/test_drift.py checks)
MOVING = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes")
UNSLOTH = ("unsloth", "unsloth_zoo")
SHOWN = MOVING + UNSLOTH + ("safetensors", "tokenizers", "huggingface_hub", "numpy", "nbval", "pytest")
NB_ENV = {
    "COURSE_PROFILE": "cpu", "COURSE_STRICT": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg",
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",
}
CELL_TIMEOUT = 600


def default_dir() -> Path:
    """Where the lanes' venvs and results live (``DRIFT_DIR`` or ``~/.cache/course-kit/drift``)."""
    return Path(os.environ.get("DRIFT_DIR") or Path.home() / ".cache" / "course-kit" / "drift")


def pyproject(root: Path = ROOT) -> dict:
    """The parsed ``pyproject.toml``."""
    return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))


def req_name(req: str) -> str:
    """The normalised project name of a requirement string (``Foo_Bar==1`` → ``foo-bar``)."""
    return re.split(r"[\s\[<>=!~;@]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def lane_requirements(lane: str, project: dict) -> tuple[list[str], list[str]]:
    """(requirements, no-deps packages) of one lane: the pins, or the pins with ``MOVING`` unpinned."""
    if lane not in LANES:
        raise ValueError(f"unknown lane {lane!r}; lanes: {', '.join(LANES)}")
    groups = project["project"]["optional-dependencies"]
    reqs = [r for extra in EXTRAS.split(",") for r in groups[extra]]
    no_deps = list(project["tool"]["course"]["no-deps"]["packages"])
    if lane == "pinned":
        return reqs, no_deps
    moving = {m.replace("_", "-") for m in MOVING}
    reqs = [req_name(r) if req_name(r) in moving else r for r in reqs]
    unsloth = {u.replace("_", "-") for u in UNSLOTH}
    return reqs, [p for p in no_deps if req_name(p) not in unsloth]


def pip_commands(lane: str, py: str, project: dict, root: Path = ROOT) -> list[list[str]]:
    """The pip command lines that set up one lane's venv (``py`` is the venv's python)."""
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    reqs, no_deps = lane_requirements(lane, project)
    if lane == "pinned":  # the Makefile's `setup`, word for word
        return [pip + ["-e", f"{root}[{EXTRAS}]"], pip + ["--no-deps"] + no_deps]
    pre = ["--pre"] if lane == "pre" else []
    return [pip + ["--upgrade"] + pre + reqs, pip + ["--no-deps", "-e", str(root)], pip + ["--no-deps"] + no_deps]


def lane_env(lane: str, lane_dir: Path, base: dict | None = None) -> dict:
    """The environment for one lane's commands: its venv first on PATH, its own model cache.

    ``latest``/``pre`` ignore a site-wide pip constraint file (``PIP_CONSTRAINT``): newest means newest.
    """
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{lane_dir / 'venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["COURSE_CACHE"] = str(lane_dir / "course-cache")
    if lane != "pinned":
        env["PIP_CONSTRAINT"] = os.devnull
    return env


def sh(cmd: list[str], env: dict, log: Path, cwd: Path = ROOT, timeout: float | None = None) -> int:
    """Run one command, appending its output to ``log``; return its exit status (124 on a time-out)."""
    with log.open("a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        try:
            return subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            f.write(f"timed out after {timeout} s\n")
            return 124


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict:
    """``path`` as JSON, or {} when missing."""
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def installed_versions(py: str, env: dict) -> dict:
    """The installed version of each package in ``SHOWN`` (None where missing), asked of the lane's python."""
    code = ("import json, sys, importlib.metadata as m\nout = {}\nfor n in sys.argv[1:]:\n"
            "    try: out[n] = m.version(n)\n    except m.PackageNotFoundError: out[n] = None\nprint(json.dumps(out))")
    res = subprocess.run([py, "-c", code, *SHOWN], env=env, capture_output=True, text=True)
    return json.loads(res.stdout) if res.returncode == 0 else {}


def setup(lane: str, base: Path) -> bool:
    """Create or update one lane's venv; record the versions (``versions.json``) and the outcome."""
    lane_dir = base / lane
    lane_dir.mkdir(parents=True, exist_ok=True)
    log = lane_dir / "setup.log"
    log.write_text("", encoding="utf-8")
    env = lane_env(lane, lane_dir)
    py = str(lane_dir / "venv" / "bin" / "python")
    t0 = time.time()
    steps = ([] if Path(py).exists() else [[sys.executable, "-m", "venv", str(lane_dir / "venv")]])
    steps += pip_commands(lane, py, pyproject()) + [[py, "-m", "course_utils.core.models", "prepare"]]
    rc = 0
    for cmd in steps:
        rc = sh(cmd, env, log)
        if rc:
            break
    tail = log.read_text(encoding="utf-8").splitlines()[-15:]
    write_json(lane_dir / "setup.json", {"ok": rc == 0, "rc": rc, "seconds": round(time.time() - t0),
                                         "failed": None if rc == 0 else " ".join(cmd), "tail": tail})
    write_json(lane_dir / "versions.json", installed_versions(py, env) if Path(py).exists() else {})
    print(f"drift: {lane}: setup {'ok' if rc == 0 else 'FAILED'} ({log})")
    return rc == 0


# ---------------------------------------------------------------- running the tests of one lane


def notebooks(root: Path = ROOT) -> list[str]:
    """The course notebooks' paths relative to ``root`` (``notebooks/NN_*.ipynb``), in order."""
    return sorted(str(p.relative_to(root)) for p in (root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_commands(py: str, junit: Path, root: Path = ROOT) -> list[tuple[str, list[str]]]:
    """(key, command) for the unit tests and each notebook, as ``make unit``/``make notebooks`` run them."""
    cmds = [("unit", [py, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider", f"--junitxml={junit / 'unit.xml'}"])]
    for nb in notebooks(root):
        key = Path(nb).stem
        cmds.append((key, [py, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
                           f"--nbval-cell-timeout={CELL_TIMEOUT}", nb, "-p", "no:cacheprovider", "-q",
                           f"--junitxml={junit / (key + '.xml')}"]))
    return cmds


def save_state(path: Path, mine: dict) -> dict:
    """Merge this run's results into ``tests.json`` (another run may have added keys meanwhile); return the merge."""
    merged = {**read_json(path), **mine}
    write_json(path, merged)
    return merged


def run_tests(lane: str, base: Path, only: list[str] | None = None, stop_at: float | None = None) -> dict:
    """Run a lane's unit tests and notebooks one at a time; ``tests.json`` gets each one's status and seconds.

    ``only``: keys (``unit``, a notebook stem or its ``NN`` prefix) to run, the others keep their last result;
    ``stop_at``: a time (``time.time()``) after which nothing new starts (recorded as not finished).
    """
    lane_dir = base / lane
    junit = lane_dir / "junit"
    junit.mkdir(parents=True, exist_ok=True)
    py = str(lane_dir / "venv" / "bin" / "python")
    env = {**lane_env(lane, lane_dir), **NB_ENV}
    state: dict = {}
    for key, cmd in test_commands(py, junit):
        if only and not any(key == o or key.startswith(o + "_") for o in only):
            continue
        if stop_at is not None and time.time() > stop_at:
            state[key] = {"rc": None, "not_run": "not finished: the run's time limit came first"}
            (junit / f"{key}.xml").unlink(missing_ok=True)
            continue
        (junit / f"{key}.xml").unlink(missing_ok=True)
        log = lane_dir / "logs" / f"{key}.log"
        log.parent.mkdir(exist_ok=True)
        log.write_text("", encoding="utf-8")
        t0 = time.time()
        rc = sh(cmd, env, log, timeout=4 * 3600)
        state[key] = {"rc": rc, "seconds": round(time.time() - t0, 1)}
        save_state(lane_dir / "tests.json", state)
        print(f"drift: {lane}: {key}: {'ok' if rc == 0 else f'exit {rc}'} ({state[key]['seconds']} s)", flush=True)
    return save_state(lane_dir / "tests.json", state)


# ---------------------------------------------------------------- reading pytest's junit xml


ANSI = re.compile(r"(?:\x1b|#x1B)\[[0-9;]*[A-Za-z]")
EXC_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Warning|Exit|Interrupt|Failed)\b(?::.*)?$")


@dataclass
class Case:
    """One junit testcase: a test function or a notebook cell."""

    file: str
    name: str
    outcome: str  # passed | failed | error | skipped
    seconds: float = 0.0
    text: str = ""
    message: str = ""

    @property
    def error(self) -> str:
        """The first error line of a failure ("" when it passed)."""
        return first_error(self.text, self.message) if self.outcome in ("failed", "error") else ""

    @property
    def api(self) -> str:
        """The API that moved, as the failure names it ("" when it names none)."""
        return moved_api(self.error, self.text) if self.outcome in ("failed", "error") else ""


def strip_ansi(text: str) -> str:
    """Text without terminal colour codes (raw or as pytest's junit writes them, ``#x1B[31m``)."""
    return ANSI.sub("", text or "")


def case_file(classname: str, name: str) -> str:
    """The test file or notebook a junit testcase belongs to (``tests.test_x.TestY`` → ``tests/test_x.py``)."""
    if not classname:  # a collection error: pytest names the module in `name`
        return name.replace(".", "/") + ("" if name.endswith((".py", ".ipynb")) else ".py")
    if ".ipynb" in classname:
        return classname.split(".ipynb")[0].replace(".", "/") + ".ipynb"
    parts = classname.split(".")
    while len(parts) > 1 and parts[-1][:1].isupper():  # test classes
        parts.pop()
    return "/".join(parts) + ".py"


def parse_junit(path: Path) -> list[Case]:
    """Every testcase of one junit xml file, with its outcome and failure text."""
    cases = []
    for tc in ET.parse(path).getroot().iter("testcase"):
        outcome, text, message = "passed", "", ""
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                text, message = strip_ansi(el.text or ""), strip_ansi(el.get("message", ""))
                break
        cases.append(Case(case_file(tc.get("classname", ""), tc.get("name", "")), tc.get("name", ""), outcome,
                          float(tc.get("time") or 0), text, message))
    return cases


def first_error(text: str, message: str = "") -> str:
    """The first error line of a pytest or nbval failure (``TypeError: f() got an unexpected keyword ...``)."""
    lines = strip_ansi(text).splitlines()
    e_lines = [ln[1:].strip() for ln in lines if ln.startswith("E ")]
    for ln in e_lines:
        if EXC_LINE.match(ln):
            return ln
    if e_lines:
        return e_lines[0]
    exc = [ln.strip() for ln in lines if EXC_LINE.match(ln.strip()) and "Traceback" not in ln]
    if exc:  # nbval: IPython's traceback ends with the exception line
        return exc[-1]
    return next((ln.strip() for ln in strip_ansi(message).splitlines() if ln.strip()), "")


FRAME = re.compile(r"site-packages/((?:torch|transformers|trl|peft|datasets|accelerate|bitsandbytes|unsloth|"
                   r"unsloth_zoo|tokenizers|huggingface_hub)/[\w/]+)\.py(?::\d+)?(?::|,) in ([\w.<>]+)")
API_PATTERNS = (
    (r"([\w.]+)\(\) got an unexpected keyword argument '(\w+)'", "{0}({1}=)"),
    (r"cannot import name '(\w+)' from '([\w.]+)'", "{1}.{0}"),
    (r"module '([\w.]+)' has no attribute '(\w+)'", "{0}.{1}"),
    (r"type object '(\w+)' has no attribute '(\w+)'", "{0}.{1}"),
    (r"'(\w+)' object has no attribute '(\w+)'", "{0}.{1}"),
    (r"No module named '([\w.]+)'", "{0} (module)"),
    (r"([\w.]+)\(\) missing \d+ required (?:positional|keyword-only) arguments?: '(\w+)'", "{0}({1})"),
    (r"([\w.]+)\(\) got multiple values for argument '(\w+)'", "{0}({1}=)"),
    (r"([\w.]+)\(\) takes .* positional arguments? but .* given", "{0}(positional arguments)"),
)


def moved_api(error: str, text: str = "") -> str:
    """The API a failure points at: from the error line's own words, else the deepest library frame."""
    for pattern, fmt in API_PATTERNS:
        m = re.search(pattern, error)
        if m:
            return fmt.format(*m.groups()).replace(".__init__(", "(")
    frames = FRAME.findall(strip_ansi(text))
    if frames:
        path, func = frames[-1]
        return f"{path.replace('/', '.')}: {func}"
    return ""


# ---------------------------------------------------------------- the report


# Known drift, explained once: a regex on "first error line | API" → why, and what the course does about it.
NOTES: dict[str, str] = {
    r"^AssertionError: \S+ [\w.+]+ ≠ [\w.]+ \|": (
        "By design, not drift: `tests/test_deps.py::test_installed_versions_match_pins` asserts that the installed "
        "versions are the pins, so every lane that moves a pin fails it (it names the first moved package)."),
    r"^AssertionError: assert (44028\.0 == 44032|110844\.0 == \(115712 - 4864\))": (
        "The test's independent FLOPs count subtracted the rotary embedding's `inv_freq @ position_ids` as a matmul "
        "(2·head_dim/2·T per forward); on torch 2.15 / transformers 5.24 no such matmul is dispatched (4 FLOPs/token "
        "less). Fixed after this run, forward-compatibly: the test now measures the rotary module's FLOPs "
        "(`tests/test_bench.py`); both tests pass on the pins and on this lane."),
}


def explain(case: Case) -> str:
    """The explanation recorded in ``NOTES`` for a failure ("" when none matches)."""
    key = f"{case.error} | {case.api}"
    return next((why for pattern, why in NOTES.items() if re.search(pattern, key)), "")


def runs(cases: list[Case]) -> str:
    """Per-cell outcomes as ranges: ``0–11 ✓ · 12 ✗ · 13–20 ✓``."""
    mark = {"passed": "✓", "failed": "✗", "error": "✗", "skipped": "skipped"}
    out: list[list] = []
    for c in cases:
        idx = int(c.name.split()[-1]) if c.name.split()[-1].isdigit() else c.name
        if out and out[-1][2] == mark[c.outcome] and isinstance(idx, int) and isinstance(out[-1][1], int):
            out[-1][1] = idx
        else:
            out.append([idx, idx, mark[c.outcome]])
    return " · ".join(f"{a}{'' if a == b else f'–{b}'} {m}" for a, b, m in out)


def md(text: str, width: int = 160) -> str:
    """Text safe for one markdown table cell, cut to ``width``."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class LaneResult:
    """What one lane left in its folder."""

    lane: str
    setup: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    tests: dict = field(default_factory=dict)
    unit: list[Case] = field(default_factory=list)
    notebooks: dict[str, list[Case]] = field(default_factory=dict)
    notes: str = ""  # the lane folder's notes.md, if someone wrote one about this run

    @property
    def failures(self) -> list[Case]:
        """Every failed or erroring test and notebook cell."""
        cases = self.unit + [c for cs in self.notebooks.values() for c in cs]
        return [c for c in cases if c.outcome in ("failed", "error")]

    @property
    def not_finished(self) -> list[str]:
        """Keys that did not run to the end (no junit file, a time-out or an exit that left no failure)."""
        return [k for k, st in self.tests.items() if st.get("rc") is None or st.get("rc") in (124, 137)]


def load_lane(lane: str, base: Path) -> LaneResult | None:
    """A lane's results, or None when it never ran."""
    d = base / lane
    if not (d / "setup.json").exists():
        return None
    res = LaneResult(lane, read_json(d / "setup.json"), read_json(d / "versions.json"), read_json(d / "tests.json"))
    if (d / "notes.md").exists():
        res.notes = (d / "notes.md").read_text(encoding="utf-8").strip()
    for key in res.tests:
        xml = d / "junit" / f"{key}.xml"
        cases = parse_junit(xml) if xml.exists() else []
        if key == "unit":
            res.unit = cases
        else:
            res.notebooks[key] = cases
    return res


LANE_NOTES = {
    "pinned": "The project's pins, installed as `make setup` installs them (the reference).",
    "latest": ("The newest releases of {moving}; everything else pinned. Unsloth is not installed: "
               "unsloth 2026.10.9 declares transformers <= 5.17, trl <= 1.15 and datasets < 5, so this lane runs the "
               "course's documented Unsloth-missing path (notebook 07 trains with TRL + peft, as on a CPU)."),
    "pre": "As `latest`, with `pip install --pre` (pre-releases where the registry has them). Allowed to fail.",
}


def pins(project: dict) -> dict:
    """Package → pinned version from pyproject (extras and no-deps packages)."""
    reqs = [r for g in project["project"]["optional-dependencies"].values() for r in g]
    reqs += project["tool"]["course"]["no-deps"]["packages"]
    return {req_name(r): r.split("==", 1)[1] for r in reqs if "==" in r}


def lane_section(res: LaneResult, project: dict) -> list[str]:
    """The markdown of one lane."""
    out = [f"## Lane `{res.lane}`", "", LANE_NOTES[res.lane].format(moving=", ".join(MOVING)), ""]
    if res.notes:
        out += ["About this run (the lane folder's `notes.md`):", "", res.notes, ""]
    if not res.setup.get("ok"):
        out += [f"**Setup failed** (exit {res.setup.get('rc')}) at `{md(res.setup.get('failed') or '', 300)}`:", "",
                "```", *res.setup.get("tail", []), "```", ""]
    pinned = pins(project)
    out += ["| package | pinned | installed |", "|---|---|---|"]
    for name in SHOWN:
        v = res.versions.get(name)
        p = pinned.get(name.replace("_", "-"), "")
        moved = " (moved)" if v and p and v.split("+")[0] != p else ""
        out.append(f"| {name} | {p or '—'} | {v or 'not installed'}{moved} |")
    out.append("")
    if res.tests.get("unit"):
        st = res.tests["unit"]
        by_file: dict[str, list[Case]] = {}
        for c in res.unit:
            by_file.setdefault(c.file, []).append(c)
        out += [f"### Unit tests ({outcome_counts(res.unit)}; {st.get('seconds', '?')} s)", "",
                "| test file | passed | failed | skipped |", "|---|---|---|---|"]
        if not res.unit:
            out.append(f"| (no results: {st.get('not_run') or 'pytest exit ' + str(st.get('rc'))}) | | | |")
        for f, cs in sorted(by_file.items()):
            n = {o: sum(c.outcome == o for c in cs) for o in ("passed", "failed", "error", "skipped")}
            out.append(f"| `{f}` | {n['passed']} | {n['failed'] + n['error']} | {n['skipped']} |")
        out.append("")
    nbs = [k for k in res.tests if k != "unit"]
    if res.tests:  # every notebook is listed: one with no result recorded did not finish
        nbs = sorted(set(nbs) | {Path(nb).stem for nb in notebooks()})
    if nbs:
        out += ["### Notebooks (cpu profile, per cell)", "", "| notebook | cells | per cell | seconds |",
                "|---|---|---|---|"]
        for key in sorted(nbs):
            st, cs = res.tests.get(key, {"not_run": "not finished: no result recorded (still running or stopped)"}), \
                res.notebooks.get(key, [])
            if st.get("not_run"):
                out.append(f"| `{key}` | — | {st['not_run']} | — |")
            elif not cs:
                why = st.get("note") or f"no cell results (pytest exit {st.get('rc')}; see the lane's log)"
                out.append(f"| `{key}` | — | {md(why, 300)} | "
                           f"{st.get('seconds', '—')} |")
            else:
                out.append(f"| `{key}` | {outcome_counts(cs)} | {runs(cs)} | {st.get('seconds', '—')} |")
        out.append("")
    fails = res.failures
    out += [f"### Failures ({len(fails)})", ""]
    if fails:
        out += ["| where | first error line | API that moved | explained |", "|---|---|---|---|"]
        for c in fails:
            where = f"`{c.file}` {c.name}" if c.file.endswith(".ipynb") else f"`{c.file}::{c.name}`"
            out.append(f"| {where} | {md(c.error) or '—'} | {md(c.api, 80) or '—'} | {md(explain(c), 400) or '—'} |")
    else:
        out.append("None.")
    out.append("")
    return out


def outcome_counts(cases: list[Case]) -> str:
    """``12 passed, 1 failed, 2 skipped`` (zero counts left out)."""
    n = {o: sum(c.outcome == o for c in cases) for o in ("passed", "failed", "error", "skipped")}
    n["failed"] += n.pop("error")
    return ", ".join(f"{v} {k}" for k, v in n.items() if v) or "no results"


def report(results: list[LaneResult], project: dict, when: str, machine: str) -> str:
    """The whole ``docs/drift.md``."""
    out = ["# Dependency drift", "",
           f"Written by `make drift` (`scripts/drift.py`) on {when}, on {machine}. Each lane is its own venv; "
           "every test file and notebook runs as `make unit` and `make notebooks` run them (cpu profile), one at "
           "a time, with pytest's junit xml read per test and per notebook cell. A failure is listed with its "
           "first error line and the API that moved; nothing is skipped to make a lane pass. Seconds are wall time on "
           "that machine (inflated when it is shared).", "",
           "| lane | setup | unit tests | notebook cells | torch | transformers | trl | datasets |",
           "|---|---|---|---|---|---|---|---|"]
    for r in results:
        cells = [c for cs in r.notebooks.values() for c in cs]
        nf = f"; {len(r.not_finished)} not finished" if r.not_finished else ""
        v = r.versions
        out.append(f"| `{r.lane}` | {'ok' if r.setup.get('ok') else 'failed'} | {outcome_counts(r.unit)} | "
                   f"{outcome_counts(cells)}{nf} | {v.get('torch') or '—'} | {v.get('transformers') or '—'} | "
                   f"{v.get('trl') or '—'} | {v.get('datasets') or '—'} |")
    missing = [lane for lane in LANES if lane not in {r.lane for r in results}]
    if missing:
        out += ["", f"Not run for this report: {', '.join(f'`{m}`' for m in missing)}."]
    out.append("")
    for r in results:
        out += lane_section(r, project)
    return "\n".join(out).rstrip() + "\n"


def machine() -> str:
    """One line naming the machine the lanes ran on."""
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"


def write_report(base: Path, path: Path, lanes: tuple[str, ...] = LANES) -> str:
    """Read every lane found under ``base`` and write the report to ``path``."""
    results = [r for r in (load_lane(lane, base) for lane in lanes) if r is not None]
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = report(results, pyproject(), when, machine())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"drift: wrote {path}")
    return text


def lane_ok(res: LaneResult | None) -> bool:
    """A lane that set up, ran everything and had no failure."""
    return bool(res and res.setup.get("ok") and not res.failures and not res.not_finished
                and all(st.get("rc") == 0 for st in res.tests.values()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("setup", "test", "report", "run", "commands"))
    p.add_argument("lanes", nargs="?", default=",".join(LANES), help="comma-separated lanes (default: all)")
    p.add_argument("--dir", type=Path, default=None, help="the lanes' folder (default DRIFT_DIR or ~/.cache/...)")
    p.add_argument("--report", type=Path, default=ROOT / "docs" / "drift.md")
    p.add_argument("--only", default="", help="test: comma-separated keys (unit, 07, 08_instruction_tuning)")
    p.add_argument("--minutes", type=float, default=None, help="test: start nothing new after this many minutes")
    args = p.parse_args(argv)
    base = args.dir or default_dir()
    lanes = [s for s in args.lanes.split(",") if s]
    bad = [lane for lane in lanes if lane not in LANES]
    if bad:
        p.error(f"unknown lane(s) {', '.join(bad)}; lanes: {', '.join(LANES)}")
    stop_at = time.time() + 60 * args.minutes if args.minutes else None
    only = [s for s in args.only.split(",") if s] or None
    if args.what == "commands":
        for lane in lanes:
            for cmd in pip_commands(lane, str(base / lane / "venv" / "bin" / "python"), pyproject()):
                print(" ".join(cmd))
        return 0
    if args.what in ("setup", "run"):
        ok = {lane: setup(lane, base) for lane in lanes}
    if args.what in ("test", "run"):
        for lane in lanes:
            if args.what == "run" and not ok[lane]:
                continue
            run_tests(lane, base, only, stop_at)
    if args.what in ("report", "run", "test"):
        write_report(base, args.report)
    if args.what == "setup":
        return 0 if all(ok.values()) else 1
    # `pre` is allowed to fail; the others fail the command (after the report is written)
    return 0 if all(lane_ok(load_lane(lane, base)) for lane in lanes if lane != "pre") else 1


if __name__ == "__main__":
    raise SystemExit(main())
