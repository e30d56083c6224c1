"""QLoRA for English→Korean translation: Unsloth when it imports, transformers + peft + bitsandbytes otherwise.

One code path for notebook 07. ``detect_backend()`` tries ``import unsloth`` once and says in one line
when it cannot; the helpers then make the same calls either way:

| helper | with Unsloth | fallback (transformers + peft + bitsandbytes) |
|---|---|---|
| ``load_4bit_model`` | ``FastLanguageModel.from_pretrained(..., load_in_4bit=True)`` | ``load_model(..., quantization="4bit")`` |
| ``add_lora`` | ``FastLanguageModel.get_peft_model(...)`` | ``prepare_model_for_kbit_training`` + ``get_peft_model`` |
| ``for_inference`` / ``for_training`` | ``FastLanguageModel.for_inference`` / ``for_training`` | ``eval()`` + KV cache / ``train()`` |
| ``export_merged`` | ``model.save_pretrained_merged(..., "merged_16bit")`` | 16-bit base + adapter → ``merge_and_unload`` |

Also: chat-format training examples, batched greedy translation with chrF, what NF4 stores (its arithmetic:
``course_utils.lessons.memory.footprint_bytes``, ``adamw_state_bytes``), LoRA parameter counts (formula from ``course_utils.lessons.lora_math``), and the architecture that ``course_utils.bench.qlora`` benchmarks (plain QLoRA vs Unsloth QLoRA on Phi-3-mini).

Example::

    backend = detect_backend()
    model, tok = load_4bit_model(model_source("translator"), max_seq_length=2048)  # model_source: course_utils.core.models
    model = add_lora(model, r=16, lora_alpha=16)
    translate(model, tok, ["The Moon has almost no atmosphere."], max_new_tokens=32)

Why one module of ~670 lines: it is notebook 07's whole code path, each helper in two backends (Unsloth and
transformers + peft + bitsandbytes) that must stay side by side to stay alike.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from course_utils.core.data import to_messages
from course_utils.core.models import (
    LORA_TARGETS,
    dir_size_bytes,
    generate_replies,
    load_model,
    load_tokenizer,
)
from course_utils.core.runtime import fast_bf16, real_cuda
from course_utils.core.train import IGNORE_INDEX
from course_utils.lessons.lora_math import lora_param_count
from course_utils.lessons.memory import PHI3_MINI_SIZES

# Deferred imports: transformers, peft, trl, datasets, bitsandbytes and safetensors are imported inside the
# functions that use them, because Unsloth must be imported before any of them (it patches them on import;
# ``detect_backend`` is that first import). The course_utils modules above import none of them.

SYSTEM_PROMPT = "You are an expert translator. Translate the user's English text into Korean."
# Unsloth's usual targets: every projection of attention (q, k, v, o) and of the MLP (gate, up, down).
TARGET_MODULES = list(LORA_TARGETS)
# Phi-3 fuses some projections; a split name maps to the fused module when the model has only that one.
FUSED_PROJECTIONS = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
                     "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}


# --------------------------------------------------------------------------- backend detection

def import_unsloth():
    """``import unsloth`` (a function of its own so that tests can make it fail)."""
    return importlib.import_module("unsloth")


@dataclass(frozen=True)
class Backend:
    """Which library runs the QLoRA calls: ``"unsloth"`` or ``"peft"`` (transformers + peft + bitsandbytes)."""

    name: str
    reason: str = ""
    version: str = ""

    @property
    def unsloth(self) -> bool:
        """True when Unsloth's ``FastLanguageModel`` is used."""
        return self.name == "unsloth"

    @property
    def FastLanguageModel(self):  # noqa: N802 - Unsloth's class name
        """Unsloth's ``FastLanguageModel`` class (only with the unsloth backend)."""
        if not self.unsloth:
            raise RuntimeError("the fallback backend has no FastLanguageModel")
        return import_unsloth().FastLanguageModel

    def describe(self) -> str:
        """One line naming the backend."""
        if self.unsloth:
            return f"Unsloth {self.version} (FastLanguageModel)"
        return "transformers + peft + bitsandbytes (Unsloth unavailable: " + self.reason + ")"


_DETECTED: Backend | None = None


def detect_backend(verbose: bool = True, refresh: bool = False) -> Backend:
    """Try ``import unsloth`` once; on any failure return the fallback backend and say so in one message.

    ``COURSE_UNSLOTH=0`` forces the fallback. Import Unsloth before transformers/TRL (as it asks), so call
    this early. The result is cached; ``refresh=True`` tries again.

    Example::

        detect_backend().name      # 'unsloth' where it imports, else 'peft'
    """
    global _DETECTED
    if _DETECTED is not None and not refresh:
        return _DETECTED
    if os.environ.get("COURSE_UNSLOTH", "1").strip().lower() in {"0", "false", "no", "off"}:
        backend = Backend("peft", "COURSE_UNSLOTH=0")
    else:
        try:
            module = import_unsloth()
            module.FastLanguageModel  # noqa: B018 - fails early if the install is broken
            backend = Backend("unsloth", version=str(getattr(module, "__version__", "?")))
        except Exception as err:  # Unsloth fails in many ways (ImportError, NotImplementedError, RuntimeError …)
            first = (str(err).strip().splitlines() or [""])[0][:160]
            backend = Backend("peft", f"{type(err).__name__}: {first}")
    if not backend.unsloth and real_cuda() and backend.reason != "COURSE_UNSLOTH=0":
        # On a GPU the lesson is Unsloth's: a broken install must not quietly become the plain path.
        raise RuntimeError(
            f"`import unsloth` failed on this GPU machine ({backend.reason}). Rerun the notebook's setup cell "
            "(it installs Unsloth and its CUDA extras), restart the runtime, and run again; or set "
            "COURSE_UNSLOTH=0 to run this lesson with transformers + peft + bitsandbytes instead.")
    if verbose and not backend.unsloth:
        print(f"⚠️ Unsloth cannot run here ({backend.reason}). This lesson runs the same steps with "
              "transformers + peft + bitsandbytes: load_model(..., quantization='4bit') → "
              "prepare_model_for_kbit_training → get_peft_model.")
    _DETECTED = backend
    return backend


def _backend(backend: Backend | None) -> Backend:
    return backend or detect_backend()


# --------------------------------------------------------------------------- loading and LoRA

def keep_bnb_trainable_layout(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its AVX512-BF16 CPU kernel (it breaks backward).

    bitsandbytes 0.50 repacks a ``Linear4bit`` weight in place on the first no-grad forward on CPUs with
    AVX512-BF16 and never unpacks it; Unsloth's CPU loader switches this off, and so does the fallback.
    Returns the number of layers touched.
    """
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def load_4bit_model(model_name: str, max_seq_length: int = 2048, dtype=None, backend: Backend | None = None):
    """(model, tokenizer) with the base weights in 4-bit NF4 (double quant), frozen.

    Unsloth: ``FastLanguageModel.from_pretrained(model_name, max_seq_length, load_in_4bit=True, dtype)``.
    Fallback: ``load_model(model_name, quantization="4bit", dtype)`` and its tokenizer. ``dtype`` is the
    compute dtype (``torch.float32`` on CPU; ``None`` = the device's default).
    """
    b = _backend(backend)
    if b.unsloth:
        model, tok = b.FastLanguageModel.from_pretrained(model_name=model_name, max_seq_length=max_seq_length,
                                                         load_in_4bit=True, dtype=dtype)
    else:
        model = load_model(model_name, quantization="4bit", dtype=dtype)
        tok = load_tokenizer(model_name)
        tok.padding_side = "right"
        model.max_seq_length = max_seq_length
    tok.model_max_length = max_seq_length
    keep_bnb_trainable_layout(model)
    return model, tok


def lora_targets(model, wanted: list[str] | None = None) -> list[str]:
    """The module names of ``wanted`` (default ``TARGET_MODULES``) that exist in ``model``, fused names added.

    >>> from torch import nn
    >>> names = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]      # Phi-3 fuses q/k/v and gate/up
    >>> lora_targets(nn.ModuleDict({n: nn.Linear(2, 2) for n in names}))
    ['qkv_proj', 'o_proj', 'gate_up_proj', 'down_proj']
    """
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    out = []
    for name in wanted or TARGET_MODULES:
        name = name if name in leaves else FUSED_PROJECTIONS.get(name, name)
        if name in leaves and name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"none of {wanted or TARGET_MODULES} is a module of {type(model).__name__}")
    return out


def add_lora(model, r: int = 16, lora_alpha: int = 16, lora_dropout: float = 0.0,
             target_modules: list[str] | None = None, use_gradient_checkpointing="unsloth",
             random_state: int = 0, backend: Backend | None = None):
    """Wrap a 4-bit model with trainable LoRA adapters (everything else frozen); returns the PeftModel.

    Unsloth: ``FastLanguageModel.get_peft_model(model, r=…, lora_alpha=…, …)``. Fallback:
    ``prepare_model_for_kbit_training`` (freeze, gradient checkpointing, input grads) + ``get_peft_model``.
    ``use_gradient_checkpointing="unsloth"`` is Unsloth's offloaded checkpointing; the fallback maps any
    truthy value to ordinary gradient checkpointing.
    """
    b = _backend(backend)
    targets = lora_targets(model, target_modules)
    if b.unsloth:
        return b.FastLanguageModel.get_peft_model(
            model, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets, bias="none",
            use_gradient_checkpointing=use_gradient_checkpointing, random_state=random_state)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(use_gradient_checkpointing),
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # training never reuses a KV cache; for_inference turns it back on
    torch.manual_seed(random_state)  # LoRA A is random: seed it as Unsloth's random_state does
    config = LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets,
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _switch_mode(model, backend: Backend | None, training: bool):
    """Unsloth's ``for_training``/``for_inference``; otherwise ``train()``/``eval()`` with the KV cache off/on."""
    b = _backend(backend)
    if b.unsloth:
        return (b.FastLanguageModel.for_training if training else b.FastLanguageModel.for_inference)(model)
    model.train(training)
    model.config.use_cache = not training
    return model


def for_inference(model, backend: Backend | None = None):
    """Switch to generation: eval mode and KV cache on (Unsloth: ``FastLanguageModel.for_inference``)."""
    return _switch_mode(model, backend, training=False)


def for_training(model, backend: Backend | None = None):
    """Switch back to training mode (Unsloth: ``FastLanguageModel.for_training``)."""
    return _switch_mode(model, backend, training=True)


def saved_adapter_dtype(adapter_dir: str | Path):
    """The dtype the adapter's weights were saved in (TRL keeps QLoRA adapters in bf16 while training)."""
    from safetensors import safe_open

    with safe_open(str(Path(adapter_dir) / "adapter_model.safetensors"), framework="pt") as f:
        return f.get_slice(next(iter(f.keys()))).get_dtype()


def match_adapter_dtype(model, adapter_dir: str | Path) -> str:
    """Cast the LoRA weights back to the dtype they were saved (and trained) in; returns that dtype's name.

    peft upcasts a bf16 adapter to fp32 when loading it; the trained model computed its LoRA path in bf16.
    """
    name = saved_adapter_dtype(adapter_dir)
    dtype = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[name]
    for n, p in model.named_parameters():
        if is_lora_param(n):
            p.data = p.data.to(dtype)
    return name


def load_adapter_on_fresh_base(model_name: str, adapter_dir: str | Path, max_seq_length: int = 2048,
                               dtype=None, backend: Backend | None = None):
    """(model, tokenizer): a fresh 4-bit base with a saved adapter attached (``PeftModel.from_pretrained``).

    The adapter keeps the dtype it was saved in, so the result computes exactly as the trained model did.
    """
    from peft import PeftModel

    base, tok = load_4bit_model(model_name, max_seq_length, dtype=dtype, backend=backend)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    match_adapter_dtype(model, adapter_dir)
    return for_inference(model, backend), tok


def is_4bit_linear(module) -> bool:
    """True for a bitsandbytes ``Linear4bit`` holding a quantized weight (not peft's LoRA wrapper of one)."""
    try:
        import bitsandbytes as bnb
    except ImportError:  # pragma: no cover - bitsandbytes is part of the pinned stack
        return False
    return isinstance(module, bnb.nn.Linear4bit) and getattr(module.weight, "quant_state", None) is not None


def is_lora_param(name: str) -> bool:
    """True for the parameters LoRA adds (``lora_A`` / ``lora_B`` …), by peft's names."""
    return "lora_" in name


def frozen_fingerprint(model) -> dict[str, float]:
    """name → checksum of every non-LoRA parameter (4-bit ones included): equal before and after ⇒ untouched."""
    with torch.no_grad():
        return {n: float(p.detach().float().sum()) + float(p.detach().float().abs().sum())
                for n, p in model.named_parameters() if not is_lora_param(n)}


# --------------------------------------------------------------------------- data: chat-format examples

def translation_messages(en: str, ko: str | None = None, system: str = SYSTEM_PROMPT) -> list[dict]:
    """Chat messages: system instruction, the English text as the user turn, optionally the Korean answer."""
    return to_messages(en, ko, system=system)


def translation_example(en: str, ko: str, system: str = SYSTEM_PROMPT) -> dict:
    """A TRL prompt/completion example: the loss falls on the completion (the Korean) only.

    >>> translation_example("Hi.", "안녕하세요.")["completion"]
    [{'role': 'assistant', 'content': '안녕하세요.'}]
    """
    return {"prompt": translation_messages(en, system=system),
            "completion": [{"role": "assistant", "content": ko}]}


def example_length(tokenizer, en: str, ko: str, system: str = SYSTEM_PROMPT) -> int:
    """Tokens of the full chat-formatted example (prompt + Korean answer + end-of-turn)."""
    ids = tokenizer.apply_chat_template(translation_messages(en, ko, system), tokenize=True,
                                        return_dict=True)["input_ids"]
    return len(ids)


def fitting_rows(tokenizer, rows: list[dict], max_length: int) -> list[dict]:
    """The rows whose chat-formatted example fits ``max_length`` tokens: cut-off answers teach stopping mid-sentence."""
    limit, tokenizer.model_max_length = tokenizer.model_max_length, int(1e9)  # measuring only: no length warning
    try:
        return [r for r in rows if example_length(tokenizer, r["en"], r["ko"]) <= max_length]
    finally:
        tokenizer.model_max_length = limit


def translation_dataset(rows: list[dict], system: str = SYSTEM_PROMPT):
    """A ``datasets.Dataset`` of prompt/completion examples from ``{en, ko}`` rows."""
    from datasets import Dataset

    return Dataset.from_list([translation_example(r["en"], r["ko"], system) for r in rows])


def split_by_labels(tokenizer, input_ids: list[int], labels: list[int]) -> tuple[str, str]:
    """(text without loss, text with loss) of one tokenized example: label −100 marks "no loss here"."""
    off = tokenizer.decode([t for t, y in zip(input_ids, labels) if y == IGNORE_INDEX])
    on = tokenizer.decode([t for t, y in zip(input_ids, labels) if y != IGNORE_INDEX])
    return off, on


def loss_split(tokenizer, example: dict) -> tuple[str, str]:
    """(text without loss, text with loss) of a row of ``SFTTrainer.train_dataset``.

    TRL stores ``labels`` (−100 outside the completion) or a 0/1 ``completion_mask``, depending on version.
    """
    ids = example["input_ids"]
    if "labels" in example:
        return split_by_labels(tokenizer, ids, example["labels"])
    mask = example.get("completion_mask") or example.get("assistant_masks")
    if mask is None:
        raise KeyError(f"no labels or completion mask in {sorted(example)}")
    return split_by_labels(tokenizer, ids, [t if m else IGNORE_INDEX for t, m in zip(ids, mask)])


def collated_loss_split(trainer, index: int = 0) -> tuple[str, str]:
    """(text without loss, text with loss) of row ``index`` as the trainer's collator batches it for training.

    This is what the loss sees, whichever route set the labels (TRL's ``completion_only_loss`` or Unsloth's
    ``train_on_responses_only``, which rewrites the dataset's labels and the collator).
    """
    ids, labels = collated_labels(trainer, index)
    return split_by_labels(trainer.processing_class, ids, labels)


def collated_labels(trainer, index: int = 0) -> tuple[list[int], list[int]]:
    """(input ids, labels) of row ``index`` as the trainer's collator batches it, padding dropped (−100 = no loss)."""
    batch = trainer.data_collator([trainer.train_dataset[index]])
    ids = batch["input_ids"][0].tolist()
    if "labels" in batch:
        labels = batch["labels"][0].tolist()
    else:  # pragma: no cover - TRL versions that pass a mask instead of labels
        mask = batch.get("completion_mask", batch.get("assistant_masks"))[0].tolist()
        labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    if "attention_mask" in batch:
        keep = batch["attention_mask"][0].tolist()
        ids, labels = [t for t, k in zip(ids, keep) if k], [t for t, k in zip(labels, keep) if k]
    return ids, labels


def token_pieces(tokenizer, input_ids: list[int], labels: list[int]) -> list[dict]:
    """One row per token: position, id, label and its text (``loss``: label ≠ −100).

    A byte-level tokenizer splits a Hangul syllable over several tokens; those tokens show as ``…`` and the
    last one carries the decoded syllable(s), so every row reads.
    """
    rows, pending = [], []
    for pos, (tok, lab) in enumerate(zip(input_ids, labels)):
        pending.append(tok)
        text = tokenizer.decode(pending)
        complete = "\ufffd" not in text
        rows.append({"pos": pos, "id": tok, "label": lab, "loss": lab != -100, "text": text if complete else "…"})
        if complete:
            pending = []
    return rows


# The chat markers Unsloth's ``train_on_responses_only`` splits on: everything up to the response marker is
# masked, the assistant's answer after it trains. Keyed by ``unsloth.chat_templates`` template name.
RESPONSE_MARKERS = {
    "phi-3": ("<|user|>\n", "<|assistant|>\n"),
    "chatml": ("<|im_start|>user\n", "<|im_start|>assistant\n"),
}


# --------------------------------------------------------------------------- translation and chrF

@contextlib.contextmanager
def dequantized_once(model, enabled: bool | None = None):
    """Inside the block, each 4-bit layer computes with a copy of its weight dequantized once, not per call.

    bitsandbytes' CPU path dequantizes every NF4 weight on every forward (``gemm_4bit`` = dequantize, then
    ``linear``): generation pays it once per new token. The copy holds exactly those dequantized values,
    so outputs are unchanged (tests check this); it costs 16/32-bit memory while the block runs.
    ``enabled=None``: on for CPU models, off on GPUs (their fused kernels do not need it).
    """
    import torch.nn.functional as F  # noqa: N812

    if enabled is None:
        enabled = next(model.parameters()).device.type == "cpu"
    patched = []
    if enabled:
        import bitsandbytes.functional as bnb_f

        for m in model.modules():
            if not is_4bit_linear(m):
                continue
            state = m.weight.quant_state
            dtype = m.compute_dtype or state.dtype or torch.float32
            weight = bnb_f.dequantize_4bit(m.weight.data, state).to(dtype)          # (d_out, d_in)

            def forward(x, weight=weight, m=m):
                bias = None if m.bias is None else m.bias.to(weight.dtype)
                return F.linear(x.to(weight.dtype), weight, bias).to(x.dtype)

            m.forward = forward
            patched.append(m)
    try:
        yield model
    finally:
        for m in patched:
            del m.forward  # back to the class's Linear4bit.forward


def translate(model, tokenizer, sentences: list[str], max_new_tokens: int = 64, batch_size: int = 8,
              system: str = SYSTEM_PROMPT) -> list[str]:
    """Greedy translations of ``sentences`` (batched, left-padded), decoded without special tokens.

    On CPU the 4-bit weights are dequantized once for the whole call (``dequantized_once``): same outputs.
    """
    with dequantized_once(model):
        return generate_replies(model, tokenizer, [translation_messages(s, system=system) for s in sentences],
                                max_new_tokens, batch_size)


def hangul_share(texts: list[str]) -> float:
    """Share (0–1) of non-space characters that are Hangul syllables or jamo."""
    chars = [c for t in texts for c in t if not c.isspace()]
    hangul = sum(("\uac00" <= c <= "\ud7a3") or ("\u1100" <= c <= "\u11ff") or ("\u3130" <= c <= "\u318f")
                 for c in chars)
    return hangul / max(len(chars), 1)


# --------------------------------------------------------------------------- training measurements

def step_timer():
    """A TRL/Trainer callback that records the wall time of every optimizer step (``.step_times``)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.step_times: list[float] = []
            self._t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_times.append(time.perf_counter() - self._t0)

        @property
        def step_time(self) -> float:
            """Median seconds per step, the first (warm-up) step excluded when there are others."""
            times = sorted(self.step_times[1:] or self.step_times)
            return times[len(times) // 2] if times else float("nan")

    return StepTimer()


# --------------------------------------------------------------------------- seen vs unseen, LoftQ

def seen_mix(rows: list[dict], n_seen: int, repeats: int, n_total: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(seen rows, training rows): the ``n_seen`` shortest rows repeated ``repeats`` times, topped up to ``n_total``.

    The top-up rows are drawn once each from the other rows; the trainer shuffles the mixture, so with
    ``n_total`` = steps · batch · accumulation every seen row is trained ``repeats`` times in one run.
    """
    import random

    seen = sorted(rows, key=lambda r: (len(r["ko"]), r["en"]))[:n_seen]
    others = [r for r in rows if r not in seen]
    rest = max(0, n_total - n_seen * repeats)
    fill = random.Random(seed).sample(others, min(rest, len(others)))
    return seen, seen * repeats + fill


def nf4_roundtrip(weight, blocksize: int = 64):
    """``weight`` quantized to NF4 by bitsandbytes (blocks of ``blocksize``, no double quant) and dequantized back."""
    import bitsandbytes.functional as bnb_f

    w = weight.detach().float().contiguous()
    codes, state = bnb_f.quantize_4bit(w, blocksize=blocksize, quant_type="nf4")
    return bnb_f.dequantize_4bit(codes, state).to(w.device)                       # (d_out, d_in)


def loftq_init(weight, r: int, num_iter: int = 1, quantize=nf4_roundtrip):
    """LoftQ's start: (Q, lora_A, lora_B) with Q an NF4 weight and Q + lora_B @ lora_A ≈ ``weight`` (scaling 1).

    Alternate: quantize what the adapter does not cover (Q = quantize(W − B·A)), then fit B·A to the residual
    W − Q by its top-r SVD, √S split between B (d_out × r) and A (r × d_in), as peft's ``loftq_init`` does.
    """
    import torch

    w = weight.detach().float()                                                   # (d_out, d_in)
    target = w
    for _ in range(num_iter):
        q = quantize(target)
        u, s, vh = torch.linalg.svd(w - q, full_matrices=False)
        lora_B = u[:, :r] * s[:r].sqrt()                                          # (d_out, r)
        lora_A = s[:r].sqrt()[:, None] * vh[:r]                                   # (r, d_in)
        target = w - lora_B @ lora_A
    return q, lora_A, lora_B


# --------------------------------------------------------------------------- merged 16-bit export

def unquantized_name(model_name: str) -> str:
    """The 16-bit checkpoint of a pre-quantized Unsloth one (``…-bnb-4bit`` → ``…``); others unchanged.

    >>> unquantized_name("unsloth/Phi-3-mini-4k-instruct-bnb-4bit")
    'unsloth/Phi-3-mini-4k-instruct'
    """
    return re.sub(r"(-unsloth)?-bnb-4bit$", "", model_name, flags=re.IGNORECASE)


def merge_16bit(model_name: str, adapter_dir: str | Path, save_dtype=None):
    """A 16-bit copy of base + adapter: the base loaded unquantized, the adapter merged into its weights.

    ``save_dtype``: bf16 on CUDA with bf16 support, else fp16 (no native bf16 on most CPUs).
    """
    from peft import PeftModel

    base = load_model(unquantized_name(model_name))  # 16-bit: merging into 4-bit codes would round ΔW away
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    if save_dtype is None:
        save_dtype = torch.bfloat16 if fast_bf16() else torch.float16  # a T4 has no native bf16
    return merged.to(save_dtype)


def export_merged(model, tokenizer, out_dir: str | Path, model_name: str, adapter_dir: str | Path,
                  backend: Backend | None = None) -> str:
    """Write base + adapter as one 16-bit model to ``out_dir``; returns how it was done.

    Unsloth: ``model.save_pretrained_merged(out_dir, tokenizer, save_method="merged_16bit")``. Unsloth's CPU
    backend refuses to merge into a 4-bit model; then (and in the fallback) the base is loaded in 16-bit,
    the saved adapter attached and ``merge_and_unload`` folds ΔW = (α/r)·B·A into the weights.
    """
    b = _backend(backend)
    if b.unsloth and hasattr(model, "save_pretrained_merged"):
        try:
            model.save_pretrained_merged(str(out_dir), tokenizer, save_method="merged_16bit")
            return "Unsloth save_pretrained_merged(save_method='merged_16bit')"
        except NotImplementedError as err:
            print(f"Unsloth: {err}\n→ merging by hand instead: 16-bit base + adapter → merge_and_unload().")
    merged = merge_16bit(model_name, adapter_dir)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return f"peft merge_and_unload() on the 16-bit base, saved as {str(merged.dtype).replace('torch.', '')}"


def folder_mb(path: str | Path) -> float:
    """Total size of the files in a folder, in MB (2**20 bytes)."""
    return dir_size_bytes(path) / 2**20


# --------------------------------------------------------------------------- what NF4 stores (the arithmetic: course_utils.lessons.memory)

def param_split(model) -> tuple[int, int]:
    """(weights bitsandbytes quantizes, all other parameters) of a model (works on 4-bit and meta models).

    Quantized: the weight of every ``nn.Linear`` except the output embedding (``lm_head`` stays 16-bit).
    LoRA matrices, if attached, are not counted.
    """
    out_emb = model.get_output_embeddings()
    quantized, skip = 0, set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not out_emb and "lora_" not in name:
            quantized += module.in_features * module.out_features   # a Linear4bit's weight is packed: use shapes
            skip.add(id(module.weight))
    other = sum(p.numel() for n, p in model.named_parameters() if id(p) not in skip and not is_lora_param(n))
    return quantized, other


def quant_state_bytes(model) -> int:
    """Bytes of the NF4 block scales that ``get_memory_footprint()`` leaves out (absmax, nested absmax, offset).

    The code tables (16 NF4 levels, 256 levels for the nested 8-bit absmax) are constants and not counted.
    """
    total, seen = 0, set()
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        while state is not None and id(state) not in seen:
            seen.add(id(state))
            for name in ("absmax", "offset"):
                t = getattr(state, name, None)
                if t is not None and hasattr(t, "element_size"):
                    total += t.numel() * t.element_size()
            state = getattr(state, "state2", None) if getattr(state, "nested", False) else None
    return total


def meta_model(config):
    """The model of a config on the meta device: shapes and counts without memory or time."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def phi3_mini_config(tiny: bool = False, layout: str = "phi3"):
    """Phi-3-mini's architecture (``Phi3Config()`` defaults: 3.8 B parameters) or a tiny one for CPU tests.

    ``layout="llama"``: the same sizes with separate q/k/v and gate/up projections, as Unsloth's Phi-3
    checkpoints store them.
    """
    from transformers import LlamaConfig, Phi3Config

    sizes = dict(PHI3_MINI_SIZES)  # the sizes of ``memory.PHI3_MINI``
    if tiny:
        sizes.update(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
    if layout == "phi3":
        return Phi3Config(**sizes, pad_token_id=0)
    if layout == "llama":
        return LlamaConfig(**sizes, rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=0)
    raise ValueError(f"layout={layout!r}: expected 'phi3' or 'llama'")


def model_lora_params(model, r: int, target_modules: list[str] | None = None) -> int:
    """Parameters LoRA adds to a whole model: r·(d_in + d_out) summed over the targeted Linear layers.

    That is ``lora_param_count(d_in, d_out, r)``, notebook 03's formula (A is r×d_in, B is d_out×r)."""
    targets = set(lora_targets(model, target_modules))
    total = 0
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in targets and "lora_" not in name:
            linear = getattr(module, "base_layer", module)  # after get_peft_model the Linear sits inside
            if isinstance(linear, torch.nn.Linear):
                total += lora_param_count(linear.in_features, linear.out_features, r)
    return total
