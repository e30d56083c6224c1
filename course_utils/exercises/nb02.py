"""Exercises of notebook 02 (the PEFT family): counting parameters of adapters, LoRA, prefixes; merging."""

from course_utils.exercises import Exercise, Incorrect, expect_number, require_number

_D, _L, _KV, _I = 576, 30, 192, 1536      # SmolLM2-135M: hidden, layers, key/value size, MLP width
_B, _R, _N = 32, 8, 10                    # bottleneck, LoRA rank, virtual tokens
_ADAPTER = _L * 2 * (2 * _D * _B + _B + _D)
_LORA = _L * _R * (2 * (_D + _D) + 2 * (_D + _KV) + 2 * (_D + _I) + (_I + _D))
_PREFIX = _N * _L * 2 * _KV
_MERGEABLE = {"IA3", "LoRA", "DoRA"}
_ALL = {"prompt tuning", "prefix tuning", "P-tuning", "adapter", "IA3", "LoRA", "DoRA"}


def _check_q1(n) -> None:
    require_number(n, "n_adapter_params")
    if n == _L * 2 * 2 * _D * _B:
        raise Incorrect("close: each Linear also has a bias (b for down, d for up)")
    if n == _L * (2 * _D * _B + _B + _D):
        raise Incorrect("that is one adapter per layer; there is one after attention and one after the MLP")
    expect_number(n, _ADAPTER, rel=0, what="n_adapter_params")


q1 = Exercise(
    name="Q1 🐢 parameters of the bottleneck adapters",
    checker=_check_q1,
    hint_text="One adapter: down Linear(576, 32) = 576·32 + 32, up Linear(32, 576) = 32·576 + 576. "
              "Two adapters per layer, 30 layers.",
    solution_text=f"```python\nn_adapter_params = 30 * 2 * (2 * 576 * 32 + 32 + 576)   # = {_ADAPTER:,}\n```\n"
                  "`course_utils.lessons.peft_methods.adapter_param_count(576, 32, 30)` gives the same.",
    solution_answer=lambda: (_ADAPTER,),
    wrong_answer=lambda: (_L * 2 * 2 * _D * _B,),
)


def _check_q2(n) -> None:
    require_number(n, "n_lora_params")
    if n == _L * _R * (2 * _D + 2 * _D + 2 * _D + _I):
        raise Incorrect("count r·(in + out) per projection: A is r × in, B is out × r")
    expect_number(n, _LORA, rel=0, what="n_lora_params")


q2 = Exercise(
    name="Q2 🐕 LoRA parameters on all seven projections",
    checker=_check_q2,
    hint_text="Per projection r·(in + out): q and o 8·(576+576), k and v 8·(576+192), gate and up "
              "8·(576+1536), down 8·(1536+576). Sum, then × 30 layers.",
    solution_text=f"```python\nn_lora_params = 30 * 8 * (2 * (576 + 576) + 2 * (576 + 192) + 2 * (576 + 1536) "
                  f"+ (1536 + 576))   # = {_LORA:,}\n```\nThe table in section 5 shows the same number from peft.",
    solution_answer=lambda: (_LORA,),
    wrong_answer=lambda: (_LORA // 2,),
)


def _check_q3(n) -> None:
    require_number(n, "n_prefix_params")
    if n == _N * _L * _KV:
        raise Incorrect("each virtual token needs a key *and* a value per layer")
    if n == _N * _L * 2 * _D:
        raise Incorrect("SmolLM2 uses grouped-query attention: keys and values are 192 wide, not 576")
    expect_number(n, _PREFIX, rel=0, what="n_prefix_params")


q3 = Exercise(
    name="Q3 🐕 parameters of a prefix",
    checker=_check_q3,
    hint_text="virtual tokens × layers × (key + value) × kv size.",
    solution_text=f"```python\nn_prefix_params = 10 * 30 * 2 * 192   # = {_PREFIX:,}\n```",
    solution_answer=lambda: (_PREFIX,),
    wrong_answer=lambda: (_N * _L * _KV,),
)


def _check_q4(names) -> None:
    if isinstance(names, str) or not hasattr(names, "__iter__"):
        raise Incorrect("answer with a set of names, e.g. {\"LoRA\"}")
    names = set(names)
    unknown = names - _ALL
    if unknown:
        raise Incorrect(f"unknown method name(s) {sorted(unknown)}; use names from {sorted(_ALL)}")
    wrong = names - _MERGEABLE
    if wrong:
        raise Incorrect(f"{sorted(wrong)} add tokens or layers that stay in the forward pass; they cannot merge")
    missing = _MERGEABLE - names
    if missing:
        raise Incorrect(f"one more family can merge: think of what {sorted(missing)[0]!r} changes in a weight")


q4 = Exercise(
    name="Q4 🦁 which methods merge into the weights?",
    checker=_check_q4,
    hint_text="A method merges when its change can be written as a new weight matrix of the same shape: "
              "W + (α/r)·B·A, a rescaled W, or a column-wise scaled W. Extra tokens or extra layers cannot.",
    solution_text="```python\nmergeable = {\"IA3\", \"LoRA\", \"DoRA\"}\n```\nLoRA adds (α/r)·B·A to W; DoRA "
                  "rescales W + ΔW per output by a magnitude vector; IA3 multiplies W by a vector. Prompt/prefix/"
                  "P-tuning lengthen the sequence and adapters add layers: they cost extra at inference.",
    solution_answer=lambda: (set(_MERGEABLE),),
    wrong_answer=lambda: ({"LoRA", "adapter"},),
)
