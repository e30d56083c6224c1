import json
import re
from pathlib import Path

import pytest

from course_utils.core import data

SCHEMA = data.SCHEMAS["domain_qa"]
GOOD = {"id": "x1", "question": "Q?", "answer": "A.", "category": "errors", "split": "train"}


def _write(tmp_path: Path, lines: list) -> Path:
    p = tmp_path / "sample.jsonl"
    p.write_bytes(b"".join((ln if isinstance(ln, bytes) else json.dumps(ln, ensure_ascii=False).encode()) + b"\n"
                           for ln in lines))
    return p


@pytest.mark.parametrize("bad, message", [
    (b'{"id": "x2", "question": ', "bad JSON"),
    ({k: v for k, v in GOOD.items() if k != "answer"} | {"id": "x2"}, "missing field(s) answer"),
    (GOOD | {"id": "x2", "answer": 3}, "field 'answer' must be str, got int"),
    (GOOD | {"id": "x2", "question": "   "}, "field 'question' is empty"),
    (GOOD | {"id": "x2", "category": "weather"}, "field 'category'='weather' is not one of"),
    (GOOD | {"id": "x2", "extra": 1}, "unknown field(s) extra"),
    (GOOD, "duplicate id 'x1' (first on line 1)"),
    (b"\xef\xbb\xbf" + json.dumps(GOOD | {"id": "x2"}).encode(), "Unexpected UTF-8 BOM"),  # only line 1 may have one
    (b'{"id": "x2"}'[:-1] + b"\xff}", "invalid UTF-8"),
    ([1, 2], "expected a JSON object"),
])
def test_malformed_line_names_file_line_and_problem(tmp_path, bad, message):
    p = _write(tmp_path, [GOOD, bad, GOOD | {"id": "x3"}])
    before = p.read_bytes()
    with pytest.raises(data.DataError) as err:
        data.read_jsonl(p, SCHEMA)
    assert f"{p}:2:" in str(err.value) and message in str(err.value)
    assert p.read_bytes() == before  # reading never rewrites or drops anything


def test_bom_at_start_is_accepted(tmp_path, capsys):
    p = _write(tmp_path, [GOOD, GOOD | {"id": "x2"}])
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes().replace(b"\n", b"\r\n"))  # as Windows Notepad saves it
    assert [r["id"] for r in data.read_jsonl(p, SCHEMA)] == ["x1", "x2"]
    assert "ignored the UTF-8 BOM" in capsys.readouterr().out


def test_blank_lines_are_skipped_and_counted(tmp_path, capsys):
    p = _write(tmp_path, [GOOD, b"", b"   \t", GOOD | {"id": "x2"}, b""])
    assert [r["id"] for r in data.read_jsonl(p, SCHEMA)] == ["x1", "x2"]
    assert f"note: {p}: skipped 3 blank line(s) (lines 2, 3, 5)" in capsys.readouterr().out
    scan = data.scan_jsonl(p, SCHEMA)
    assert scan.ok and scan.blank_lines == [2, 3, 5] and not scan.bom
    data.read_jsonl(p, SCHEMA, note=None)
    assert capsys.readouterr().out == "", "note=None is silent"


def test_clean_file_prints_nothing(tmp_path, capsys):
    data.read_jsonl(_write(tmp_path, [GOOD]), SCHEMA)
    assert capsys.readouterr().out == ""


def test_bad_line_after_bom_and_blanks_keeps_its_real_line_number(tmp_path):
    p = _write(tmp_path, [GOOD, b"", GOOD | {"id": "x2", "category": "weather"}])
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    with pytest.raises(data.DataError, match=rf"^{re.escape(str(p))}:3: field 'category'='weather'"):
        data.read_jsonl(p, SCHEMA)


@pytest.mark.parametrize("lines, message", [
    ([b"", b"  "], "no rows"),
    ([b"\xff\xfe{\x00"], "looks like UTF-16"),
])
def test_empty_or_utf16_file(tmp_path, lines, message):
    with pytest.raises(data.DataError, match=message):
        data.read_jsonl(_write(tmp_path, lines), SCHEMA)


def test_scan_collects_every_bad_line(tmp_path):
    p = _write(tmp_path, [GOOD, b"{", GOOD | {"answer": 3, "id": "x2"}, GOOD, GOOD | {"id": "x4"}])
    scan = data.scan_jsonl(p, SCHEMA)
    assert [e.split(": ", 1)[0] for e in scan.errors] == [f"{p}:2", f"{p}:3", f"{p}:4"]
    assert [r["id"] for r in scan.rows] == ["x1", "x4"]


def _check(capsys, *argv):
    code = data.main(["check", *map(str, argv)])
    return code, capsys.readouterr().out


def test_check_cli_ok(tmp_path, capsys):
    p = _write(tmp_path, [GOOD, b"", GOOD | {"id": "x2"}])
    code, out = _check(capsys, p, "--schema", "domain_qa")
    assert code == 0
    assert f"OK: {p}: 2 row(s) match schema 'domain_qa'" in out
    assert "skipped 1 blank line(s) (line 2)" in out


def test_check_cli_reports_every_bad_line(tmp_path, capsys):
    p = _write(tmp_path, [GOOD, GOOD | {"id": "x2", "category": "weather"}, {"id": "x3"}])
    code, out = _check(capsys, p, "--schema", "domain_qa")
    assert code == 1
    assert f"{p}:2: field 'category'='weather' is not one of" in out
    assert f"{p}:3: missing field(s) question, answer, category, split" in out
    assert f"FAILED: {p}: 2 error(s) against schema 'domain_qa', 1 good row(s)" in out
    assert "OK" not in out


def test_check_cli_caps_the_error_list(tmp_path, capsys):
    p = _write(tmp_path, [b"{"] * 25)
    code, out = _check(capsys, p, "--schema", "domain_qa")
    assert code == 1 and out.count("bad JSON") == 20 and "... and 5 more" in out


def test_check_cli_unknown_schema_lists_valid_ones(tmp_path, capsys):
    code, out = _check(capsys, _write(tmp_path, [GOOD]), "--schema", "qa")
    assert code == 2
    assert "unknown schema 'qa'" in out and all(name in out for name in data.SCHEMAS)


def test_check_cli_missing_file(tmp_path, capsys):
    code, out = _check(capsys, tmp_path / "nope.jsonl", "--schema", "domain_qa")
    assert code == 1 and "nope.jsonl: cannot read" in out


def test_check_cli_as_a_learner_runs_it(tmp_path):
    import subprocess
    import sys

    p = _write(tmp_path, [GOOD, GOOD | {"id": "x2", "split": "dev"}])
    out = subprocess.run([sys.executable, "-m", "course_utils.core.data", "check", str(p), "--schema", "domain_qa"],
                         capture_output=True, text=True)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{p}:2: field 'split'='dev'" in out.stdout and out.stderr == ""
    p.write_bytes(p.read_bytes().replace(b'"dev"', b'"test"'))
    out = subprocess.run([sys.executable, "-m", "course_utils.core.data", "check", str(p), "--schema", "domain_qa"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("OK: "), out.stdout + out.stderr


def test_validator_tolerates_bom_and_blank_lines_with_a_warning(tmp_path, capsys):
    """data/validate_data.py (the bundled files' own checker) treats a BOM and blank lines as data.py does."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("validate_data", data.DATA_DIR / "validate_data.py")
    vd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vd)
    p = tmp_path / "f.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n\n" + json.dumps(GOOD).encode() + b"\n")
    rep = vd.Report()
    rows = vd.load_rows(p, "f.jsonl", rep)
    assert [n for n, _ in rows] == [1, 3] and not rep.errors
    assert any("BOM" in w for w in rep.warnings) and any("1 blank line(s) (line 2)" in w for w in rep.warnings)


def test_good_file_keeps_every_line(tmp_path):
    p = _write(tmp_path, [GOOD | {"id": f"x{i}"} for i in range(5)])
    assert [r["id"] for r in data.read_jsonl(p, SCHEMA)] == [f"x{i}" for i in range(5)]


def test_own_file_in_place_of_a_bundled_set(tmp_path):
    own = _write(tmp_path, [b"\xef\xbb\xbf" + json.dumps(GOOD).encode(), b"",
                            GOOD | {"id": "x2", "split": "test"}])   # saved by a Windows editor: BOM + blank line
    assert [r["id"] for r in data.load_rows("domain_qa", "test", path=own)] == ["x2"]
    assert data.load_dataset("domain_qa", path=own).num_rows == 2
    bad = _write(tmp_path, [GOOD | {"category": "weather"}])
    with pytest.raises(data.DataError, match=r"sample\.jsonl:1: field .category."):
        data.load_rows("domain_qa", path=bad)      # your file, checked against the lesson's schema
    with pytest.raises(KeyError, match="unknown data set"):
        data.load_rows("nope", path=own)


def test_unknown_dataset_and_split():
    with pytest.raises(KeyError, match="unknown data set 'nope'"):
        data.data_path("nope")
    with pytest.raises(ValueError, match="split='dev'"):
        data.load_rows("domain_qa", split="dev")


def test_to_messages():
    assert data.to_messages("hi", "hello", system="be nice") == [
        {"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}]


BUNDLED = [name for name in data.SCHEMAS if data.data_path(name).exists()]


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_dataset_is_valid_and_complete(name):
    path = data.data_path(name)
    n_lines = len(path.read_bytes().splitlines())
    ds = data.load_dataset(name)
    assert len(ds) == n_lines, "every line of the file becomes one row"
    assert set(ds["split"]) == {"train", "test"}
    assert name in (Path(data.DATA_DIR) / "README.md").read_text(encoding="utf-8"), "missing from the data card"


def test_all_schemas_have_bundled_files():
    missing = [n for n in data.SCHEMAS if not data.data_path(n).exists()]
    assert not missing, f"schemas without a data file: {missing}"


def test_data_card_validator_passes():
    """data/validate_data.py checks what a schema cannot: split sizes, arithmetic answers, labels, duplicates."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(data.DATA_DIR / "validate_data.py")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_validator_and_loader_read_one_schema():
    """data/validate_data.py's SPECS and data.SCHEMAS agree field by field (both read data/schema.json)."""
    import importlib.util

    from course_utils.chatbot.store import DOMAINS

    spec = importlib.util.spec_from_file_location("validate_data", data.DATA_DIR / "validate_data.py")
    vd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vd)
    assert sorted(vd.SPECS) == sorted(f"{name}.jsonl" for name in data.SCHEMAS)
    for name, schema in data.SCHEMAS.items():
        s = vd.SPECS[f"{name}.jsonl"]
        assert s["fields"] == list(schema), name
        assert all(typ is str for typ, _, _ in schema.values()), "validate_data.py checks strings only"
        assert s["may_be_empty"] == [f for f, (_, _, empty) in schema.items() if empty], name
        assert s["enums"] == {f: set(allowed) for f, (_, allowed, _) in schema.items() if allowed is not None}, name
        assert schema["split"][1] == data.SPLITS, name
    assert DOMAINS == data.SCHEMAS["ko_tax_qa"]["domain"][1], "the capstone's domains are the data set's"
