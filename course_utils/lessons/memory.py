"""Training memory arithmetic (notebooks 01, 07, 10 and the preflight): bytes per weight, gradient, optimizer
state and activation for full fine-tuning, LoRA and QLoRA, from a model's shape or parameter counts.

Every byte count derives from a few definitions here: the sizes of fp32 and 16-bit values (from torch),
AdamW's two moments, and NF4's bytes per weight (from ``course_utils.lessons.quantization.bits_per_param``,
notebook 04). Built on them: ``memory_breakdown`` (a model shape), ``Precision`` and ``training_state_bytes``
(the per-state bytes that notebook 10's sharding, ``course_utils.lessons.scaling``, divides among GPUs), QLoRA's
whole-model ``footprint_bytes`` and AdamW's ``adamw_state_bytes`` (notebook 07), each checked against
tensors that exist (``state_bytes``, ``saved_activation_bytes``) or the process's peak (``course_utils.core.peak_memory.PeakMemory``).

>>> shape = ModelShape("toy", layers=2, hidden=8, intermediate=16, heads=2, kv_dim=8, vocab=32)
>>> shape.linear_params, shape.lora_params(4)
(1280, 1088)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from course_utils.lessons.lora_math import lora_param_count
from course_utils.lessons.quantization import bits_per_param

FP32_BYTES = torch.finfo(torch.float32).bits // 8    # 4: fp32 weights, master copies, Adam moments, absmax
HALF_BYTES = torch.finfo(torch.bfloat16).bits // 8   # 2: a bf16 (or fp16) weight or gradient
ADAMW_MOMENTS = 2                                    # AdamW keeps m and v per trained weight
ADAMW_BYTES = ADAMW_MOMENTS * FP32_BYTES             # 8: both moments in fp32
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
        projections = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]   # q k v o gate up down
        return self.layers * sum(lora_param_count(d_in, d_out, r) for d_in, d_out in projections)


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
        master = FP32_BYTES if weight_bytes < FP32_BYTES else 0
        states = ADAMW_BYTES + master if mixed_precision else ADAMW_MOMENTS * weight_bytes
        out = {"weights": P * weight_bytes, "grads": P * weight_bytes, "optimizer": P * states}
    else:
        n = shape.lora_params(r)
        if method == "lora":
            base = P * weight_bytes
        else:  # qlora
            base = shape.linear_params * NF4_DQ_BYTES + (P - shape.linear_params) * weight_bytes
        out = {"weights": base + FP32_BYTES * n, "grads": FP32_BYTES * n, "optimizer": ADAMW_BYTES * n}
    out = {k: float(v) for k, v in out.items()}
    out["activations"] = acts
    out["total"] = sum(out.values())
    return out


# --------------------------------------------------------------------------- bytes per parameter of each state

@dataclass(frozen=True)
class Precision:
    """Bytes per parameter of each training state."""

    weight: float = float(HALF_BYTES)                    # bf16 working copy
    grad: float = float(HALF_BYTES)                      # bf16 gradient
    optimizer: float = float(FP32_BYTES + ADAMW_BYTES)   # fp32 master copy + Adam m + v
    frozen: float = float(HALF_BYTES)                    # a weight that is not trained (bf16; ``NF4_DQ_BYTES`` for NF4)


MIXED_ADAMW = Precision()   # 2 + 2 + 12 = 16 bytes per trained parameter (the ZeRO paper's accounting)
FP32_ADAMW = Precision(weight=float(FP32_BYTES), grad=float(FP32_BYTES), optimizer=float(ADAMW_BYTES),
                       frozen=float(FP32_BYTES))  # no master copy: m and v only
NF4_BASE = Precision(frozen=NF4_DQ_BYTES)  # QLoRA: the frozen base in NF4 with double quantization (≈ 0.516 B)


def training_state_bytes(total_params: float, trainable_params: float | None = None,
                         precision: Precision = MIXED_ADAMW) -> dict[str, float]:
    """Bytes of weights, gradients and optimizer states on one device, unsharded (activations excluded).

    ``trainable_params`` defaults to all (full fine-tuning); with LoRA it is the adapter size and the rest of
    the weights are frozen (stored at ``precision.frozen`` bytes, no gradient, no optimizer state).

    >>> training_state_bytes(1e9)   # full fine-tuning, mixed precision: 2 + 2 + 12 bytes per parameter
    {'weights': 2000000000.0, 'gradients': 2000000000.0, 'optimizer': 12000000000.0}
    """
    trainable = total_params if trainable_params is None else trainable_params
    frozen = total_params - trainable
    return {"weights": trainable * precision.weight + frozen * precision.frozen,
            "gradients": trainable * precision.grad, "optimizer": trainable * precision.optimizer}


def footprint_bytes(n_quantized: int, n_other: int, bits_quantized: float = 4.0, bytes_other: float = 2.0) -> float:
    """Weight memory in bytes: quantized Linear weights at ``bits_quantized`` bits, the rest at ``bytes_other``.

    Bits per NF4 weight come from notebook 04: ``course_utils.lessons.quantization.bits_per_param(64, double_quant=True)``
    = 4 + 8/64 + 32/(64·256) ≈ 4.127 (4-bit code + double-quantized block scale).

    >>> round(footprint_bytes(3_623_878_656, 197_200_896, bits_per_param(64, double_quant=True), 2) / 1e9, 3)
    2.264
    """
    return n_quantized * bits_quantized / 8 + n_other * bytes_other


def adamw_state_bytes(numels: list[int], bits: int = 32, blocksize: int = 256, min_8bit_size: int = 4096) -> int:
    """AdamW's state for tensors of ``numels`` elements: two moments per weight (and torch's step counter).

    32-bit (``torch.optim.AdamW``): 4 + 4 bytes per weight, plus a 4-byte ``step`` tensor per parameter.
    8-bit (``bnb.optim.AdamW8bit``): 1 + 1 bytes per weight plus one fp32 absmax per block of ``blocksize`` for
    each moment, and the two 256-entry fp32 code tables once (if any tensor is 8-bit); tensors under ``min_8bit_size`` elements keep
    32-bit moments (no step tensor: bitsandbytes counts steps in Python).

    >>> adamw_state_bytes([4096], 32), adamw_state_bytes([4096], 8)
    (32772, 10368)
    """
    if bits == 32:
        return sum(ADAMW_BYTES * n + FP32_BYTES for n in numels)
    if bits != 8:
        raise ValueError(f"bits={bits}: expected 32 or 8")
    code_tables = ADAMW_MOMENTS * 256 * FP32_BYTES if any(n >= min_8bit_size for n in numels) else 0
    total = code_tables
    for n in numels:   # 8-bit moments: 1 byte each, plus an fp32 absmax per block for each moment
        total += (ADAMW_MOMENTS * n + ADAMW_MOMENTS * FP32_BYTES * math.ceil(n / blocksize) if n >= min_8bit_size
                  else ADAMW_BYTES * n)
    return total


# --------------------------------------------------------------------------- measured from tensors that exist

def state_bytes(optimizer) -> int:
    """Bytes of every tensor in an optimizer's state, each storage counted once (bnb shares its code tables).

    >>> p = torch.nn.Parameter(torch.ones(10)); p.grad = torch.ones(10)
    >>> opt = torch.optim.AdamW([p]); opt.step(); state_bytes(opt)   # m, v (10 fp32 each) and the step counter
    84
    """
    seen, total = set(), 0
    for state in optimizer.state.values():
        for t in state.values():
            if torch.is_tensor(t) and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


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
