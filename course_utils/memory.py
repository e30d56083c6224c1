"""Training memory arithmetic (notebooks 01, 07, 10 and the preflight): bytes per weight, gradient, optimizer
state and activation for full fine-tuning, LoRA and QLoRA, from a model's shape.

The NF4 bytes per weight derive from ``course_utils.quantization.bits_per_param`` (notebook 04); the
per-GPU sharding of notebook 10 (``course_utils.scaling``) and QLoRA's whole-model footprint
(``course_utils.qlora.footprint_bytes``) use the same constant.

>>> shape = ModelShape("toy", layers=2, hidden=8, intermediate=16, heads=2, kv_dim=8, vocab=32)
>>> shape.linear_params, shape.lora_params(4)
(1280, 1088)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from course_utils.quantization import bits_per_param

# NF4 with double quantization: 4 bits per weight, one 8-bit absmax per block of 64 weights, and one fp32
# scale per 256 absmax values (Dettmers et al. 2023, QLoRA, §3) → 0.5 + 1/64 + 4/(64·256) bytes per weight.
NF4_DQ_BYTES = bits_per_param(64, double_quant=True) / 8


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
# meta-llama/Llama-2-7b-hf); written out here because the cpu profile is offline. Phi-3-mini's sizes are
# stated once, in transformers' config names: ``qlora.phi3_mini_config`` builds its config from the same dict.
PHI3_MINI_SIZES = dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
PHI3_MINI = ModelShape("Phi-3-mini (3.8B)", layers=PHI3_MINI_SIZES["num_hidden_layers"],
                       hidden=PHI3_MINI_SIZES["hidden_size"], intermediate=PHI3_MINI_SIZES["intermediate_size"],
                       heads=PHI3_MINI_SIZES["num_attention_heads"],
                       kv_dim=PHI3_MINI_SIZES["num_key_value_heads"] * (PHI3_MINI_SIZES["hidden_size"]
                                                                       // PHI3_MINI_SIZES["num_attention_heads"]),
                       vocab=PHI3_MINI_SIZES["vocab_size"])
LLAMA_7B = ModelShape("Llama-2-7B", layers=32, hidden=4096, intermediate=11008, heads=32, kv_dim=4096,
                      vocab=32000)


def activation_values(shape: ModelShape, method: str = "full", r: int = 16, checkpointing: bool = False) -> int:
    """Values autograd keeps per token for the backward pass (SDPA attention, no dropout).

    Counted from what PyTorch saves in a Llama block (tests/test_fine_tuning.py checks the count exactly):
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

    >>> round(memory_breakdown(PHI3_MINI, "full", batch=4, seq_len=512)["total"] / 1e9)
    70
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
