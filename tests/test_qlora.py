"""QLoRA lesson code: backend detection and fallback, 4-bit LoRA training, adapter round trip, footprints."""

import importlib.util
from pathlib import Path

import pytest
import torch
from notebook_cells import run_inline

from course_utils.bench import qlora as bench_qlora
from course_utils.exercises import nb07
from course_utils.lessons import memory, qlora
from course_utils.lessons.quantization import bits_per_param

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "07_qlora_unsloth_translation.ipynb"
HAS_UNSLOTH = importlib.util.find_spec("unsloth") is not None
FALLBACK = qlora.Backend("peft", "test")


@pytest.fixture
def no_unsloth(monkeypatch, capsys):
    """Unsloth's import fails (as on a machine where it cannot run); the detection cache is reset."""
    def broken():
        raise ImportError("No module named 'unsloth' (simulated)")

    monkeypatch.setattr(qlora, "import_unsloth", broken)
    monkeypatch.setattr(qlora, "_DETECTED", None)
    monkeypatch.delenv("COURSE_UNSLOTH", raising=False)
    yield
    capsys.readouterr()


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A saved 2-layer Llama (hidden 128: bitsandbytes' CPU kernels reject narrower layers) + tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "base")
    bench_qlora._write_word_tokenizer(tmp_path / "base", cfg.vocab_size, cfg.max_position_embeddings)
    return tmp_path / "base"


def _batch(vocab=512, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (4, 16), generator=g)                      # (B, T)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


# --------------------------------------------------------------------------- backend detection

def test_fallback_when_unsloth_fails_to_import_says_so_once(no_unsloth, capsys):
    backend = qlora.detect_backend(refresh=True)
    assert backend.name == "peft" and not backend.unsloth
    assert "ImportError" in backend.reason
    out = capsys.readouterr().out
    assert out.count("Unsloth cannot run here") == 1 and "transformers + peft + bitsandbytes" in out
    assert qlora.detect_backend() is backend            # cached: no second attempt, no second message
    assert capsys.readouterr().out == ""
    with pytest.raises(RuntimeError):
        backend.FastLanguageModel  # noqa: B018


def test_any_exception_from_unsloth_means_fallback(monkeypatch):
    def gpu_only():
        raise NotImplementedError("Unsloth cannot find any torch accelerator")

    monkeypatch.setattr(qlora, "import_unsloth", gpu_only)
    monkeypatch.setattr(qlora, "_DETECTED", None)
    monkeypatch.delenv("COURSE_UNSLOTH", raising=False)
    assert qlora.detect_backend(verbose=False, refresh=True).reason.startswith("NotImplementedError")


def test_course_unsloth_0_forces_the_fallback(monkeypatch):
    monkeypatch.setattr(qlora, "import_unsloth", lambda: pytest.fail("must not import unsloth"))
    monkeypatch.setattr(qlora, "_DETECTED", None)
    monkeypatch.setenv("COURSE_UNSLOTH", "0")
    assert qlora.detect_backend(verbose=False, refresh=True).name == "peft"


def test_a_broken_unsloth_on_a_gpu_stops_the_lesson_loudly(no_unsloth, monkeypatch):
    """On a GPU the lesson is Unsloth's: a failed import must not quietly become the plain path."""
    from course_utils.core import runtime

    monkeypatch.setattr(runtime, "_cuda_available", lambda: True)
    with pytest.raises(RuntimeError, match="`import unsloth` failed on this GPU machine"):
        qlora.detect_backend(verbose=False, refresh=True)
    monkeypatch.setenv("COURSE_UNSLOTH", "0")          # the explicit opt-in to the plain path still works
    assert qlora.detect_backend(verbose=False, refresh=True).name == "peft"


def test_collated_loss_split_reads_the_labels_the_collator_builds():
    class Tok:
        def decode(self, ids):
            return " ".join(map(str, ids))

    class Trainer:
        processing_class = Tok()
        train_dataset = [{"input_ids": [5, 6, 7, 8]}]

        @staticmethod
        def data_collator(rows):
            return {"input_ids": torch.tensor([[5, 6, 7, 8, 0]]), "labels": torch.tensor([[-100, -100, 7, 8, -100]]),
                    "attention_mask": torch.tensor([[1, 1, 1, 1, 0]])}

    assert qlora.collated_loss_split(Trainer()) == ("5 6", "7 8")


# --------------------------------------------------------------------------- fallback: load, train, reload

def test_fallback_trains_only_lora_and_the_adapter_reloads_identically(no_unsloth, tiny_checkpoint, tmp_path):
    from course_utils.core.train import train

    backend = qlora.detect_backend(refresh=True)
    model, tok = qlora.load_4bit_model(str(tiny_checkpoint), max_seq_length=64, dtype=torch.float32)
    assert sum(map(qlora.is_4bit_linear, model.modules())) == 14, "base not loaded in 4-bit"
    model = qlora.add_lora(model, r=8, lora_alpha=16, random_state=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(qlora.is_lora_param(n) for n in trainable)
    assert sum(p.numel() for n, p in model.named_parameters() if p.requires_grad) == \
        qlora.model_lora_params(model, 8)

    before = qlora.frozen_fingerprint(model)
    res = train(model, [_batch()], steps=8, lr=5e-3, progress=False)
    assert res.losses[-1] < 0.9 * res.losses[0], f"loss did not fall: {res.losses}"
    assert qlora.frozen_fingerprint(model) == before, "a frozen (non-LoRA) weight changed"
    assert max(float(p.detach().abs().max()) for n, p in model.named_parameters() if "lora_B" in n) > 0

    with torch.no_grad():  # as TRL does for QLoRA: the adapter lives in bf16 (peft reloads it as fp32)
        for n, p in model.named_parameters():
            if qlora.is_lora_param(n):
                p.data = p.data.to(torch.bfloat16)
    qlora.for_inference(model, backend)
    batch = _batch(seed=2)
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"]).logits                      # (B, T, V)
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert qlora.saved_adapter_dtype(tmp_path / "adapter") == "BF16"
    reloaded, _ = qlora.load_adapter_on_fresh_base(str(tiny_checkpoint), tmp_path / "adapter", 64,
                                                   dtype=torch.float32)
    with torch.no_grad():
        got = reloaded(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    base_only, _ = qlora.load_4bit_model(str(tiny_checkpoint), 64, dtype=torch.float32)
    with torch.no_grad():
        assert not torch.allclose(base_only(input_ids=batch["input_ids"]).logits, expected, atol=1e-3), \
            "the trained adapter should change the logits (else the reload test proves nothing)"


def test_fallback_merged_export_equals_16bit_base_plus_adapter(no_unsloth, tiny_checkpoint, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    qlora.detect_backend(refresh=True)
    model, tok = qlora.load_4bit_model(str(tiny_checkpoint), 64, dtype=torch.float32)
    model = qlora.add_lora(model, r=8, lora_alpha=16)
    with torch.no_grad():  # perturb B first, so that a merge that forgot the update would fail
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.save_pretrained(tmp_path / "adapter")
    how = qlora.export_merged(model, tok, tmp_path / "merged", str(tiny_checkpoint), tmp_path / "adapter")
    assert "merge_and_unload" in how
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32), tmp_path / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    ids = _batch(seed=3)["input_ids"]
    with torch.no_grad():
        got, want, plain = merged(input_ids=ids).logits, reference(input_ids=ids).logits, base(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=2e-3)  # fp16 storage rounds the weights
    assert (plain - want).abs().max() > 10 * (got - want).abs().max(), "the merge should carry the update"


# --------------------------------------------------------------------------- data and loss mask

def test_translation_example_is_prompt_completion_chat():
    ex = qlora.translation_example("Hi.", "안녕하세요.")
    assert ex["prompt"] == [{"role": "system", "content": qlora.SYSTEM_PROMPT}, {"role": "user", "content": "Hi."}]
    assert ex["completion"] == [{"role": "assistant", "content": "안녕하세요."}]
    assert qlora.SYSTEM_PROMPT == "You are an expert translator. Translate the user's English text into Korean."
    assert nb07.SYSTEM == qlora.SYSTEM_PROMPT and nb07._expected_example() == \
        qlora.translation_example(nb07.EN, nb07.KO)


def test_sft_trainer_puts_the_loss_on_the_korean_tokens_only(embedded, tmp_path):
    from trl import SFTConfig, SFTTrainer

    model, tok = embedded
    rows = [{"en": "The Moon has almost no atmosphere.", "ko": "달에는 대기가 거의 없습니다."},
            {"en": "Good morning.", "ko": "좋은 아침입니다."}]
    args = SFTConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, bf16=False,
                     use_cpu=True, report_to="none", max_length=128, completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=qlora.translation_dataset(rows),
                         processing_class=tok)
    for row, ex in zip(rows, trainer.train_dataset):
        off, on = qlora.split_by_labels(tok, ex["input_ids"], ex["labels"])
        assert on.strip().startswith(row["ko"]), on
        assert row["en"] in off and qlora.SYSTEM_PROMPT in off and row["en"] not in on
    assert qlora.fitting_rows(tok, rows, 10) == []
    assert qlora.fitting_rows(tok, rows, 128) == rows


def test_translate_returns_clean_strings_and_hangul_share(embedded):
    model, tok = embedded
    out = qlora.translate(model, tok, ["Good morning.", "The Moon has almost no atmosphere."], max_new_tokens=4,
                          batch_size=2)
    assert len(out) == 2 and all(isinstance(t, str) and "<|im_end|>" not in t for t in out)
    assert tok.padding_side == "right", "translate must restore the padding side"
    assert qlora.hangul_share(["안녕 hi"]) == pytest.approx(2 / 4)
    assert qlora.hangul_share([""]) == 0


# --------------------------------------------------------------------------- footprint arithmetic

NF4_DQ = bits_per_param(64, double_quant=True)  # notebook 04's formula: 4 + 8/64 + 32/(64·256)


def test_phi3_mini_counts():
    assert NF4_DQ == 4 + 8 / 64 + 32 / (64 * 256) == nb07.NF4_DQ_BITS      # exactly: 4.126953125 bits
    phi3 = qlora.meta_model(qlora.phi3_mini_config())
    assert qlora.param_split(phi3) == (nb07.N_QUANTIZED, nb07.N_OTHER)
    assert sum(qlora.param_split(phi3)) == pytest.approx(3.82e9, rel=1e-3)
    llama_layout = qlora.meta_model(qlora.phi3_mini_config(layout="llama"))
    assert qlora.model_lora_params(llama_layout, 16) == nb07._lora_phi3(16) == 29_884_416
    assert qlora.lora_targets(phi3) == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert qlora.lora_targets(llama_layout) == qlora.TARGET_MODULES


def test_for_training_and_for_inference_switch_mode_and_kv_cache(monkeypatch):
    """Without Unsloth: train()/eval() and the KV cache off/on; with it, FastLanguageModel's own switch."""
    import types

    model = torch.nn.Linear(2, 2)
    model.config = types.SimpleNamespace(use_cache=None)
    peft_backend = qlora.Backend("peft")
    assert qlora.for_inference(model, peft_backend) is model and not model.training and model.config.use_cache
    assert qlora.for_training(model, peft_backend) is model and model.training and model.config.use_cache is False
    calls = []
    fake = types.SimpleNamespace(for_inference=lambda m: calls.append("inference") or m,
                                 for_training=lambda m: calls.append("training") or m)
    monkeypatch.setattr(qlora.Backend, "FastLanguageModel", property(lambda self: fake))
    unsloth = qlora.Backend("unsloth")
    qlora.for_inference(model, unsloth)
    qlora.for_training(model, unsloth)
    assert calls == ["inference", "training"]


def test_footprint_arithmetic_matches_bitsandbytes(tiny_checkpoint):
    from course_utils.core.models import load_model

    model = load_model(str(tiny_checkpoint), quantization="4bit", dtype=torch.float32)
    n_q, n_other = qlora.param_split(model)
    # get_memory_footprint counts the packed 4-bit weights and the fp32 rest, not the block scales …
    assert model.get_memory_footprint() == pytest.approx(memory.footprint_bytes(n_q, n_other, 4, 4), rel=1e-3)
    # … which the quant states hold: 8-bit absmax per 64 weights + fp32 per 256 blocks (+ tiny constants)
    scales = qlora.quant_state_bytes(model)
    assert scales == pytest.approx(n_q * (NF4_DQ - 4) / 8, rel=0.1)
    assert model.get_memory_footprint() + scales == pytest.approx(
        memory.footprint_bytes(n_q, n_other, NF4_DQ, 4), rel=0.01)


# --------------------------------------------------------------------------- seen vs unseen, optimizer state, LoftQ

def test_token_pieces_mark_the_loss_and_keep_split_syllables_readable(embedded):
    _, tok = embedded
    ids = tok("Hi 달", add_special_tokens=False)["input_ids"]
    assert len(ids) > 2, "the byte-level tokenizer should split the Hangul syllable"
    labels = [-100] + ids[1:]
    rows = qlora.token_pieces(tok, ids, labels)
    assert [r["id"] for r in rows] == ids and [r["loss"] for r in rows] == [False] + [True] * (len(ids) - 1)
    assert "".join(r["text"] for r in rows if r["text"] != "…") == "Hi 달"
    assert rows[-1]["text"].strip() == "달" and rows[-2]["text"] == "…"


def test_seen_mix_repeats_a_fixed_subset_and_fills_to_the_total():
    rows = [{"en": f"e{i}", "ko": "가" * (i + 1)} for i in range(20)]
    seen, mix = qlora.seen_mix(rows, n_seen=3, repeats=4, n_total=16)
    assert seen == rows[:3] and len(mix) == 16
    assert all(mix.count(r) == 4 for r in seen)
    rest = [r for r in mix if r not in seen]
    assert len(rest) == 4 and len({r["en"] for r in rest}) == 4
    assert qlora.seen_mix(rows, 3, 4, 16) == (seen, mix), "the mixture must be reproducible"


def test_paged_adamw_falls_back_on_cpu_with_a_warning():
    import bitsandbytes as bnb

    p = torch.nn.Parameter(torch.randn(64, 128))
    opt = bnb.optim.PagedAdamW8bit([p], lr=1e-3)
    p.grad = torch.randn_like(p)
    with pytest.warns(UserWarning, match="Paged optimizers are not supported on CPU"):
        opt.step()
    assert not getattr(opt.state[p]["state1"], "is_paged", False)
    assert memory.state_bytes(opt) == memory.adamw_state_bytes([p.numel()], 8)


def _peft_loftq_on_cpu():
    """peft's own ``loftq_init`` with its one device line set to the CPU (peft 0.21 hard-codes CUDA/XPU)."""
    import inspect

    from peft.utils import loftq_utils

    src = inspect.getsource(loftq_utils.loftq_init)
    line = '"xpu" if is_xpu_available() else "cuda"'
    assert src.count(line) == 1, "peft's loftq_init changed: update this test"
    ns = dict(vars(loftq_utils))
    exec(src.replace(line, '"cpu"'), ns)
    return ns["loftq_init"]


@pytest.mark.parametrize("num_iter", [1, 3])
def test_loftq_init_matches_peft_and_reduces_the_error(num_iter):
    torch.manual_seed(0)
    w = torch.randn(128, 256) * 0.02                                          # (d_out, d_in)
    q_ref, a_ref, b_ref = _peft_loftq_on_cpu()(w, num_bits=4, reduced_rank=8, num_iter=num_iter)
    q, lora_A, lora_B = qlora.loftq_init(w, r=8, num_iter=num_iter)
    assert lora_A.shape == (8, 256) and lora_B.shape == (128, 8)
    torch.testing.assert_close(q, q_ref)
    torch.testing.assert_close(lora_B @ lora_A, b_ref @ a_ref)
    plain = (w - qlora.nf4_roundtrip(w)).norm()                              # QLoRA's start: B = 0
    assert (w - q - lora_B @ lora_A).norm() < 0.95 * plain


def test_notebook_inline_loftq_agrees_with_package():
    ns = run_inline(NOTEBOOK.name, "course_utils.lessons.qlora loftq")
    torch.manual_seed(1)
    w = torch.randn(64, 128)
    for num_iter in (1, 2):
        for mine, ref in zip(ns["loftq_init"](w, 4, num_iter), qlora.loftq_init(w, 4, num_iter)):
            torch.testing.assert_close(mine, ref)


# --------------------------------------------------------------------------- benchmark (CPU: tiny config)

def test_bench_runs_tiny_on_cpu(capsys):
    paths = ("plain", "unsloth") if HAS_UNSLOTH else ("plain",)
    results = bench_qlora.bench_qlora(steps=1, warmup=0, batch_size=1, seq_len=16, paths=paths)
    out = capsys.readouterr().out
    assert "No GPU" in out and "tiny" in out
    for res in results.values():
        assert not res.error, res.error
        assert res.tokens_per_s > 0 and res.peak_mb > 0 and res.trainable > 0
    if HAS_UNSLOTH:  # both paths ran the lesson helpers: same targets on Phi-3's fused layers, same LoRA size
        assert "Unsloth / plain" in out
        assert results["unsloth"].trainable == results["plain"].trainable
