"""The capstone's LoRA backend: per-domain adapters for serving, a candidate adapter on a weight-sharing clone."""

from __future__ import annotations

import copy
import itertools
import threading

import torch

from course_utils.chatbot.config import ChatbotConfig
from course_utils.chatbot.registry import AdapterIntegrityError
from course_utils.chatbot.store import DOMAINS
from course_utils.core.models import chat_prompt


def clone_sharing_weights(model: torch.nn.Module) -> torch.nn.Module:
    """A second module tree whose parameters and buffers are the *same tensors* as ``model``'s.

    Training a LoRA candidate on the clone never blocks answering with the original: the frozen base
    weights are shared (no extra memory), only the small LoRA matrices are separate.
    """
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def _detached(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def fit_prompt(tokenizer, question: str, system: str, seq_len: int) -> str:
    """The chat prompt of ``question``, its question shortened (ending in "…") if needed so that at least
    a third of ``seq_len`` is left for answer tokens — a fully truncated answer would have no loss at all.

    Example::

        len(tok(fit_prompt(tok, "부가가치세" * 100, SYSTEM_PROMPT, 128))["input_ids"]) <= 128 * 2 // 3   # True
    """
    budget = seq_len - seq_len // 3
    prompt = chat_prompt(tokenizer, question, system)
    while len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) > budget and len(question) > 1:
        question = question[: max(1, int(len(question) * 0.8))]
        prompt = chat_prompt(tokenizer, question + "…", system)
    return prompt


class LoraBackend:
    """Per-domain LoRA adapters on one base model (serving) + a candidate adapter on a weight-sharing clone
    (training). The chatbot only calls these methods, so another adapter type can replace it:

    - ``evaluate(domain, state) -> float``: held-out answer loss of ``state`` (None = the base);
    - ``train(domain, pairs, start, seed, on_step) -> (state, TrainResult)``: fine-tune from ``start``;
    - ``install(domain, state)``: make ``state`` the serving adapter of ``domain``;
    - ``answer(question, domain) -> str``.
    """

    def __init__(self, model, tokenizer, eval_sets: dict[str, list[tuple[str, str]]], config: ChatbotConfig):
        from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

        from course_utils.core.train import make_batches

        self.cfg, self.tok = config, tokenizer
        n = model.config.num_hidden_layers
        layers = list(range(n - config.top_layers, n)) if config.top_layers else None
        self.lora = LoraConfig(r=config.r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                               target_modules=list(config.target_modules), layers_to_transform=layers,
                               task_type="CAUSAL_LM")
        torch.manual_seed(config.seed)
        # the clone must be taken before peft injects LoRA layers into `model`
        self.trainer = get_peft_model(clone_sharing_weights(model), self.lora, adapter_name="candidate")
        self.init_state = _detached(get_peft_model_state_dict(self.trainer, adapter_name="candidate"))
        self.serving = get_peft_model(model, self.lora, adapter_name=DOMAINS[0])
        for d in DOMAINS[1:]:
            self.serving.add_adapter(d, self.lora)
        self.serving.eval()
        self.trainer.eval()
        self.serve_lock = threading.Lock()   # one generation or swap at a time on the serving tree
        self.train_lock = threading.Lock()   # one round at a time on the trainer tree
        self.eval_batches = {
            d: make_batches(tokenizer, [fit_prompt(tokenizer, q, config.system, config.seq_len) for q, _ in pairs],
                            [a for _, a in pairs], config.eval_batch_size, config.seq_len, shuffle=False)
            for d, pairs in eval_sets.items()}

    # ------------------------------------------------------------------ helpers
    def adapter_config(self) -> dict:
        """The peft ``adapter_config.json`` content of every adapter (JSON-safe)."""
        cfg = self.lora.to_dict()
        cfg["target_modules"] = sorted(cfg["target_modules"])
        return cfg

    def check_state(self, state: dict) -> None:
        """Refuse a state whose tensor names or shapes differ from this backend's LoRA layout."""
        want = {k: tuple(v.shape) for k, v in self.init_state.items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if want != got:
            missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
            wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
            raise AdapterIntegrityError(f"adapter layout mismatch: missing {missing[:3]}, unexpected "
                                        f"{extra[:3]}, wrong shape {wrong[:3]}")

    def _load(self, peft_model, state: dict | None, adapter: str) -> None:
        from peft import set_peft_model_state_dict

        state = self.init_state if state is None else state
        self.check_state(state)
        result = set_peft_model_state_dict(peft_model, state, adapter_name=adapter)
        if result.unexpected_keys:
            raise AdapterIntegrityError(f"unexpected keys {result.unexpected_keys[:3]}")

    def serving_state(self, domain: str) -> dict:
        """A copy of the serving adapter of ``domain`` (what answers right now)."""
        from peft import get_peft_model_state_dict

        with self.serve_lock:
            return _detached(get_peft_model_state_dict(self.serving, adapter_name=domain))

    def layer_counts(self) -> dict:
        """LoRA-wrapped modules per adapter and trainable numbers per adapter (for monitoring)."""
        from peft.tuners.lora import LoraLayer

        wrapped = sum(isinstance(m, LoraLayer) for m in self.serving.modules())
        return {"lora_layers": wrapped, "adapter_layers": 0, "adapters": list(self.serving.peft_config),
                "lora_params_per_adapter": sum(v.numel() for v in self.init_state.values())}

    # ------------------------------------------------------------------ the four backend methods
    def evaluate(self, domain: str, state: dict | None) -> float:
        """Mean held-out answer loss (completion tokens only) of ``state`` on ``domain``'s test QA."""
        from course_utils.core.train import evaluate_loss

        with self.train_lock:
            self._load(self.trainer, state, "candidate")
            return evaluate_loss(self.trainer, self.eval_batches[domain])

    def train(self, domain: str, pairs: list[tuple[str, str]], start: dict | None, seed: int = 0,
              on_step=None):
        """Fine-tune the candidate adapter from ``start`` on (question, answer) pairs; return (state, result)."""
        from peft import get_peft_model_state_dict

        from course_utils.core.train import make_batches, train

        cfg = self.cfg
        with self.train_lock:
            self._load(self.trainer, start, "candidate")
            prompts = [fit_prompt(self.tok, q, cfg.system, cfg.seq_len) for q, _ in pairs]
            batches = make_batches(self.tok, prompts, [a for _, a in pairs], cfg.batch_size, cfg.seq_len,
                                   seed=seed)
            result = train(self.trainer, batches, steps=cfg.steps, lr=cfg.lr, on_step=on_step,
                           desc=f"{domain} round", progress=False)
            return _detached(get_peft_model_state_dict(self.trainer, adapter_name="candidate")), result

    def install(self, domain: str, state: dict | None) -> None:
        """Copy ``state`` into the serving adapter of ``domain`` (None = back to the base)."""
        with self.serve_lock:
            self._load(self.serving, state, domain)

    def answer(self, question: str, domain: str, max_new_tokens: int | None = None) -> str:
        """Greedy answer with the serving adapter of ``domain`` (switched with peft's ``set_adapter``)."""
        from course_utils.core.models import generate_reply

        with self.serve_lock:
            self.serving.set_adapter(domain, inference_mode=True)
            return generate_reply(self.serving, self.tok, question, max_new_tokens or self.cfg.max_new_tokens,
                                  system=self.cfg.system, whole_sentences=True, repetition_penalty=1.1)
