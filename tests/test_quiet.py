"""course_utils.core.quiet: each known message disappears, and only it; the filter is in place before the import."""

import importlib.util
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from course_utils.core import quiet

ROOT = Path(__file__).resolve().parent.parent
BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
KERNELS_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"
INT8_MESSAGE = "MatMul8bitLt: inputs will be cast from torch.float32 to float16 during quantization"


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (nothing imported yet), stderr captured."""
    full_env = {**os.environ, "COURSE_PROFILE": "cpu", "HF_HUB_OFFLINE": "1", **env}
    full_env.pop("COURSE_SHOW_WARNINGS", None)
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=full_env,
                          timeout=300)


QUIET = "from course_utils.core.quiet import quiet_known_warnings; quiet_known_warnings()\n"


@pytest.fixture
def clean_logging():
    """No course filters during the test; afterwards, those of an earlier ``import course_utils`` come back."""
    had = bool(quiet._installed)
    quiet.undo()
    yield
    quiet.undo()
    if had:
        quiet.quiet_known_warnings()


# --------------------------------------------------------------------------- without any library

def test_quiet_imports_no_library():
    """It must be callable before the libraries are imported, so it may not import them itself."""
    r = run_python(QUIET + "import sys; print(sorted(m for m in ('torch', 'transformers', 'bitsandbytes', 'peft', "
                           "'trl') if m in sys.modules))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_every_known_message_says_why_and_compiles():
    import re

    assert quiet.KNOWN
    for k in quiet.KNOWN:
        re.compile(k.pattern)
        assert len(k.why) > 40 and k.source
        assert k.logger or issubclass(k.category, Warning)
        assert re.search(k.pattern, k.example, flags=0 if k.logger else re.I), "the pattern must match its example"
    assert all(k.example in quiet.explain() for k in quiet.KNOWN)


@pytest.mark.parametrize("known", [k for k in quiet.KNOWN if k.logger], ids=lambda k: k.logger)
def test_each_logged_message_is_dropped_and_only_it(known):
    """Emitted the way the library does (its logger, no handler: Python's last-resort handler → stderr)."""
    sample = known.example
    code = (f"import logging\nlog = logging.getLogger({known.logger!r})\n"
            f"log.warning({sample!r})\nlog.warning('an unrelated warning')\n")
    loud, calm = run_python(code), run_python(QUIET + code)
    assert sample in loud.stderr and "an unrelated warning" in loud.stderr
    assert sample not in calm.stderr, calm.stderr
    assert "an unrelated warning" in calm.stderr, "only the known message may be filtered"


def test_filters_apply_through_a_handler_installed_later(clean_logging, caplog):
    """Unsloth gives the bitsandbytes logger its own handler after import: the logger's filter still applies."""
    quiet.quiet_known_warnings()
    quiet.quiet_known_warnings()  # idempotent: one filter per logger
    log = logging.getLogger(BNB_CPU_LOGGER)
    assert sum(isinstance(f, quiet.MessageFilter) for f in log.filters) == 1
    with caplog.at_level(logging.WARNING, logger=BNB_CPU_LOGGER):
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'")
        log.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_show_warnings_turns_it_off(clean_logging, monkeypatch):
    monkeypatch.setenv("COURSE_SHOW_WARNINGS", "1")
    assert quiet.quiet_known_warnings() == ()
    assert not any(isinstance(f, quiet.MessageFilter) for f in logging.getLogger(BNB_CPU_LOGGER).filters)


def test_python_warnings_are_matched_by_message():
    """A warnings.warn entry (if any) hides its message and no other of the same category."""
    for k in (k for k in quiet.KNOWN if not k.logger):
        sample = k.example
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            quiet.quiet_known_warnings()
            warnings.warn(sample, k.category, stacklevel=1)
            warnings.warn("an unrelated message", k.category, stacklevel=1)
        assert [str(w.message) for w in seen] == ["an unrelated message"]


# --------------------------------------------------------------------------- the real libraries

def installed(name: str) -> bool:
    """Whether a library is installed, without importing it here (Unsloth would patch transformers)."""
    return importlib.util.find_spec(name) is not None


def _has_avx512_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512_bf16" in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not _has_avx512_bf16(), reason="bitsandbytes logs the kernels message only on AVX512-BF16 CPUs")
@pytest.mark.skipif(not installed("bitsandbytes"), reason="bitsandbytes is not installed")
def test_bitsandbytes_import_message_is_gone_when_quiet_runs_first():
    loud = run_python("import transformers, bitsandbytes")
    assert loud.returncode == 0, loud.stderr
    assert KERNELS_MESSAGE in loud.stderr, "bitsandbytes no longer logs it: remove its KNOWN entry?"
    calm = run_python(QUIET + "import transformers, bitsandbytes\nimport peft")
    assert calm.returncode == 0, calm.stderr
    assert KERNELS_MESSAGE not in calm.stderr, calm.stderr


@pytest.mark.skipif(not _has_avx512_bf16(), reason="bitsandbytes logs the kernels message only on AVX512-BF16 CPUs")
@pytest.mark.skipif(not installed("unsloth"), reason="unsloth is not installed")
def test_the_message_stays_gone_when_unsloth_imports_bitsandbytes():
    """Notebook 07 imports Unsloth, which installs its own log handler: the filter sits on the logger, before it."""
    calm = run_python(QUIET + "import unsloth")
    assert calm.returncode == 0, calm.stderr
    assert KERNELS_MESSAGE not in calm.stderr + calm.stdout, calm.stderr


@pytest.mark.skipif(not installed("bitsandbytes"), reason="bitsandbytes is not installed")
def test_bitsandbytes_int8_inference_message_is_gone():
    """LLM.int8 in eval mode on fp32 inputs (notebook 04) logs once per layer call: thousands of red lines."""
    code = ("import torch, bitsandbytes as bnb\n"
            "lin = bnb.nn.Linear8bitLt(16, 8, has_fp16_weights=False, bias=False)\n"
            "lin.weight = bnb.nn.Int8Params(torch.randn(8, 16), requires_grad=False, has_fp16_weights=False)\n"
            "lin = lin.to('cpu').eval()\n"
            "y = lin(torch.randn(2, 16))\n"
            "print(tuple(y.shape), y.dtype)\n")
    loud, calm = run_python(code), run_python(QUIET + code)
    assert loud.returncode == 0 and calm.returncode == 0, loud.stderr + calm.stderr
    assert INT8_MESSAGE in loud.stderr, "bitsandbytes no longer logs it: remove its KNOWN entry?"
    assert INT8_MESSAGE not in calm.stderr and calm.stdout.strip() == "(2, 8) torch.float32", calm.stderr


def test_unsloth_eos_message_is_hidden_only_when_nothing_changes(clean_logging, caplog):
    quiet.quiet_known_warnings()
    log = logging.getLogger("unsloth.chat_templates")
    with caplog.at_level(logging.WARNING, logger="unsloth.chat_templates"):
        log.warning("Unsloth: Will map <|im_end|> to EOS = <|im_end|>.")      # the embedded model: a no-op
        log.warning("Unsloth: Will map <|end|> to EOS = <|endoftext|>.")      # a real remapping: shown
    assert [r.getMessage() for r in caplog.records] == ["Unsloth: Will map <|end|> to EOS = <|endoftext|>."]
