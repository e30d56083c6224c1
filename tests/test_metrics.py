import math

import pytest
import torch

from course_utils.core import metrics


class _Tok:
    def __call__(self, texts, return_tensors, padding, truncation, max_length):
        ids = torch.tensor([[1 + (ord(c) % 60) for c in t[:max_length]] for t in texts])
        return _Enc(input_ids=ids, attention_mask=torch.ones_like(ids))


class _Enc(dict):
    def to(self, device):
        return self


def test_perplexity_is_exp_of_model_loss(tiny_llama):
    text = "abcdefghij"
    ppl = metrics.perplexity(tiny_llama, _Tok(), [text, text], max_len=32)
    ids = torch.tensor([[1 + (ord(c) % 60) for c in text]])
    with torch.no_grad():
        loss = float(tiny_llama(input_ids=ids, labels=ids).loss)
    assert ppl == pytest.approx(math.exp(loss), rel=1e-4)


def test_chrf_and_exact_match():
    assert metrics.chrf(["안녕하세요"], ["안녕하세요"]) == pytest.approx(100.0)
    assert metrics.chrf(["완전히 다른 문장"], ["안녕하세요"]) < 20
    assert metrics.exact_match(["42.", " Positive"], ["42", "positive"]) == 1.0
    assert metrics.exact_match(["41"], ["42"]) == 0.0
    with pytest.raises(ValueError, match="2 predictions vs 1 references"):
        metrics.exact_match(["a", "b"], ["a"])
