"""course_utils.lessons.instruction_tuning: formats, templates (vs TRL and transformers), loss masks, scoring, notebook agreement."""

import math
import random
from pathlib import Path

import pytest
import torch
from notebook_cells import run_inline

from course_utils.core.data import load_rows
from course_utils.core.train import IGNORE_INDEX
from course_utils.lessons import instruction_tuning as I

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "08_instruction_tuning.ipynb"
ROWS = load_rows("instructions")


@pytest.fixture(scope="module")
def tok():
    """The embedded SmolLM2 tokenizer (no model needed)."""
    from course_utils.core.models import load_tokenizer

    return load_tokenizer("chat", profile="cpu")


# --------------------------------------------------------------------------- formats

def test_round_trip_every_row():
    for row in ROWS:
        msgs = I.alpaca_to_messages(row, system="Be brief.")
        assert [m["role"] for m in msgs["messages"]] == ["system", "user", "assistant"]
        assert I.messages_to_alpaca(msgs) == {k: row[k] for k in ("instruction", "input", "output")}
        pc = I.alpaca_to_prompt_completion(row)
        assert pc["prompt"] + pc["completion"] == I.alpaca_to_messages(row)["messages"]
        assert I.messages_to_prompt_completion(I.alpaca_to_messages(row)) == pc


def test_user_turn_rule_and_empty_input():
    assert I.user_turn({"instruction": "Q?", "input": ""}) == "Q?"
    assert I.user_turn({"instruction": "Add.", "input": "2 + 3"}) == "Add.\n\n2 + 3"
    assert I.messages_to_alpaca(I.alpaca_to_messages({"instruction": "Q?", "input": "", "output": "A"})) == \
        {"instruction": "Q?", "input": "", "output": "A"}


def test_conversions_work_with_datasets_map():
    from datasets import Dataset

    ds = Dataset.from_list(ROWS[:12])
    pc = ds.map(I.alpaca_to_prompt_completion, remove_columns=ds.column_names)
    assert pc.column_names == ["prompt", "completion"] and len(pc) == 12
    chat = ds.map(I.alpaca_to_messages, fn_kwargs={"system": "S"}, remove_columns=ds.column_names)
    assert chat[3]["messages"][0] == {"role": "system", "content": "S"}


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        I.messages_to_prompt_completion({"messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(ValueError):
        I.messages_to_alpaca({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})


def test_alpaca_text_and_seq2seq_prompts():
    row = {"instruction": "Add.", "input": "2 + 3", "output": "5"}
    assert I.alpaca_to_text(row) == {"prompt": "### Instruction:\nAdd.\n\n### Input:\n2 + 3\n\n### Response:\n",
                                     "completion": "5"}
    assert "### Input" not in I.alpaca_to_text({**row, "input": ""})["prompt"]
    assert I.seq2seq_source(row) == "Instruction: Add.\nInput: 2 + 3\nResponse:"


def test_notebook_inline_formats_equal_package():
    ns = run_inline(NOTEBOOK.name, "formats")
    for row in ROWS:
        for system in (None, "Answer briefly."):
            assert ns["alpaca_to_messages"](row, system) == I.alpaca_to_messages(row, system=system)
            assert ns["alpaca_to_prompt_completion"](row, system) == I.alpaca_to_prompt_completion(row, system=system)
        msgs = I.alpaca_to_messages(row, system="x")
        assert ns["messages_to_alpaca"](msgs) == I.messages_to_alpaca(msgs)


def test_notebook_inline_template_equals_package():
    ns = run_inline(NOTEBOOK.name, "training template")
    assert ns["SMOLLM2_TRAINING_TEMPLATE"] == I.SMOLLM2_TRAINING_TEMPLATE


# --------------------------------------------------------------------------- templates

def _conversations():
    convs = [I.alpaca_to_messages(r)["messages"] for r in ROWS[:40:7]]
    convs += [I.alpaca_to_messages(r, system="Answer briefly.")["messages"] for r in ROWS[3:40:9]]
    convs.append(convs[0] + [{"role": "user", "content": "고마워요"}, {"role": "assistant", "content": "천만에요."}])
    return convs


def test_phi3_template_is_trls_copy_and_renders_like_transformers():
    from transformers.utils.chat_template_utils import render_jinja_template
    from trl.chat_template_utils import phi3_chat_template

    assert I.PHI3_CHAT_TEMPLATE == phi3_chat_template
    for conv in _conversations():
        for gen in (False, True):
            msgs = conv[:-1] if gen else conv
            ours = I.render_template(I.PHI3_CHAT_TEMPLATE, msgs, gen, **I.PHI3_SPECIAL_TOKENS)
            (theirs,), _ = render_jinja_template([msgs], chat_template=I.PHI3_CHAT_TEMPLATE,
                                                  add_generation_prompt=gen, **I.PHI3_SPECIAL_TOKENS)
            assert ours == theirs
    text = I.render_template(I.PHI3_CHAT_TEMPLATE, _conversations()[-1], False, **I.PHI3_SPECIAL_TOKENS)
    assert text.startswith("<|user|>\n") and text.endswith("<|end|>\n<|endoftext|>")


def test_stock_template_is_the_embedded_ones(tok):
    assert tok.chat_template == I.SMOLLM2_CHAT_TEMPLATE
    assert I.end_of_turn_token(tok) == "<|im_end|>" == tok.eos_token


def test_training_template_renders_the_same_text(tok):
    assert I.has_generation_markers(I.SMOLLM2_TRAINING_TEMPLATE)
    assert not I.has_generation_markers(I.SMOLLM2_CHAT_TEMPLATE)
    for conv in _conversations():
        for gen in (False, True):
            msgs = conv[:-1] if gen else conv
            kw = dict(tokenize=False, add_generation_prompt=gen)
            assert tok.apply_chat_template(msgs, chat_template=I.SMOLLM2_TRAINING_TEMPLATE, **kw) == \
                tok.apply_chat_template(msgs, chat_template=I.SMOLLM2_CHAT_TEMPLATE, **kw)


def test_assistant_mask_equals_completion_mask(tok):
    for row in ROWS[::5]:
        msgs = I.alpaca_to_messages(row, system="Answer briefly.")["messages"]
        out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                      chat_template=I.SMOLLM2_TRAINING_TEMPLATE)
        enc = I.encode_chat_example(tok, row, 10**6, system="Answer briefly.")
        assert list(out["input_ids"]) == enc["input_ids"]
        assert list(out["assistant_masks"]) == [int(lab != IGNORE_INDEX) for lab in enc["labels"]]


def test_trl_rejects_stock_template_and_trains_the_stop_token_with_ours(tok):
    from trl.chat_template_utils import get_training_chat_template, is_chat_template_stop_token_trained

    with pytest.raises(ValueError, match="generation"):
        get_training_chat_template(tok)
    assert is_chat_template_stop_token_trained(tok, chat_template=I.SMOLLM2_TRAINING_TEMPLATE)


def test_encode_chat_example_matches_trl_preprocessing(tok, tiny_llama, tmp_path):
    from datasets import Dataset

    from course_utils.core.trl_compat import SFTTrainer, sft_config

    rows = [r for r in ROWS if len(r["output"]) < 60][:10]
    pc = Dataset.from_list(rows).map(I.alpaca_to_prompt_completion, fn_kwargs={"system": "S."},
                                     remove_columns=list(rows[0]))
    trainer = SFTTrainer(model=tiny_llama, args=sft_config(output_dir=str(tmp_path), max_length=512, max_steps=1),
                         train_dataset=pc, processing_class=tok)
    for row, ex in zip(rows, trainer.train_dataset):
        enc = I.encode_chat_example(tok, row, 512, system="S.")
        assert ex["input_ids"] == enc["input_ids"] and ex["labels"] == enc["labels"]
    full = I.encode_chat_example(tok, rows[0], 512, loss_on_prompt=True)
    assert full["labels"] == full["input_ids"]
    cut = I.encode_chat_example(tok, rows[0], 10)
    assert len(cut["input_ids"]) == len(cut["labels"]) == 10


def test_chat_batches_pad_labels_with_ignore_index(tok):
    rows = ROWS[:5]
    (batch,) = I.chat_batches(tok, rows, batch_size=5, max_len=200)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    n = [len(I.encode_chat_example(tok, r, 200)["input_ids"]) for r in rows]
    assert batch["attention_mask"].sum(1).tolist() == n


# --------------------------------------------------------------------------- trained-token display

def test_token_mask_counts_groups_korean_and_renders(tok):
    row = next(r for r in ROWS if r["lang"] == "en" and r["task"] == "translate")  # Korean answer
    enc = I.encode_chat_example(tok, row, 10**6)
    mask = I.token_mask(tok, enc["input_ids"], enc["labels"])
    assert mask.n_trained == sum(lab != IGNORE_INDEX for lab in enc["labels"])
    assert mask.trained_text() == row["output"] + "<|im_end|>\n"
    assert "".join(t for t, _ in mask.pieces) == tok.decode(enc["input_ids"])
    assert not any("\ufffd" in t for t, _ in mask.pieces), "Korean syllables should be whole"
    assert f"⟦{row['output']}" in str(mask) and repr(mask) == str(mask)
    html = mask._repr_html_()
    assert html.count("<span") >= len(mask.pieces) and f"<b>{mask.n_trained}</b>" in html
    with pytest.raises(ValueError):
        I.token_mask(tok, [1, 2], [1])


def test_side_by_side_shows_every_text():
    view = I.SideBySide({"A": "<|im_end|>\nx", "B": "y"})
    assert "── A" in str(view) and "<|im_end|>" in repr(view)
    html = view._repr_html_()
    assert html.count("<td") == 2 and "&lt;|im_end|&gt;" in html


# --------------------------------------------------------------------------- early stopping

def _callback_stop(losses, patience, threshold):
    """Drive transformers' EarlyStoppingCallback as the Trainer does; 1-based eval index when it stops."""
    from types import SimpleNamespace

    from transformers import EarlyStoppingCallback, TrainerControl

    cb = EarlyStoppingCallback(early_stopping_patience=patience, early_stopping_threshold=threshold)
    args = SimpleNamespace(metric_for_best_model="eval_loss", greater_is_better=False)
    state, control = SimpleNamespace(best_metric=None), TrainerControl()
    for i, loss in enumerate(losses, start=1):
        cb.on_evaluate(args, state, control, metrics={"eval_loss": loss})
        if state.best_metric is None or loss < state.best_metric:  # Trainer._determine_best_metric
            state.best_metric = loss
        if control.should_training_stop:
            return i
    return None


def test_early_stopping_step_matches_the_callback():
    rng = random.Random(0)
    for _ in range(300):
        losses = [round(rng.uniform(1.0, 2.0), 2) for _ in range(rng.randint(1, 9))]
        patience, threshold = rng.randint(1, 3), rng.choice([0.0, 0.05])
        assert I.early_stopping_step(losses, patience, threshold) == _callback_stop(losses, patience, threshold)
    assert I.early_stopping_step([3.0, 2.0, 1.0], patience=1) is None


def test_trainer_losses_reads_log_history():
    from types import SimpleNamespace

    hist = [{"loss": 2.0, "step": 1}, {"loss": 1.5, "step": 2}, {"eval_loss": 1.7, "step": 2}, {"train_runtime": 1}]
    assert I.trainer_losses(SimpleNamespace(state=SimpleNamespace(log_history=hist))) == ([2.0, 1.5], [(2, 1.7)])


# --------------------------------------------------------------------------- scoring and generation

def test_score_predictions_uses_em_for_closed_and_chrf_for_open():
    from course_utils.core.metrics import chrf

    rows = [{"task": "arithmetic", "output": "42"}, {"task": "classify", "output": "positive"},
            {"task": "translate", "output": "감사합니다."}, {"task": "qa", "output": "Paris."}]
    preds = ["42", "Positive.", "감사합니다", "It is Paris."]
    s = I.score_predictions(rows, preds)
    assert s["arithmetic (EM %)"] == 100 and s["classify (EM %)"] == 100 and s["closed: EM %"] == 100
    assert s["translate (chrF)"] == pytest.approx(chrf(["감사합니다"], ["감사합니다."]))
    assert s["open: chrF"] == pytest.approx(chrf(preds[2:], ["감사합니다.", "Paris."]))
    assert I.score_predictions(rows, ["41", "negative", "", ""])["closed: EM %"] == 0
    with pytest.raises(ValueError):
        I.score_predictions(rows, preds[:2])


def test_balanced_subset_covers_every_task():
    test = load_rows("instructions", "test")
    sub = I.balanced_subset(test, 16)
    assert len(sub) == 16 and len({r["id"] for r in sub}) == 16
    assert {r["task"] for r in sub} == {r["task"] for r in test}
    counts = [sum(r["task"] == t for r in sub) for t in {r["task"] for r in test}]
    assert max(counts) - min(counts) <= 1
    assert I.balanced_subset(test, 100) == I.balanced_subset(test, 40) and len(I.balanced_subset(test, 100)) == 40


def test_generate_batch_matches_generate_reply(embedded):
    from course_utils.core.models import generate_reply

    model, tok = embedded
    side = tok.padding_side
    rows = [{"instruction": "What is the capital of France?", "input": ""},
            {"instruction": "Translate into Korean.", "input": "Thank you very much for your help today."},
            {"instruction": "Add the numbers.", "input": "2 + 3"}]
    batch = I.generate_batch(model, tok, rows, max_new_tokens=8, batch_size=2, system="Answer briefly.")
    single = [generate_reply(model, tok, I.user_turn(r), max_new_tokens=8, system="Answer briefly.") for r in rows]
    assert batch == single
    assert tok.padding_side == side, "generate_batch must restore the tokenizer's padding side"


# --------------------------------------------------------------------------- seq2seq

def test_seq2seq_features_collator_and_tiny_t5(tok):
    from transformers import DataCollatorForSeq2Seq, T5ForConditionalGeneration

    feats = [I.seq2seq_features(tok, r, 48) for r in ROWS[:4]]
    assert all(f["labels"][-1] == tok.eos_token_id and len(f["labels"]) <= 48 for f in feats)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(I.tiny_t5_config(len(tok), tok.pad_token_id, tok.eos_token_id))
    batch = DataCollatorForSeq2Seq(tok, model=model, label_pad_token_id=IGNORE_INDEX)(feats)
    lengths = [len(f["labels"]) for f in feats]
    assert (batch["labels"] != IGNORE_INDEX).sum(1).tolist() == lengths
    assert batch["decoder_input_ids"][:, 0].eq(model.config.decoder_start_token_id).all()
    loss = model(**batch).loss
    assert math.isfinite(loss.item()) and abs(loss.item() - math.log(len(tok))) < 1.0, "random init ≈ ln(V)"
