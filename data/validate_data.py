#!/usr/bin/env python3
"""Validate the bundled course data sets in this folder (standard library only).

Usage:
    python data/validate_data.py            # validate every file, print counts
    python data/validate_data.py --quiet    # only print problems and the verdict

Hard rules (schema, allowed values, unique ids and texts, split counts,
arithmetic answers) are ERRORS and make the script exit with status 1.
Soft style heuristics (sentence counts, answer length) are WARNINGS only.
"""
from __future__ import annotations

import ast
import collections
import datetime as _dt
import json
import operator
import re
import sys
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
SCHEMA_FILE = DATA_DIR / "schema.json"   # fields and allowed values, shared with course_utils/core/data.py

# --------------------------------------------------------------------------
# Specification of each file: the checks a schema cannot express; _specs adds
# the fields, may-be-empty fields and allowed values from schema.json.
# --------------------------------------------------------------------------
CHECKS = {
    "en_ko_translation.jsonl": {
        "id_prefix": "enko",
        "unique_text": ["en", "ko"],
        "min_rows": 320,
        "test_total": 40,
        "group_field": "domain",
        "test_per_group_exact": {d: 8 for d in
                                 ["science", "daily_life", "technology", "business", "culture"]},
    },
    "instructions.jsonl": {
        "id_prefix": "inst",
        "unique_text": [],
        "unique_combo": [("instruction", "input")],
        "min_rows": 220,
        "test_total": 40,
        "group_field": "task",
        "min_rows_per_group": 25,
        "min_test_per_group": 5,
    },
    "ko_tax_qa.jsonl": {
        "id_prefix": "tax",
        "unique_text": ["question"],
        "min_rows": 160,
        "test_total": 30,
        "group_field": "domain",
        "test_per_group_exact": {"tax": 12, "accounting": 12, "general": 6},
    },
    "general_text.jsonl": {
        "id_prefix": "gen",
        "unique_text": ["text"],
        "min_rows": 60,
        "test_total": 20,
        "group_field": "topic",
    },
    "domain_qa.jsonl": {
        "id_prefix": "dqa",
        "unique_text": ["question"],
        "min_rows": 120,
        "test_total": 24,
        "group_field": "category",
    },
}


def _specs(checks: dict, schema_file: Path = SCHEMA_FILE) -> dict:
    """CHECKS plus each file's fields, may-be-empty fields and allowed values from the one schema (schema.json)."""
    sets = json.loads(schema_file.read_text(encoding="utf-8"))["datasets"]
    if sorted(sets) != sorted(f[: -len(".jsonl")] for f in checks):
        raise SystemExit(f"{schema_file.name} and CHECKS name different data sets")
    specs = {}
    for fname, extra in checks.items():
        fields = sets[fname[: -len(".jsonl")]]
        specs[fname] = {"fields": list(fields),
                        "may_be_empty": [f for f, s in fields.items() if s.get("may_be_empty", False)],
                        "enums": {f: set(s["allowed"]) for f, s in fields.items() if "allowed" in s},
                        **extra}
    return specs


SPECS = _specs(CHECKS)


# A sentence the course requires in the translation test split.
REQUIRED_TEST_SENTENCE = ("Acephala have no head and instead have well-developed feet "
                          "that are directly attached to the torso.")

# Arithmetic word problems have an empty `input`; their expression lives here.
# Rows whose `input` is itself an expression are evaluated directly.
ARITHMETIC_KEY = {
    "inst-0075": "24 - 9",
    "inst-0076": "12 * 5",
    "inst-0079": "3 * 7",
    "inst-0080": "15 * 6",
    "inst-0083": "200 * 15 / 100",
    "inst-0084": "20000 * (100 - 25) / 100",
    "inst-0087": "80 * 3",
    "inst-0088": "36 / 4",
    "inst-0091": "-3 + 11",
    "inst-0092": "8 * 5",
    "inst-0095": "8 - 3 * 2",
    "inst-0096": "3 * 60 + 20",
}

NUMBER_RE = re.compile(r"^-?\d+(\.\d+)?$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Sentence terminator followed by whitespace or end of text; "a.m." style
# abbreviations are removed first.
_ABBREV_RE = re.compile(r"\b(?:a\.m|p\.m|e\.g|i\.e|etc|vs|Mr|Mrs|Dr|St)\.", re.I)
_SENT_END_RE = re.compile(r"[.!?](?=\s|$)")


def count_sentences(text: str) -> int:
    return len(_SENT_END_RE.findall(_ABBREV_RE.sub("ABBR", text.strip())))


# --------------------------------------------------------------------------
# Safe arithmetic evaluation
# --------------------------------------------------------------------------
_BIN_OPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.Pow: operator.pow,
}
_UNARY_OPS = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def _eval_node(node):
    if isinstance(node, ast.Expression):
        return _eval_node(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
        return _BIN_OPS[type(node.op)](_eval_node(node.left), _eval_node(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        return _UNARY_OPS[type(node.op)](_eval_node(node.operand))
    raise ValueError(f"unsupported expression element: {type(node).__name__}")


def eval_expression(expr: str) -> float:
    """Evaluate + - * / ^ × ÷ and parentheses; commas in numbers are ignored."""
    cleaned = (expr.replace("×", "*").replace("÷", "/").replace("^", "**")
               .replace("−", "-").replace(",", ""))
    if not re.fullmatch(r"[0-9.+\-*/() \t]+", cleaned):
        raise ValueError(f"not a plain arithmetic expression: {expr!r}")
    return _eval_node(ast.parse(cleaned, mode="eval"))


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------
class Report:
    def __init__(self):
        self.errors = []
        self.warnings = []

    def error(self, fname, msg):
        self.errors.append(f"{fname}: {msg}")

    def warn(self, fname, msg):
        self.warnings.append(f"{fname}: {msg}")


def load_rows(path: Path, fname: str, rep: Report):
    rows = []
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        rep.error(fname, f"not valid UTF-8 ({exc})")
        return rows
    # Tolerated as in course_utils.core.data.read_jsonl (Windows tools write a BOM, editors leave blank lines),
    # but reported: the bundled files should stay clean.
    if text.startswith("\ufeff"):
        text = text[1:]
        rep.warn(fname, "file starts with a UTF-8 BOM (ignored)")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]  # trailing newline at end of file is fine
    blank = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            blank.append(lineno)
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            rep.error(fname, "line %d is not valid JSON (%s)" % (lineno, exc))
            continue
        if not isinstance(obj, dict):
            rep.error(fname, "line %d is not a JSON object" % lineno)
            continue
        rows.append((lineno, obj))
    if blank:
        rep.warn(fname, "skipped %d blank line(s) (line %s)" % (len(blank), ", ".join(map(str, blank[:5]))))
    return rows


def check_common(fname, spec, rows, rep: Report):
    fields = spec["fields"]
    id_re = re.compile(r"^{}-\d{{4}}$".format(re.escape(spec["id_prefix"])))
    seen_ids = set()
    seen_text = {f: {} for f in spec.get("unique_text", [])}
    seen_combo = {c: {} for c in spec.get("unique_combo", [])}
    good = []
    for lineno, obj in rows:
        ok = True
        missing = [f for f in fields if f not in obj]
        extra = [k for k in obj if k not in fields]
        if missing:
            rep.error(fname, "line %d missing fields %s" % (lineno, missing))
            ok = False
        if extra:
            rep.error(fname, "line %d has unexpected fields %s" % (lineno, extra))
        for f in fields:
            if f not in obj:
                continue
            val = obj[f]
            if not isinstance(val, str):
                rep.error(fname, "line %d field %r is not a string" % (lineno, f))
                ok = False
            elif f not in spec["may_be_empty"] and not val.strip():
                rep.error(fname, "line %d field %r is empty" % (lineno, f))
                ok = False
            elif val != val.strip():
                rep.warn(fname, "line %d field %r has leading/trailing spaces" % (lineno, f))
        if not ok:
            continue
        rid = obj["id"]
        if not id_re.match(rid):
            rep.error(fname, "line %d id %r does not match %s-NNNN" % (lineno, rid, spec["id_prefix"]))
        if rid in seen_ids:
            rep.error(fname, f"duplicate id {rid}")
        seen_ids.add(rid)
        for f, allowed in spec["enums"].items():
            if obj[f] not in allowed:
                rep.error(fname, f"{rid}: {f}={obj[f]!r} not in {sorted(allowed)}")
        for f, seen in seen_text.items():
            key = " ".join(obj[f].split()).lower()
            if key in seen:
                rep.error(fname, f"{rid}: duplicate {f} value (same as {seen[key]})")
            seen[key] = rid
        for combo, seen in seen_combo.items():
            key = tuple(" ".join(obj[f].split()).lower() for f in combo)
            if key in seen:
                rep.error(fname, "{}: duplicate {} (same as {})".format(rid, "+".join(combo), seen[key]))
            seen[key] = rid
        good.append(obj)
    return good


def check_splits(fname, spec, rows, rep: Report):
    n = len(rows)
    if n < spec["min_rows"]:
        rep.error(fname, "%d rows, expected at least %d" % (n, spec["min_rows"]))
    n_test = sum(r["split"] == "test" for r in rows)
    if n_test != spec["test_total"]:
        rep.error(fname, "%d test rows, expected exactly %d" % (n_test, spec["test_total"]))
    g = spec["group_field"]
    by_group = collections.Counter(r[g] for r in rows)
    test_by_group = collections.Counter(r[g] for r in rows if r["split"] == "test")
    for grp, want in spec.get("test_per_group_exact", {}).items():
        if test_by_group.get(grp, 0) != want:
            rep.error(fname, "%s=%s has %d test rows, expected exactly %d"
                      % (g, grp, test_by_group.get(grp, 0), want))
    if "min_rows_per_group" in spec:
        for grp in spec["enums"][g]:
            if by_group.get(grp, 0) < spec["min_rows_per_group"]:
                rep.error(fname, "%s=%s has %d rows, expected at least %d"
                          % (g, grp, by_group.get(grp, 0), spec["min_rows_per_group"]))
    if "min_test_per_group" in spec:
        for grp in spec["enums"][g]:
            if test_by_group.get(grp, 0) < spec["min_test_per_group"]:
                rep.error(fname, "%s=%s has %d test rows, expected at least %d"
                          % (g, grp, test_by_group.get(grp, 0), spec["min_test_per_group"]))


def check_translation(fname, rows, rep: Report):
    hits = [r for r in rows if r["en"] == REQUIRED_TEST_SENTENCE]
    if not hits:
        rep.error(fname, "required Acephala sentence is missing")
    elif any(r["split"] != "test" for r in hits):
        rep.error(fname, "required Acephala sentence must be in the test split")
    hangul = re.compile(r"[\uac00-\ud7a3]")
    for r in rows:
        if not hangul.search(r["ko"]):
            rep.error(fname, "{}: ko side contains no Hangul".format(r["id"]))
        if hangul.search(r["en"]):
            rep.error(fname, "{}: en side contains Hangul".format(r["id"]))


def check_instructions(fname, rows, rep: Report):
    hangul = re.compile(r"[\uac00-\ud7a3]")
    for r in rows:
        rid, task = r["id"], r["task"]
        has_ko = bool(hangul.search(r["instruction"]))
        if (r["lang"] == "ko") != has_ko:
            rep.error(fname, "{}: lang={} does not match the instruction text".format(rid, r["lang"]))
        out = r["output"]
        if task == "arithmetic":
            if not NUMBER_RE.match(out):
                rep.error(fname, f"{rid}: arithmetic output {out!r} is not a plain number")
                continue
            expr = ARITHMETIC_KEY.get(rid) or r["input"]
            if not expr.strip():
                rep.error(fname, f"{rid}: arithmetic row has no evaluable expression "
                                 "(add it to ARITHMETIC_KEY)")
                continue
            try:
                value = eval_expression(expr)
            except (ValueError, SyntaxError, ZeroDivisionError) as exc:
                rep.error(fname, f"{rid}: cannot evaluate {expr!r} ({exc})")
                continue
            if abs(value - float(out)) > 1e-9:
                rep.error(fname, f"{rid}: {expr} = {value}, but output is {out}")
        elif task == "classify":
            if len(out.split()) != 1:
                rep.error(fname, f"{rid}: classify output {out!r} is not a single label")
            elif out.lower() not in r["instruction"].lower():
                rep.error(fname, f"{rid}: label {out!r} is not in the label set stated in the instruction")
        elif task == "extract":
            for item in [p.strip() for p in out.split(",")] if ", " in out else [out]:
                if item and item not in r["input"]:
                    rep.error(fname, f"{rid}: extracted {item!r} does not occur in the input")
        elif task == "summarize":
            if count_sentences(out) != 1:
                rep.warn(fname, f"{rid}: summary is not exactly one sentence")
        if task in ("translate", "summarize", "extract", "rewrite", "classify") \
                and not r["input"].strip():
            rep.error(fname, f"{rid}: task {task} needs a non-empty input")
        if len(out.split()) > 40:
            rep.warn(fname, f"{rid}: output has more than 40 words")


def check_tax(fname, rows, rep: Report):
    hangul = re.compile(r"[\uac00-\ud7a3]")
    for r in rows:
        rid = r["id"]
        if not DATE_RE.match(r["as_of"]):
            rep.error(fname, "{}: as_of {!r} is not YYYY-MM-DD".format(rid, r["as_of"]))
        else:
            try:
                _dt.date.fromisoformat(r["as_of"])
            except ValueError:
                rep.error(fname, "{}: as_of {!r} is not a real date".format(rid, r["as_of"]))
        for f in ("question", "answer"):
            if not hangul.search(r[f]):
                rep.error(fname, f"{rid}: {f} is not Korean")
        n = count_sentences(r["answer"])
        if not 1 <= n <= 3:
            rep.warn(fname, "%s: answer has %d sentences (expected 1-3)" % (rid, n))
        if len(r["answer"]) > 120:
            rep.warn(fname, "%s: answer is %d characters (aim for <= 120)" % (rid, len(r["answer"])))


def check_general(fname, rows, rep: Report):
    for r in rows:
        n = count_sentences(r["text"])
        if not 2 <= n <= 4:
            rep.warn(fname, "%s: paragraph has %d sentences (expected 2-4)" % (r["id"], n))


def check_domain(fname, rows, rep: Report):
    for r in rows:
        n = count_sentences(r["answer"])
        if not 1 <= n <= 2:
            rep.warn(fname, "%s: answer has %d sentences (expected 1-2)" % (r["id"], n))
    codes = collections.Counter()
    for r in rows:
        codes.update(re.findall(r"\bE\d{2}\b", r["question"] + " " + r["answer"]))
    bad = sorted(c for c in codes if not "E01" <= c <= "E09")
    if bad:
        rep.error(fname, f"unknown error codes mentioned: {bad}")


EXTRA_CHECKS = {
    "en_ko_translation.jsonl": check_translation,
    "instructions.jsonl": check_instructions,
    "ko_tax_qa.jsonl": check_tax,
    "general_text.jsonl": check_general,
    "domain_qa.jsonl": check_domain,
}


def summarize_counts(fname, spec, rows):
    g = spec["group_field"]
    split = collections.Counter(r["split"] for r in rows)
    lines = ["%s: %d rows (train %d, test %d)"
             % (fname, len(rows), split.get("train", 0), split.get("test", 0))]
    groups = sorted({r[g] for r in rows})
    for grp in groups:
        tr = sum(1 for r in rows if r[g] == grp and r["split"] == "train")
        te = sum(1 for r in rows if r[g] == grp and r["split"] == "test")
        lines.append("    %-13s %-18s train %3d  test %3d" % (g, grp, tr, te))
    if fname == "instructions.jsonl":
        lang = collections.Counter(r["lang"] for r in rows)
        lines.append("    lang: ko %d, en %d" % (lang.get("ko", 0), lang.get("en", 0)))
    if fname == "en_ko_translation.jsonl":
        wc = [len(r["en"].split()) for r in rows]
        lines.append("    en length: short 5-10 words %d, long 20-40 words %d, other %d"
                     % (sum(5 <= w <= 10 for w in wc), sum(20 <= w <= 40 for w in wc),
                        sum(not (5 <= w <= 10 or 20 <= w <= 40) for w in wc)))
    return lines


def main(argv):
    quiet = "--quiet" in argv
    rep = Report()
    summaries = []
    for fname, spec in SPECS.items():
        path = DATA_DIR / fname
        if not path.exists():
            rep.error(fname, "file is missing")
            continue
        raw_rows = load_rows(path, fname, rep)
        rows = check_common(fname, spec, raw_rows, rep)
        if len(rows) != len(raw_rows):
            rep.error(fname, "%d line(s) failed schema checks" % (len(raw_rows) - len(rows)))
        check_splits(fname, spec, rows, rep)
        EXTRA_CHECKS[fname](fname, rows, rep)
        summaries.extend(summarize_counts(fname, spec, rows))

    if not quiet:
        print("\n".join(summaries))
        print()
    for w in rep.warnings:
        print("WARNING " + w)
    for e in rep.errors:
        print("ERROR   " + e)
    if rep.errors:
        print("FAILED: %d error(s), %d warning(s)" % (len(rep.errors), len(rep.warnings)))
        return 1
    print("OK: all %d files valid (%d warning(s))" % (len(SPECS), len(rep.warnings)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
