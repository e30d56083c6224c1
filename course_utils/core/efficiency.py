"""One efficiency line per training cell: tokens/s, peak memory and MFU against this machine's measured matmul peak.

Every training entry point of the course reports here: ``course_utils.core.train.train`` (the lessons' loop) and every
``transformers``/TRL ``Trainer`` (an ``EfficiencyCallback`` that ``install()`` adds to all of them). In a notebook
the runs of one cell are summed into ONE line, printed when the cell ends (an IPython ``post_run_cell`` hook);
outside IPython (scripts, tests) each run prints its line when it ends. Its form (figures illustrative)::

    efficiency: 1,310 tokens/s (22% of the positions were padding) · peak memory 1,204 MB · MFU 31% of this
    machine's bf16 matmul peak (612 GFLOP/s, measured once) · bf16 autocast, fp32 weights

MFU (model-FLOPs utilisation) = model FLOPs of the real (non-padding) tokens / training time / matmul peak. The
peak is measured once per machine and cached (``course_utils.core.peaks``); ``runtime.cpu_bf16`` decides the CPU dtype
from the same measurement. FLOPs per token count every Linear layer (the LM head included): forward 2n; backward 2n for the
activation gradient where anything upstream trains; + 2n for the weight gradient where the weight trains; plus
attention (QKᵀ and AV, ×3 with backward), as ``python -m course_utils.bench efficiency`` counts them.
In the gpu rehearsal (simulated GPU) no peak is meaningful: the line says "rehearsal" instead of an MFU.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass

from course_utils.core import peaks as _peaks  # the module; ``peaks`` below is a dict of FLOP/s

# --------------------------------------------------------------------------- FLOPs of a model

def linear_flops_per_token(model) -> int:
    """Matmul FLOPs per token of one training step through every Linear layer of ``model`` (see module doc).

    Modules are taken in registration order, which is the forward order of a decoder-only model: a frozen Linear
    before the first trainable parameter needs no backward at all (2n), after it 4n; a trainable one 6n.
    """
    import torch

    total, upstream_trains = 0, False
    for m in model.modules():
        own = [p for p in m.parameters(recurse=False)]
        if isinstance(m, torch.nn.Linear):
            n = m.in_features * m.out_features
            trains = m.weight.requires_grad
            total += 2 * n + (2 * n if (upstream_trains or trains) else 0) + (2 * n if trains else 0)
        if any(p.requires_grad for p in own):
            upstream_trains = True
    return total


def attention_flops_per_token(model, seq_len: int) -> int:
    """QKᵀ and AV per token over ``seq_len`` positions, forward + backward (0 when the config says no shape)."""
    cfg = getattr(model, "config", None)
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", None)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "num_heads", None)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None)
    if not (layers and heads and hidden):
        return 0
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    return 3 * 4 * layers * seq_len * heads * head_dim


# --------------------------------------------------------------------------- one cell's runs → one line

@dataclass
class Run:
    """What one training run measured (summed over its steps)."""

    tokens: int            # real (non-padding) tokens trained on
    positions: int         # positions computed (tokens + padding)
    seconds: float         # wall time of the steps
    flops: float           # model FLOPs of the real tokens
    peak_mb: float
    device: str            # "cpu" or "cuda"
    dtype: str             # the matmul dtype: "fp32", "bf16" (autocast or weights) or "fp16"
    checkpointing_cost: float | None = None   # forward+backward time with / without gradient checkpointing


_LOCK = threading.Lock()
_PENDING: list[Run] = []
_HOOKED = False


def format_line(runs: list[Run], peaks: dict | None) -> str:
    """The one efficiency line of a cell (``peaks`` None: the rehearsal, no meaningful MFU)."""
    tokens, positions = sum(r.tokens for r in runs), sum(r.positions for r in runs)
    seconds, flops = sum(r.seconds for r in runs), sum(r.flops for r in runs)
    dtypes = sorted({r.dtype for r in runs})
    pad = 1 - tokens / positions if positions else 0.0
    head = f"efficiency: {tokens / max(seconds, 1e-9):,.0f} tokens/s"
    head += f" ({pad:.0%} of the positions were padding)" if pad >= 0.005 else ""
    if len(runs) > 1:
        head += f" over {len(runs)} runs"
    mem = f"peak memory {max(r.peak_mb for r in runs):,.0f} MB"
    if peaks is None:
        mfu = "MFU: rehearsal (simulated GPU: no meaningful peak)"
    else:
        dtype = "fp16" if "fp16" in dtypes and "fp16" in peaks else "bf16" if {"bf16", "fp16"} & set(dtypes) \
            else "fp32"
        peak = peaks[dtype]
        ratio = flops / max(seconds, 1e-9) / peak
        mfu = (f"MFU {100 * ratio:.2g}% of this machine's {dtype} matmul peak "
               f"({peak / 1e9:,.0f} GFLOP/s, measured once)")
    how = "bf16 autocast, fp32 weights" if runs[0].device == "cpu" and "bf16" in dtypes else "/".join(dtypes)
    parts = [head, mem, mfu, how]
    costs = [r.checkpointing_cost for r in runs if r.checkpointing_cost is not None]
    if costs:
        parts.append(f"gradient checkpointing on: forward+backward {max(costs):.2f}× the time without it "
                     "(measured on one row)")
    return " · ".join(parts)


def _peaks_for(runs: list[Run]) -> dict | None:
    from course_utils.core.runtime import rehearsing

    if rehearsing() or not runs:
        return None
    return _peaks.machine_peaks(runs[0].device)


def _in_ipython():
    ip = sys.modules.get("IPython")
    return ip.get_ipython() if ip is not None and hasattr(ip, "get_ipython") else None


def record(run: Run) -> None:
    """Report one finished run: summed into the cell's line in IPython, printed at once elsewhere."""
    if os.environ.get("COURSE_EFFICIENCY", "1").strip() == "0":
        return
    shell = _in_ipython()
    if shell is not None:
        install_ipython_hook(shell)
        with _LOCK:
            _PENDING.append(run)
        return
    print(format_line([run], _peaks_for([run])), flush=True)


def flush() -> str | None:
    """Print (and return) the line of the runs recorded since the last flush; None when there were none."""
    with _LOCK:
        runs = list(_PENDING)
        _PENDING.clear()
    if not runs:
        return None
    line = format_line(runs, _peaks_for(runs))
    print(line, flush=True)
    return line


def install_ipython_hook(shell=None) -> bool:
    """Print one line at the end of every IPython cell that trained (idempotent); False outside IPython."""
    global _HOOKED
    shell = shell or _in_ipython()
    if shell is None or _HOOKED:
        return _HOOKED
    shell.events.register("post_run_cell", lambda *_: flush())
    _HOOKED = True
    return True


# --------------------------------------------------------------------------- the training entry points

class Meter:
    """Counts one run: ``add(batch, seconds)`` per step, ``done(peak_mb)`` at the end (records it)."""

    def __init__(self, model, dtype: str | None = None):
        from course_utils.core.runtime import autocast_dtype_name, device_of

        self.model, self.device = model, device_of(model).type
        self.dtype = dtype or autocast_dtype_name(self.device) or _param_dtype(model)
        self._linear = linear_flops_per_token(model)
        self.tokens = self.positions = 0
        self.seconds = self.flops = 0.0

    def add_tokens(self, input_ids, attention_mask=None) -> None:
        positions = int(input_ids.numel())
        tokens = int(attention_mask.sum()) if attention_mask is not None else positions
        seq_len = int(input_ids.shape[-1]) if input_ids.dim() > 1 else positions
        self.tokens += tokens
        self.positions += positions
        self.flops += tokens * (self._linear + attention_flops_per_token(self.model, seq_len))

    def add(self, batch: dict, seconds: float) -> None:
        if "input_ids" in batch:
            self.add_tokens(batch["input_ids"], batch.get("attention_mask"))
        self.seconds += seconds

    def run(self, peak_mb: float) -> Run:
        return Run(self.tokens, self.positions, self.seconds, self.flops, peak_mb, self.device, self.dtype)

    def done(self, peak_mb: float) -> None:
        if self.tokens:
            record(self.run(peak_mb))


def _param_dtype(model) -> str:
    import torch

    names = {torch.bfloat16: "bf16", torch.float16: "fp16"}
    dtypes = {p.dtype for p in model.parameters() if not p.requires_grad} or {p.dtype for p in model.parameters()}
    return next((names[d] for d in dtypes if d in names), "fp32")


def _trainer_callback_class():
    from transformers import TrainerCallback

    class EfficiencyCallback(TrainerCallback):
        """Measures a ``Trainer``'s run (tokens of every training forward, step times, peak memory) for the line."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            import time

            from course_utils.core.peak_memory import PeakMemory

            self._time = time.perf_counter
            dtype = "bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else None
            self.meter = Meter(model, dtype=dtype)
            self.mem = PeakMemory(self.meter.device)
            self.mem.__enter__()

            self.last = None

            def count(module, a, kw):
                ids = kw.get("input_ids", a[0] if a else None)
                if module.training and ids is not None and _grad_enabled():
                    self.meter.add_tokens(ids, kw.get("attention_mask"))
                    self.last = kw

            self.hook = model.register_forward_pre_hook(count, with_kwargs=True)

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = self._time()

        def on_step_end(self, args, state, control, **kwargs):
            self.meter.seconds += self._time() - self.t0

        def on_train_end(self, args, state, control, **kwargs):
            self.hook.remove()
            self.mem.__exit__(None, None, None)
            cost = None
            if self.last is not None and checkpointing_layers(self.meter.model):
                cost = checkpointing_cost(self.meter.model, self.last, self.meter.dtype)
            self.last = None
            if self.meter.tokens:
                run = self.meter.run(self.mem.peak_mb)
                run.checkpointing_cost = cost
                record(run)

    return EfficiencyCallback


def checkpointing_layers(model) -> list:
    """The layers of ``model`` that recompute their activations in the backward (transformers' checkpointing)."""
    return [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]


def checkpointing_cost(model, inputs: dict, dtype: str = "fp32") -> float | None:
    """Forward+backward time on the first row of ``inputs`` with gradient checkpointing over the same without it.

    The layers' ``gradient_checkpointing`` flags are switched off and back on (nothing else changes); the gradients
    are cleared afterwards. None in the rehearsal (its timings mean nothing) or where the model's forward fails.
    """
    import time

    import torch

    from course_utils.core.runtime import rehearsing, synchronize

    layers = checkpointing_layers(model)
    if rehearsing() or not layers:
        return None
    row = {k: (v[:1] if torch.is_tensor(v) and v.dim() > 1 else v) for k, v in inputs.items()
           if k not in ("fused_lm_head", "num_items_in_batch")}
    row.setdefault("labels", row.get("input_ids"))
    device = next(model.parameters()).device.type
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
    was_training = model.training
    model.train()

    def once() -> float:
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=half or torch.bfloat16, enabled=half is not None and device == "cpu"):
            loss = model(**row).loss
        loss.backward()
        synchronize()
        return time.perf_counter() - t0

    try:
        with_ckpt = min(once() for _ in range(2))
        for m in layers:
            m.gradient_checkpointing = False
        try:
            without = min(once() for _ in range(2))
        finally:
            for m in layers:
                m.gradient_checkpointing = True
    except Exception:  # noqa: BLE001 - a report, never a failure of the lesson
        return None
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return with_ckpt / max(without, 1e-9)


def _grad_enabled() -> bool:
    import torch

    return torch.is_grad_enabled()


def efficiency_callback():
    """A new ``EfficiencyCallback`` (a ``transformers.TrainerCallback``)."""
    return _trainer_callback_class()()


def _patch_trainer_module(module) -> None:
    """Add the EfficiencyCallback class to ``transformers.trainer.DEFAULT_CALLBACKS`` (every Trainer gets one)."""
    if not any(getattr(c, "__name__", "") == "EfficiencyCallback" for c in module.DEFAULT_CALLBACKS):
        module.DEFAULT_CALLBACKS.append(_trainer_callback_class())


class _AfterImport:
    """A meta-path finder that patches ``transformers.trainer`` right after it is first imported."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers.trainer":
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch_trainer_module(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def install() -> None:
    """Every ``Trainer`` (TRL's, Unsloth's, Seq2Seq's) reports its line, and so does every IPython cell.

    Cheap: it does not import transformers; if ``transformers.trainer`` is not imported yet, it is patched when it is.
    """
    install_ipython_hook()
    trainer = sys.modules.get("transformers.trainer")
    if trainer is not None:
        _patch_trainer_module(trainer)
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
