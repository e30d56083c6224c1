"""Stand-in hub models for the gpu rehearsal (``course_utils.core.rehearsal``): each hub model of the gpu profile
(``models.REGISTRY``) as a small model of the same architecture, registered under its real id in a local
Hugging Face cache, so that ``from_pretrained`` and Unsloth's loader find it as they would after a download.

    $ python -m course_utils.tools.standins build        # the stand-in cache (about 10 s, once)
    $ python -m course_utils.tools.standins cache        # print its folder (for HF_HUB_CACHE)

Apart from the simulator because it builds models (``course_utils.core.models``), which ``runtime`` would otherwise
reach back to through ``rehearsal.activate``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

STANDIN_FORMAT = 4  # bump when the stand-ins change: older caches are rebuilt


def hub_cache() -> Path:
    """The Hugging Face cache that holds the stand-ins (``COURSE_CACHE``/rehearsal-hub)."""
    root = Path(os.environ.get("COURSE_CACHE", Path.home() / ".cache" / "course-kit"))
    return root / "rehearsal-hub"


PHI3_TOKENS = ["<|user|>", "<|assistant|>", "<|end|>", "<|system|>"]
PHI3_TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + "
                 "'<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}"
                 "{{ eos_token }}{% endif %}")


def _standin_specs(vocab: int, pad: int, eos: int) -> dict:
    """id → (config class name, kwargs): the real architecture, scaled down to run in seconds on a CPU."""
    ids = dict(vocab_size=vocab, pad_token_id=pad, eos_token_id=eos, bos_token_id=eos)
    # 6 blocks: lessons look inside blocks 3 and 5 of SmolLM2; the 49k-word vocabulary dominates the cost anyway.
    llama = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True, **ids)
    return {
        # SmolLM2 is a Llama; the 360M teacher is the same shape, larger than the student.
        "HuggingFaceTB/SmolLM2-135M-Instruct": ("LlamaConfig", llama),
        "HuggingFaceTB/SmolLM2-360M-Instruct": ("LlamaConfig", {**llama, "hidden_size": 96, "num_hidden_layers": 8,
                                                                "intermediate_size": 192, "num_attention_heads": 6}),
        "facebook/opt-125m": ("OPTConfig", dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                                num_attention_heads=4, word_embed_proj_dim=64,
                                                max_position_embeddings=2048, **ids)),
        # Unsloth's Phi-3-mini checkpoints are "mistralfied": Mistral layout, separate q/k/v/o and gate/up/down.
        "unsloth/Phi-3-mini-4k-instruct-bnb-4bit": ("MistralConfig", dict(
            hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            max_position_embeddings=4096, sliding_window=2047, tie_word_embeddings=False, **ids)),
        # Microsoft's own Phi-3-mini: fused qkv_proj / gate_up_proj.
        "microsoft/Phi-3-mini-4k-instruct": ("Phi3Config", dict(
            hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            max_position_embeddings=4096, tie_word_embeddings=False, **ids)),
        "google/flan-t5-small": ("T5Config", dict(
            d_model=64, d_ff=128, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=4,
            feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=pad,
            vocab_size=vocab, pad_token_id=pad, eos_token_id=eos)),
    }


# Pre-quantized checkpoints, as on the hub: the 4-bit one is its 16-bit twin quantized by bitsandbytes (NF4, double
# quant) and saved with its quantization_config, so Unsloth and transformers load it as they load the real one.
PREQUANTIZED = {"unsloth/Phi-3-mini-4k-instruct-bnb-4bit": "unsloth/Phi-3-mini-4k-instruct"}
SAME_WEIGHTS = {v: k for k, v in PREQUANTIZED.items()}  # the 16-bit twin has the 4-bit one's architecture


def _snapshot(repo_id: str) -> Path:
    root = hub_cache() / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def build_standins(force: bool = False, verbose: bool = True) -> Path:
    """Write every gpu-profile hub model as a small stand-in under its real id; return the cache folder."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from course_utils.core.models import REGISTRY, prepare_embedded

    cache = hub_cache()
    stamp = cache / "course_standins.json"
    wanted = sorted({roles["gpu"] for roles in REGISTRY.values() if roles.get("gpu")} | set(SAME_WEIGHTS))
    wanted_16 = [i for i in wanted if i not in PREQUANTIZED]
    if not force and stamp.is_file():
        info = json.loads(stamp.read_text())
        if info.get("format") == STANDIN_FORMAT and info.get("ids") == wanted:
            return cache
    folder = prepare_embedded(verbose=verbose)
    tok = AutoTokenizer.from_pretrained(folder)
    missing = [i for i in wanted if SAME_WEIGHTS.get(i, i) not in _standin_specs(len(tok), 0, 0)]
    if missing:
        raise KeyError(f"no stand-in for gpu-profile model(s) {missing}: add them to standins._standin_specs")
    for repo_id in wanted_16:
        torch.manual_seed(wanted.index(repo_id))
        t = AutoTokenizer.from_pretrained(folder)   # SmolLM2's BPE: a tokenizer the project can build offline
        if "Phi-3" in repo_id:                     # Phi-3's chat markers and template
            t.add_special_tokens({"additional_special_tokens": PHI3_TOKENS})
            t.chat_template = PHI3_TEMPLATE
            t.eos_token = "<|end|>"
        cls_name, kw = _standin_specs(len(t), t.pad_token_id, t.eos_token_id)[SAME_WEIGHTS.get(repo_id, repo_id)]
        config = getattr(transformers, cls_name)(**kw)
        auto = AutoModelForSeq2SeqLM if cls_name == "T5Config" else AutoModelForCausalLM
        model = auto.from_config(config)
        snap = _snapshot(repo_id)
        model.save_pretrained(snap, safe_serialization=True)
        t.save_pretrained(snap)
        if verbose:
            n = sum(p.numel() for p in model.parameters())
            print(f"stand-in {repo_id:<42} {type(model).__name__:<28} {n / 1e6:5.2f} M params")
    for repo_id, twin in PREQUANTIZED.items():
        from transformers import BitsAndBytesConfig

        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float16)
        src = _snapshot(twin)
        model = AutoModelForCausalLM.from_pretrained(src, quantization_config=q, device_map={"": "cpu"},
                                                     dtype=torch.float16)
        snap = _snapshot(repo_id)
        shutil.rmtree(snap)
        model.save_pretrained(snap, safe_serialization=True)
        AutoTokenizer.from_pretrained(src).save_pretrained(snap)
        if verbose:
            print(f"stand-in {repo_id:<42} {type(model).__name__:<28} NF4 from {twin}")
    stamp.write_text(json.dumps({"format": STANDIN_FORMAT, "ids": wanted}))
    return cache


def main(argv: list[str] | None = None) -> int:
    """``python -m course_utils.tools.standins build [--force]``: write the stand-in cache and print its folder
    (``cache``: print the folder only)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m course_utils.tools.standins")
    ap.add_argument("command", choices=["build", "cache"])
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    if args.command == "cache":
        print(hub_cache())
        return 0
    print(build_standins(force=args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
