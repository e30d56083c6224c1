"""TRL on a CPU without Triton: a plain-torch stand-in for TRL's fused log-prob kernel, and profile-aware configs.

TRL 1.15's ``SFTTrainer`` always computes its loss through ``trl.trainer.utils._ChunkedLogProbFunction``, a
Triton kernel. The CPU build of torch ships no Triton, so TRL leaves that slot ``None`` and the first training
step fails with ``AttributeError: 'NoneType' object has no attribute 'apply'`` (Unsloth fills the slot with its
own kernel, which is why Unsloth's path works). ``patch_trl()`` fills the empty slot with ``TorchLogProbs``,
the same computation in ordinary differentiable torch ops. With Triton present it changes nothing.

Example::

    from course_utils.core.trl_compat import SFTTrainer, sft_config   # patched on import
    args = sft_config(output_dir="out", max_steps=8)            # on the cpu profile: use_cpu, CPU precision
"""

from __future__ import annotations

import torch

OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


class TorchLogProbs:
    """``_ChunkedLogProbFunction.apply`` in plain torch: per-token log p(target) of ``hidden @ weight.T``.

    hidden (N, H), weight (V, H), bias (V,) or None, targets (N,) → five (N,) tensors (or None when an optional
    output is not requested): log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1. Processes tokens in
    chunks so the (N, V) logits never exist at once in the forward pass.
    """

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
              logit_scale=1.0, outputs=OUTPUTS, token_chunk: int = 1024):
        pieces = []
        for s in range(0, hidden.shape[0], token_chunk):
            y = torch.nn.functional.linear(hidden[s:s + token_chunk], weight, bias).float() * logit_scale  # (n, V)
            if final_logit_softcapping is not None:
                y = final_logit_softcapping * torch.tanh(y / final_logit_softcapping)
            z = y / temperature                                                   # (n, V)
            log_p = torch.log_softmax(z, dim=-1)                                  # (n, V)
            t = targets[s:s + token_chunk]
            row = {"log_probs": log_p.gather(1, t[:, None])[:, 0]}
            with torch.no_grad():  # metrics only (TRL logs them detached): no autograd graph over (n, V)
                if "entropy" in outputs:
                    row["entropy"] = -(log_p.exp() * log_p).sum(-1)
                if "log_sum_sq_probs" in outputs:
                    row["log_sum_sq_probs"] = torch.logsumexp(2 * log_p, dim=-1)
                if "mean_logits" in outputs:
                    row["mean_logits"] = z.mean(-1)
                if "is_top1" in outputs:
                    row["is_top1"] = z.argmax(-1) == t
            pieces.append(row)
        keys = ("log_probs",) + OUTPUTS
        return tuple(torch.cat([p[k] for p in pieces]) if k in pieces[0] else None for k in keys)


def patch_trl() -> bool:
    """Fill TRL's empty fused-kernel slot with ``TorchLogProbs``; return True if a patch was applied."""
    import trl.trainer.utils as tu

    if getattr(tu, "_ChunkedLogProbFunction", None) is None:
        tu._ChunkedLogProbFunction = TorchLogProbs
        return True
    return False


def sft_config(**kwargs):
    """``trl.SFTConfig`` with the course's defaults: the profile's precision and device, no reports, no saves.

    The profile decides, not ``torch.cuda.is_available()``: ``COURSE_PROFILE=cpu`` on a GPU machine trains on the
    CPU. TRL turns bf16 on by default even on CPU, where it can be slower than fp32;
    ``runtime.precision_flags`` decides instead: on a CPU bf16 autocast only where ``runtime.cpu_bf16()``
    measured it faster, on a GPU bf16 (Ampere+) or fp16 (T4). TRL also turns gradient
    checkpointing on by default, which recomputes activations every step (``python -m course_utils.bench
    efficiency`` measures a step with and without it): here it is off unless the caller asks,
    ``sft_config(..., gradient_checkpointing=True)``.
    """
    from trl import SFTConfig

    from course_utils.core.runtime import precision_flags, settings

    device = settings().device
    defaults = dict(**precision_flags(device), use_cpu=device == "cpu", report_to="none", save_strategy="no",
                    logging_steps=1, dataloader_num_workers=0, gradient_checkpointing=False)
    return SFTConfig(**{**defaults, **kwargs})


patch_trl()
from course_utils.core.efficiency import install as _install_efficiency  # noqa: E402

_install_efficiency()  # every Trainer prints its efficiency line (scripts too)
from trl import SFTTrainer  # noqa: E402  (re-exported after the patch)

__all__ = ["SFTTrainer", "TorchLogProbs", "patch_trl", "sft_config"]
