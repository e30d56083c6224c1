"""Instruction tuning: data formats, chat templates, trained-token masks, early stopping, evaluation.

One example, three shapes:

    >>> row = {"instruction": "Translate into Korean.", "input": "Thank you.", "output": "감사합니다."}
    >>> alpaca_to_messages(row)["messages"]
    [{'role': 'user', 'content': 'Translate into Korean.\\n\\nThank you.'}, {'role': 'assistant', 'content': '감사합니다.'}]
    >>> pc = alpaca_to_prompt_completion(row)          # TRL's conversational prompt/completion format
    >>> pc["prompt"] == alpaca_to_messages(row)["messages"][:1], pc["completion"]
    (True, [{'role': 'assistant', 'content': '감사합니다.'}])

Each works on a whole ``datasets.Dataset``.

Example::

    ds.map(alpaca_to_messages, remove_columns=ds.column_names)

Chat templates: the stock SmolLM2 template, a training variant with ``{% generation %}`` markers (what TRL's
``assistant_only_loss=True`` needs), and Phi-3-mini-4k-instruct's documented template, rendered with jinja2.
Evaluation: exact match on closed tasks (arithmetic, classify), chrF on open ones (``course_utils.core.metrics``).
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from course_utils.core.data import to_messages
from course_utils.core.metrics import chrf, exact_match
from course_utils.core.train import IGNORE_INDEX, collate

# --------------------------------------------------------------------------- formats
# The data card's rule: the user turn is the instruction, then a blank line and the input when there is one.
INPUT_SEPARATOR = "\n\n"


def user_turn(row: dict) -> str:
    """The user message of an Alpaca row: instruction, blank line, input (when non-empty).

    >>> user_turn({"instruction": "Add.", "input": "2 + 3"})
    'Add.\\n\\n2 + 3'
    """
    inp = row.get("input", "") or ""
    return row["instruction"] + (INPUT_SEPARATOR + inp if inp.strip() else "")


def alpaca_to_messages(row: dict, system: str | None = None) -> dict:
    """Alpaca ``{instruction, input, output}`` → ``{"messages": [system?, user, assistant]}``."""
    return {"messages": to_messages(user_turn(row), row["output"], system=system)}


def alpaca_to_prompt_completion(row: dict, system: str | None = None) -> dict:
    """Alpaca row → conversational ``{"prompt": [system?, user], "completion": [assistant]}`` (TRL's format)."""
    msgs = to_messages(user_turn(row), row["output"], system=system)
    return {"prompt": msgs[:-1], "completion": msgs[-1:]}


def messages_to_prompt_completion(row: dict) -> dict:
    """``{"messages": [..., assistant]}`` → prompt = every turn before the last, completion = the last turn."""
    msgs = row["messages"]
    if msgs[-1]["role"] != "assistant":
        raise ValueError(f"the last message must be the assistant's answer, got role {msgs[-1]['role']!r}")
    return {"prompt": msgs[:-1], "completion": msgs[-1:]}


def messages_to_alpaca(row: dict) -> dict:
    """``{"messages": [system?, user, assistant]}`` → Alpaca ``{instruction, input, output}`` (inverse of the above).

    The user turn is split at its first blank line, so instructions must not contain one (ours do not).
    """
    msgs = [m for m in row["messages"] if m["role"] != "system"]
    if [m["role"] for m in msgs] != ["user", "assistant"]:
        raise ValueError(f"expected one user and one assistant turn, got {[m['role'] for m in msgs]}")
    instruction, _, inp = msgs[0]["content"].partition(INPUT_SEPARATOR)
    return {"instruction": instruction, "input": inp, "output": msgs[1]["content"]}


def alpaca_to_text(row: dict) -> dict:
    """Alpaca row → plain-text ``{"prompt", "completion"}`` for models without a chat template (opt-125m).

    The classic Alpaca prompt: ``### Instruction:`` / ``### Input:`` / ``### Response:`` headers.
    """
    prompt = f"### Instruction:\n{row['instruction']}\n\n"
    if (row.get("input") or "").strip():
        prompt += f"### Input:\n{row['input']}\n\n"
    return {"prompt": prompt + "### Response:\n", "completion": row["output"]}


def seq2seq_source(row: dict) -> str:
    """The encoder input of the seq2seq recipe (the seed's prompt format)."""
    return f"Instruction: {row['instruction']}\nInput: {row.get('input', '')}\nResponse:"


# --------------------------------------------------------------------------- chat templates
# SmolLM2-135M-Instruct's template as shipped (identical in the embedded GGUF and on the hub).
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The same template with the assistant's answer (and its end-of-turn token) inside {% generation %} markers:
# it renders the same text, and `return_assistant_tokens_mask=True` can now tell which tokens the answer owns.
SMOLLM2_TRAINING_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endgeneration %}"
    "{% else %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Phi-3-mini-4k-instruct's chat template, from microsoft/Phi-3-mini-4k-instruct, tokenizer_config.json
# ("chat_template", revision of July 2024; https://huggingface.co/microsoft/Phi-3-mini-4k-instruct).
# TRL 1.15 ships the same string as trl/chat_templates/phi3.jinja (tests/test_instruction_tuning.py compares them).
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
PHI3_SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "<|endoftext|>"}  # Phi-3's tokenizer (Llama-2 style)


def render_template(template: str, messages: list[dict], add_generation_prompt: bool = False,
                    **special_tokens) -> str:
    """Render a chat template with plain jinja2, configured as transformers does (trim/lstrip blocks).

    >>> render_template(PHI3_CHAT_TEMPLATE, [{"role": "user", "content": "Hi"}], True)
    '<|user|>\\nHi<|end|>\\n<|assistant|>\\n'
    """
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            **special_tokens)


def end_of_turn_token(tokenizer, template: str | None = None) -> str:
    """The special token the chat template writes right after a message (``<|im_end|>``, ``<|end|>``)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "§"}], tokenize=False,
                                         chat_template=template)
    after = text[text.index("§") + 1:]
    for token in sorted(tokenizer.get_added_vocab(), key=len, reverse=True):
        if after.startswith(token):
            return token
    raise ValueError(f"no special token follows the message in {text!r}")


def has_generation_markers(template: str) -> bool:
    """True when a template marks the assistant's tokens with ``{% generation %}`` (TRL's own test)."""
    from trl.chat_template_utils import has_generation_markers as trl_check

    return trl_check(template)


@dataclass(repr=False)
class SideBySide:
    """Texts shown in columns in Jupyter (special tokens visible), one after another in plain text.

    >>> SideBySide({"SmolLM2": "<|im_start|>user\\nHi<|im_end|>", "Phi-3": "<|user|>\\nHi<|end|>"})
    ── SmolLM2 ─────────────────────────────────────────────────────
    <|im_start|>user
    Hi<|im_end|>
    ── Phi-3 ───────────────────────────────────────────────────────
    <|user|>
    Hi<|end|>
    """

    texts: dict[str, str]

    def __str__(self) -> str:
        return "\n".join(f"── {name} {'─' * max(3, 60 - len(name))}\n{text}" for name, text in self.texts.items())

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(n)}</th>" for n in self.texts)
        cells = "".join(f"<td style='vertical-align:top'><pre style='white-space:pre-wrap'>{html.escape(t)}</pre></td>"
                        for t in self.texts.values())
        return f"<table><tr>{head}</tr><tr>{cells}</tr></table>"


# --------------------------------------------------------------------------- tokenising with a loss mask

def encode_chat_example(tokenizer, row: dict, max_len: int, loss_on_prompt: bool = False,
                        system: str | None = None) -> dict:
    """Token ids of a chat-formatted Alpaca row and its labels (−100 on the prompt unless ``loss_on_prompt``).

    The same tokens and mask as TRL's prompt/completion preprocessing; returns lists input_ids, labels.
    """
    pc = alpaca_to_prompt_completion(row, system=system)
    prompt = tokenizer.apply_chat_template(pc["prompt"], add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]
    full = tokenizer.apply_chat_template(pc["prompt"] + pc["completion"], tokenize=True,
                                         return_dict=True)["input_ids"]
    if full[:len(prompt)] != prompt:
        raise ValueError("the tokenized prompt is not a prefix of prompt+completion")
    labels = list(full) if loss_on_prompt else [IGNORE_INDEX] * len(prompt) + list(full[len(prompt):])
    return {"input_ids": list(full[:max_len]), "labels": labels[:max_len]}


def chat_batches(tokenizer, rows: list[dict], batch_size: int, max_len: int, loss_on_prompt: bool = False,
                 system: str | None = None) -> list[dict]:
    """Rows → padded batches (B, T) with completion-only labels, for ``course_utils.core.train.evaluate_loss``."""
    enc = [encode_chat_example(tokenizer, r, max_len, loss_on_prompt, system) for r in rows]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return [collate(enc[i:i + batch_size], pad) for i in range(0, len(enc), batch_size)]


# --------------------------------------------------------------------------- showing the trained tokens

@dataclass(repr=False)
class TokenMask:
    """One example's tokens and whether each carries loss; coloured in Jupyter, marked ⟦…⟧ in plain text.

    trained: one bool per token. pieces: display units, (text, trained?) — a Korean syllable spans several
    byte-level tokens, so tokens are grouped until they decode to whole characters.
    """

    trained: list[bool]
    pieces: list[tuple[str, bool]]

    @property
    def n_trained(self) -> int:
        """How many tokens carry loss."""
        return sum(self.trained)

    def trained_text(self) -> str:
        """The text of the pieces that carry loss."""
        return "".join(t for t, m in self.pieces if m)

    def runs(self) -> list[tuple[bool, str]]:
        """Consecutive (trained?, text) segments."""
        out: list[tuple[bool, str]] = []
        for text, m in self.pieces:
            if out and out[-1][0] == m:
                out[-1] = (m, out[-1][1] + text)
            else:
                out.append((m, text))
        return out

    def __str__(self) -> str:
        body = "".join(f"⟦{text}⟧" if m else text for m, text in self.runs())
        return f"{body}\n— {self.n_trained} of {len(self.trained)} tokens carry loss (inside ⟦ ⟧)"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        spans = []
        for text, m in self.pieces:
            style = ("background:#c7efc7;color:#064d06;font-weight:bold" if m
                     else "background:#eeeeee;color:#777777")
            shown = html.escape(text).replace("\n", "↵<br>")
            spans.append(f'<span style="{style};border:1px solid #fff;padding:0 1px">{shown}</span>')
        return (f'<div style="font-family:monospace;line-height:1.9">{"".join(spans)}</div>'
                f"<p><b>{self.n_trained}</b> of {len(self.trained)} tokens carry loss "
                f'(<span style="background:#c7efc7">green</span> = trained, grey = label −100)</p>')


def token_mask(tokenizer, input_ids: list[int], labels: list[int]) -> TokenMask:
    """A ``TokenMask`` from ids and labels: a token is trained when its label is not −100.

    (Labels are not shifted here; the model's loss shifts them, so label i scores the prediction of token i.)
    """
    if len(input_ids) != len(labels):
        raise ValueError(f"{len(input_ids)} ids vs {len(labels)} labels")
    trained = [int(lab) != IGNORE_INDEX for lab in labels]
    pieces: list[tuple[str, bool]] = []
    start = 0
    for end in range(1, len(input_ids) + 1):
        text = tokenizer.decode(list(input_ids[start:end]))
        if "\ufffd" in text and end < len(input_ids) and end - start < 4:  # an incomplete UTF-8 character
            continue
        pieces.append((text, any(trained[start:end])))
        start = end
    return TokenMask(trained, pieces)


# --------------------------------------------------------------------------- Trainer logs and early stopping

def trainer_losses(trainer) -> tuple[list[float], list[tuple[int, float]]]:
    """(training loss per logged step, [(step, eval_loss)]) from a Trainer's log history."""
    hist = trainer.state.log_history
    train = [h["loss"] for h in hist if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in hist if "eval_loss" in h]
    return train, evals


def early_stopping_step(eval_losses: list[float], patience: int, threshold: float = 0.0) -> int | None:
    """1-based index of the evaluation after which ``EarlyStoppingCallback`` stops training, or None.

    The rule: an evaluation that does not beat the best so far (by more than ``threshold``) adds one to a
    counter, an improvement resets it; training stops when the counter reaches ``patience``.

    >>> early_stopping_step([2.0, 1.8, 1.9, 1.85], patience=2)
    4
    """
    best, bad = None, 0
    for i, loss in enumerate(eval_losses, start=1):
        if best is None or (loss < best and abs(loss - best) > threshold):
            bad = 0
        else:
            bad += 1
        best = loss if best is None or loss < best else best
        if bad >= patience:
            return i
    return None


# --------------------------------------------------------------------------- generation and scoring

def generate_batch(model, tokenizer, rows: list[dict], max_new_tokens: int, batch_size: int = 8,
                   system: str | None = None) -> list[str]:
    """Greedy chat replies to Alpaca rows (their ``user_turn``), decoded without specials, in the order of ``rows``.

    Example::

        generate_batch(model, tok, eval_rows[:2], max_new_tokens=8)   # two strings, e.g. ['4', 'positive']
    """
    from course_utils.core.models import generate_replies

    return generate_replies(model, tokenizer, [user_turn(r) for r in rows], max_new_tokens, batch_size, system)


CLOSED_TASKS = ("arithmetic", "classify")  # one right answer → exact match; the rest are open → chrF


def score_predictions(rows: list[dict], predictions: list[str]) -> dict[str, float]:
    """Per-task scores plus the two summaries: exact match (closed tasks, %) and chrF (open tasks).

    >>> score_predictions([{"task": "arithmetic", "output": "42"}], ["42"])
    {'arithmetic (EM %)': 100.0, 'closed: EM %': 100.0}
    """
    if len(rows) != len(predictions):
        raise ValueError(f"{len(rows)} rows vs {len(predictions)} predictions")
    scores: dict[str, float] = {}
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r["task"], []).append(i)
    for task in sorted(groups):
        idx = groups[task]
        hyps, refs = [predictions[i] for i in idx], [rows[i]["output"] for i in idx]
        if task in CLOSED_TASKS:
            scores[f"{task} (EM %)"] = 100 * exact_match(hyps, refs)
        else:
            scores[f"{task} (chrF)"] = chrf(hyps, refs)
    closed = [i for i, r in enumerate(rows) if r["task"] in CLOSED_TASKS]
    opened = [i for i, r in enumerate(rows) if r["task"] not in CLOSED_TASKS]
    if closed:
        scores["closed: EM %"] = 100 * exact_match([predictions[i] for i in closed], [rows[i]["output"] for i in closed])
    if opened:
        scores["open: chrF"] = chrf([predictions[i] for i in opened], [rows[i]["output"] for i in opened])
    return scores


def balanced_subset(rows: list[dict], n: int, key: str = "task") -> list[dict]:
    """Up to ``n`` rows taken round-robin over ``key`` (every task represented), in a stable order."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    out: list[dict] = []
    depth = 0
    while len(out) < min(n, len(rows)):
        for g in sorted(groups):
            if depth < len(groups[g]) and len(out) < n:
                out.append(groups[g][depth])
        depth += 1
    return out


# --------------------------------------------------------------------------- seq2seq (the seed's flan-t5 recipe)

def tiny_t5_config(vocab_size: int, pad_token_id: int, eos_token_id: int):
    """A small T5 configuration (2+2 layers, d_model 64): seconds to train, **random weights** when built."""
    from transformers import T5Config

    return T5Config(vocab_size=vocab_size, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                    num_heads=4, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                    decoder_start_token_id=pad_token_id)


def seq2seq_features(tokenizer, row: dict, max_len: int) -> dict:
    """The seed's ``preprocess_function``, fixed: encoder ids + label ids ending in eos, no padding yet.

    Padding happens per batch in ``DataCollatorForSeq2Seq``, which pads labels with −100 (not the pad id).
    """
    enc = tokenizer(seq2seq_source(row), max_length=max_len, truncation=True)
    labels = tokenizer(text_target=row["output"], max_length=max_len, truncation=True)["input_ids"]
    if not labels or labels[-1] != tokenizer.eos_token_id:  # T5's tokenizer appends </s>; a BPE one may not
        labels = labels[: max_len - 1] + [tokenizer.eos_token_id]
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
