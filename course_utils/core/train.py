"""A small, readable training loop for lessons that compare methods by hand.

It records what the lessons compare: loss per step, step time, peak memory (``PeakMemory``: process RSS on
CPU, ``max_memory_allocated`` on CUDA) and trainable parameters. Larger recipes use TRL/Trainer.

Example::

    batches = make_batches(tok, prompts, completions, batch_size=4, seq_len=64)
    result = train(model, batches, steps=12, lr=2e-4)
    result.losses[0] > result.losses[-1]         # True once the model learns
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from course_utils.core.peak_memory import PeakMemory
from course_utils.core.runtime import autocast, device_of, synchronize, to_device

IGNORE_INDEX = -100  # label value that the cross-entropy skips (prompt and padding tokens)


# --------------------------------------------------------------------------- data → batches

def encode_pair(tokenizer, prompt: str, completion: str, seq_len: int, loss_on_prompt: bool = False) -> dict:
    """Token ids of prompt+completion (+eos), with labels −100 on the prompt unless ``loss_on_prompt``.

    Returns lists: input_ids, labels (each ≤ seq_len long).
    """
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (p + c)[:seq_len]
    labels = (p if loss_on_prompt else [IGNORE_INDEX] * len(p)) + c
    return {"input_ids": ids, "labels": labels[:seq_len]}


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded examples into tensors (B, T); padding gets label −100."""
    T = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)          # (B, T)
    labels = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(examples), T), dtype=torch.long)                 # (B, T)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def padding_free(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A right-padded batch (B, T) as one row (1, ΣL) without padding: the same loss, no pad positions computed.

    position_ids restart at every example, so the model's attention keeps the examples apart (transformers' mask
    builds a block-diagonal causal mask from packed position_ids: Llama/SmolLM2, Qwen2, Phi-3, ...); each
    example's first label becomes −100, since it would be predicted from the previous example's last token (in the
    padded batch nothing predicts it either). Same (context, target) pairs, same mean: exact up to float order.
    """
    mask = batch["attention_mask"].bool()                                    # (B, T)
    lengths = mask.sum(1)                                                    # (B,)
    labels = batch["labels"][mask].clone()                                   # (ΣL,)
    labels[torch.cumsum(lengths, 0) - lengths] = IGNORE_INDEX
    positions = torch.cat([torch.arange(int(n)) for n in lengths])           # (ΣL,)
    return {"input_ids": batch["input_ids"][mask][None], "labels": labels[None], "position_ids": positions[None],
            "use_cache": False}   # with a KV cache transformers would not read the packing from position_ids


def pad_share(batches: list[dict]) -> float:
    """Share of the positions in ``batches`` that are padding (attention_mask 0)."""
    total = sum(int(b["attention_mask"].numel()) for b in batches)
    return 1 - sum(int(b["attention_mask"].sum()) for b in batches) / max(total, 1)


def make_batches(tokenizer, prompts: list[str], completions: list[str], batch_size: int, seq_len: int,
                 loss_on_prompt: bool = False, shuffle: bool = True, seed: int = 0) -> list[dict]:
    """Encode prompt/completion pairs and group them into padded batches (one epoch)."""
    if len(prompts) != len(completions):
        raise ValueError(f"prompts ({len(prompts)}) and completions ({len(completions)}) differ in length")
    enc = [encode_pair(tokenizer, p, c, seq_len, loss_on_prompt) for p, c in zip(prompts, completions)]
    order = torch.randperm(len(enc), generator=torch.Generator().manual_seed(seed)).tolist() if shuffle \
        else list(range(len(enc)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return [collate([enc[i] for i in order[k:k + batch_size]], pad) for k in range(0, len(order), batch_size)]


# --------------------------------------------------------------------------- the loop

@dataclass
class TrainResult:
    """What one training run measured."""

    losses: list[float] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    peak_mb: float = 0.0
    delta_mb: float = 0.0
    trainable: int = 0
    total: int = 0
    stopped_early_at: int | None = None

    @property
    def step_time(self) -> float:
        """Median seconds per step (the first step, with its warm-up costs, excluded when possible)."""
        times = sorted(self.step_times[1:] or self.step_times)
        return times[len(times) // 2] if times else float("nan")


def lm_loss(model, batch: dict) -> torch.Tensor:
    """Mean next-token cross-entropy of a batch (labels −100 ignored); works for any HF causal LM."""
    return model(**batch).loss


@torch.no_grad()
def evaluate_loss(model, batches: list[dict], loss_fn=lm_loss) -> float:
    """Mean loss over batches, weighted by the number of target tokens."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for b in batches:
        b = to_device(b, model)
        n = int((b["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += float(loss_fn(model, b)) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


def adamw(params, lr: float, weight_decay: float = 0.0, **kwargs) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one for these tensors (CPU and CUDA fp32/bf16/fp16).

    One kernel per step instead of a loop of element-wise ops per tensor (the same update; ``fused=False``
    turns it off)."""
    params = list(params)
    fused = kwargs.pop("fused", None)
    if fused is None:
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16, torch.float16)
                    and not p.is_sparse for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused, **kwargs)


def train(model, batches: list[dict], steps: int, lr: float = 2e-4, *, params=None, optimizer=None,
          warmup_steps: int = 0, grad_clip: float | None = 1.0, loss_fn=lm_loss, eval_batches=None,
          eval_every: int | None = None, patience: int | None = None, on_step=None,
          desc: str = "train", progress: bool = True) -> TrainResult:
    """Train ``params`` (default: those with ``requires_grad``) for ``steps`` steps with AdamW.

    Batches are cycled. ``warmup_steps`` ramps the learning rate linearly from 0. With ``eval_batches``
    and ``eval_every`` the validation loss is recorded; with ``patience`` training stops early after
    that many evaluations without improvement. ``on_step(step, loss)`` is called after each step.
    On a CPU with fast bf16 the forward runs under ``runtime.autocast`` (fp32 weights and optimizer state); the
    run's efficiency line (tokens/s, peak memory, MFU) is reported to ``course_utils.core.efficiency``.
    """
    from tqdm.auto import tqdm

    from course_utils.core.efficiency import Meter
    from course_utils.core.models import count_parameters

    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: set requires_grad on the parameters to train")
    opt = optimizer or adamw(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps
                                              else 1.0)
    device = device_of(model)
    res = TrainResult()
    res.trainable, res.total = count_parameters(model)
    best, bad_evals = math.inf, 0
    model.train()
    meter = Meter(model)
    with PeakMemory(device.type) as mem:
        bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
        for step in bar:
            batch = to_device(batches[step % len(batches)], model)
            t0 = time.perf_counter()
            with autocast(device.type):
                loss = loss_fn(model, batch)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            synchronize()
            res.step_times.append(time.perf_counter() - t0)
            meter.add(batch, res.step_times[-1])
            res.losses.append(loss.item())
            if not math.isfinite(res.losses[-1]):
                dtypes = sorted({str(p.dtype).replace("torch.", "") for p in params})
                raise FloatingPointError(
                    f"{desc}: the loss is {res.losses[-1]} at step {step + 1} (trainable weights in {dtypes}). "
                    "AdamW on fp16 weights overflows (its eps of 1e-8 is 0 in fp16): train fp32 weights "
                    "(load_model(..., dtype=torch.float32)) or adapters (peft keeps them in fp32).")
            bar.set_postfix(loss=f"{res.losses[-1]:.3f}")
            if on_step is not None:
                on_step(step, res.losses[-1])
            if eval_batches is not None and eval_every and (step + 1) % eval_every == 0:
                ev = evaluate_loss(model, eval_batches, loss_fn)
                res.eval_losses.append((step + 1, ev))
                best, bad_evals = (ev, 0) if ev < best else (best, bad_evals + 1)
                if patience is not None and bad_evals >= patience:
                    res.stopped_early_at = step + 1
                    break
    model.eval()
    res.peak_mb, res.delta_mb = mem.peak_mb, mem.delta_mb
    meter.done(res.peak_mb)
    return res
