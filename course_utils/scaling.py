"""Memory per GPU under data parallelism (DDP), DeepSpeed ZeRO stages 1–3 and FSDP.

Training state per parameter, in bytes, with mixed precision and AdamW (the ZeRO paper's accounting):
2 (bf16 weight) + 2 (bf16 gradient) + 12 (fp32 master weight, Adam m and v) = 16 bytes. A frozen weight needs
only its storage (2 bytes in bf16, ≈ 0.516 in NF4, ``NF4_BYTES``). Sharding divides a state by the number of GPUs N:

| scheme | weights | gradients | optimizer states |
|---|---|---|---|
| DDP (ZeRO-0) | full | full | full |
| ZeRO-1 | full | full | ÷ N |
| ZeRO-2 / FSDP SHARD_GRAD_OP | full | ÷ N | ÷ N |
| ZeRO-3 / FSDP FULL_SHARD | ÷ N | ÷ N | ÷ N |

    >>> per_gpu_gb(3.8e9, scheme="zero3", n_gpus=4)["total"]   # Phi-3-mini, full fine-tuning
"""

from __future__ import annotations

from dataclasses import dataclass

from course_utils.memory import NF4_DQ_BYTES

GB = 1e9
SCHEMES = ("ddp", "zero1", "zero2", "zero3", "fsdp_shard_grad_op", "fsdp_full_shard")
# which states each scheme shards: (weights, gradients, optimizer)
_SHARDED = {"ddp": (False, False, False), "zero1": (False, False, True), "zero2": (False, True, True),
            "zero3": (True, True, True), "fsdp_shard_grad_op": (False, True, True),
            "fsdp_full_shard": (True, True, True)}


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter of each training state."""

    weight: float = 2.0      # bf16 working copy
    grad: float = 2.0        # bf16 gradient
    optimizer: float = 12.0  # fp32 master copy + Adam m + v
    frozen: float = 2.0      # a weight that is not trained (bf16; ``NF4_BYTES`` for NF4)


MIXED_ADAMW = Precision()
FP32_ADAMW = Precision(weight=4.0, grad=4.0, optimizer=8.0, frozen=4.0)  # no master copy: m and v only
# NF4 with double quantization (blocks of 64, notebook 04): 4 + 8/64 + 32/(64·256) ≈ 4.127 bits ≈ 0.516 B
NF4_BYTES = NF4_DQ_BYTES
NF4_BASE = Precision(frozen=NF4_BYTES)


def per_gpu_bytes(total_params: float, trainable_params: float | None = None, scheme: str = "ddp",
                  n_gpus: int = 1, precision: Precision = MIXED_ADAMW) -> dict[str, float]:
    """Bytes per GPU of weights, gradients and optimizer states (activations excluded: they depend on batch).

    ``trainable_params`` defaults to all (full fine-tuning); with LoRA it is the adapter size and the rest of
    the weights are frozen (stored at ``precision.frozen`` bytes, no gradient, no optimizer state).
    """
    if scheme not in _SHARDED:
        raise ValueError(f"scheme={scheme!r}: expected one of {SCHEMES}")
    if n_gpus < 1:
        raise ValueError(f"n_gpus={n_gpus}: need at least one GPU")
    trainable = total_params if trainable_params is None else trainable_params
    frozen = total_params - trainable
    shard_w, shard_g, shard_o = _SHARDED[scheme]
    div = lambda sharded: n_gpus if sharded else 1  # noqa: E731
    weights = (trainable * precision.weight + frozen * precision.frozen) / div(shard_w)
    grads = trainable * precision.grad / div(shard_g)
    optimizer = trainable * precision.optimizer / div(shard_o)
    return {"weights": weights, "gradients": grads, "optimizer": optimizer, "total": weights + grads + optimizer}


def per_gpu_gb(total_params: float, trainable_params: float | None = None, scheme: str = "ddp",
               n_gpus: int = 1, precision: Precision = MIXED_ADAMW) -> dict[str, float]:
    """``per_gpu_bytes`` in GB (10⁹ bytes)."""
    return {k: v / GB for k, v in per_gpu_bytes(total_params, trainable_params, scheme, n_gpus, precision).items()}
