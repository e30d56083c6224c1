"""API-drift check without training: the course's calls into its stack against the installed signatures.

It parses (never runs) the code cells of ``notebooks/*.ipynb`` and the modules of ``course_utils/`` and ``scripts/``
with ``ast``, resolves called names through the imports in force there (``from trl import SFTConfig`` →
``trl.SFTConfig``; ``bnb.optim.AdamW8bit``; a notebook's imports carry from cell to cell, as in the kernel), and
checks for every call into transformers, trl, peft, datasets, bitsandbytes or accelerate that

- the name exists (imports of those libraries are checked too), and
- every keyword passed is accepted by ``inspect.signature`` of the callee (a ``**kwargs`` signature accepts
  everything; for dataclass configs such as ``TrainingArguments``, ``SFTConfig``, ``LoraConfig`` the dataclass
  fields that ``__init__`` takes count).

Keywords are also seen through the cheap indirections the course uses: ``**dict(a=…)`` / ``**{"a": …}`` literals, a
local ``defaults = dict(…)`` passed as ``**defaults``, and functions that forward their ``**kwargs`` to a checked
callee (``course_utils.core.trl_compat.sft_config(**kw)`` → ``trl.SFTConfig``), also through a re-export
(``from course_utils.core.trl_compat import SFTTrainer`` is ``trl.SFTTrainer``). Methods are checked only where the
instance's class is known cheaply: ``trainer = SFTTrainer(…)`` then ``trainer.train(…)``, and class attributes such
as ``AutoModelForCausalLM.from_pretrained``.

A call inside ``try:`` whose ``except`` catches the error the problem would raise (``TypeError`` for a keyword,
``AttributeError``/``ImportError`` for a name) is one the code expects to fail (notebook 08 shows the old
``evaluation_strategy`` spelling failing on purpose): it is listed under ``expected``, not as a problem.

Unsloth is not imported: here importing it takes ~8 s, prints a banner and warnings on a CPU, and patches
transformers and TRL inside the importing process (the check and every test after it would then see Unsloth's
versions). Its names are listed under ``skipped`` with that reason.

    $ python -m course_utils.tools.api_check            # exit status 1 when there is a problem
    notebook 08 cell 16: trl.SFTConfig (via course_utils.core.trl_compat.sft_config) got unknown keyword 'tokenizer'

Why one module of ~600 lines: one table of the library APIs the course relies on, with a probe each.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from course_utils import REPO_ROOT as ROOT

TARGETS = ("transformers", "trl", "peft", "datasets", "bitsandbytes", "accelerate", "unsloth", "unsloth_zoo")
UNSLOTH_REASON = ("unsloth is not imported by the check: importing it takes ~8 s, prints a banner on a CPU and "
                  "patches transformers/TRL in the importing process")
NOT_IMPORTED = {"unsloth": UNSLOTH_REASON, "unsloth_zoo": UNSLOTH_REASON}
KEYWORD_ERRORS = {"TypeError", "Exception", "BaseException"}
NAME_ERRORS = {"AttributeError", "ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
_MISSING = object()


@dataclass(frozen=True)
class Problem:
    """One API that does not match the installed stack; ``where`` is "notebook 08 cell 16" or "course_utils/x.py:12"."""

    where: str
    api: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    expected: list[Problem] = field(default_factory=list)   # inside try/except that catches exactly this failure
    skipped: list[Problem] = field(default_factory=list)    # not checked, with the reason as the message
    calls_checked: int = 0
    sources: int = 0
    apis: dict[str, int] = field(default_factory=dict)      # API → calls checked

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        lines = [f"API check: {self.calls_checked} calls to {len(self.apis)} APIs of {', '.join(TARGETS[:6])} "
                 f"checked in {self.sources} notebooks/modules · {len(self.problems)} problem(s)"]
        lines += [f"  ✗ {p}" for p in self.problems]
        lines += [f"  expected to fail (caught by the code): {p}" for p in self.expected]
        skipped = sorted({(p.api, p.message) for p in self.skipped})
        lines += [f"  skipped {api}: {why}" for api, why in skipped]
        return "\n".join(lines)


@dataclass
class Unit:
    """One notebook (cells in order) or one module (a single "cell")."""

    label: str                         # "notebook 08" or "course_utils/core/models.py"
    cells: list[tuple[int | None, str]]
    module: str | None = None          # dotted name of a module, for relative imports and re-exports
    is_pkg: bool = False

    def where(self, cell: int | None, line: int) -> str:
        return f"{self.label} cell {cell}" if cell is not None else f"{self.label}:{line}"


@dataclass(frozen=True)
class Inst:
    """A name bound to an instance of a stack class (``trainer = SFTTrainer(...)``)."""

    cls: str


@dataclass(frozen=True)
class Keys:
    """A name bound to a dict whose (string) keys are known: ``defaults = dict(report_to="none")``."""

    keys: frozenset


@dataclass(frozen=True)
class Fwd:
    """A function passing its ``**kwargs`` on to ``target``; ``own`` are the keywords it keeps."""

    name: str
    target: tuple
    own: frozenset


# --------------------------------------------------------------------------- sources

def _code_without_magics(src: str) -> str:
    """IPython ``%magic`` / ``!shell`` lines → ``pass`` at the same indentation (line numbers kept)."""
    out = []
    for line in src.splitlines():
        stripped = line.lstrip()
        out.append(line[:len(line) - len(stripped)] + "pass" if stripped[:1] in ("%", "!") else line)
    return "\n".join(out)


def notebook_unit(path: Path) -> Unit:
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    m = re.match(r"\d+", Path(path).stem)
    cells = [(i, "".join(c["source"]) if isinstance(c["source"], list) else c["source"])
             for i, c in enumerate(nb["cells"]) if c.get("cell_type") == "code"]
    return Unit(f"notebook {m.group(0) if m else Path(path).stem}", cells)


def module_unit(path: Path, root: Path = ROOT) -> Unit:
    path = Path(path)
    try:
        rel = path.resolve().relative_to(Path(root).resolve())
    except ValueError:
        rel = Path(path.name)
    parts = list(rel.with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return Unit(rel.as_posix(), [(None, path.read_text(encoding="utf-8"))], ".".join(parts) or None, is_pkg)


def default_units(root: Path = ROOT) -> list[Unit]:
    root = Path(root)
    modules = sorted(p for d in ("course_utils", "scripts") for p in (root / d).rglob("*.py"))
    return [module_unit(p, root) for p in modules] + [notebook_unit(p) for p in sorted((root / "notebooks").glob("*.ipynb"))]


# --------------------------------------------------------------------------- the walker

def _chain(node) -> list[str] | None:
    """``a.b.c`` → ["a", "b", "c"]; anything else (calls, subscripts) → None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id] + parts[::-1]


def _caught(handlers) -> set[str]:
    names: set[str] = set()
    for h in handlers:
        if h.type is None:
            names |= KEYWORD_ERRORS | NAME_ERRORS
        for t in (h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]) if h.type is not None else []:
            c = _chain(t)
            if c:
                names.add(c[-1])
    return names


def _names(target) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for e in target.elts for n in _names(e)]
    if isinstance(target, ast.Starred):
        return _names(target.value)
    return []


class _Walker(ast.NodeVisitor):
    def __init__(self, checker: Checker, unit: Unit, check: bool):
        self.c, self.unit, self.check = checker, unit, check
        self.scope: dict = {}
        self.cell: int | None = None
        self.caught: list[set[str]] = [set()]
        self.fns: list[dict] = []          # enclosing functions: {"kwarg": name, "fwd": callee}
        self.module_base = checker.module_scopes.get(unit.module) if unit.module else None

    # ---- bindings
    def _bind(self, name, value):
        if value is None:
            self.scope.pop(name, None)
        else:
            self.scope[name] = value

    def _module_path(self, node: ast.ImportFrom) -> str | None:
        if not node.level:
            return node.module
        if not self.unit.module:
            return None
        parts = self.unit.module.split(".")
        parts = parts if self.unit.is_pkg else parts[:-1]
        parts = parts[:len(parts) - (node.level - 1)]
        return ".".join(parts + ([node.module] if node.module else []))

    def visit_Import(self, node):
        for a in node.names:
            self._bind(a.asname or a.name.split(".")[0], a.name if a.asname else a.name.split(".")[0])
            self._check_exists(a.name, node)

    def visit_ImportFrom(self, node):
        mod = self._module_path(node)
        for a in node.names:
            if a.name == "*" or mod is None:
                continue
            self._bind(a.asname or a.name, f"{mod}.{a.name}")
            self._check_exists(f"{mod}.{a.name}", node)

    def _check_exists(self, path, node):
        if self.check and path.split(".")[0] in TARGETS:
            self.c.verify(self, ("target", path), [], node, imported=True)

    def visit_Assign(self, node):
        self.visit(node.value)
        for t in node.targets:
            self.generic_visit(t)
        value = self._value_binding(node.value)
        for t in node.targets:
            for n in _names(t):
                self._bind(n, value if isinstance(t, ast.Name) and len(node.targets) == 1 else None)

    def _value_binding(self, value):
        if isinstance(value, ast.Dict) or (isinstance(value, ast.Call) and _chain(value.func) == ["dict"]
                                           and "dict" not in self.scope):
            keys, _ = self._keys_of(value)
            return Keys(frozenset(keys))
        if isinstance(value, ast.Call):
            callee = self.resolve(value.func)
            if callee and callee[0] == "target" and self.c.is_class(callee[1]):
                return Inst(callee[1])
        return None

    def visit_AnnAssign(self, node):
        self.generic_visit(node)
        self._bind(getattr(node.target, "id", ""), None)

    def visit_AugAssign(self, node):
        self.generic_visit(node)
        self._bind(getattr(node.target, "id", ""), None)

    def visit_NamedExpr(self, node):
        self.generic_visit(node)
        self._bind(node.target.id, None)

    def visit_For(self, node):
        self.visit(node.iter)
        for n in _names(node.target):
            self._bind(n, None)
        for s in node.body + node.orelse:
            self.visit(s)

    visit_AsyncFor = visit_For

    def visit_With(self, node):
        for item in node.items:
            self.visit(item.context_expr)
            for n in _names(item.optional_vars) if item.optional_vars is not None else []:
                self._bind(n, None)
        for s in node.body:
            self.visit(s)

    visit_AsyncWith = visit_With

    def visit_Try(self, node):
        self.caught.append(self.caught[-1] | _caught(node.handlers))
        for s in node.body:
            self.visit(s)
        self.caught.pop()
        for h in node.handlers:
            if h.name:
                self._bind(h.name, None)
            for s in h.body:
                self.visit(s)
        for s in node.orelse + node.finalbody:
            self.visit(s)

    visit_TryStar = visit_Try

    def visit_FunctionDef(self, node):
        for d in node.decorator_list + node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
            self.visit(d)
        saved = self.scope
        top_level = not self.fns and self.module_base is not None
        self.scope = dict(self.module_base if top_level else saved)
        a = node.args
        params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
        for n in params + [x.arg for x in (a.vararg, a.kwarg) if x is not None]:
            self.scope.pop(n, None)
        self.fns.append({"kwarg": a.kwarg.arg if a.kwarg else None, "fwd": None})
        for s in node.body:
            self.visit(s)
        fn = self.fns.pop()
        self.scope = saved
        own = frozenset(p.arg for p in a.args + a.kwonlyargs)
        self._bind(node.name, Fwd(self._qualname(node.name), fn["fwd"], own) if fn["fwd"] else None)

    visit_AsyncFunctionDef = visit_FunctionDef

    def _qualname(self, name):
        return f"{self.unit.module}.{name}" if self.unit.module and not self.fns else name

    def visit_ClassDef(self, node):
        for d in node.decorator_list + node.bases + [k.value for k in node.keywords]:
            self.visit(d)
        saved, self.scope = self.scope, dict(self.scope)
        for s in node.body:
            self.visit(s)
        self.scope = saved
        self._bind(node.name, None)

    def visit_Lambda(self, node):
        saved, self.scope = self.scope, dict(self.scope)
        for p in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
            self.scope.pop(p.arg, None)
        self.visit(node.body)
        self.scope = saved

    # ---- calls
    def resolve(self, func) -> tuple | None:
        ch = _chain(func)
        if not ch or ch[0] not in self.scope:
            return None
        base = self.scope[ch[0]]
        if isinstance(base, str):
            return self.c.classify(".".join([base] + ch[1:]))
        if isinstance(base, Inst) and len(ch) == 2:
            return ("method", base.cls, ch[1])
        if isinstance(base, Fwd) and len(ch) == 1:
            return ("fwd", base)
        return None

    def _keys_of(self, node) -> tuple[set[str], bool]:
        """String keys a ``**node`` contributes, and whether it passes on the enclosing function's ``**kwargs``."""
        keys: set[str] = set()
        fwd = False
        kwarg = self.fns[-1]["kwarg"] if self.fns else None
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if k is None:
                    sub, f = self._keys_of(v)
                    keys |= sub
                    fwd |= f
                elif isinstance(k, ast.Constant) and isinstance(k.value, str):
                    keys.add(k.value)
        elif isinstance(node, ast.Call) and _chain(node.func) == ["dict"] and "dict" not in self.scope:
            for kw in node.keywords:
                if kw.arg:
                    keys.add(kw.arg)
                else:
                    sub, f = self._keys_of(kw.value)
                    keys |= sub
                    fwd |= f
        elif isinstance(node, ast.Name):
            if kwarg and node.id == kwarg:
                fwd = True
            elif isinstance(self.scope.get(node.id), Keys):
                keys |= self.scope[node.id].keys
        return keys, fwd

    def visit_Call(self, node):
        self.generic_visit(node)
        callee = self.resolve(node.func)
        if callee is None:
            return
        keywords, forwards = [], False
        for kw in node.keywords:
            if kw.arg:
                keywords.append(kw.arg)
            else:
                sub, f = self._keys_of(kw.value)
                keywords += sorted(sub)
                forwards |= f
        if forwards and self.fns and self.fns[-1]["fwd"] is None and callee[0] in ("target", "fwd"):
            self.fns[-1]["fwd"] = callee
        if self.check:
            self.c.verify(self, callee, keywords, node)

    def run(self):
        for cell, src in self.unit.cells:
            self.cell = cell
            try:
                tree = ast.parse(_code_without_magics(src))
            except SyntaxError as e:
                if self.check:
                    self.c.report.skipped.append(Problem(self.unit.where(cell, e.lineno or 0), "(cell)",
                                                         f"not parsed: {e.msg}"))
                continue
            for stmt in tree.body:
                self.visit(stmt)
        return self.scope


# --------------------------------------------------------------------------- the checker

def _var_kw(fn) -> bool:
    try:
        return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn, follow_wrapped=False).parameters.values())
    except (TypeError, ValueError):
        return False


def _passes_extra_to_post_init(obj) -> bool:
    """A dataclass whose ``__init__`` takes ``**kwargs`` and hands the extra ones to ``__post_init__``.

    ``huggingface_hub``'s ``@strict(accept_kwargs=True)`` (every transformers ``PreTrainedConfig`` in 5.x) wraps the
    generated ``__init__`` this way: ``inspect.signature`` follows ``__wrapped__`` to the fields only, but
    ``T5Config(decoder_start_token_id=0)`` is accepted and kept as an attribute.
    """
    return (inspect.isclass(obj) and dataclasses.is_dataclass(obj) and _var_kw(obj.__init__)
            and _var_kw(getattr(obj, "__post_init__", None)))


class Checker:
    def __init__(self, units: list[Unit]):
        self.units = units
        self.module_scopes: dict[str, dict] = {}
        self.report = Report(sources=len(units))
        self._objects: dict[str, tuple] = {}
        self._accepted: dict[int, frozenset | None] = {}
        self._seen: set = set()

    def classify(self, path: str, depth: int = 0) -> tuple | None:
        """("target", "trl.SFTConfig"), ("fwd", Fwd) for a forwarding function, or None (not the stack's)."""
        top = path.split(".")[0]
        if top in TARGETS:
            return ("target", path)
        if depth > 8:
            return None
        parts = path.split(".")
        for i in range(len(parts) - 1, 0, -1):
            scope = self.module_scopes.get(".".join(parts[:i]))
            if scope is None:
                continue
            bound, rest = scope.get(parts[i]), parts[i + 1:]
            if isinstance(bound, str):
                return self.classify(".".join([bound] + rest), depth + 1)
            if isinstance(bound, Fwd) and not rest:
                return ("fwd", bound)
            return None
        return None

    def lookup(self, path: str):
        """(object, None) or (_MISSING, why) for a dotted path, importing submodules as needed."""
        if path in self._objects:
            return self._objects[path]
        parts = path.split(".")
        try:
            obj = importlib.import_module(parts[0])
        except Exception as e:  # noqa: BLE001 - any import failure is the finding
            res = (_MISSING, f"cannot import {parts[0]}: {type(e).__name__}: {e}")
        else:
            res = (obj, None)
            for i, name in enumerate(parts[1:], start=1):
                try:
                    obj = getattr(obj, name)
                    continue
                except AttributeError:
                    pass
                except Exception as e:  # noqa: BLE001 - e.g. a lazy module whose import fails
                    res = (_MISSING, f"{'.'.join(parts[:i + 1])} cannot be imported: {type(e).__name__}: {e}")
                    break
                try:
                    obj = importlib.import_module(".".join(parts[:i + 1])) if inspect.ismodule(obj) else _MISSING
                except ImportError:
                    obj = _MISSING
                if obj is _MISSING:
                    res = (_MISSING, f"{'.'.join(parts[:i])} has no attribute '{name}'")
                    break
            else:
                res = (obj, None)
        self._objects[path] = res
        return res

    def is_class(self, path: str) -> bool:
        if not self._checking or path.split(".")[0] in NOT_IMPORTED:
            return False
        return inspect.isclass(self.lookup(path)[0])

    def accepted(self, obj) -> frozenset | None:
        """Keyword names ``obj`` accepts, or None for "any" (``**kwargs``) / no signature to read."""
        key = id(obj)
        if key not in self._accepted:
            try:
                params = inspect.signature(obj).parameters.values()
            except (TypeError, ValueError):
                self._accepted[key] = None
                return None
            if any(p.kind is p.VAR_KEYWORD for p in params) or _passes_extra_to_post_init(obj):
                names = None
            else:
                names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
                if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
                    names |= {f.name for f in dataclasses.fields(obj) if f.init}
                names = frozenset(names)
            self._accepted[key] = names
        return self._accepted[key]

    def _add(self, walker: _Walker, node, api: str, message: str, errors: set[str]):
        where = walker.unit.where(walker.cell, getattr(node, "lineno", 0))
        if (where, message) in self._seen:
            return
        self._seen.add((where, message))
        p = Problem(where, api, message)
        (self.report.expected if walker.caught[-1] & errors else self.report.problems).append(p)

    def verify(self, walker: _Walker, callee: tuple, keywords: list[str], node, imported: bool = False):
        via = ""
        while callee and callee[0] == "fwd":
            fwd = callee[1]
            via = via or f" (via {fwd.name})"
            keywords = [k for k in keywords if k not in fwd.own]
            callee = fwd.target
        if not callee:
            return
        if callee[0] == "method":
            cls_path, attr = callee[1], callee[2]
            cls, _ = self.lookup(cls_path)
            obj = getattr(cls, attr, _MISSING) if cls is not _MISSING else _MISSING
            if obj is _MISSING or not callable(obj):
                return                            # an instance attribute, or a name we cannot see cheaply
            api = f"{cls_path}.{attr}"
        else:
            api = callee[1]
            top = api.split(".")[0]
            if top in NOT_IMPORTED:
                where = walker.unit.where(walker.cell, getattr(node, "lineno", 0))
                self.report.skipped.append(Problem(where, api, NOT_IMPORTED[top]))
                return
            obj, why = self.lookup(api)
            if obj is _MISSING:
                self._add(walker, node, api, f"{api}{via}: {why}", NAME_ERRORS)
                return
        if imported:
            return
        self.report.calls_checked += 1
        self.report.apis[api] = self.report.apis.get(api, 0) + 1
        if not callable(obj):
            return
        accepted = self.accepted(obj)
        if accepted is None:
            return
        for k in dict.fromkeys(keywords):
            if k not in accepted:
                self._add(walker, node, api, f"{api}{via} got unknown keyword '{k}'", KEYWORD_ERRORS)

    _checking = False

    def run(self) -> Report:
        modules = [u for u in self.units if u.module]
        for _ in range(3):   # bindings and forwarders of modules; 3 rounds let forwarders chain across modules
            for u in modules:
                self.module_scopes[u.module] = _Walker(self, u, check=False).run()
        self._checking = True
        for u in self.units:
            _Walker(self, u, check=True).run()
        return self.report


def check(units: list[Unit] | None = None, root: Path = ROOT) -> Report:
    """Check ``units`` (default: the course's notebooks, ``course_utils/`` and ``scripts/``) and return the Report."""
    return Checker(default_units(root) if units is None else units).run()


def main(argv: list[str] | None = None) -> int:
    """``python -m course_utils.tools.api_check [PATH ...]``: notebooks/modules to check (default: the whole course)."""
    argv = sys.argv[1:] if argv is None else argv
    units = None
    if argv:
        units = [notebook_unit(Path(a)) if a.endswith(".ipynb") else module_unit(Path(a)) for a in argv]
    report = check(units)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
