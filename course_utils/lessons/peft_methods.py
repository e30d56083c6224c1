"""Bottleneck adapters (Houlsby et al., 2019, arXiv:1902.00751), written by hand for notebook 02.

An adapter is a small residual MLP: down-projection d → b, a non-linearity, up-projection b → d, added to
its input. One goes after the attention and one after the MLP of every decoder layer (before each residual
add), attached with forward hooks so the model's code and parameter names stay as they are. The
up-projection starts at zero, so a freshly added adapter leaves the model's output exactly unchanged.
peft 0.21 has no bottleneck adapter, and the AdapterHub ``adapters`` package pins an older transformers.

    >>> adapter = BottleneckAdapter(hidden=8, bottleneck=2)
    >>> x = torch.randn(1, 3, 8)                                # (B, T, d)
    >>> torch.equal(adapter(x), x)                              # up-projection zero: output unchanged
    True
    >>> adapter_param_count(8, 2, layers=1)                     # 2 adapters × (2·8·2 + 2 + 8)
    84

Example::

    adapters = add_adapters(model, bottleneck=64)   # base frozen, only adapters train
    save_adapters(model, "x2.safetensors"); load_adapters(fresh_model, "x2.safetensors")
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from course_utils.core.models import decoder_layers
from course_utils.core.train import IGNORE_INDEX

ADAPTER_POINTS = ("self_attn", "mlp")  # after attention and after the MLP of each decoder layer
FORMAT = "course-bottleneck-adapter/1"
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


class BottleneckAdapter(nn.Module):
    """x + up(act(down(x))): a residual bottleneck MLP; ``up`` starts at zero (identity at init).

    x: (B, T, d) → (B, T, d). Weights are fp32 whatever the model's dtype (inputs are cast in and out).
    """

    def __init__(self, hidden: int, bottleneck: int, activation: str = "gelu"):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)            # (d → b)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden)              # (b → d)
        nn.init.zeros_(self.up.weight)                       # zero update at the start: the model is unchanged
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(self.act(self.down(x.to(self.down.weight.dtype))))   # (B, T, d)
        return x + h.to(x.dtype)


def apply_adapter(module: nn.Module, args, output):
    """Forward hook: pass the sub-layer's output (the first element of a tuple) through ``module.adapter``."""
    if isinstance(output, tuple):
        return (module.adapter(output[0]), *output[1:])
    return module.adapter(output)


def _points(model):
    """(sub-layer, adapter-or-None) for the attention and MLP of every decoder layer."""
    for layer in decoder_layers(model):
        for name in ADAPTER_POINTS:
            sub = getattr(layer, name)
            yield sub, getattr(sub, "adapter", None)


def adapter_modules(model) -> list[BottleneckAdapter]:
    """The adapters attached to ``model`` (in layer order, attention before MLP)."""
    return [a for _, a in _points(model) if a is not None]


def add_adapters(model, bottleneck: int = 64, activation: str = "gelu", freeze_base: bool = True):
    """Attach a ``BottleneckAdapter`` after the attention and the MLP of every decoder layer.

    With ``freeze_base`` every other parameter gets ``requires_grad=False``, so only adapters train.
    Returns the list of new adapters (2 × layers).
    """
    if adapter_modules(model):
        raise ValueError("the model already has adapters; call remove_adapters(model) first")
    param = next(model.parameters())
    if freeze_base:
        model.requires_grad_(False)
    adapters = []
    for sub, _ in list(_points(model)):
        sub.adapter = BottleneckAdapter(model.config.hidden_size, bottleneck, activation).to(param.device)
        sub.register_forward_hook(apply_adapter)
        adapters.append(sub.adapter)
    model._course_adapter_config = {"bottleneck": bottleneck, "activation": activation}
    return adapters


def remove_adapters(model) -> None:
    """Detach every adapter and its hook: the model computes exactly what it did before."""
    for sub, adapter in list(_points(model)):
        if adapter is None:
            continue
        for key, hook in list(sub._forward_hooks.items()):
            if hook is apply_adapter:
                del sub._forward_hooks[key]
        del sub.adapter
    model.__dict__.pop("_course_adapter_config", None)


def adapter_state_dict(model) -> dict[str, torch.Tensor]:
    """The adapters' weights, keyed by their names in the model (``….self_attn.adapter.down.weight``)."""
    return {k: v for k, v in model.state_dict().items() if ".adapter." in k}


def save_adapters(model, path: str | Path) -> Path:
    """Write the adapter weights (only) to a safetensors file, with their configuration as metadata."""
    from safetensors.torch import save_file

    config = getattr(model, "_course_adapter_config", None)
    if config is None:
        raise ValueError("the model has no adapters to save")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    save_file(tensors, str(path), metadata={"format": FORMAT, "config": json.dumps(config)})
    return path


def load_adapters(model, path: str | Path, freeze_base: bool = True):
    """Attach adapters as saved in ``path`` (adding them if needed) and load their weights; return model."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a course adapter file (format {meta.get('format')!r})")
    config = json.loads(meta["config"])
    if not adapter_modules(model):
        add_adapters(model, freeze_base=freeze_base, **config)
    elif getattr(model, "_course_adapter_config", None) != config:
        raise ValueError(f"the model's adapters {model._course_adapter_config} differ from the file's {config}")
    tensors = load_file(str(path), device=str(next(model.parameters()).device))
    expected = set(adapter_state_dict(model))
    if set(tensors) != expected:
        raise ValueError(f"adapter keys differ: missing {sorted(expected - set(tensors))[:3]}, "
                         f"unexpected {sorted(set(tensors) - expected)[:3]}")
    model.load_state_dict(tensors, strict=False)
    return model


def adapter_param_count(hidden: int, bottleneck: int, layers: int, per_layer: int = len(ADAPTER_POINTS)) -> int:
    """Parameters of the adapters: per adapter 2·d·b weights + b + d biases.

    >>> adapter_param_count(576, 64, 30)   # SmolLM2-135M, bottleneck 64
    4462080
    """
    return layers * per_layer * (2 * hidden * bottleneck + bottleneck + hidden)


# --------------------------------------------------------------------------- helpers for the PEFT comparison

def text_ids(tokenizer, text: str, n_tokens: int) -> torch.Tensor:
    """Exactly ``n_tokens`` token ids of ``text`` (repeated if it is shorter): (1, n_tokens)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("empty text")
    ids = (ids * (n_tokens // len(ids) + 1))[:n_tokens]
    return torch.tensor([ids])


@torch.no_grad()
def prefix_from_text(model, tokenizer, text: str, n_tokens: int) -> torch.Tensor:
    """Prefix-tuning weights equal to the keys and values the model computes for ``text``.

    peft's prefix encoder stores, per virtual token, the keys and values of every layer (L × 2 × kv_dim).
    Copying those of a real text makes the prefix-tuned model start exactly where prompting with that text
    starts, instead of from random keys and values that scramble attention. Shape: (n_tokens, L·2·kv_dim).
    """
    ids = text_ids(tokenizer, text, n_tokens).to(next(model.parameters()).device)
    cache = model(input_ids=ids, use_cache=True).past_key_values
    kv = torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers])  # (L, 2, H, n, hd)
    return kv.permute(3, 0, 1, 2, 4).reshape(n_tokens, -1).float()                      # (n, L·2·H·hd)


def init_prefix_from_text(peft_model, tokenizer, text: str) -> None:
    """Set a prefix-tuning model's prefix to the keys/values of ``text`` (see ``prefix_from_text``)."""
    config = peft_model.peft_config[peft_model.active_adapter]
    encoder = peft_model.prompt_encoder[peft_model.active_adapter]
    if getattr(config, "prefix_projection", False):
        raise ValueError("init_prefix_from_text needs prefix_projection=False (the prefix is stored directly)")
    with peft_model.disable_adapter():
        weight = prefix_from_text(peft_model.get_base_model(), tokenizer, text, config.num_virtual_tokens)
    with torch.no_grad():
        encoder.embedding.weight.copy_(weight)


def init_prompt_from_text(peft_model, tokenizer, text: str) -> None:
    """Set a prompt-tuning model's virtual tokens to the input embeddings of ``text`` (repeated to fit).

    Same idea as peft's ``PromptTuningInit.TEXT``, without needing a tokenizer path: step 0 then equals
    prompting with that text.
    """
    config = peft_model.peft_config[peft_model.active_adapter]
    encoder = peft_model.prompt_encoder[peft_model.active_adapter]
    embeddings = peft_model.get_base_model().get_input_embeddings()
    ids = text_ids(tokenizer, text, config.num_virtual_tokens).to(embeddings.weight.device)
    with torch.no_grad():
        encoder.embedding.weight.copy_(embeddings(ids)[0])                # (n, d)


def base_weight_name(name: str, base_names) -> str | None:
    """The bare model's name of a weight seen inside a peft or adapter-wrapped model (None if it has none).

    peft prefixes names with ``base_model.`` (prompt learning) or ``base_model.model.`` (LoRA, IA3 …) and
    moves wrapped layers' weights to ``….base_layer.weight``.
    """
    name = name.replace(".base_layer.", ".")
    for prefix in ("base_model.model.", "base_model.", ""):
        if name.startswith(prefix) and name[len(prefix):] in base_names:
            return name[len(prefix):]
    return None


def changed_base_weights(model, base) -> list[str]:
    """Names of ``base``'s weights whose copy inside ``model`` is no longer bit-for-bit equal.

    Raises if some base weight cannot be found in ``model`` (so an empty list really means "all equal").
    """
    ref = dict(base.named_parameters())
    found, changed = set(), []
    for name, p in model.named_parameters():
        key = base_weight_name(name, ref)
        if key is None:
            continue
        found.add(key)
        if not torch.equal(p.detach(), ref[key].detach()):
            changed.append(key)
    missing = set(ref) - found
    if missing:
        raise ValueError(f"{len(missing)} base weights not found in the model, e.g. {sorted(missing)[:2]}")
    return changed


@torch.no_grad()
def evaluate_answers(model, batches: list[dict]) -> tuple[float, float]:
    """(loss, token accuracy) on the answer tokens of ``batches`` in one forward pass per batch.

    loss: mean cross-entropy over tokens whose label is not −100 (what ``evaluate_loss`` computes);
    accuracy: share (0–1) of those tokens the model ranks first given the correct answer so far — a
    teacher-forced exact match per token. Works for peft prompt-learning models too (their virtual tokens
    are cut off the front of the logits).
    """
    was_training = model.training
    model.eval()
    nll, hits, count = 0.0, 0, 0
    device = next(model.parameters()).device
    for b in batches:
        b = {k: v.to(device) for k, v in b.items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        logits = logits[:, -b["input_ids"].shape[1]:, :].float()       # (B, T, V) without virtual tokens
        logits, target = logits[:, :-1], b["labels"][:, 1:]           # predict token t+1 from ≤ t
        mask = target != IGNORE_INDEX                                           # (B, T-1)
        nll += float(torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="sum"))
        hits += int((logits[mask].argmax(-1) == target[mask]).sum())
        count += int(mask.sum())
    model.train(was_training)
    return nll / max(count, 1), hits / max(count, 1)
