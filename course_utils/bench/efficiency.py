"""How close the course's steps come to this machine's own limits: ``python -m course_utils.bench efficiency``.

One run (cpu profile, about 2–3 minutes on 2 cores) measures

- the machine: fp32 matmul throughput (square 2048 matmuls with torch's current threads), the same in bf16 (and
  says whether bf16 is faster or slower than fp32 here), and memory bandwidth (a 256 MiB tensor copy);
- on the embedded model (``load_model("chat")``, batch 4 × 128 tokens of random ids, no padding): a LoRA step
  (peft, r=16, all seven projections), a QLoRA step (``load_model("chat", quantization="4bit")`` + the same LoRA)
  and a full fine-tuning step, each a complete step (forward, loss, backward, AdamW step), as tokens/s and
  **model-FLOPs utilisation** = model FLOPs per token × tokens/s / measured fp32 matmul peak; where bf16 matmul
  measures ≥ 1.2× fp32, the LoRA step again under ``torch.autocast("cpu", bfloat16)`` (fp32 master weights) against
  the bf16 peak (informational: no goal);
- generation (batch 1, greedy, KV cache): decode tokens/s against the memory-bandwidth bound, bandwidth / bytes of
  the weights (every weight read once per new token);
- the trainer's overhead: the plain PyTorch LoRA step against TRL's ``SFTTrainer`` (built with
  ``course_utils.core.trl_compat.sft_config``) on the same batch, with and without gradient checkpointing;

prints one table of ratios, and for every goal missed (LoRA and full ≥ 70 % of the matmul peak, QLoRA ≥ 50 %,
generation ≥ 50 % of the bandwidth bound) a torch.profiler table of the top ops by self CPU time.

Counting FLOPs (the convention used here and tested in ``tests/test_bench.py``):

- N = parameters that take part in matmuls: every Linear weight of the decoder blocks *plus the LM head*, also when
  the head is tied to the input embedding (SmolLM2 ties them: the head's 49152 × 576 matmul is real work). The
  embedding *lookup* (a gather), norms, biases and element-wise ops are not counted.
- per token: forward 2N; backward 2N for the activation gradients; + 2N for the weight gradients when the weights
  train (full fine-tuning: 6N). LoRA: the frozen base costs 4N, the adapters 6·N_lora (N_lora = r·(d_in + d_out)
  summed over the adapted layers). QLoRA counts the same model FLOPs as LoRA (dequantizing is overhead).
- attention: QKᵀ and AV, 4·layers·T·(heads·head_dim) per token forward over the full context T (the convention of
  PaLM's MFU and of torch's FlopCounterMode; a causal kernel may skip half), ×3 for forward + backward.
- recomputation under gradient checkpointing is not model FLOPs (so checkpointing lowers MFU, as it should).

Timings are the best of a few repeats after one warm-up (``REPEATS`` = 2 for the steps and generation, 5 for the
machine probes): the best is the measurement least disturbed by other work on a shared machine. The load average
at the start is printed, because on a shared machine every ratio here is a lower bound.

Why one module of ~510 lines: one benchmark, its FLOP and bandwidth arithmetic next to the measurements.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass

from course_utils.core.models import LORA_TARGETS
from course_utils.core.peaks import matmul_flops
from course_utils.core.runtime import wall_times
from course_utils.lessons.lora_math import lora_param_count

SEVEN = LORA_TARGETS   # LoRA on all seven projections
GOALS = {"lora": 0.70, "full": 0.70, "qlora": 0.50, "generation": 0.50}
REPEATS = 2            # measured steps (after one warm-up) for every training step and the generation
PROBE_REPEATS = 5      # matmul and copy probes
BATCH, SEQ_LEN, LORA_R = 4, 128, 16
MATMUL_N = 2048
COPY_MIB = 256


# --------------------------------------------------------------------------- pure arithmetic (unit-tested)

@dataclass(frozen=True)
class Shape:
    """What the FLOPs formula needs of a decoder-only transformer (Llama-style: no biases, gated MLP)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, cfg) -> Shape:
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return cls(cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, heads,
                   getattr(cfg, "num_key_value_heads", None) or heads, head_dim, cfg.vocab_size)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """name → (d_in, d_out) of the seven Linear layers of one block."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def matmul_params(shape: Shape) -> dict[str, int]:
    """{"blocks", "lm_head", "total"}: the weights that take part in matmuls (N of the FLOPs formula)."""
    blocks = shape.layers * sum(a * b for a, b in shape.linear_shapes().values())
    lm_head = shape.vocab * shape.hidden
    return {"blocks": blocks, "lm_head": lm_head, "total": blocks + lm_head}


def lora_params(shape: Shape, r: int, targets=SEVEN) -> int:
    """Parameters LoRA adds: r·(d_in + d_out) for every targeted Linear of every block."""
    return shape.layers * sum(lora_param_count(a, b, r) for name, (a, b) in shape.linear_shapes().items()
                              if name in targets)


def attention_flops_per_token(shape: Shape, seq_len: int) -> int:
    """Forward FLOPs of QKᵀ and AV per token over a full (non-causal) context of ``seq_len`` tokens."""
    return 4 * shape.layers * seq_len * shape.heads * shape.head_dim


def flops_per_token(shape: Shape, seq_len: int, mode: str, lora_r: int = LORA_R, targets=SEVEN) -> int:
    """Model FLOPs per token of one step: ``mode`` = "forward", "full" (all weights train) or "lora"/"qlora"."""
    n, attn = matmul_params(shape)["total"], attention_flops_per_token(shape, seq_len)
    if mode == "forward":
        return 2 * n + attn
    if mode == "full":
        return 6 * n + 3 * attn
    if mode in ("lora", "qlora"):
        return 4 * n + 3 * attn + 6 * lora_params(shape, lora_r, targets)
    raise ValueError(f"mode={mode!r}: expected 'forward', 'full', 'lora' or 'qlora'")


def step_gemms(shape: Shape, tokens: int, mode: str, lora_r: int = LORA_R, targets=SEVEN) -> dict[tuple, int]:
    """The matmuls of one training step as {(m, k, n): how many}, attention excluded; FLOPs = Σ 2·m·k·n·count.

    Every Linear (d_in → d_out) and the LM head: forward (tokens, d_in, d_out) and input gradient
    (tokens, d_out, d_in); "full" adds the weight gradient (d_out, tokens, d_in). LoRA adds, per adapted Linear,
    lora_A and lora_B forward, input and weight gradients (six small matmuls of inner or outer size r).

    >>> smol = Shape(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, head_dim=64, vocab=49152)
    >>> g = step_gemms(smol, tokens=512, mode="lora", lora_r=16)
    >>> g[(512, 576, 16)]   # 30 blocks × (lora_A forward of 6 projections with d_in 576 + lora_B input grad of 3)
    270
    """
    if mode not in ("full", "lora", "qlora"):
        raise ValueError(f"mode={mode!r}: expected 'full', 'lora' or 'qlora'")
    gemms: dict[tuple, int] = {}

    def add(m, k, n, count):
        gemms[(m, k, n)] = gemms.get((m, k, n), 0) + count

    linears = [(d_in, d_out, shape.layers, name in targets) for name, (d_in, d_out) in shape.linear_shapes().items()]
    for d_in, d_out, count, adapted in linears + [(shape.hidden, shape.vocab, 1, False)]:
        add(tokens, d_in, d_out, count)              # forward
        add(tokens, d_out, d_in, count)              # input gradient
        if mode == "full":
            add(d_out, tokens, d_in, count)          # weight gradient
        elif adapted:
            r = lora_r
            add(tokens, d_in, r, count)              # lora_A forward
            add(tokens, r, d_out, count)             # lora_B forward
            add(tokens, d_out, r, count)             # lora_B input gradient
            add(d_out, tokens, r, count)             # lora_B weight gradient
            add(tokens, r, d_in, count)              # lora_A input gradient
            add(r, tokens, d_in, count)              # lora_A weight gradient
    return gemms


def gemm_flops(gemms: dict[tuple, int]) -> int:
    """Σ 2·m·k·n·count over ``step_gemms``' list."""
    return sum(2 * m * k * n * c for (m, k, n), c in gemms.items())


def mfu(flops_per_tok: float, tokens_per_s: float, peak_flops: float) -> float:
    """Model-FLOPs utilisation: achieved model FLOP/s over the peak FLOP/s (0–1)."""
    return flops_per_tok * tokens_per_s / peak_flops


def bandwidth_bound_tokens_per_s(weight_bytes: float, bandwidth: float) -> float:
    """Upper bound on decode tokens/s when every weight byte is read once per token."""
    return bandwidth / weight_bytes


def bandwidth_ratio(tokens_per_s: float, weight_bytes: float, bandwidth: float) -> float:
    """Decode tokens/s over the bandwidth bound (0–1)."""
    return tokens_per_s / bandwidth_bound_tokens_per_s(weight_bytes, bandwidth)


def goal_met(kind: str, ratio: float) -> bool:
    return ratio >= GOALS[kind]


# --------------------------------------------------------------------------- measurements

def _best(fn, repeats: int, warmup: int = 1) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
    return min(wall_times(fn, repeats, warmup))


def gemm_ceiling(gemms: dict[tuple, int], repeats: int = PROBE_REPEATS) -> float:
    """FLOP/s of the step's own matmuls timed alone (fp32, best of ``repeats`` each): what MFU could reach here.

    The model's matmuls are far smaller than the 2048² probe (576-wide layers, 512 rows, rank-16 adapters), and a
    CPU reaches its peak only on large ones; this is the ceiling for a step with no other work at all.
    """
    import torch

    g = torch.Generator().manual_seed(0)
    seconds = 0.0
    for (m, k, n), count in gemms.items():
        a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
        seconds += count * _best(lambda a=a, b=b: torch.mm(a, b), repeats)
    return gemm_flops(gemms) / seconds


def copy_bandwidth(mib: int = COPY_MIB, repeats: int = PROBE_REPEATS) -> float:
    """Bytes/s of a large tensor copy, counting the bytes read plus the bytes written (STREAM's "copy")."""
    import torch

    src = torch.ones(mib * 2 ** 20 // 4)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _best(lambda: dst.copy_(src), repeats)


def _batch(vocab: int, batch: int = BATCH, seq_len: int = SEQ_LEN) -> dict:
    import torch

    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def _lora_config(r: int = LORA_R):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, target_modules=list(SEVEN), task_type="CAUSAL_LM")


ADAMW_VARIANTS = {"per-tensor loop": dict(foreach=False, fused=False), "foreach": dict(foreach=True, fused=False),
                  "fused": dict(fused=True)}


def _step_fn(model, batch, lr: float, autocast_dtype=None, adamw: str = "fused"):
    """One complete plain-PyTorch training step (zero_grad, forward + loss, backward, AdamW step) as a closure.

    ``autocast_dtype=torch.bfloat16``: the forward under ``torch.autocast("cpu")`` (fp32 master weights kept).
    ``adamw``: one of ``ADAMW_VARIANTS``; "fused" is what ``course_utils.core.train.adamw`` (the course's loop) and
    TRL (``optim="adamw_torch_fused"``, its default on torch ≥ 2.8) use.
    """
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, **ADAMW_VARIANTS[adamw])
    model.train()
    model.config.use_cache = False

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            loss = model(**batch).loss
        loss.backward()
        opt.step()

    return step


def _decode_tokens_per_s(model, vocab: int, prompt_len: int = 16, new_tokens: int = 32,
                         repeats: int = REPEATS) -> tuple[float, object]:
    """Greedy decode tokens/s at batch 1: (time of 1 + new_tokens tokens − time of 1 token) excludes the prompt."""
    import torch

    model.eval()
    model.config.use_cache = True
    ids = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(1))

    def gen(n):
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)

    t_first = _best(lambda: gen(1), repeats)
    t_all = _best(lambda: gen(1 + new_tokens), repeats, warmup=0)
    return new_tokens / max(t_all - t_first, 1e-9), lambda: gen(1 + new_tokens // 4)


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear",
              "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def profile_table(fn, rows: int = 8) -> tuple[str, float]:
    """(table of the top ops by self CPU time in one call of ``fn``, share of that time spent in matmul kernels)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    mm = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    lines = [f"    {'op':<52} {'self CPU':>10} {'share':>6} {'calls':>6}"]
    lines += [f"    {e.key[:52]:<52} {e.self_cpu_time_total / 1e3:8.1f}ms {100 * e.self_cpu_time_total / total:5.1f}%"
              f" {e.count:6d}" for e in events[:rows]]
    return "\n".join(lines), mm / total


def _trl_step_s(tok, batch, gradient_checkpointing: bool, steps: int = 1 + REPEATS) -> float:
    """Best wall time between consecutive step ends of TRL's SFTTrainer (LoRA r=16, ``sft_config``, same batch)."""
    from datasets import Dataset
    from transformers import TrainerCallback

    from course_utils.core.models import load_model
    from course_utils.core.trl_compat import SFTTrainer, sft_config

    class Ends(TrainerCallback):
        def __init__(self):
            self.t: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.t.append(time.perf_counter())

    rows = [r.tolist() for r in batch["input_ids"]]
    ds = Dataset.from_dict({"input_ids": rows * steps})
    with tempfile.TemporaryDirectory(prefix="bench-eff-") as out:
        args = sft_config(output_dir=out, max_steps=steps, per_device_train_batch_size=len(rows), learning_rate=2e-4,
                          max_length=len(rows[0]), gradient_checkpointing=gradient_checkpointing, disable_tqdm=True,
                          seed=0)
        ends = Ends()
        trainer = SFTTrainer(model=load_model("chat", profile="cpu"), args=args, train_dataset=ds,
                             processing_class=tok, peft_config=_lora_config(), callbacks=[ends])
        trainer.train()
    gaps = [b - a for a, b in zip(ends.t, ends.t[1:])]
    return min(gaps)


def _padding_ratio(tok, model, repeats: int) -> dict:
    """The lessons' own batches: their pad share, and the LoRA step over all of them padded vs padding-free.

    The batches are nb01/nb02's (domain_qa, batch 4, length ≤ 64); padding-free is
    ``course_utils.core.train.padding_free``."""
    from course_utils.core.data import load_rows
    from course_utils.core.train import make_batches, pad_share, padding_free
    from course_utils.lessons.fine_tuning import qa_pairs

    batches = make_batches(tok, *qa_pairs(load_rows("domain_qa", "train")), batch_size=4, seq_len=64)[:8]
    free = [padding_free(b) for b in batches]

    def steps(bs):
        fns = [_step_fn(model, b, lr=0.0) for b in bs]
        return lambda: [f() for f in fns]

    padded_s, free_s = _best(steps(batches), repeats), _best(steps(free), repeats)
    return {"batches": len(batches), "pad_share": pad_share(batches), "padded_s": padded_s, "free_s": free_s,
            "ratio": free_s / padded_s}


def _machine() -> dict:
    import torch

    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"cpu": name, "bf16_flags": bf16, "threads": torch.get_num_threads(), "cores": os.cpu_count(),
            "torch": torch.__version__, "load_avg_1min": round(load, 2)}


# --------------------------------------------------------------------------- the run

def run(repeats: int = REPEATS, verbose: bool = True) -> dict:
    """Measure everything above, print the table (and the profiles of missed goals), return the numbers."""
    from course_utils.core.runtime import apply_offline_defaults, profile_name

    apply_offline_defaults()
    os.environ.setdefault("COURSE_EFFICIENCY", "0")   # the Trainers' own efficiency lines: this table says it all
    if profile_name() != "cpu":
        print("bench efficiency measures the cpu profile: run it with COURSE_PROFILE=cpu")
        return {"skipped": "not the cpu profile"}
    import torch

    from course_utils.core.models import load_model, load_tokenizer

    say = print if verbose else (lambda *a, **k: None)
    t_start = time.perf_counter()
    machine = _machine()
    say(f"machine: {machine['cpu']} · {machine['threads']} torch threads of {machine['cores']} CPUs · torch "
        f"{machine['torch']} · bf16 CPU flags: {', '.join(machine['bf16_flags']) or 'none'} · load average "
        f"{machine['load_avg_1min']} at start (other work on the machine lowers every ratio below)")
    fp32 = matmul_flops(n=MATMUL_N, repeats=PROBE_REPEATS)
    bf16 = matmul_flops(torch.bfloat16, n=MATMUL_N, repeats=PROBE_REPEATS)
    bw = copy_bandwidth()
    bf16_note = (f"bf16 {bf16 / 1e9:.0f} GFLOP/s = {bf16 / fp32:.1f}× fp32" if bf16 >= fp32 else
                 f"bf16 {bf16 / 1e9:.0f} GFLOP/s is SLOWER than fp32 here ({fp32 / bf16:.1f}× slower)")
    say(f"peaks: fp32 matmul {fp32 / 1e9:.0f} GFLOP/s ({MATMUL_N}², best of {PROBE_REPEATS}) · {bf16_note} · "
        f"copy bandwidth {bw / 1e9:.1f} GB/s ({COPY_MIB} MiB, read + write, best of {PROBE_REPEATS})")

    tok = load_tokenizer("chat", profile="cpu")
    model = load_model("chat", profile="cpu")
    shape = Shape.from_config(model.config)
    params = matmul_params(shape)
    batch = _batch(shape.vocab)
    tokens = batch["input_ids"].numel()
    say(f"model: SmolLM2-135M-Instruct (embedded) · N = {params['total'] / 1e6:.1f} M matmul weights (blocks "
        f"{params['blocks'] / 1e6:.1f} M + LM head {params['lm_head'] / 1e6:.1f} M) · N_lora(r={LORA_R}) = "
        f"{lora_params(shape, LORA_R) / 1e6:.2f} M · batch {BATCH} × {SEQ_LEN} tokens · {repeats} timed repeats "
        f"after 1 warm-up (best)")
    rows, profiles = [], {}

    # the ceiling of each step: its own matmul shapes timed alone (fp32), as a share of the 2048² peak
    ceilings = {m: gemm_ceiling(step_gemms(shape, tokens, m)) for m in ("lora", "full")}
    say("ceilings: the steps' own matmuls timed alone (512 rows; 576/1536-wide layers, the 49152-wide head, "
        "rank-16 adapters): " + " · ".join(f"{m} {c / 1e9:.0f} GFLOP/s = {c / fp32:.0%} of the peak"
                                            for m, c in ceilings.items()))

    def train_row(kind, label, step, peak=fp32, mode=None):
        s = _best(step, repeats)
        fpt = flops_per_token(shape, SEQ_LEN, mode or kind)
        ratio = mfu(fpt, tokens / s, peak)
        goal = GOALS.get(kind)
        ceiling = None if peak != fp32 else ceilings["full" if kind == "full" else "lora"]
        rows.append({"kind": kind, "label": label, "s": s, "tokens_per_s": tokens / s, "gflop_per_token": fpt / 1e9,
                     "achieved_gflops": fpt * tokens / s / 1e9, "ratio": ratio, "goal": goal,
                     "met": None if goal is None else ratio >= goal,
                     "ceiling": None if ceiling is None else ceiling / fp32,
                     "of_ceiling": None if ceiling is None else fpt * tokens / s / ceiling})
        if goal is not None and ratio < goal:
            profiles[kind] = profile_table(step)

    # 1. LoRA (plain PyTorch) and the same LoRA step through TRL's SFTTrainer, measured back to back
    from peft import get_peft_model

    torch.manual_seed(0)
    lora = get_peft_model(model, _lora_config())
    plain_step = _step_fn(lora, batch, lr=2e-4)
    train_row("lora", f"LoRA r={LORA_R} step (7 projections)", plain_step)
    plain_s = rows[-1]["s"]
    adamw_s = {"fused": plain_s}
    for name in ("per-tensor loop", "foreach"):   # the optimizer's share: the same step with the other AdamWs
        adamw_s[name] = _best(_step_fn(lora, batch, lr=2e-4, adamw=name), repeats)
    say("AdamW in the LoRA step: " + " · ".join(f"{k} {v:.3f} s ({v / plain_s:.2f}× fused)"
                                                 for k, v in adamw_s.items()))
    if bf16 > 1.2 * fp32:   # fast bf16 here: the same step under autocast, against the bf16 peak (no goal)
        train_row("lora_bf16", f"LoRA r={LORA_R} step, bf16 autocast", _step_fn(lora, batch, 2e-4, torch.bfloat16),
                  peak=bf16, mode="lora")
    else:
        say("(bf16 matmul is not faster than fp32 here: no bf16 autocast step measured)")
    padding = _padding_ratio(tok, lora, repeats)
    say(f"padding: the lessons' batches (domain_qa, {padding['batches']} batches of 4 × ≤ 64, as make_batches "
        f"pads them) are {padding['pad_share']:.0%} padding; padded steps {padding['padded_s']:.3f} s · "
        f"padding-free (train.padding_free, exact) {padding['free_s']:.3f} s = {padding['ratio']:.2f}× the time")
    trl_off = _trl_step_s(tok, batch, gradient_checkpointing=False)
    trl_on = _trl_step_s(tok, batch, gradient_checkpointing=True)
    from course_utils.core.trl_compat import sft_config

    with tempfile.TemporaryDirectory() as out:
        default_gc = bool(sft_config(output_dir=out).gradient_checkpointing)
    del lora, model, plain_step

    # 2. full fine-tuning (a fresh model; it is also the fp32 model for generation, before it trains)
    model = load_model("chat", profile="cpu")
    gen_tps, gen_fn = _decode_tokens_per_s(model, shape.vocab, repeats=repeats)
    weight_bytes = params["total"] * next(model.parameters()).element_size()
    gen_ratio = bandwidth_ratio(gen_tps, weight_bytes, bw)
    if not goal_met("generation", gen_ratio):
        profiles["generation"] = profile_table(gen_fn)
    train_row("full", "full fine-tuning step", _step_fn(model, batch, lr=1e-5))
    del model

    # 3. QLoRA: NF4 base (bitsandbytes, double quant, fp32 compute) + the same LoRA
    model4 = load_model("chat", profile="cpu", quantization="4bit")
    torch.manual_seed(0)
    qlora = get_peft_model(model4, _lora_config())
    train_row("qlora", f"QLoRA r={LORA_R} step (NF4 base)", _step_fn(qlora, batch, lr=2e-4))
    del qlora, model4

    rows.append({"kind": "generation", "label": "generation (batch 1, greedy, fp32)", "s": 1 / gen_tps,
                 "tokens_per_s": gen_tps, "bound_tokens_per_s": bandwidth_bound_tokens_per_s(weight_bytes, bw),
                 "ratio": gen_ratio, "goal": GOALS["generation"], "met": goal_met("generation", gen_ratio)})
    overhead = {"adamw_s": adamw_s, "padding": padding, "plain_s": plain_s, "trl_gc_off_s": trl_off, "trl_gc_on_s": trl_on,
                "ratio_gc_off": trl_off / plain_s, "ratio_gc_on": trl_on / plain_s,
                "sft_config_default_gradient_checkpointing": default_gc}
    wall = time.perf_counter() - t_start
    if verbose:
        print(format_table(rows, overhead, fp32, bw))
        for kind, (table, mm_share) in profiles.items():
            row = next(r for r in rows if r["kind"] == kind)
            print(f"\n{row['label']}: {row['ratio']:.0%} < goal {row['goal']:.0%}. Where the time goes (one "
                  f"profiled call; matmul/attention kernels take {mm_share:.0%} of the self CPU time):")
            print(table)
        print(f"\nwhole benchmark: {wall:.0f} s")
    return {"machine": machine, "fp32_gflops": fp32 / 1e9, "ceiling_gflops": {k: v / 1e9 for k, v in ceilings.items()}, "bf16_gflops": bf16 / 1e9, "copy_gbps": bw / 1e9,
            "rows": rows, "trainer_overhead": overhead, "repeats": repeats,
            "profiled": {k: round(v[1], 3) for k, v in profiles.items()}, "wall_s": wall}


def format_table(rows: list[dict], overhead: dict, fp32: float, bw: float) -> str:
    lines = [f"\n{'workload':<36} {'s/step':>7} {'tokens/s':>9} {'GFLOP/tok':>9} {'GFLOP/s':>8} "
             f"{'ratio':>6} {'goal':>5}  met", "-" * 92]
    ceilings = []
    for r in rows:
        if r["kind"] == "generation":
            detail = f"{'':>9} {'bound':>3} {r['bound_tokens_per_s']:4.0f}"
            what = "of bandwidth bound"
        else:
            detail = f"{r['gflop_per_token']:9.2f} {r['achieved_gflops']:8.0f}"
            what = "of bf16 matmul peak" if r["kind"] == "lora_bf16" else "of fp32 matmul peak"
        goal, met = ("–", "– ") if r["goal"] is None else (f"{r['goal']:.0%}", "yes" if r["met"] else "NO ")
        lines.append(f"{r['label']:<36} {r['s']:7.3f} {r['tokens_per_s']:9.1f} {detail} {r['ratio']:6.0%} "
                     f"{goal:>5}  {met} ({what})")
        if r.get("ceiling") is not None:
            ceilings.append(f"{r['label']}: ceiling {r['ceiling']:.0%} of the peak, the step reaches "
                            f"{r['of_ceiling']:.0%} of its ceiling")
    lines.append(f"(peaks: fp32 matmul {fp32 / 1e9:.0f} GFLOP/s; copy bandwidth {bw / 1e9:.1f} GB/s)")
    if ceilings:
        lines.append("ceilings (the step's own matmuls timed alone; no step can beat them here):\n  "
                     + "\n  ".join(ceilings))
    o = overhead
    lines.append(f"\ntrainer overhead (LoRA r={LORA_R}, batch {BATCH} × {SEQ_LEN}, best step): plain PyTorch "
                 f"{o['plain_s']:.2f} s · TRL SFTTrainer via sft_config, gradient checkpointing ON "
                 f"{o['trl_gc_on_s']:.2f} s ({o['ratio_gc_on']:.2f}×) · OFF {o['trl_gc_off_s']:.2f} s "
                 f"({o['ratio_gc_off']:.2f}×) · sft_config's default: gradient checkpointing "
                 f"{'ON' if o['sft_config_default_gradient_checkpointing'] else 'off'}")
    return "\n".join(lines)
