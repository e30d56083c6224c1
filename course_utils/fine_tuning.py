"""Fine-tuning basics (notebook 01): which parameters to train, and what training costs in memory.

Freezing strategies decide which parameters get gradients; the memory accounting turns a model's shape
into bytes for weights, gradients, AdamW states and activations, for full fine-tuning, LoRA and QLoRA.

    >>> n = freeze(model, "last_n", n_last=2)        # only the last two decoder blocks (+ final norm) train
    >>> snap = snapshot_frozen(model); ...train...; changed_frozen(model, snap)   # [] : frozen = bit-for-bit
    >>> shape = ModelShape.from_config(model.config, "SmolLM2-135M")
    >>> memory_breakdown(shape, "qlora", batch=4, seq_len=512, r=16)   # {'weights': …, 'grads': …, …} bytes
"""

from __future__ import annotations

import ctypes
import gc
from dataclasses import dataclass

import torch
from torch import nn

from course_utils.quant import bits_per_param

STRATEGIES = ("full", "last_n", "head", "norms")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# NF4 with double quantization: 4 bits per weight, one 8-bit absmax per block of 64 weights, and one fp32
# scale per 256 absmax values (Dettmers et al. 2023, QLoRA, §3) → 0.5 + 1/64 + 4/(64·256) bytes per weight.
NF4_DQ_BYTES = bits_per_param(64, double_quant=True) / 8


# --------------------------------------------------------------------------- the lessons' Q&A format

def qa_prompt(question: str) -> str:
    """The plain prompt of notebooks 01–02: the answer follows ``Answer:``.

    >>> qa_prompt("How often should I descale?")
    'Question: How often should I descale?\nAnswer:'
    """
    return f"Question: {question}\nAnswer:"


def qa_pairs(rows: list[dict]) -> tuple[list[str], list[str]]:
    """(prompts, completions) of ``domain_qa`` rows for ``make_batches``; each completion is ' ' + answer."""
    return [qa_prompt(r["question"]) for r in rows], [" " + r["answer"] for r in rows]


# --------------------------------------------------------------------------- freezing strategies

def decoder_layers(model) -> nn.ModuleList:
    """The list of decoder blocks of a Hugging Face causal LM (``model.model.layers`` for Llama/Phi-3)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no .model.layers: not a Llama-style decoder")
    return layers


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

    >>> freeze(model, "norms")   # SmolLM2-135M: 61 norms × 576 = 35,136
    35136
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


# --------------------------------------------------------------------------- memory accounting

@dataclass(frozen=True)
class ModelShape:
    """What the memory formulas need to know about a Llama-style decoder.

    hidden h, intermediate (MLP) I, kv_dim = key/value heads × head size, vocab V, tied = input and output
    embeddings share one matrix.
    """

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_dim: int
    vocab: int
    tied: bool = False

    @classmethod
    def from_config(cls, config, name: str) -> ModelShape:
        """The shape of a transformers Llama/Phi-3/Mistral config."""
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return cls(name=name, layers=config.num_hidden_layers, hidden=config.hidden_size,
                   intermediate=config.intermediate_size, heads=config.num_attention_heads,
                   kv_dim=kv_heads * head_dim, vocab=config.vocab_size,
                   tied=bool(getattr(config, "tie_word_embeddings", False)))

    @property
    def linear_params(self) -> int:
        """Weights of the 7 projections (q, k, v, o, gate, up, down) over all layers: what LoRA targets."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return self.layers * (2 * h * h + 2 * h * kv + 3 * h * i)

    @property
    def params(self) -> int:
        """All parameters: projections + norms (2 per layer + final) + embeddings (+ head when untied)."""
        norms = (2 * self.layers + 1) * self.hidden
        return self.linear_params + norms + self.vocab * self.hidden * (1 if self.tied else 2)

    def lora_params(self, r: int) -> int:
        """LoRA parameters, rank r on all 7 projections: r·(in + out) per projection (A is r×in, B is out×r)."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return self.layers * r * (2 * (h + h) + 2 * (h + kv) + 2 * (h + i) + (i + h))


# Configs from the models' config.json on the Hugging Face hub (microsoft/Phi-3-mini-4k-instruct,
# meta-llama/Llama-2-7b-hf); written out here because the cpu profile is offline.
PHI3_MINI = ModelShape("Phi-3-mini (3.8B)", layers=32, hidden=3072, intermediate=8192, heads=32, kv_dim=3072,
                       vocab=32064)
LLAMA_7B = ModelShape("Llama-2-7B", layers=32, hidden=4096, intermediate=11008, heads=32, kv_dim=4096,
                      vocab=32000)


def activation_values(shape: ModelShape, method: str = "full", r: int = 16, checkpointing: bool = False) -> int:
    """Values autograd keeps per token for the backward pass (SDPA attention, no dropout).

    Counted from what PyTorch saves in a Llama block (tests/test_finetune.py checks the count exactly):
    full: per layer 8h + 2·kv + 4I + heads + 2 (norm inputs/outputs, q, k, v, attention output and its
    log-sum-exp, the MLP's gate/up/act/down inputs), then 3h + 1 for the final norm and V for the logits.
    LoRA/QLoRA (all 7 projections, frozen base): the norms' weight-gradient copies (2h) are not needed,
    each adapter keeps its r-dimensional hidden (7r): 6h + 2·kv + 4I + heads + 2 + 7r per layer, h + 1 + V
    after the last layer, and the first block's input norm keeps nothing (h + 1 less): no gradient has to
    reach the frozen embeddings. Gradient checkpointing keeps each layer's input (h) plus one layer's worth.
    """
    h, kv, i, a, v = shape.hidden, shape.kv_dim, shape.intermediate, shape.heads, shape.vocab
    if method == "full":
        per_layer, tail = 8 * h + 2 * kv + 4 * i + a + 2, 3 * h + 1 + v
    elif method in ("lora", "qlora"):
        per_layer, tail = 6 * h + 2 * kv + 4 * i + a + 2 + 7 * r, v  # (h + 1) after the last layer − (h + 1)
    else:
        raise ValueError(f"method={method!r}: expected 'full', 'lora' or 'qlora'")
    if checkpointing:
        return shape.layers * h + per_layer + tail
    return shape.layers * per_layer + tail


def memory_breakdown(shape: ModelShape, method: str = "full", *, batch: int = 1, seq_len: int = 512,
                     r: int = 16, weight_bytes: int = 2, act_bytes: int | None = None,
                     checkpointing: bool = False, mixed_precision: bool = True) -> dict[str, float]:
    """Training memory in bytes: weights, gradients, AdamW states, activations (and their total).

    full: weights and gradients in ``weight_bytes`` each, AdamW's two fp32 moments (8 B) and, when the
    weights are 16-bit, an fp32 master copy (4 B): 16 bytes per parameter either way. With
    ``mixed_precision=False`` (a plain loop on 16-bit weights) the moments take the weights' dtype and there
    is no master copy: 4 · weight_bytes per parameter.
    lora: frozen base in ``weight_bytes`` + fp32 adapters (4 B weight + 4 B grad + 8 B AdamW).
    qlora: the 7 projections in NF4 with double quantization (``NF4_DQ_BYTES``), embeddings and norms in
    ``weight_bytes``, adapters as in LoRA. Activations: ``activation_values`` × batch × seq_len ×
    ``act_bytes`` (default: ``weight_bytes``).

    >>> memory_breakdown(PHI3_MINI, "full", batch=4, seq_len=512)["total"] / 1e9   # ≈ 78 GB
    """
    P, act_bytes = shape.params, act_bytes or weight_bytes
    acts = float(activation_values(shape, method, r, checkpointing) * batch * seq_len * act_bytes)
    if method == "full":
        master = 4 if weight_bytes < 4 else 0
        states = 8 + master if mixed_precision else 2 * weight_bytes
        out = {"weights": P * weight_bytes, "grads": P * weight_bytes, "optimizer": P * states}
    else:
        n = shape.lora_params(r)
        if method == "lora":
            base = P * weight_bytes
        else:  # qlora
            base = shape.linear_params * NF4_DQ_BYTES + (P - shape.linear_params) * weight_bytes
        out = {"weights": base + 4 * n, "grads": 4 * n, "optimizer": 8 * n}
    out = {k: float(v) for k, v in out.items()}
    out["activations"] = acts
    out["total"] = sum(out.values())
    return out


def gib(nbytes: float) -> float:
    """Bytes → GiB (2**30 bytes)."""
    return nbytes / 2**30


def saved_activation_bytes(model, batch: dict) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass (parameters excluded).

    Runs forward + backward once under ``torch.autograd.graph.saved_tensors_hooks`` and sums the storages
    it saw (each storage once). The gradients it leaves are cleared.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())
