"""Quiet, explained output: the library messages a learner would otherwise see in red, filtered in one place.

Each entry of ``KNOWN`` names one message the course cannot fix (it comes from a library and is harmless for
the lessons), matches it by its text, and says why it is harmless. ``quiet_known_warnings()`` installs the
filters: logging filters on the exact loggers that emit them, ``warnings.filterwarnings`` with a message regex
for Python warnings. It imports no library, so it can (and must) run before they are imported: the
bitsandbytes message below is logged while ``bitsandbytes`` is being imported (by peft, transformers'
quantizers or Unsloth).

    >>> from course_utils.core.quiet import quiet_known_warnings
    >>> [k.logger for k in quiet_known_warnings()]    # idempotent; COURSE_SHOW_WARNINGS=1 turns it off: ()
    ['bitsandbytes.backends.cpu.ops', 'bitsandbytes.autograd._functions', 'unsloth.chat_templates']

Anything not listed here still shows: the filters match messages, never whole loggers or categories.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class Known:
    """One harmless message: where it comes from, how to match it, and why the course lets it pass unseen.

    logger: the logger that emits it (a logging record), or None for a Python warning of ``category``;
    example: the message as a learner saw it (the tests emit it and check that it is gone).
    """

    source: str
    pattern: str
    why: str
    example: str
    logger: str | None = None
    category: type[Warning] = Warning


KNOWN: tuple[Known, ...] = (
    Known(
        source="bitsandbytes (backends/cpu/ops.py), at import on CPUs with AVX512-BF16",
        logger="bitsandbytes.backends.cpu.ops",
        pattern=r"^Failed to load CPU gemm_4bit_forward from kernels-community",
        why="bitsandbytes tries the optional `kernels` package (a fused CPU kernel from the Hugging Face hub, "
            "bf16 inputs only) and falls back to the CPU kernels it ships itself. The course computes in fp32 on "
            "CPUs and runs offline, so the fused kernel would not be used anyway; 4-bit results are the same.",
        example="Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. Please "
                "make sure you already `pip install kernels` and the kernels >= 0.11.1",
    ),
    Known(
        source="bitsandbytes (autograd/_functions.py), every forward of an 8-bit Linear in eval mode",
        logger="bitsandbytes.autograd._functions",
        pattern=r"^MatMul8bitLt: inputs will be cast from torch\.(float32|bfloat16) to float16 during quantization",
        why="LLM.int8 quantizes each activation row to int8 from fp16: that is the method (Dettmers et al. 2022), "
            "on a GPU and on a CPU. It is logged once per layer call, so notebook 04's 8-bit evaluation printed "
            "thousands of identical red lines; the perplexity the lesson shows already includes the cast.",
        example="MatMul8bitLt: inputs will be cast from torch.float32 to float16 during quantization",
    ),
    Known(
        source="Unsloth (chat_templates.py), notebook 07's SFTTrainer setup",
        logger="unsloth.chat_templates",
        pattern=r"^Unsloth: Will map (\S+) to EOS = \1\.$",
        why="Unsloth makes the chat template's end-of-turn token the tokenizer's EOS so that generation stops "
            "after the answer. Only the no-op case is filtered: the token is already the EOS (the course sets "
            "<|im_end|> as the embedded model's EOS), so nothing changes; a real remapping still shows.",
        example="Unsloth: Will map <|im_end|> to EOS = <|im_end|>.",
    ),
)

_installed: list[tuple[logging.Logger, logging.Filter]] = []


class MessageFilter(logging.Filter):
    """Drops the records of one logger whose message matches one of ``patterns``."""

    def __init__(self, patterns: list[str]):
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge: let it through
            return True
        return not any(p.search(message) for p in self.patterns)


def enabled() -> bool:
    """False when ``COURSE_SHOW_WARNINGS=1``: every message shows (for debugging a library)."""
    return os.environ.get("COURSE_SHOW_WARNINGS", "").strip() != "1"


def quiet_known_warnings() -> tuple[Known, ...]:
    """Install the filters of ``KNOWN`` (once) and return what is filtered; nothing with COURSE_SHOW_WARNINGS=1.

    Call it before the libraries are imported: a logger filter set now applies to the logger the library
    creates later (``logging.getLogger`` returns the same object), and warning filters are process-wide.
    """
    if not enabled():
        return ()
    by_logger: dict[str, list[str]] = {}
    for k in KNOWN:
        if k.logger:
            by_logger.setdefault(k.logger, []).append(k.pattern)
        else:
            # message= is matched at the start of the warning text, case-insensitively (re.I, re.match)
            warnings.filterwarnings("ignore", message=k.pattern, category=k.category)
    for name, patterns in by_logger.items():
        logger = logging.getLogger(name)
        if not any(lg is logger for lg, _ in _installed):
            f = MessageFilter(patterns)
            logger.addFilter(f)
            _installed.append((logger, f))
    return KNOWN


def undo() -> None:
    """Remove the logging filters ``quiet_known_warnings`` installed (tests; warning filters: reset by pytest)."""
    while _installed:
        logger, f = _installed.pop()
        logger.removeFilter(f)


def explain() -> str:
    """What is filtered and why, for a notebook that wants to say so."""
    return "\n".join(f"- {k.source}: “{k.example}” — {k.why}" for k in KNOWN)
