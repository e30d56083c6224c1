"""Knowledge distillation (지식 증류) from scratch: logit loss, layer-subset student, top-k teacher cache.

Also ``top1_agreement``. Sequence-level distillation needs only generation and training:
``models.generate_replies`` and ``train.train``. Shapes: N tokens, V vocabulary, k cached logits per token.
Targets equal to ``IGNORE_INDEX`` are skipped.

    >>> teacher_logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, -0.5]])   # (N, V) = (2, 3)
    >>> targets = torch.tensor([0, IGNORE_INDEX])                             # (N,): token 2 is skipped
    >>> kd_loss(teacher_logits, teacher_logits, targets, T=2.0, alpha=1.0)    # a student equal to its teacher
    tensor(0.)
    >>> values, indices = topk_logits(teacher_logits, k=2)    # the cache: k values + k ids per token, (N, k)
    >>> indices
    tensor([[0, 1],
            [1, 0]])
    >>> student_logits = torch.zeros(2, 3)
    >>> v, i = topk_logits(teacher_logits, k=3)               # k = V: the cache is the whole distribution
    >>> loss_k = topk_kd_loss(student_logits, v, i, targets)
    >>> torch.allclose(loss_k, kd_loss(student_logits, teacher_logits, targets))
    True

Example::

    student = layer_subset_student(teacher, keep=[0, 6, 12, 18, 24, 29])
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from course_utils.core.train import IGNORE_INDEX

# --------------------------------------------------------------------------- the loss

def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, T: float = 2.0,
            alpha: float = 0.5) -> torch.Tensor:
    """α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1−α)·CE(z_s, y), averaged over the kept tokens.

    The T² keeps the distillation gradient's size independent of T: ∂(T²·KL)/∂z_s = T·(q_T − p_T), which
    tends to (z_s − z_t)/V for large T (centred logits), instead of shrinking like 1/T².
    Shapes: logits (N, V), targets (N,) with ``IGNORE_INDEX`` for tokens to skip.
    """
    keep = targets != IGNORE_INDEX                                                     # (N,)
    s, t = student_logits[keep].float(), teacher_logits[keep].float()                 # (n, V)
    log_q = F.log_softmax(s / T, dim=-1)                                               # student, softened
    log_p = F.log_softmax(t / T, dim=-1)                                               # teacher, softened
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()                                # KL(p ‖ q) per token
    ce = F.cross_entropy(s, targets[keep])
    return alpha * T * T * kl + (1 - alpha) * ce


def topk_logits(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest logits of each position and their token ids: what a top-k cache stores.

    Shape: (..., V) → values (..., k) in the logits' dtype, indices (..., k) int64.
    """
    values, indices = logits.detach().topk(k, dim=-1)
    return values, indices


def topk_kd_loss(student_logits: torch.Tensor, topk_values: torch.Tensor, topk_indices: torch.Tensor,
                 targets: torch.Tensor, T: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """``kd_loss`` with a cached top-k teacher: the teacher's distribution renormalised on its k tokens.

    The student's log-probabilities are still over the whole vocabulary (gathered at the k tokens), so it
    is pushed down on every token the teacher ignores. Shapes: student (N, V), cache (N, k), targets (N,).
    """
    keep = targets != IGNORE_INDEX
    s = student_logits[keep].float()                                                   # (n, V)
    log_p = F.log_softmax(topk_values[keep].float() / T, dim=-1)                      # (n, k), renormalised
    log_q = F.log_softmax(s / T, dim=-1).gather(-1, topk_indices[keep])               # (n, k)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    ce = F.cross_entropy(s, targets[keep])
    return alpha * T * T * kl + (1 - alpha) * ce


def shift_for_causal_lm(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align a causal LM's logits with the next tokens: (B, T, V), (B, T) → (B·(T−1), V), (B·(T−1),)."""
    return logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)


# --------------------------------------------------------------------------- the student

def layer_subset_student(teacher: nn.Module, keep: list[int]) -> nn.Module:
    """A smaller model of the teacher's class, keeping only the decoder layers ``keep`` (in that order).

    The same embeddings, norm, head and tokenizer; every kept layer starts from the teacher's weights.

    Example::

        layer_subset_student(teacher, [0, 15, 29]).config.num_hidden_layers   # 3
    """
    if not keep or len(set(keep)) != len(keep):
        raise ValueError(f"keep={keep!r}: give each layer index once, at least one")
    n = len(teacher.model.layers)
    if not all(0 <= i < n for i in keep):
        raise ValueError(f"keep={keep!r}: the teacher has layers 0..{n - 1}")
    layers = teacher.model.layers
    teacher.model.layers = nn.ModuleList([layers[i] for i in keep])
    try:
        student = copy.deepcopy(teacher)  # copies only the kept layers; no random init of weights we'd overwrite
    finally:
        teacher.model.layers = layers
    cfg = student.config
    cfg.num_hidden_layers = len(keep)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    for new_idx, layer in enumerate(student.model.layers):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_idx  # the KV cache is indexed by position in the stack
    return student.requires_grad_(True).eval()


# --------------------------------------------------------------------------- measuring students

@torch.no_grad()
def top1_agreement(student_logits: torch.Tensor, teacher_logits_or_ids: torch.Tensor,
                   mask: torch.Tensor | None = None) -> float:
    """Share of positions where the student's most likely token is the teacher's.

    ``teacher_logits_or_ids``: logits (..., V) or the teacher's argmax ids (...); ``mask`` (...) selects
    the positions that count.
    """
    s = student_logits.argmax(-1)
    t = teacher_logits_or_ids if teacher_logits_or_ids.dtype == torch.long else teacher_logits_or_ids.argmax(-1)
    same = (s == t).float()
    if mask is not None:
        same = same[mask.bool()]
    return float(same.mean())


@torch.no_grad()
def teacher_targets(teacher: nn.Module, batches: list[dict], k: int = 32) -> list[dict[str, torch.Tensor]]:
    """What evaluation needs from the teacher, computed once per batch, on CPU.

    Shifted to next-token positions: its argmax ``ids`` (B, T−1) and its top-k logits ``values``/``indices``
    (B, T−1, k).
    """
    teacher.eval()
    device = next(teacher.parameters()).device
    out = []
    for b in batches:
        logits = teacher(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
        values, indices = topk_logits(logits[:, :-1].float(), k)                       # (B, T−1, k) each
        out.append({"ids": logits[:, :-1].argmax(-1).cpu(), "values": values.cpu(), "indices": indices.cpu()})
    return out


@torch.no_grad()
def eval_student(model: nn.Module, batches: list[dict], targets: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """A student measured against the text and the teacher, token-weighted over the batches' labels.

    perplexity: exp(mean CE) on the text; agreement: share of positions where its top-1 token is the
    teacher's; kl: KL(teacher ‖ student) with the teacher restricted to its cached top-k (T = 1).
    ``targets`` comes from ``teacher_targets`` on the same batches.
    """
    model.eval()
    device = next(model.parameters()).device
    nll = agree = kl = 0.0
    count = 0
    for batch, tgt in zip(batches, targets):
        b = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits   # (B, T, V)
        flat, y = shift_for_causal_lm(logits.float(), b["labels"])                             # (N, V), (N,)
        keep = y != IGNORE_INDEX
        n = int(keep.sum())
        k = tgt["values"].shape[-1]
        nll += float(F.cross_entropy(flat[keep], y[keep], reduction="sum"))
        agree += top1_agreement(flat[keep], tgt["ids"].to(device).reshape(-1)[keep]) * n
        kl += float(topk_kd_loss(flat, tgt["values"].to(device).reshape(-1, k), tgt["indices"].to(device).reshape(-1, k),
                                 y, T=1.0, alpha=1.0)) * n
        count += n
    count = max(count, 1)
    return {"perplexity": float(torch.exp(torch.tensor(nll / count))), "agreement": agree / count, "kl": kl / count}
