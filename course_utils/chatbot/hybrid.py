"""The seed capstone's "lightweight fine-tuning": LoRA and bottleneck adapters trained together.

The seed trains LoRA matrices and Houlsby bottleneck adapters in one optimizer. peft has no bottleneck
adapter, so the course's own (``course_utils.lessons.peft_methods``, notebook 02) is attached next to peft's LoRA here,
on the same decoder layers, and both are trained together. It is a building block, tested against peft and
against its parameter budget (tests/test_hybrid.py); no notebook uses it yet (issue 15: a comparison with LoRA
alone in notebook 09 did not learn within the cpu profile's budget, so it was left out).

Example::

    base = shared_base(bot.backend.serving)            # the chatbot's frozen weights, shared, no adapters
    model = lora_model(base, r=4, lora_alpha=16, targets=LORA_TARGETS, layers=[22, ..., 29])
    attach_adapters(model, layers=[22, ..., 29], bottleneck=17)   # both kinds train together
    model, b = same_budget_hybrid(shared_base(bot.backend.serving), budget, r=4, lora_alpha=8, ...)
"""

from __future__ import annotations

import copy
import itertools

import torch

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
    blocks = decoder_layers(getattr(model, "get_base_model", lambda: model)())
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


def lora_param_count(r: int, shapes: list[tuple[int, int]]) -> int:
    """LoRA's trainable numbers: r·(d_in + d_out) per wrapped (d_in, d_out) projection.

    >>> lora_param_count(8, [(576, 576), (576, 192)])
    15360
    """
    return sum(r * (d_in + d_out) for d_in, d_out in shapes)


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
