"""Evaluation metrics the lessons share: perplexity, chrF, exact match.

    >>> chrf(["안녕하세요"], ["안녕하세요"]), round(chrf(["안녕하세요"], ["안녕히 가세요"]), 1)   # 0–100
    (100.0, 22.1)
    >>> exact_match(["Paris.", "4"], ["paris", "5"])     # compared after ``normalize``
    0.5

Example::

    perplexity(model, tok, ["The sky is blue."])     # exp(mean token loss), a float ≥ 1
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], max_len: int = 128, batch_size: int = 8) -> float:
    """Token-weighted perplexity exp(mean NLL) of ``model`` on ``texts`` (each truncated to max_len)."""
    model.eval()
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                        max_length=max_len).to(device)
        logits = model(**enc).logits[:, :-1].float()                       # (B, T-1, V)
        target = enc["input_ids"][:, 1:]                                    # (B, T-1)
        mask = enc["attention_mask"][:, 1:].bool()                          # (B, T-1)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        nll += float(loss[mask].sum())
        count += int(mask.sum())
    return math.exp(nll / max(count, 1))


def chrf(hypotheses: list[str], references: list[str]) -> float:
    """Corpus chrF (sacrebleu, character n-grams: suited to Korean), 0–100."""
    from sacrebleu.metrics import CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses vs {len(references)} references")
    return CHRF().corpus_score(hypotheses, [references]).score


def normalize(text: str) -> str:
    """Lower-case, strip whitespace and trailing punctuation: the exact-match normal form."""
    return " ".join(text.strip().lower().split()).rstrip(".!?。")


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share (0–1) of predictions equal to their reference after ``normalize``."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions vs {len(references)} references")
    hits = sum(normalize(p) == normalize(r) for p, r in zip(predictions, references))
    return hits / max(len(references), 1)
