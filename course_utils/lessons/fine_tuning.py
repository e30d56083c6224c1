"""Fine-tuning basics (notebook 01): which parameters to train.

Freezing strategies decide which parameters get gradients; the memory accounting the lesson also teaches
(weights, gradients, AdamW states, activations) lives in ``course_utils.lessons.memory``.

Example::

    n = freeze(model, "last_n", n_last=2)        # only the last two decoder blocks (+ final norm) train
    snap = snapshot_frozen(model); ...train...; changed_frozen(model, snap)   # [] : frozen = bit-for-bit
"""

from __future__ import annotations

import ctypes
import gc

import torch
from torch import nn

from course_utils.core.models import decoder_layers

STRATEGIES = ("full", "last_n", "head", "norms")


# --------------------------------------------------------------------------- the lessons' Q&A format

def qa_prompt(question: str) -> str:
    """The plain prompt of notebooks 01–02: the answer follows ``Answer:``.

    >>> qa_prompt("How often should I descale?")
    'Question: How often should I descale?\\nAnswer:'
    """
    return f"Question: {question}\nAnswer:"


def qa_pairs(rows: list[dict]) -> tuple[list[str], list[str]]:
    """(prompts, completions) of ``domain_qa`` rows for ``make_batches``; each completion is ' ' + answer."""
    return [qa_prompt(r["question"]) for r in rows], [" " + r["answer"] for r in rows]


# --------------------------------------------------------------------------- freezing strategies

def untie_lm_head(model) -> bool:
    """Give the LM head its own copy of the (tied) input embedding matrix; return True if it was tied.

    SmolLM2 ties ``lm_head.weight`` to ``embed_tokens.weight``: training "the head" would also change the
    input embeddings and send gradients through every layer. After untying, the head is a separate
    (V, d) parameter and backpropagation stops at the last hidden state.
    """
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head.weight is not emb.weight:
        return False
    head.weight = nn.Parameter(emb.weight.detach().clone())
    model.config.tie_word_embeddings = False  # keep them separate in save_pretrained / from_pretrained
    return True


def is_norm(module: nn.Module) -> bool:
    """True for LayerNorm and RMSNorm modules (any class whose name ends in ``Norm``)."""
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("Norm")


def freeze(model, strategy: str = "full", n_last: int = 2) -> int:
    """Set ``requires_grad`` for a freezing strategy and return the number of trainable parameters.

    full: every parameter · last_n: the last ``n_last`` decoder blocks and the final norm ·
    head: the LM head only (untied from the embeddings first) · norms: every norm weight.

    >>> model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    >>> freeze(model, "norms"), freeze(model, "full")    # the LayerNorm's weight + bias; all 20 + 8
    (8, 28)

    On SmolLM2-135M, ``"norms"`` trains 61 RMSNorm weights × 576 = 35,136 numbers.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}: expected one of {STRATEGIES}")
    if strategy == "head":
        untie_lm_head(model)
    model.requires_grad_(strategy == "full")
    if strategy == "last_n":
        for block in list(decoder_layers(model))[-n_last:]:
            block.requires_grad_(True)
        model.model.norm.requires_grad_(True)  # the final norm sits between the last block and the head
    elif strategy == "head":
        model.get_output_embeddings().requires_grad_(True)
    elif strategy == "norms":
        for module in model.modules():
            if is_norm(module):
                module.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def snapshot_frozen(model) -> dict[str, torch.Tensor]:
    """Copies of every frozen parameter (``requires_grad=False``), to prove later they did not change."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}


def changed_frozen(model, snapshot: dict[str, torch.Tensor]) -> list[str]:
    """Names of snapshot parameters that are no longer bit-for-bit equal (``torch.equal``)."""
    params = dict(model.named_parameters())
    return [name for name, before in snapshot.items() if not torch.equal(params[name].detach(), before)]


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``).

    On CPU the course measures peak memory as process RSS; without this, memory freed by one run stays
    in the process and hides the next run's growth.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows): nothing to trim
        pass
