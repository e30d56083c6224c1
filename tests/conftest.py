"""Shared fixtures: a tiny Llama (random weights, real architecture) and its toy tokenizer-free batches."""

import os

os.environ.setdefault("COURSE_PROFILE", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("COURSE_CPU_BF16", "0")   # unit and parity tests in fp32; the decision is tested with fakes

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def tiny_llama():
    """A 2-layer Llama with hidden 32 and vocabulary 64: seconds to train, same module names as SmolLM2."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def toy_batch():
    """One batch (B=4, T=12) whose labels equal the inputs."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (4, 12), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


@pytest.fixture(scope="session")
def embedded():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct, loaded once per session."""
    from course_utils.core.models import load_model, load_tokenizer

    return load_model("chat", profile="cpu"), load_tokenizer("chat", profile="cpu")
