"""QLoRA benchmark (printed, never asserted): plain transformers + peft + bitsandbytes vs Unsloth, same batch.

``python -m course_utils.bench qlora`` runs it; each path trains in a fresh Python
(``python -m course_utils.bench.qlora bench-worker …``) because Unsloth patches transformers on import.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from course_utils.core.models import count_parameters
from course_utils.core.peak_memory import PeakMemory
from course_utils.lessons.qlora import (
    Backend,
    add_lora,
    import_unsloth,
    load_4bit_model,
    meta_model,
    param_split,
    phi3_mini_config,
)


@dataclass
class BenchResult:
    """One path of the QLoRA benchmark."""

    path: str
    tokens_per_s: float = float("nan")
    peak_mb: float = float("nan")
    reserved_mb: float = float("nan")
    step_s: float = float("nan")
    losses: list[float] = field(default_factory=list)
    trainable: int = 0
    error: str = ""


def _write_word_tokenizer(folder: Path, vocab_size: int, max_length: int) -> None:
    """A word-level tokenizer ``t0 … tN`` so that loaders find one (the benchmark feeds random ids)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + [f"t{i}" for i in range(vocab_size - len(specials))])}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>", model_max_length=max_length)
    tok.save_pretrained(folder)


def build_random_checkpoint(folder: str | Path, config) -> Path:
    """Save a randomly initialised model of ``config`` (bf16 on CUDA, fp32 on CPU) plus a tokenizer."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with torch.device("cuda" if cuda else "cpu"):
            model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        torch.set_default_dtype(previous)
    del model
    if cuda:
        torch.cuda.empty_cache()
    _write_word_tokenizer(folder, config.vocab_size, config.max_position_embeddings)
    return folder


def _bench_one(path: str, folder: str, steps: int, warmup: int, batch_size: int, seq_len: int, r: int) -> BenchResult:
    """Load ``folder`` in 4-bit with one backend, add LoRA, train on random tokens; measure (runs in a subprocess)."""
    if path == "unsloth":
        backend = Backend("unsloth", version=str(getattr(import_unsloth(), "__version__", "?")))  # before transformers
    else:
        backend = Backend("peft", "plain path of the benchmark")

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    model, _ = load_4bit_model(folder, max_seq_length=seq_len, dtype=None if cuda else torch.float32,
                               backend=backend)
    model = add_lora(model, r=r, lora_alpha=r, use_gradient_checkpointing="unsloth", random_state=0, backend=backend)
    model.train()
    res = BenchResult(path, trainable=count_parameters(model)[0])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    g = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    batches = [torch.randint(4, vocab, (batch_size, seq_len), generator=g).to(device)   # (B, T)
               for _ in range(warmup + steps)]
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        for i, ids in enumerate(batches):
            if i == warmup:  # the clock starts after warm-up (allocator, kernels, autotuning)
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            res.losses.append(float(loss))
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    res.step_s = elapsed / steps
    res.tokens_per_s = steps * batch_size * seq_len / elapsed
    res.peak_mb = mem.peak_mb
    res.reserved_mb = torch.cuda.max_memory_reserved() / 2**20 if cuda else float("nan")
    return res


def _run_worker(path: str, folder: Path, **kw) -> BenchResult:
    """Run ``_bench_one`` in a fresh Python: Unsloth patches transformers on import, and peaks stay separate."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "course_utils.bench.qlora", "bench-worker", path, str(folder), str(out),
               json.dumps(kw)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return BenchResult(path, error=" | ".join(tail) or f"exit code {proc.returncode}")
        return BenchResult(**json.loads(out.read_text()))


def bench_qlora(steps: int | None = None, batch_size: int | None = None, seq_len: int | None = None, r: int = 16,
                warmup: int | None = None, layout: str = "phi3", paths=("plain", "unsloth")) -> dict[str, BenchResult]:
    """Plain transformers + peft + bitsandbytes QLoRA vs Unsloth QLoRA: same batch, length, steps.

    On a GPU: the Phi-3-mini architecture with random weights (``Phi3Config``; speed and memory do not depend
    on the values, and no hub is needed). Without one: a tiny Phi-3 config on CPU, which only shows the
    mechanics. Prints tokens/s, peak memory and the Unsloth/plain ratios; returns path → BenchResult.
    """
    cuda = torch.cuda.is_available()
    steps = steps or (20 if cuda else 3)
    warmup = warmup if warmup is not None else (3 if cuda else 1)
    batch_size = batch_size or (4 if cuda else 2)
    seq_len = seq_len or (1024 if cuda else 64)
    config = phi3_mini_config(tiny=not cuda, layout=layout)
    n_params = sum(param_split(meta_model(config)))
    where = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"QLoRA benchmark · {'Phi-3-mini' if cuda else 'tiny Phi-3'} architecture ({layout} layout, "
          f"{n_params / 1e9:.3g} B params, random weights) on {where} · batch {batch_size} × {seq_len} tokens · "
          f"r={r} · {steps} timed steps after {warmup} warm-up")
    if not cuda:
        print("No GPU: running a tiny configuration on CPU to show the mechanics. Unsloth's CPU backend is stock "
              "transformers + peft, so expect ratios near 1; its kernels need a GPU.")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_random_checkpoint(Path(tmp) / "model", config)
        for path in paths:
            results[path] = _run_worker(path, folder, steps=steps, warmup=warmup, batch_size=batch_size,
                                        seq_len=seq_len, r=r)
    print(format_bench(results, memory="peak VRAM" if cuda else "peak RSS"))
    return results


def format_bench(results: dict[str, BenchResult], memory: str = "peak VRAM") -> str:
    """The benchmark table and the Unsloth/plain ratios as text."""
    names = {"plain": "transformers + peft + bitsandbytes", "unsloth": "Unsloth"}
    lines = [f"{'path':<36} {'tokens/s':>10} {memory + ' MB':>15} {'s/step':>8} {'trainable':>12}"]
    for key, res in results.items():
        if res.error:
            lines.append(f"{names.get(key, key):<36} failed: {res.error}")
            continue
        lines.append(f"{names.get(key, key):<36} {res.tokens_per_s:>10.1f} {res.peak_mb:>15.0f} "
                     f"{res.step_s:>8.3f} {res.trainable:>12,}")
    plain, fast = results.get("plain"), results.get("unsloth")
    if plain and fast and not (plain.error or fast.error):
        speed = fast.tokens_per_s / plain.tokens_per_s
        mem = fast.peak_mb / plain.peak_mb
        lines.append(f"Unsloth / plain: tokens/s ×{speed:.2f} (goal ≥ 1.5) · {memory} ×{mem:.2f} (goal ≤ 0.6) · "
                     f"Unsloth peak {fast.peak_mb / 1024:.1f} GB (goal ≤ 16 GB)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m course_utils.bench.qlora bench [--steps N --batch-size B --seq-len T --layout phi3|llama]``."""
    import argparse

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench-worker"]:
        path, folder, out, kw = argv[1:5]
        res = _bench_one(path, folder, **json.loads(kw))
        Path(out).write_text(json.dumps(res.__dict__))
        return 0
    ap = argparse.ArgumentParser(prog="python -m course_utils.bench.qlora")
    ap.add_argument("command", choices=["bench"])
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--layout", choices=["phi3", "llama"], default="phi3")
    args = ap.parse_args(argv)
    results = bench_qlora(args.steps, args.batch_size, args.seq_len, args.r, layout=args.layout)
    return 0 if all(not r.error for r in results.values()) and all(math.isfinite(r.tokens_per_s)
                                                                     for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
