"""The capstone chatbot: validation, store, registry, gate, trigger, rounds, LoRA backend, notebook parity.

Most tests use ``FakeBackend`` (an instant stand-in trainer) so the default trigger of 50 records is
exercised in milliseconds; ``TestLoraBackend`` runs the real peft backend on a tiny Llama.
"""

import json
import math
import os
import sqlite3
from pathlib import Path

import pytest
import torch
from notebook_cells import run_inline

from course_utils.chatbot import bot as cb
from course_utils.chatbot import config as cb_config
from course_utils.chatbot.backend import LoraBackend, fit_prompt
from course_utils.chatbot.bot import Chatbot, should_accept
from course_utils.chatbot.config import ChatbotConfig
from course_utils.chatbot.registry import AdapterIntegrityError, AdapterRegistry, write_dir_atomically
from course_utils.chatbot.store import DOMAINS, MAX_TEXT_CHARS, FeedbackError, FeedbackStore
from course_utils.core.models import chat_prompt

GOOD = dict(question="부가가치세 세율은 몇 퍼센트인가요?", answer="기본세율은 10%입니다.", quality=0.9, domain="tax")

# (argument that must be named, overrides) — every kind of bad input the issue lists, and a few more
BAD_INPUTS = [
    ("question", dict(question="")),
    ("question", dict(question="   \n\t ")),
    ("answer", dict(answer="")),
    ("answer", dict(answer=" ")),
    ("question", dict(question="가" * (MAX_TEXT_CHARS + 1))),
    ("answer", dict(answer="x" * (MAX_TEXT_CHARS + 1))),
    ("quality", dict(quality=1.5)),
    ("quality", dict(quality=-0.1)),
    ("quality", dict(quality=float("nan"))),
    ("quality", dict(quality=float("inf"))),
    ("quality", dict(quality=True)),
    ("quality", dict(quality="0.9")),
    ("quality", dict(quality=None)),
    ("domain", dict(domain="crypto")),
    ("domain", dict(domain="TAX")),
    ("domain", dict(domain=None)),
    ("question", dict(question=b"\xff\xfe bad bytes")),
    ("answer", dict(answer=b"\xeb\xb6")),                     # a truncated Korean character
    ("question", dict(question="ok \udcff surrogate")),        # str carrying an undecodable byte
    ("question", dict(question="nul\x00byte")),
    ("question", dict(question=123)),
]


class FakeBackend:
    """An instant backend whose "adapter" is one number: its held-out score (lower is better).

    Training on clean answers lowers the score by 10 %; any answer containing ``SPAM`` raises it by 50 %;
    ``fail_in_train=True`` makes ``train`` raise like a crashing round.
    """

    BASE = 2.0

    def __init__(self, fail_in_train: bool = False):
        self.fail_in_train = fail_in_train
        self.installed = {d: None for d in DOMAINS}
        self.trained = []

    def score_of(self, state) -> float:
        return self.BASE if state is None else float(state["lora_A.weight"][0, 0])

    def evaluate(self, domain, state):
        return self.score_of(state)

    def train(self, domain, pairs, start, seed=0, on_step=None):
        self.trained.append((domain, list(pairs)))
        if self.fail_in_train:
            raise RuntimeError("simulated crash inside training")
        factor = 1.5 if any("SPAM" in a for _, a in pairs) else 0.9
        if on_step:
            on_step(0, 1.0)
        return {"lora_A.weight": torch.full((2, 3), self.score_of(start) * factor)}, cb.RoundResult(
            0, domain, "", 0, None, None, None, 0, 0, 0.0, losses=[1.0, 0.5])

    def install(self, domain, state):
        self.installed[domain] = state

    def answer(self, question, domain, max_new_tokens=None):
        return f"[{domain} · {self.score_of(self.installed[domain]):.2f}] {question}"

    def adapter_config(self):
        return {"peft_type": "FAKE", "r": 2}

    def layer_counts(self):
        return {"lora_layers": 4, "adapter_layers": 0}


def make_bot(tmp_path, background=False, backend=None, **cfg) -> Chatbot:
    """A chatbot with the fake backend and (unless overridden) the module's default trigger of 50."""
    pool = {d: [(f"{d} 예전 질문 {i}", f"{d} 예전 답변 {i}") for i in range(40)] for d in DOMAINS}
    return Chatbot(FeedbackStore(tmp_path / "fb.db"), AdapterRegistry(tmp_path / "adapters"),
                   backend or FakeBackend(), ChatbotConfig(**cfg), pool, background=background)


def feed(bot, n, domain="tax", answer="좋은 답변 {i}", quality=1.0):
    return [bot.feedback(f"{domain} 질문 {i}", answer.format(i=i), quality, domain) for i in range(n)]


# --------------------------------------------------------------------------- validation and store

@pytest.mark.parametrize("argument, bad", BAD_INPUTS, ids=[f"{a}-{i}" for i, (a, _) in enumerate(BAD_INPUTS)])
def test_bad_input_is_rejected_naming_the_argument_and_nothing_is_stored(tmp_path, argument, bad):
    with FeedbackStore(tmp_path / "fb.db") as store:
        with pytest.raises(FeedbackError) as info:
            store.add(**{**GOOD, **bad})
        assert info.value.argument == argument
        assert str(info.value).startswith(f"{argument}:")
        assert store.count() == 0
        with pytest.raises(FeedbackError):  # a batch with one bad item stores nothing either
            store.add_many([GOOD, {**GOOD, **bad}])
        assert store.count() == 0


def test_good_input_round_trips(tmp_path):
    with FeedbackStore(tmp_path / "fb.db") as store:
        rid = store.add("  복식부기란? ", b"\xec\xb0\xa8\xeb\xb3\x80\xea\xb3\xbc \xeb\x8c\x80\xeb\xb3\x80", 1, "accounting",
                        corrected=True)
        row = store.rows()[0]
    assert rid == row["id"] == 1
    assert (row["question"], row["answer"], row["quality"], row["domain"]) == ("복식부기란?", "차변과 대변", 1.0,
                                                                               "accounting")
    assert row["corrected"] == 1 and row["used_in_training"] == 0 and row["created_at"].startswith("20")


def test_quality_accepts_any_real_number_in_range():
    import numpy as np

    from course_utils.chatbot.store import validate_quality

    assert validate_quality(0) == 0.0 and validate_quality(1) == 1.0 and validate_quality(np.float32(0.5)) == 0.5


def test_database_constraints_back_up_the_validation(tmp_path):
    """Even a raw INSERT that skips the Python validation cannot store an out-of-range row."""
    with FeedbackStore(tmp_path / "fb.db") as store:
        with pytest.raises(sqlite3.IntegrityError):
            store._write(lambda c: c.execute("INSERT INTO feedback (question, answer, quality, domain, created_at) "
                                             "VALUES ('q', 'a', 2.0, 'tax', 'now')"))
        with pytest.raises(sqlite3.IntegrityError):
            store._write(lambda c: c.execute("INSERT INTO feedback (question, answer, quality, domain, created_at) "
                                             "VALUES ('q', 'a', 0.5, 'crypto', 'now')"))
        assert store.count() == 0


@pytest.mark.parametrize("sync, level", [("NORMAL", 1), ("FULL", 2)])
def test_pragmas(tmp_path, sync, level):
    with FeedbackStore(tmp_path / "fb.db", synchronous=sync) as store:
        assert store.pragma("journal_mode") == "wal"
        assert store.pragma("synchronous") == level
        assert store.pragma("busy_timeout") >= 1000
        assert store.integrity_check() == "ok"


def test_pending_threshold_and_limit(tmp_path):
    with FeedbackStore(tmp_path / "fb.db") as store:
        store.add_many([{**GOOD, "quality": q} for q in (0.2, 0.7, 0.69, 1.0)] + [{**GOOD, "domain": "general"}])
        assert store.count_pending("tax", 0.7) == 2
        assert [r["quality"] for r in store.pending("tax", 0.7)] == [0.7, 1.0]
        assert len(store.pending("tax", 0.0, limit=3)) == 3
        assert store.count_pending("general", 0.7) == 1


def test_commit_round_semantics(tmp_path):
    with FeedbackStore(tmp_path / "fb.db") as store:
        ids = store.add_many([GOOD] * 6)
        assert store.live_version("tax") == (0, None)
        store.commit_round("tax", "failed", ids[:2], 0, 0, None, None, 0.01, 1.0, error="boom")
        assert store.count_pending("tax", 0.5) == 6, "a failed round leaves its records pending"
        r_acc = store.commit_round("tax", "accepted", ids[:2], 0, 0, 2.0, 1.8, 0.01, 1.0, version=1,
                                   manifest_sha256="ab")
        assert store.live_version("tax") == (1, "ab")
        r_rej = store.commit_round("tax", "rejected", ids[2:4], 1, 0, 1.8, 3.0, 0.01, 1.0)
        assert store.live_version("tax") == (1, "ab"), "a rejected round does not move the live version"
        assert store.count_pending("tax", 0.5) == 2
        used = {r["id"]: r["used_in_training"] for r in store.rows()}
        assert [used[i] for i in ids] == [r_acc, r_acc, r_rej, r_rej, 0, 0]
        replay = store.replay_sample("tax", 10, 0.5)
        assert sorted(r["id"] for r in replay) == ids[:2], "only records of accepted rounds are replayed"
        with pytest.raises(ValueError):
            store.commit_round("tax", "accepted", ids[4:], 1, 0, 1.0, 1.0, 0.01, 1.0)  # no version
        assert [r["status"] for r in store.rounds()] == ["failed", "accepted", "rejected"]


# --------------------------------------------------------------------------- the gate

@pytest.mark.parametrize("live, cand, tol, ok", [
    (2.0, 1.5, 0.01, True), (2.0, 2.0, 0.0, True), (2.0, 2.019, 0.01, True), (2.0, 2.021, 0.01, False),
    (2.0, 2.021, 0.05, True), (2.0, float("nan"), 0.5, False), (2.0, float("inf"), 0.5, False),
    (float("nan"), 1.0, 0.01, False)])
def test_gate(live, cand, tol, ok):
    assert should_accept(live, cand, tol) is ok


# --------------------------------------------------------------------------- registry

def _state(value=1.0):
    return {"base_model.model.layers.0.q_proj.lora_A.weight": torch.full((2, 4), value),
            "base_model.model.layers.0.q_proj.lora_B.weight": torch.zeros(4, 2)}


def test_registry_round_trip_and_versions(tmp_path):
    reg = AdapterRegistry(tmp_path)
    v1, sha1 = reg.save("tax", _state(1.0), {"r": 2})
    v2, sha2 = reg.save("tax", _state(2.0), {"r": 2}, meta={"note": "second"})
    assert (v1, v2) == (1, 2) and sha1 != sha2 and reg.versions("tax") == [1, 2] and reg.versions("general") == []
    state, config, manifest = reg.load("tax", 2, expected_manifest=sha2)
    torch.testing.assert_close(state["base_model.model.layers.0.q_proj.lora_A.weight"], torch.full((2, 4), 2.0))
    assert config == {"r": 2} and manifest["meta"]["note"] == "second"
    assert sorted(p.name for p in reg.path("tax", 1).iterdir()) == sorted(
        ["adapter_model.safetensors", "adapter_config.json", "manifest.json"])


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    def write(tmp: Path):
        (tmp / "adapter_config.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_dir_atomically(tmp_path / "v0001", write)
    assert list(tmp_path.iterdir()) == []
    write_dir_atomically(tmp_path / "v0001", lambda tmp: (tmp / "a").write_text("x"))
    with pytest.raises(FileExistsError):
        write_dir_atomically(tmp_path / "v0001", lambda tmp: None)


def test_tampered_weights_are_refused(tmp_path):
    reg = AdapterRegistry(tmp_path)
    v, _ = reg.save("tax", _state(), {"r": 2})
    f = reg.path("tax", v) / "adapter_model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in a tensor value
    f.write_bytes(bytes(data))
    with pytest.raises(AdapterIntegrityError, match="SHA-256"):
        reg.load("tax", v)


def test_rewritten_manifest_is_caught_by_the_recorded_hash(tmp_path):
    reg = AdapterRegistry(tmp_path)
    v, sha = reg.save("tax", _state(), {"r": 2})
    folder = reg.path("tax", v)
    from safetensors.torch import save_file

    from course_utils.core.models import sha256_file

    save_file(_state(9.0), str(folder / "adapter_model.safetensors"))  # a forged adapter …
    m = json.loads((folder / "manifest.json").read_text())
    m["files"]["adapter_model.safetensors"] = {"sha256": sha256_file(folder / "adapter_model.safetensors"),
                                               "size": (folder / "adapter_model.safetensors").stat().st_size}
    (folder / "manifest.json").write_text(json.dumps(m))  # … with a consistent, rewritten manifest
    assert reg.verify("tax", v) == []  # the folder alone cannot tell
    with pytest.raises(AdapterIntegrityError, match="recorded"):
        reg.load("tax", v, expected_manifest=sha)


@pytest.mark.parametrize("name", ["adapter_model.bin", "pytorch_model.pt", "state.pkl"])
def test_pickle_files_are_refused_and_never_unpickled(tmp_path, name):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    reg = AdapterRegistry(tmp_path / "reg")
    v, _ = reg.save("tax", _state(), {"r": 2})
    (reg.path("tax", v) / name).write_bytes(pickle.dumps(Boom()))
    with pytest.raises(AdapterIntegrityError, match="pickle"):
        reg.load("tax", v)
    assert not (tmp_path / "PWNED").exists()


def test_pickle_renamed_to_safetensors_is_refused(tmp_path):
    """A pickle saved under the safetensors name, manifest made consistent: the parser refuses it."""
    import pickle

    from course_utils.core.models import sha256_file

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    reg = AdapterRegistry(tmp_path / "reg")
    v, _ = reg.save("tax", _state(), {"r": 2})
    f = reg.path("tax", v) / "adapter_model.safetensors"
    f.write_bytes(pickle.dumps({"x": Boom()}))
    m = json.loads((f.parent / "manifest.json").read_text())
    m["files"][f.name] = {"sha256": sha256_file(f), "size": f.stat().st_size}
    (f.parent / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(AdapterIntegrityError, match="safetensors"):
        reg.load("tax", v)
    assert not (tmp_path / "PWNED").exists()


def test_temporary_leftovers_are_not_versions_and_get_cleaned(tmp_path):
    reg = AdapterRegistry(tmp_path)
    (tmp_path / "tax" / ".tmp-v0001-123-4").mkdir(parents=True)
    assert reg.versions("tax") == []
    assert len(reg.clean_temporary()) == 1 and not list((tmp_path / "tax").iterdir())


# --------------------------------------------------------------------------- trigger, rounds, gate in the loop

def test_default_trigger_is_50_and_fires_exactly_at_50(tmp_path):
    bot = make_bot(tmp_path)
    assert bot.config.n_trigger == cb_config.DEFAULT_N_TRIGGER == 50
    feed(bot, 49)
    feed(bot, 30, quality=0.3)  # below the quality threshold: never counted
    feed(bot, 30, domain="accounting")
    assert bot.history == [] and bot.ready_domains() == []
    bot.feedback("마지막 질문", "좋은 답변", 0.9, "tax")
    (r,) = bot.history
    assert (r.domain, r.status, r.n_new, r.n_replay, r.version) == ("tax", "accepted", 50, 25, 1)
    assert len(bot.backend.trained[0][1]) == 75, "50 new + 25 replay examples"
    assert bot.store.live_version("tax")[0] == 1 and bot.store.count_pending("tax", 0.7) == 0
    assert bot.backend.score_of(bot.backend.installed["tax"]) == pytest.approx(1.8)


def test_gate_rejects_a_worse_candidate_and_keeps_the_live_adapter(tmp_path):
    bot = make_bot(tmp_path, n_trigger=5)
    feed(bot, 5)
    live_files = {p.name: p.read_bytes() for p in bot.registry.path("tax", 1).iterdir()}
    feed(bot, 5, answer="SPAM {i}")
    first, second = bot.history
    assert first.status == "accepted" and second.status == "rejected"
    assert second.candidate_score > second.live_score
    assert bot.store.live_version("tax")[0] == 1 and bot.registry.versions("tax") == [1]
    assert {p.name: p.read_bytes() for p in bot.registry.path("tax", 1).iterdir()} == live_files
    assert bot.backend.score_of(bot.backend.installed["tax"]) == pytest.approx(1.8)
    replayed = [a for _, a in bot.backend.trained[1][1] if "SPAM" not in a]
    assert set(replayed) <= {f"좋은 답변 {i}" for i in range(5)}, "replay comes from the accepted round first"
    assert bot.store.count_pending("tax", 0.7) == 0, "rejected records are quarantined, not retried"
    mon = bot.monitor()
    assert (mon["training_rounds"], mon["accepted"], mon["rejected"], mon["failed"]) == (2, 1, 1, 0)
    assert mon["last_eval"]["tax"]["status"] == "rejected" and mon["live_version"]["tax"] == 1


def test_stricter_tolerance_rejects_what_a_looser_one_accepts(tmp_path):
    bot = make_bot(tmp_path / "a", n_trigger=3, tolerance=-0.2)  # demand a 20 % improvement
    feed(bot, 3)
    assert bot.history[0].status == "rejected"
    bot = make_bot(tmp_path / "b", n_trigger=3, tolerance=0.0)
    feed(bot, 3)
    assert bot.history[0].status == "accepted"


def test_a_crashing_round_leaves_the_previous_adapter_live_and_its_files_intact(tmp_path):
    bot = make_bot(tmp_path, n_trigger=4)
    feed(bot, 4)
    folder = bot.registry.path("tax", 1)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    live_state = bot.backend.installed["tax"]
    bot.backend.fail_in_train = True
    with pytest.warns(RuntimeWarning, match="failed"):
        feed(bot, 4)
    r = bot.history[-1]
    assert r.status == "failed" and "simulated crash" in r.error
    assert bot.store.live_version("tax")[0] == 1 and bot.registry.versions("tax") == [1]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before and bot.registry.verify("tax", 1) == []
    assert bot.backend.installed["tax"] is live_state
    assert bot.store.count_pending("tax", 0.7) == 4, "a failed round's records stay pending for a retry"
    bot.backend.fail_in_train = False
    bot.feedback("재시도 질문", "좋은 답변", 1.0, "tax")  # new feedback retries the domain
    assert bot.history[-1].status == "accepted" and bot.store.live_version("tax")[0] == 2


def test_a_crash_while_saving_leaves_no_partial_version(tmp_path, monkeypatch):
    import safetensors.torch

    bot = make_bot(tmp_path, n_trigger=3)

    def broken_save(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a file")
        raise OSError("no space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.warns(RuntimeWarning):
        feed(bot, 3)
    assert bot.history[-1].status == "failed" and "no space" in bot.history[-1].error
    assert bot.registry.versions("tax") == [] and not any((tmp_path / "adapters").rglob("*.safetensors"))
    assert bot.store.live_version("tax") == (0, None) and bot.backend.installed["tax"] is None


def test_restart_restores_the_live_adapter_and_refuses_a_tampered_one(tmp_path):
    bot = make_bot(tmp_path, n_trigger=3)
    feed(bot, 3)
    bot.store.close()
    again = make_bot(tmp_path, n_trigger=3)  # a fresh process would do exactly this
    assert again.backend.score_of(again.backend.installed["tax"]) == pytest.approx(1.8)
    again.store.close()
    f = again.registry.path("tax", 1) / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:-4] + b"\x00\x00\x80\x7f")  # the tensor's last value → inf
    with pytest.raises(AdapterIntegrityError):
        make_bot(tmp_path, n_trigger=3)


def test_background_round_runs_in_a_thread_and_wait_joins_it(tmp_path):
    import threading

    gate = threading.Event()
    backend = FakeBackend()
    real_train = backend.train

    def slow_train(*a, **k):
        gate.wait(5)
        return real_train(*a, **k)

    backend.train = slow_train
    bot = make_bot(tmp_path, background=True, backend=backend, n_trigger=3)
    feed(bot, 3)
    assert bot.training and bot.monitor()["training_now"]
    assert bot.ask("아직 학습 중인가요?", "tax").answer.startswith("[tax · 2.00]"), "answers keep coming"
    gate.set()
    history = bot.wait(timeout=10)
    assert not bot.training and [r.status for r in history] == ["accepted"]


def test_two_domains_ready_train_one_after_the_other(tmp_path):
    bot = make_bot(tmp_path, n_trigger=3)
    bot.store.add_many([dict(question=f"q{i}", answer=f"a{i}", quality=1.0, domain=d)
                        for d in ("accounting", "general") for i in range(3)])
    assert bot.maybe_train()
    assert [(r.domain, r.status) for r in bot.history] == [("accounting", "accepted"), ("general", "accepted")]


def test_monitor_and_dashboard(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    bot = make_bot(tmp_path, n_trigger=3)
    feed(bot, 3)
    feed(bot, 3, answer="SPAM")
    feed(bot, 2, domain="general")
    mon = bot.monitor()
    assert mon["buffer"] == {"tax": 0, "accounting": 0, "general": 2} and mon["trigger_at"] == 3
    assert mon["lora_layers"] == 4 and mon["adapter_layers"] == 0 and mon["feedback_total"] == 8
    fig = bot.dashboard()
    assert len(fig.axes) == 3


def test_guess_domain_routes_most_dataset_questions():
    from course_utils.core.data import load_rows

    rows = load_rows("ko_tax_qa")
    hits = sum(cb.guess_domain(r["question"]) == r["domain"] for r in rows)
    assert hits / len(rows) > 0.6, f"keyword router right on only {hits}/{len(rows)}"


def test_fit_prompt_leaves_room_for_the_answer(tok):
    long_q = "일반과세자의 부가가치세 예정신고와 확정신고 기한은 각각 언제인가요? " * 20
    for seq_len in (48, 128):
        p = fit_prompt(tok, long_q, cb_config.SYSTEM_PROMPT, seq_len)
        assert len(tok(p, add_special_tokens=False)["input_ids"]) <= seq_len - seq_len // 3
        assert p.endswith("<|im_start|>assistant\n") and "…" in p
    short = fit_prompt(tok, "복식부기란?", cb_config.SYSTEM_PROMPT, 128)
    assert short == chat_prompt(tok, "복식부기란?", cb_config.SYSTEM_PROMPT) and "…" not in short


def test_config_from_settings():
    from course_utils.core.runtime import settings

    c = ChatbotConfig.from_settings(settings("cpu"), n_trigger=12)
    assert c.n_trigger == 12 and c.seq_len == 2 * settings("cpu").seq_len and ChatbotConfig().n_trigger == 50
    assert c.steps == 9, "at most two passes over 12 new + 6 replay examples in batches of 4"
    assert ChatbotConfig.from_settings(settings("cpu")).steps == settings("cpu").steps
    assert ChatbotConfig.from_settings(settings("gpu")).steps == 19, "2 × 75 examples / batch 8"
    assert c.top_layers == 8 and ChatbotConfig.from_settings(settings("gpu")).top_layers is None


# --------------------------------------------------------------------------- the real LoRA backend (tiny model)

@pytest.fixture(scope="module")
def tok():
    from course_utils.core.models import load_tokenizer

    return load_tokenizer("chat", profile="cpu")


def tiny_chat_llama(vocab):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=2, pad_token_id=2, bos_token_id=1)
    return LlamaForCausalLM(cfg).eval()


EVAL = {d: [(f"{d} 질문 {i}", f"{d} 답변 {i}입니다.") for i in range(3)] for d in DOMAINS}


class TestLoraBackend:
    @pytest.fixture
    def backend(self, tok):
        model = tiny_chat_llama(len(tok))
        cfg = ChatbotConfig(steps=4, lr=1e-2, seq_len=48, max_new_tokens=4, r=4, lora_alpha=8)
        return LoraBackend(model, tok, EVAL, cfg)

    def test_trainer_clone_shares_the_frozen_base_weights(self, backend):
        serve = dict(backend.serving.named_parameters())
        train = dict(backend.trainer.named_parameters())
        shared = [k for k in serve if "lora_" not in k]
        assert shared and all(serve[k].data_ptr() == train[k].data_ptr() for k in shared)
        assert not any(p.requires_grad for k, p in serve.items() if "lora_" not in k)
        assert all(backend.serving.peft_config[d] for d in DOMAINS)
        n_targets = len(ChatbotConfig().target_modules)  # all seven projections by default
        assert backend.layer_counts()["lora_layers"] == n_targets * 2  # in both layers of the tiny model

    def test_train_gate_install_switch(self, backend):
        ids = torch.tensor([[1, 5, 7, 9]])
        with torch.no_grad():
            backend.serving.set_adapter("tax")
            before = backend.serving(input_ids=ids).logits
        base = backend.evaluate("tax", None)
        pairs = [(q, a) for q, a in EVAL["tax"]] * 2
        state, res = backend.train("tax", pairs, None, seed=0)
        assert res.losses[-1] < res.losses[0], "the candidate learned on its training pairs"
        assert backend.evaluate("tax", state) < base, "and on the held-out pairs (here: the same style)"
        assert backend.serving_state("tax").keys() == state.keys()
        torch.testing.assert_close(backend.serving_state("tax")["base_model.model.model.layers.0.self_attn."
                                                                "q_proj.lora_B.weight"],
                                   torch.zeros(32, 4), msg="training a candidate must not touch serving")
        backend.install("tax", state)
        with torch.no_grad():
            backend.serving.set_adapter("tax")
            after = backend.serving(input_ids=ids).logits
            backend.serving.set_adapter("general")
            general = backend.serving(input_ids=ids).logits
        assert not torch.allclose(before, after), "the installed adapter changes the tax answers"
        torch.testing.assert_close(general, before, msg="other domains keep their (base) adapter")
        assert isinstance(backend.answer("tax 질문", "tax"), str)

    def test_top_layers_limits_lora_to_the_last_layers(self, tok):
        cfg = ChatbotConfig(steps=1, seq_len=48, r=4, lora_alpha=8, top_layers=1)
        backend = LoraBackend(tiny_chat_llama(len(tok)), tok, EVAL, cfg)
        names = [n for n, _ in backend.serving.named_parameters() if "lora_A.tax" in n]
        n_targets = len(cfg.target_modules)
        assert backend.layer_counts()["lora_layers"] == n_targets and names and all(".layers.1." in n for n in names)
        assert backend.adapter_config()["layers_to_transform"] == [1]

    def test_every_eval_example_keeps_answer_tokens(self, backend):
        for batches in backend.eval_batches.values():
            for b in batches:
                assert ((b["labels"] != -100).sum(dim=1) > 0).all(), "an example lost its whole answer"

    def test_layout_mismatch_is_refused(self, backend):
        bad = dict(backend.init_state)
        bad.pop(next(iter(bad)))
        with pytest.raises(AdapterIntegrityError):
            backend.install("tax", bad)

    def test_full_round_on_disk_with_real_lora(self, backend, tmp_path):
        bot = Chatbot(FeedbackStore(tmp_path / "fb.db"), AdapterRegistry(tmp_path / "ad"), backend,
                      ChatbotConfig(n_trigger=6, steps=4, lr=1e-2, seq_len=48, r=4, lora_alpha=8), background=False)
        for i in range(6):
            bot.feedback(f"tax 질문 {i}", f"tax 답변 {i}입니다.", 1.0, "tax")
        (r,) = bot.history
        assert r.status == "accepted" and r.candidate_score < r.live_score
        state, config, _ = bot.registry.load("tax", 1)
        assert config["r"] == 4 and config["peft_type"] == "LORA"
        for k, v in backend.serving_state("tax").items():
            torch.testing.assert_close(state[k], v)
        # the saved folder is a standard peft adapter folder: peft itself can load it
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(tiny_chat_llama(len(backend.tok)), bot.registry.path("tax", 1))
        ids = torch.tensor([[1, 5, 7, 9]])
        with torch.no_grad():
            backend.serving.set_adapter("tax")
            torch.testing.assert_close(peft_model(input_ids=ids).logits, backend.serving(input_ids=ids).logits)


# --------------------------------------------------------------------------- notebook parity

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "09_capstone_tax_chatbot.ipynb"


def test_notebook_inline_gate_matches_package():
    ns = run_inline(NOTEBOOK.name, "eval gate")
    for live, cand, tol in itertools_product():
        assert ns["should_accept"](live, cand, tol) == should_accept(live, cand, tol), (live, cand, tol)


def itertools_product():
    import itertools

    return itertools.product([0.5, 2.0, 3.1], [0.4, 1.99, 2.0, 2.02, 2.2, math.inf, math.nan], [0.0, 0.01, 0.1])


def test_notebook_inline_pragmas_match_package(tmp_path):
    ns = run_inline(NOTEBOOK.name, "open the feedback database")
    conn = ns["open_feedback_db"](tmp_path / "nb.db")
    with FeedbackStore(tmp_path / "pkg.db") as store:
        for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys"):
            assert conn.execute(f"PRAGMA {name}").fetchone()[0] == store.pragma(name), name
    # asked of SQLite on the open connection: WAL with synchronous = NORMAL (1; FULL is 2), foreign keys on
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    conn.close()


# --------------------------------------------------------------------------- the widget, driven from code

def test_chat_ui_flow(tmp_path):
    from course_utils.chatbot.ui import DOWNVOTE_MAX_QUALITY, ChatUI

    bot = make_bot(tmp_path, n_trigger=2)
    ui = ChatUI(bot)
    assert ui.ask("부가가치세 세율은?").startswith("[tax")
    assert all(w.isalpha() for w in (ui.up.description.split()[1], ui.down.description.split()[1])), \
        "the rating buttons need words, not only emoji"
    assert ui.rate("down").startswith("✅") and bot.store.rows()[-1]["quality"] == DOWNVOTE_MAX_QUALITY
    assert ui.rate("up", quality=0.8).startswith("✅")
    assert ui.rate("down", quality=1.0, correction="기본세율은 10%입니다.").startswith("✅")
    last = bot.store.rows()[-1]
    assert (last["answer"], last["corrected"], last["quality"]) == ("기본세율은 10%입니다.", 1, 1.0)
    assert [r.status for r in bot.history] == ["accepted"], "👍 0.8 + correction 1.0 = 2 records ≥ 0.7"
    assert "v1" in ui.stats.value and "✅ accepted 1" in ui.stats.value
    n = bot.store.count()
    assert ui.ask("   ") == "" and "question" in ui.status.value
    assert ui.rate("up") == "Ask a question first." and bot.store.count() == n
    ui.ask("복식부기란?")
    assert ui.rate("up", correction="\udcff").startswith("❌ not stored — answer:") and bot.store.count() == n
