"""Bundled JSONL data sets: validated loading into ``datasets.Dataset``, splits, chat formatting.

Every line is checked against the file's schema; a malformed line raises ``DataError`` naming the file,
the line number and what is wrong. Nothing is silently dropped: a UTF-8 BOM (Windows tools) and blank lines
(editors) are the only things tolerated, and a one-line note says how many blank lines were skipped.

Check your own file before training on it (exit code 0 when it is valid, 1 with file:line errors if not):

    python -m course_utils.core.data check my_data.jsonl --schema domain_qa

    >>> ds = load_dataset("en_ko_translation", split="train")
    >>> ds[0]["en"], ds[0]["ko"]
    ('Water boils at 100 degrees Celsius at sea level.', '물은 해수면 기준으로 섭씨 100도에서 끓습니다.')
"""

from __future__ import annotations

import codecs
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from course_utils import REPO_ROOT

DATA_DIR = REPO_ROOT / "data"

SCHEMA_FILE = DATA_DIR / "schema.json"   # the one definition of every data set's fields (data/validate_data.py reads it too)

# field → (type, allowed values or None, may be empty)
Field = tuple[type, tuple | None, bool]
SPLITS = ("train", "test")


def _load_schemas(path: Path = SCHEMA_FILE) -> dict[str, dict[str, Field]]:
    """``{data set: {field: (str, allowed values or None, may be empty)}}`` from ``data/schema.json``.

    >>> _load_schemas()["ko_tax_qa"]["domain"]
    (<class 'str'>, ('tax', 'accounting', 'general'), False)
    """
    sets = json.loads(path.read_text(encoding="utf-8"))["datasets"]
    return {name: {f: (str, tuple(spec["allowed"]) if "allowed" in spec else None, spec.get("may_be_empty", False))
                   for f, spec in fields.items()}
            for name, fields in sets.items()}


SCHEMAS: dict[str, dict[str, Field]] = _load_schemas()


class DataError(ValueError):
    """A data file line that does not match its schema (message names file and line)."""


def _check_row(row, schema: dict[str, Field], where: str) -> None:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in schema if k not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
    extra = [k for k in row if k not in schema]
    if extra:
        raise DataError(f"{where}: unknown field(s) {', '.join(extra)}")
    for key, (typ, allowed, may_be_empty) in schema.items():
        value = row[key]
        if not isinstance(value, typ):
            raise DataError(f"{where}: field '{key}' must be {typ.__name__}, got {type(value).__name__}")
        if isinstance(value, str) and not may_be_empty and not value.strip():
            raise DataError(f"{where}: field '{key}' is empty")
        if allowed is not None and value not in allowed:
            raise DataError(f"{where}: field '{key}'={value!r} is not one of {allowed}")


@dataclass
class JsonlScan:
    """What reading a JSONL file found: the good rows, every problem (``file:line: …``), what was tolerated."""

    path: Path
    rows: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    blank_lines: list[int] = field(default_factory=list)
    bom: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors

    def note(self) -> str | None:
        """One line on what was tolerated (a BOM, blank lines), or ``None`` when the file was clean."""
        parts = []
        if self.blank_lines:
            shown = ", ".join(map(str, self.blank_lines[:5])) + (", …" if len(self.blank_lines) > 5 else "")
            parts.append(f"skipped {len(self.blank_lines)} blank line(s) "
                         f"({'line' if len(self.blank_lines) == 1 else 'lines'} {shown})")
        if self.bom:
            parts.append("ignored the UTF-8 BOM at the start")
        return f"note: {self.path}: {'; '.join(parts)}" if parts else None


def scan_jsonl(path: str | Path, schema: dict[str, Field] | None = None, *, first_error_only: bool = False
               ) -> JsonlScan:
    """Read a JSONL file, collecting every bad line (or stopping at the first) instead of raising.

    Tolerated, and reported by ``JsonlScan.note()``: a UTF-8 byte-order mark at the start of the file (Windows
    tools write one) and blank lines (editors leave them). Everything else is an error naming file and line:
    invalid UTF-8, bad JSON, a row that does not match ``schema``, a duplicate ``id``, an empty file.
    """
    path = Path(path)
    scan, seen = JsonlScan(path), {}

    def error(msg: str) -> bool:
        scan.errors.append(msg)
        return first_error_only

    try:
        f = open(path, "rb")
    except OSError as e:
        error(f"{path}: cannot read ({e.strerror})")
        return scan
    with f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw, scan.bom = raw[len(codecs.BOM_UTF8):], True
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                hint = ("; the file looks like UTF-16: save it as UTF-8" if lineno == 1 and
                        raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "")
                if error(f"{where}: invalid UTF-8 ({e.reason} at byte {e.start}){hint}"):
                    return scan
                continue
            if not text.strip():
                scan.blank_lines.append(lineno)
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                if error(f"{where}: bad JSON ({e.msg} at column {e.colno})"):
                    return scan
                continue
            if schema is not None:
                try:
                    _check_row(row, schema, where)
                except DataError as e:
                    if error(str(e)):
                        return scan
                    continue
            if isinstance(row, dict) and "id" in row:
                if row["id"] in seen:
                    if error(f"{where}: duplicate id {row['id']!r} (first on line {seen[row['id']]})"):
                        return scan
                    continue
                seen[row["id"]] = lineno
            scan.rows.append(row)
    if not scan.rows and not scan.errors:
        error(f"{path}: no rows")
    return scan


def read_jsonl(path: str | Path, schema: dict[str, Field] | None = None, *, note=print) -> list[dict]:
    """Read and validate a JSONL file; raise ``DataError`` at the first bad line.

    Also rejects duplicate ``id`` values and invalid UTF-8, both with file and line. A UTF-8 BOM and blank
    lines are accepted; ``note`` (``print`` by default, ``None`` for silence) gets one line saying so.
    """
    scan = scan_jsonl(path, schema, first_error_only=True)
    if scan.errors:
        raise DataError(scan.errors[0])
    if note is not None and scan.note():
        note(scan.note())
    return scan.rows


def data_path(name: str) -> Path:
    """Path of a bundled data set by name (``"instructions"`` → ``data/instructions.jsonl``)."""
    if name not in SCHEMAS:
        raise KeyError(f"unknown data set {name!r}; bundled: {', '.join(SCHEMAS)}")
    return DATA_DIR / f"{name}.jsonl"


def load_rows(name: str, split: str | None = None, path: str | Path | None = None) -> list[dict]:
    """Validated rows of a bundled data set, optionally one split; ``path``: your own file, same schema.

    >>> len(load_rows("domain_qa", "test")) > 0
    True
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    if name not in SCHEMAS:
        raise KeyError(f"unknown data set {name!r}; bundled: {', '.join(SCHEMAS)}")
    rows = read_jsonl(data_path(name) if path is None else path, SCHEMAS[name])
    return [r for r in rows if split is None or r["split"] == split]


def load_dataset(name: str, split: str | None = None, path: str | Path | None = None):
    """A bundled data set as a ``datasets.Dataset`` (validated first).

    >>> load_dataset("domain_qa", split="test").column_names
    ['id', 'question', 'answer', 'category', 'split']
    """
    from datasets import Dataset

    return Dataset.from_list(load_rows(name, split, path))


def to_messages(user: str, assistant: str | None = None, system: str | None = None) -> list[dict]:
    """Chat ``messages`` for ``apply_chat_template``: optional system, the user turn, optional answer."""
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": user})
    if assistant is not None:
        msgs.append({"role": "assistant", "content": assistant})
    return msgs


def check_file(path: str | Path, schema_name: str, *, max_errors: int = 20, out=None) -> int:
    """Validate a learner's own JSONL file against a bundled schema; print OK or the file:line errors.

    Returns the exit code: 0 valid, 1 invalid, 2 unknown schema.
    """
    out = out or sys.stdout
    if schema_name not in SCHEMAS:
        print(f"unknown schema {schema_name!r}; valid schemas: {', '.join(SCHEMAS)}", file=out)
        return 2
    schema = SCHEMAS[schema_name]
    scan = scan_jsonl(path, schema)
    if scan.note():
        print(scan.note(), file=out)
    if scan.ok:
        print(f"OK: {scan.path}: {len(scan.rows)} row(s) match schema {schema_name!r} "
              f"(fields: {', '.join(schema)})", file=out)
        return 0
    for msg in scan.errors[:max_errors]:
        print(msg, file=out)
    if len(scan.errors) > max_errors:
        print(f"... and {len(scan.errors) - max_errors} more", file=out)
    print(f"FAILED: {scan.path}: {len(scan.errors)} error(s) against schema {schema_name!r}, "
          f"{len(scan.rows)} good row(s); fix the lines above and run the check again", file=out)
    return 1


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m course_utils.core.data",
                                     description="Validate your own JSONL data before training on it.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check FILE against a bundled schema",
                           description=f"Schemas: {', '.join(SCHEMAS)}.")
    check.add_argument("file")
    check.add_argument("--schema", required=True, help=f"one of: {', '.join(SCHEMAS)}")
    args = parser.parse_args(argv)
    return check_file(args.file, args.schema)


if __name__ == "__main__":
    raise SystemExit(main())
