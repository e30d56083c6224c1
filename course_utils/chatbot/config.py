"""The capstone's configuration: ``ChatbotConfig`` (what a training round and the eval gate depend on).

Its own module so that ``backend`` and ``bot`` both import it and neither imports the other for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from course_utils.core.models import LORA_TARGETS

# English and short on purpose: this tokenizer spends about 3 tokens per Korean syllable, and every prompt
# token costs training time. Measured: the empty chat template takes 47 tokens with the Korean system prompt
# "한국 세무·회계 기초 도우미" and 20 with this one.
SYSTEM_PROMPT = "Korean tax & accounting helper"
DEFAULT_N_TRIGGER = 50                         # the seed notes' "train every 50 records"


@dataclass(frozen=True)
class ChatbotConfig:
    """Everything a training round and the eval gate depend on.

    n_trigger: new records (quality ≥ quality_threshold) of one domain that start a round;
    replay_ratio: replayed older records per new record; tolerance: how much worse (relative held-out
    loss) a candidate may be and still go live; steps/lr/batch_size/seq_len: the round's LoRA fine-tune;
    r/lora_alpha/target_modules: the LoRA shape (peft names); top_layers: put LoRA only on the last
    ``top_layers`` transformer layers (None = all) — the backward pass then stops there.
    """

    n_trigger: int = DEFAULT_N_TRIGGER
    quality_threshold: float = 0.7
    replay_ratio: float = 0.5
    tolerance: float = 0.01
    steps: int = 12
    lr: float = 3e-3
    batch_size: int = 4
    seq_len: int = 128
    eval_batch_size: int = 8
    r: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = LORA_TARGETS
    top_layers: int | None = None
    max_new_tokens: int = 48
    system: str = SYSTEM_PROMPT
    seed: int = 0

    @classmethod
    def from_settings(cls, s=None, **overrides) -> ChatbotConfig:
        """Sizes from the profile's ``Settings``, scaled for the chatbot's rounds.

        Korean needs about 2× the tokens of English text; a round runs the profile's steps but at most two
        passes over its examples; on a CPU, LoRA only in the last 8 layers (a shorter backward pass).

        >>> from course_utils.core.runtime import settings
        >>> ChatbotConfig.from_settings(settings("cpu")).seq_len
        128
        """
        from course_utils.core.runtime import settings

        s = s or settings()
        n = overrides.get("n_trigger", DEFAULT_N_TRIGGER)
        examples = n + round(n * overrides.get("replay_ratio", cls.replay_ratio))
        base = dict(steps=min(s.steps, math.ceil(2 * examples / s.batch_size)), batch_size=s.batch_size,
                    seq_len=2 * s.seq_len, max_new_tokens=2 * s.max_new_tokens,
                    top_layers=8 if s.profile == "cpu" else None)
        return cls(**{**base, **overrides})
