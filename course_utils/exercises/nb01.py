"""Exercises of notebook 01 (fine-tuning basics): counting trainable parameters and training memory."""

from course_utils.exercises import Exercise, Incorrect, expect_number, require_number

_L, _H = 30, 576                        # SmolLM2-135M: decoder blocks, hidden size
_NORMS = (2 * _L + 1) * _H              # two RMSNorms per block + the final norm, one weight vector each
_P7B = 6.74e9                           # Llama-2-7B parameters
_FULL_GB = _P7B * 16 / 1e9              # bf16 weights 2 + bf16 grads 2 + fp32 master 4 + AdamW m, v 8 = 16 B
_LORA_QV = 32 * 2 * 8 * (4096 + 4096)   # layers × (q, v) × r × (in + out)


def _check_q1(n) -> None:
    require_number(n, "n_norm_params")
    if n == 2 * _L * _H:
        raise Incorrect("almost: you counted the two norms of every block but forgot the final norm")
    if n == 2 * (2 * _L + 1) * _H:
        raise Incorrect("RMSNorm has a weight but no bias: one vector of 576 per norm")
    expect_number(n, _NORMS, rel=0, what="n_norm_params")


q1 = Exercise(
    name="Q1 🐢 parameters trained by norms-only",
    checker=_check_q1,
    hint_text="Each RMSNorm has one weight vector of size 576 (no bias). Count the norms: 2 per block, plus one.",
    solution_text=f"```python\nn_norm_params = (2 * 30 + 1) * 576   # = {_NORMS:,}\n```\n"
                  "That is 0.03 % of the model — and `freeze(model, 'norms')` returns the same number.",
    solution_answer=lambda: (_NORMS,),
    wrong_answer=lambda: (2 * _L * _H,),
)


def _check_q2(gb) -> None:
    require_number(gb, "full_ft_gb")
    if abs(gb - _P7B * 2 / 1e9) < 1:
        raise Incorrect("that is the bf16 weights alone; add gradients and the optimizer states")
    if abs(gb - _P7B * 12 / 1e9) < 2:
        raise Incorrect("close: mixed precision also keeps an fp32 master copy of the weights (4 B/param)")
    expect_number(gb, _FULL_GB, rel=0.03, what="full_ft_gb")


q2 = Exercise(
    name="Q2 🐕 memory of full fine-tuning a 7B model",
    checker=_check_q2,
    hint_text="Bytes per parameter: bf16 weight 2 + bf16 gradient 2 + fp32 master weight 4 + AdamW m and v "
              "4 + 4. Multiply by 6.74e9 and divide by 1e9.",
    solution_text=f"```python\nfull_ft_gb = 6.74e9 * (2 + 2 + 4 + 8) / 1e9   # ≈ {_FULL_GB:.0f} GB\n```\n"
                  "More than one 80 GB GPU before a single activation: this is why LoRA/QLoRA exist.",
    solution_answer=lambda: (_FULL_GB,),
    wrong_answer=lambda: (_P7B * 2 / 1e9,),
)


def _check_q3(n) -> None:
    require_number(n, "lora_qv_params")
    if n == 32 * 2 * 8 * 4096:
        raise Incorrect("each LoRA pair has A (r × in) and B (out × r): count r·(in + out), not r·in")
    if n == 32 * 8 * (4096 + 4096):
        raise Incorrect("that is one projection per layer; the config targets two (q_proj and v_proj)")
    expect_number(n, _LORA_QV, rel=0, what="lora_qv_params")


q3 = Exercise(
    name="Q3 🦁 LoRA parameters of the seed's config",
    checker=_check_q3,
    hint_text="For one adapted Linear(in, out): A is r × in, B is out × r, so r·(in + out) parameters. "
              "Two projections per layer, 32 layers.",
    solution_text=f"```python\nlora_qv_params = 32 * 2 * 8 * (4096 + 4096)   # = {_LORA_QV:,} (0.06 % of 6.74 B)\n```",
    solution_answer=lambda: (_LORA_QV,),
    wrong_answer=lambda: (32 * 2 * 8 * 4096,),
)


def _check_q4(name) -> None:
    if not isinstance(name, str):
        raise Incorrect(f"expected a module name as a string, got {type(name).__name__}")
    clean = name.strip().removeprefix("model.").removesuffix(".weight")
    if clean in ("norm", "layers"):
        raise Incorrect("those stay frozen; think about which matrix is *the same object* as lm_head.weight")
    if clean != "embed_tokens":
        raise Incorrect(f"{name!r} is not it: which module shares its weight with the LM head?")


q4 = Exercise(
    name="Q4 🐕 tied embeddings",
    checker=_check_q4,
    hint_text="Check `model.lm_head.weight is model.model.embed_tokens.weight` on SmolLM2.",
    solution_text="```python\nalso_changes = \"embed_tokens\"\n```\nTied weights are one tensor: updating the "
                  "head updates the input embeddings too, and their gradient flows back through every block. "
                  "`untie_lm_head` gives the head its own copy first.",
    solution_answer=lambda: ("embed_tokens",),
    wrong_answer=lambda: ("norm",),
)
