"""The seed capstone's "lightweight fine-tuning": LoRA and bottleneck adapters trained together.

The seed trains LoRA matrices and Houlsby bottleneck adapters in one optimizer. peft has no bottleneck
adapter, so the course's own (``course_utils.lessons.peft_methods``, notebook 02) is attached next to peft's LoRA here,
on the same decoder layers, and both are trained together. Notebook 09 (section 10) races this hybrid against LoRA
alone at the same trainable budget (``same_budget_hybrid``) on the chatbot's held-out metric. Both kinds sit only in
the last decoder layers there, so the hidden states entering those layers never change while training:
``layer_inputs`` computes them once and ``from_layer`` runs only the layers above (the same losses and gradients).

Example::

    base = shared_base(bot.backend.serving)            # the chatbot's frozen weights, shared, no adapters
    model = lora_model(base, r=4, lora_alpha=16, targets=LORA_TARGETS, layers=[28, 29])
    attach_adapters(model, layers=[28, 29], bottleneck=17)   # both kinds train together
    model, b = same_budget_hybrid(shared_base(bot.backend.serving), budget, r=4, lora_alpha=8, ...)
    cached = layer_inputs(base, batches, first=28)     # once: what enters layer 28
    with from_layer(model, 28):
        train(model, cached, steps=6)                  # only layers 28 and 29 run
"""

from __future__ import annotations

import contextlib
import copy
import itertools

import torch

from course_utils.core.runtime import to_device
from course_utils.core.train import IGNORE_INDEX
from course_utils.lessons.fine_tuning import decoder_layers
from course_utils.lessons.peft_methods import (
    ADAPTER_POINTS,
    BottleneckAdapter,
    adapter_param_count,
    apply_adapter,
)


def shared_base(peft_model) -> torch.nn.Module:
    """A plain causal LM whose weights are the *same tensors* as ``peft_model``'s base (no copy, no adapters).

    The module tree is deep-copied with every parameter and buffer kept as is, then peft's ``unload()`` puts
    the copied tree's wrapped layers back to plain ``Linear`` layers; ``peft_model`` itself is untouched.
    """
    memo = {id(t): t for t in itertools.chain(peft_model.parameters(), peft_model.buffers())}
    return copy.deepcopy(peft_model, memo).unload()


def lora_model(base, r: int, lora_alpha: int, targets, layers: list[int] | None):
    """peft LoRA (rank ``r``) on ``targets`` of the decoder ``layers`` (None: all) of ``base``."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=list(targets),
                        layers_to_transform=layers, task_type="CAUSAL_LM")
    return get_peft_model(base, config)


def attach_adapters(model, layers: list[int] | None, bottleneck: int,
                    activation: str = "gelu") -> list[BottleneckAdapter]:
    """A trainable ``BottleneckAdapter`` after the attention and the MLP of the decoder ``layers`` (None: all).

    Uses ``course_utils.lessons.peft_methods``' module and forward hook, so ``adapters.adapter_modules`` and
    ``remove_adapters`` see them; the base stays as frozen as it was (LoRA's parameters keep their flags).
    """
    blocks = decoder_layers(_inner(model))
    param = next(model.parameters())
    added = []
    for i in (range(len(blocks)) if layers is None else layers):
        for name in ADAPTER_POINTS:
            sub = getattr(blocks[i], name)
            if getattr(sub, "adapter", None) is not None:
                raise ValueError(f"layer {i}.{name} already has an adapter")
            sub.adapter = BottleneckAdapter(model.config.hidden_size, bottleneck, activation).to(param.device)
            sub.register_forward_hook(apply_adapter)
            added.append(sub.adapter)
    return added


def bottleneck_for_budget(hidden: int, n_adapters: int, budget: int) -> int:
    """The largest bottleneck b whose ``n_adapters`` adapters (2·d·b + b + d each) fit in ``budget`` numbers.

    >>> bottleneck_for_budget(576, 16, 325_632)
    17
    """
    b = (budget / n_adapters - hidden) // (2 * hidden + 1)
    if b < 1:
        raise ValueError(f"a budget of {budget:,} cannot hold {n_adapters} adapters of width ≥ 1")
    b = int(b)
    assert adapter_param_count(hidden, b, n_adapters, per_layer=1) <= budget
    return b


def same_budget_hybrid(base, budget: int, r: int, lora_alpha: int, targets, layers: list[int]):
    """LoRA (rank ``r``) plus bottleneck adapters on the same ``layers`` of ``base``, the adapters as wide as the
    ``budget`` of trainable numbers left after LoRA's share allows; returns (model, bottleneck).
    """
    model = lora_model(base, r=r, lora_alpha=lora_alpha, targets=targets, layers=layers)
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    b = bottleneck_for_budget(model.config.hidden_size, len(ADAPTER_POINTS) * len(layers), budget - lora)
    attach_adapters(model, layers=layers, bottleneck=b)
    return model, b


def _inner(model):
    """The causal LM under peft's wrappers (``model`` itself when it has none)."""
    return getattr(model, "get_base_model", lambda: model)()


class _Reached(Exception):
    """Raised by ``layer_inputs``' hook: the hidden states are caught, the layers above need not run."""


def layer_inputs(model, batches: list[dict], first: int) -> list[dict]:
    """``batches`` with ``input_ids`` replaced by ``inputs_embeds``: the hidden states entering decoder layer ``first``.

    Computed once (no grad) by running ``model`` up to that layer. While only layers ``first`` and above train, these
    states are the same at every step, so ``from_layer`` can start there.
    """
    layer = decoder_layers(_inner(model))[first]
    caught = []

    def catch(module, args, kwargs):
        caught.append(args[0] if args else kwargs["hidden_states"])   # (batch, T, hidden)
        raise _Reached

    handle = layer.register_forward_pre_hook(catch, with_kwargs=True)
    out = []
    try:
        with torch.no_grad():
            for batch in batches:
                batch = to_device(batch, model)
                with contextlib.suppress(_Reached):
                    model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False)
                rest = {k: v for k, v in batch.items() if k != "input_ids"}
                out.append({"inputs_embeds": caught.pop(), **rest})
    finally:
        handle.remove()
    return out


class _NoTokens(torch.nn.Module):
    """Stands in for the token embedding inside ``from_layer``: token ids there would skip the lower layers."""

    def forward(self, input_ids):
        raise RuntimeError("from_layer: pass inputs_embeds from layer_inputs, not input_ids")


@contextlib.contextmanager
def from_layer(model, first: int):
    """Inside the block, ``model`` runs only its decoder layers from ``first`` on (then the norm and the head), fed
    ``layer_inputs(..., first)`` batches; token ids are refused. Nothing below ``first`` may train.
    """
    inner = _inner(model)
    layers = decoder_layers(inner)
    below = {id(p) for p in itertools.chain(inner.model.embed_tokens.parameters(), layers[:first].parameters())}
    if any(p.requires_grad and id(p) in below for p in model.parameters()):
        raise ValueError(f"a parameter below layer {first} trains: its layer inputs would change every step")
    embed = inner.model.embed_tokens
    inner.model.layers, inner.model.embed_tokens = torch.nn.ModuleList(layers[first:]), _NoTokens()
    try:
        yield model
    finally:
        inner.model.layers, inner.model.embed_tokens = layers, embed


def answer_loss(model, batch: dict) -> torch.Tensor:
    """``model(**batch).loss`` (mean cross-entropy on the answer tokens), the LM head applied to those positions only.

    A ``loss_fn`` for ``core.train.train``/``evaluate_loss``: on a small model the 49k-word head costs more than two
    decoder layers, and the prompt and the padding, which carry no loss, need no logits.
    """
    inner = _inner(model)
    hidden = inner.model(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state   # (B, T, hidden)
    labels = batch["labels"][:, 1:]                                   # position t predicts token t + 1
    keep = labels != IGNORE_INDEX                                     # (B, T - 1)
    logits = inner.lm_head(hidden[:, :-1][keep])                      # (answer tokens, vocab)
    return torch.nn.functional.cross_entropy(logits.float(), labels[keep])
