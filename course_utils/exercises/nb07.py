"""Exercises of notebook 07 (QLoRA with Unsloth, English→Korean translation)."""

from course_utils.exercises import Exercise, Incorrect, expect_number

SYSTEM = "You are an expert translator. Translate the user's English text into Korean."
EN, KO = "Good morning.", "좋은 아침입니다."

# Phi-3-mini (Phi3Config defaults): 32 layers, hidden 3072, MLP 8192, vocabulary 32064, untied lm_head.
LAYERS, HIDDEN, MLP, VOCAB = 32, 3072, 8192, 32064
# Linear weights per layer (what NF4 quantizes): q, k, v, o (3072×3072 each), gate, up (3072→8192), down (8192→3072)
N_QUANTIZED = LAYERS * (4 * HIDDEN * HIDDEN + 3 * HIDDEN * MLP)
N_OTHER = 2 * VOCAB * HIDDEN + (2 * LAYERS + 1) * HIDDEN  # embed_tokens + lm_head + RMSNorm weights
NF4_DQ_BITS = 4 + 8 / 64 + 32 / (64 * 256)  # = course_utils.lessons.quantization.bits_per_param(64, double_quant=True)


def _expected_example() -> dict:
    return {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": EN}],
            "completion": [{"role": "assistant", "content": KO}]}


def _check_q1(example) -> None:
    if not isinstance(example, dict) or set(example) != {"prompt", "completion"}:
        raise Incorrect("expected a dict with exactly two keys, 'prompt' and 'completion'")
    prompt, completion = example["prompt"], example["completion"]
    if not (isinstance(prompt, list) and isinstance(completion, list)) or not all(
            isinstance(m, dict) for m in prompt + completion):
        raise Incorrect("'prompt' and 'completion' are lists of messages {'role': …, 'content': …}")
    if any(KO in str(m.get("content", "")) for m in prompt):
        raise Incorrect("the Korean answer is in the prompt: then the model sees it as input, and no loss "
                        "falls on it. Put it in 'completion'")
    if not prompt or prompt[0] != {"role": "system", "content": SYSTEM}:
        raise Incorrect("the prompt should start with the system message (role 'system', the translator "
                        "instruction, word for word)")
    if example != _expected_example():
        raise Incorrect("prompt = [system, user (the English)], completion = [assistant (the Korean)]: "
                        "check roles and texts")


q1 = Exercise(
    name="Q1 🐢 a chat-formatted training example",
    checker=_check_q1,
    hint_text="Look at `train_ds[0]` above: a dict with 'prompt' (system + user messages) and "
              "'completion' (one assistant message).",
    solution_text=f"""```python
example = {{
    "prompt": [{{"role": "system", "content": "{SYSTEM}"}},
               {{"role": "user", "content": "{EN}"}}],
    "completion": [{{"role": "assistant", "content": "{KO}"}}],
}}
# the same as course_utils.lessons.qlora.translation_example("{EN}", "{KO}")
```""",
    solution_answer=lambda: (_expected_example(),),
    wrong_answer=lambda: ({"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": EN},
                                      {"role": "assistant", "content": KO}], "completion": []},),
)


def _phi3_4bit_gb() -> float:
    return (N_QUANTIZED * NF4_DQ_BITS / 8 + N_OTHER * 2) / 1e9


def _check_q2(gb) -> None:
    if isinstance(gb, bool):
        raise Incorrect("expected a number of GB")
    try:
        v = float(gb)
    except (TypeError, ValueError):
        raise Incorrect(f"expected a number of GB, got {type(gb).__name__}") from None
    if abs(v - (N_QUANTIZED + N_OTHER) * 2 / 1e9) < 0.05:
        raise Incorrect("that is the 16-bit footprint (2 bytes for every weight); NF4 stores the Linear "
                        "weights in about half a byte")
    if abs(v - N_QUANTIZED * NF4_DQ_BITS / 8 / 1e9) < 0.05:
        raise Incorrect("close: the embeddings and lm_head are not quantized; they stay 16-bit (2 bytes each)")
    if abs(v - (N_QUANTIZED * 4.5 / 8 + N_OTHER * 2) / 1e9) < 0.02:
        raise Incorrect("close: 4.5 bits is NF4 *without* double quantization; use "
                        "bits_per_param(64, double_quant=True)")
    expect_number(v, _phi3_4bit_gb(), rel=0.01, what="footprint_gb")


q2 = Exercise(
    name="Q2 🐕 Phi-3-mini's 4-bit footprint",
    checker=_check_q2,
    hint_text=f"bytes = n_quantized · bits / 8 + n_other · 2, with n_quantized = {N_QUANTIZED:,}, "
              f"n_other = {N_OTHER:,} and bits = bits_per_param(64, double_quant=True). Divide by 1e9.",
    solution_text=f"""```python
footprint_gb = footprint_bytes({N_QUANTIZED:_}, {N_OTHER:_}, bits_per_param(64, double_quant=True), 2) / 1e9
# = {_phi3_4bit_gb():.3f} GB, vs {(N_QUANTIZED + N_OTHER) * 2 / 1e9:.2f} GB in 16-bit
```""",
    solution_answer=lambda: (_phi3_4bit_gb(),),
    wrong_answer=lambda: ((N_QUANTIZED + N_OTHER) * 2 / 1e9,),
)


def _lora_phi3(r: int) -> int:
    attention = 4 * r * (HIDDEN + HIDDEN)      # q, k, v, o: each A (r×3072) + B (3072×r)
    mlp = 3 * r * (HIDDEN + MLP)               # gate, up (3072→8192) and down (8192→3072)
    return LAYERS * (attention + mlp)


def _check_q3(n) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        raise Incorrect("expected a number of parameters")
    if n == LAYERS * 4 * 16 * (HIDDEN + HIDDEN):
        raise Incorrect("you counted the attention projections only; the MLP's gate, up and down get LoRA too")
    if n == _lora_phi3(16) // 2:
        raise Incorrect("each adapter has two matrices, A (r × d_in) and B (d_out × r)")
    expect_number(n, _lora_phi3(16), rel=0, what="n_lora")


q3 = Exercise(
    name="Q3 🦁 LoRA parameters of Phi-3-mini at r = 16",
    checker=_check_q3,
    hint_text="One adapter on a Linear d_in → d_out adds r·(d_in + d_out). Per layer: q, k, v, o are "
              "3072 → 3072; gate and up are 3072 → 8192; down is 8192 → 3072. 32 layers.",
    solution_text=f"""```python
r = 16
per_layer = 4 * r * (3072 + 3072) + 3 * r * (3072 + 8192)
n_lora = 32 * per_layer   # {_lora_phi3(16):,} ≈ {_lora_phi3(16) / (N_QUANTIZED + N_OTHER):.2%} of 3.82 B
```""",
    solution_answer=lambda: (_lora_phi3(16),),
    wrong_answer=lambda: (LAYERS * 4 * 16 * (HIDDEN + HIDDEN),),
)
