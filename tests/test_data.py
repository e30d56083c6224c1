import json
from pathlib import Path

import pytest

from course_utils import data

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
    (b"", "blank line"),
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


def test_good_file_keeps_every_line(tmp_path):
    p = _write(tmp_path, [GOOD | {"id": f"x{i}"} for i in range(5)])
    assert [r["id"] for r in data.read_jsonl(p, SCHEMA)] == [f"x{i}" for i in range(5)]


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
