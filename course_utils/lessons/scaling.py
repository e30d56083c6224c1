"""Memory per GPU under data parallelism (DDP), DeepSpeed ZeRO stages 1–3 and FSDP.

Training state per parameter, in bytes, with mixed precision and AdamW (the ZeRO paper's accounting):
2 (bf16 weight) + 2 (bf16 gradient) + 12 (fp32 master weight, Adam m and v) = 16 bytes. A frozen weight needs
only its storage (2 bytes in bf16, ≈ 0.516 in NF4). Those bytes per state are memory arithmetic and live in
``course_utils.lessons.memory`` (``Precision``, ``MIXED_ADAMW``, ``FP32_ADAMW``, ``NF4_BASE``, ``training_state_bytes``);
this module holds the sharding. Sharding divides a state by the number of GPUs N:

| scheme | weights | gradients | optimizer states |
|---|---|---|---|
| DDP (ZeRO-0) | full | full | full |
| ZeRO-1 | full | full | ÷ N |
| ZeRO-2 / FSDP SHARD_GRAD_OP | full | ÷ N | ÷ N |
| ZeRO-3 / FSDP FULL_SHARD | ÷ N | ÷ N | ÷ N |

    >>> round(per_gpu_gb(3.8e9, scheme="zero3", n_gpus=4)["total"], 1)   # Phi-3-mini, full fine-tuning
    15.2
"""

from __future__ import annotations

from course_utils.lessons.memory import MIXED_ADAMW, Precision, training_state_bytes

GB = 1e9
SCHEMES = ("ddp", "zero1", "zero2", "zero3", "fsdp_shard_grad_op", "fsdp_full_shard")
# which states each scheme shards: (weights, gradients, optimizer)
_SHARDED = {"ddp": (False, False, False), "zero1": (False, False, True), "zero2": (False, True, True),
            "zero3": (True, True, True), "fsdp_shard_grad_op": (False, True, True),
            "fsdp_full_shard": (True, True, True)}


def per_gpu_bytes(total_params: float, trainable_params: float | None = None, scheme: str = "ddp",
                  n_gpus: int = 1, precision: Precision = MIXED_ADAMW) -> dict[str, float]:
    """Bytes per GPU of weights, gradients and optimizer states (activations excluded: they depend on batch).

    ``memory.training_state_bytes`` (one GPU's bytes of each state), each state divided by ``n_gpus`` where
    ``scheme`` shards it.
    """
    if scheme not in _SHARDED:
        raise ValueError(f"scheme={scheme!r}: expected one of {SCHEMES}")
    if n_gpus < 1:
        raise ValueError(f"n_gpus={n_gpus}: need at least one GPU")
    state = training_state_bytes(total_params, trainable_params, precision)
    shard_w, shard_g, shard_o = _SHARDED[scheme]
    div = lambda sharded: n_gpus if sharded else 1  # noqa: E731
    weights = state["weights"] / div(shard_w)
    grads = state["gradients"] / div(shard_g)
    optimizer = state["optimizer"] / div(shard_o)
    return {"weights": weights, "gradients": grads, "optimizer": optimizer, "total": weights + grads + optimizer}


def per_gpu_gb(total_params: float, trainable_params: float | None = None, scheme: str = "ddp",
               n_gpus: int = 1, precision: Precision = MIXED_ADAMW) -> dict[str, float]:
    """``per_gpu_bytes`` in GB (10⁹ bytes)."""
    return {k: v / GB for k, v in per_gpu_bytes(total_params, trainable_params, scheme, n_gpus, precision).items()}
