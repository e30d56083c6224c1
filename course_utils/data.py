"""Bundled JSONL data sets: validated loading into ``datasets.Dataset``, splits, chat formatting.

Every line is checked against the file's schema; a malformed line raises ``DataError`` naming the file,
the line number and what is wrong. Nothing is silently dropped.

    >>> ds = load_dataset("en_ko_translation", split="train")
    >>> ds[0]["en"], ds[0]["ko"]
"""

from __future__ import annotations

import json
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

# field → (type, allowed values or None, may be empty)
Field = tuple[type, tuple | None, bool]
SPLITS = ("train", "test")

SCHEMAS: dict[str, dict[str, Field]] = {
    "en_ko_translation": {
        "id": (str, None, False), "en": (str, None, False), "ko": (str, None, False),
        "domain": (str, ("science", "daily_life", "technology", "business", "culture"), False),
        "split": (str, SPLITS, False)},
    "instructions": {
        "id": (str, None, False), "instruction": (str, None, False), "input": (str, None, True),
        "output": (str, None, False),
        "task": (str, ("translate", "summarize", "arithmetic", "classify", "extract", "rewrite", "qa"), False),
        "lang": (str, ("ko", "en"), False), "split": (str, SPLITS, False)},
    "ko_tax_qa": {
        "id": (str, None, False), "question": (str, None, False), "answer": (str, None, False),
        "domain": (str, ("tax", "accounting", "general"), False), "as_of": (str, None, False),
        "split": (str, SPLITS, False)},
    "general_text": {
        "id": (str, None, False), "text": (str, None, False), "topic": (str, None, False),
        "split": (str, SPLITS, False)},
    "domain_qa": {
        "id": (str, None, False), "question": (str, None, False), "answer": (str, None, False),
        "category": (str, ("maintenance", "errors", "warranty", "settings", "orders"), False),
        "split": (str, SPLITS, False)},
}


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


def read_jsonl(path: str | Path, schema: dict[str, Field] | None = None) -> list[dict]:
    """Read and validate a JSONL file; raise ``DataError`` at the first bad line.

    Also rejects duplicate ``id`` values and invalid UTF-8, both with file and line.
    """
    path = Path(path)
    rows, seen = [], {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
            if not text.strip():
                raise DataError(f"{where}: blank line")
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: bad JSON ({e.msg} at column {e.colno})") from None
            if schema is not None:
                _check_row(row, schema, where)
            if isinstance(row, dict) and "id" in row:
                if row["id"] in seen:
                    raise DataError(f"{where}: duplicate id {row['id']!r} (first on line {seen[row['id']]})")
                seen[row["id"]] = lineno
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def data_path(name: str) -> Path:
    """Path of a bundled data set by name (``"instructions"`` → ``data/instructions.jsonl``)."""
    if name not in SCHEMAS:
        raise KeyError(f"unknown data set {name!r}; bundled: {', '.join(SCHEMAS)}")
    return DATA_DIR / f"{name}.jsonl"


def load_rows(name: str, split: str | None = None) -> list[dict]:
    """Validated rows of a bundled data set, optionally one split."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    rows = read_jsonl(data_path(name), SCHEMAS[name])
    return [r for r in rows if split is None or r["split"] == split]


def load_dataset(name: str, split: str | None = None):
    """A bundled data set as a ``datasets.Dataset`` (validated first).

    >>> load_dataset("domain_qa", split="test").column_names
    ['id', 'question', 'answer', 'category', 'split']
    """
    from datasets import Dataset

    return Dataset.from_list(load_rows(name, split))


def to_messages(user: str, assistant: str | None = None, system: str | None = None) -> list[dict]:
    """Chat ``messages`` for ``apply_chat_template``: optional system, the user turn, optional answer."""
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": user})
    if assistant is not None:
        msgs.append({"role": "assistant", "content": assistant})
    return msgs
