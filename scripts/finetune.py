"""The course's LoRA/QLoRA SFT recipe as a script that runs unchanged under python, accelerate and torchrun.

    python scripts/finetune.py --config configs/finetune_cpu.yaml
    accelerate launch --config_file configs/accelerate/ddp.yaml scripts/finetune.py --config configs/finetune_gpu.yaml
    torchrun --nproc_per_node 2 scripts/finetune.py --config configs/finetune_cpu.yaml   # 2 CPU ranks, gloo

Every config key can be overridden on the command line (``--r 16 --lr 1e-4``). Data is a bundled data set
(``instructions``, ``en_ko_translation``, ``domain_qa``, ``ko_tax_qa``) or a JSONL file with ``prompt`` and
``completion`` fields; training uses TRL's ``SFTTrainer`` with prompt/completion data, so the loss is on the
completion only. Each rank writes ``<output_dir>/rank<N>.json`` (its losses); rank 0 saves the adapter.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from course_utils.core.models import LORA_TARGETS  # noqa: E402 (after the path insert)


@dataclass
class FinetuneConfig:
    """What one fine-tuning run needs; YAML keys and ``--flags`` have these names."""

    model: str = "chat"              # a course_utils.core.models role ("chat" → embedded model on cpu) or a hub id
    data: str = "instructions"       # a bundled data set name or a path to a prompt/completion JSONL file
    method: str = "lora"             # lora | qlora | full
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    lr: float = 2e-4
    max_steps: int = 20
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 128
    max_examples: int = 0            # 0 = all training rows
    output_dir: str = "outputs/finetune"
    seed: int = 0
    gradient_checkpointing: bool = False


def load_config(argv: list[str] | None = None) -> FinetuneConfig:
    """Defaults ← YAML file (``--config``) ← command-line flags."""
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path)
    for f in fields(FinetuneConfig):
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if kind.startswith("list"):
            ap.add_argument(f"--{f.name}", nargs="+")
        elif kind == "bool":
            ap.add_argument(f"--{f.name}", type=lambda s: s.lower() in ("1", "true", "yes"))
        else:
            ap.add_argument(f"--{f.name}", type={"int": int, "float": float}.get(kind, str))
    args = ap.parse_args(argv)
    values = {}
    if args.config:
        if not args.config.is_file():
            ap.error(f"--config {args.config}: no such file")
        values = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
        unknown = set(values) - {f.name for f in fields(FinetuneConfig)}
        if unknown:
            ap.error(f"{args.config}: unknown key(s) {', '.join(sorted(unknown))}")
    values.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    cfg = FinetuneConfig(**values)
    if cfg.method not in ("lora", "qlora", "full"):
        ap.error(f"method={cfg.method!r}: expected lora, qlora or full")
    return cfg


def prompt_completion_rows(cfg: FinetuneConfig, tokenizer) -> list[dict]:
    """Training rows as chat-formatted ``prompt``/``completion`` message lists."""
    from course_utils.core import data

    if cfg.data in data.SCHEMAS:
        rows = data.load_rows(cfg.data, split="train")
        user_key, answer_key = {"instructions": ("instruction", "output"), "en_ko_translation": ("en", "ko"),
                                "domain_qa": ("question", "answer"), "ko_tax_qa": ("question", "answer")}[cfg.data]
        pairs = [((r[user_key] + ("\n\n" + r["input"] if r.get("input") else "")), r[answer_key]) for r in rows]
    else:
        rows = data.read_jsonl(cfg.data)
        pairs = [(r["prompt"], r["completion"]) for r in rows]
    if cfg.max_examples:
        pairs = pairs[: cfg.max_examples]
    return [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}]}
            for p, c in pairs]


def build_model(cfg: FinetuneConfig):
    """The model of the config: LoRA/QLoRA adapters attached by the trainer, or all weights trainable."""
    import torch

    from course_utils.core.models import load_model
    from course_utils.core.runtime import settings

    quant = "4bit" if cfg.method == "qlora" else None
    # device_map would pin every rank to one device; under DDP each rank must own its copy
    model = load_model(cfg.model, quantization=quant, **({"device_map": None} if quant is None else {}))
    if quant:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    on_cpu = settings().device == "cpu"   # the profile decides: COURSE_PROFILE=cpu on a GPU machine means CPU
    return model.to(torch.float32) if on_cpu and quant is None else model


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(argv)
    from course_utils.core.quiet import quiet_known_warnings

    quiet_known_warnings()   # before peft imports bitsandbytes: its harmless CPU-kernel message stays hidden
    from peft import LoraConfig
    from transformers import TrainerCallback

    from course_utils.core.models import load_tokenizer
    from course_utils.core.runtime import seed_everything
    from course_utils.core.trl_compat import SFTTrainer, sft_config

    seed_everything(cfg.seed)
    rank = int(os.environ.get("RANK", 0))
    out = Path(cfg.output_dir)
    tok = load_tokenizer(cfg.model)
    from datasets import Dataset

    train_ds = Dataset.from_list(prompt_completion_rows(cfg, tok))
    args = sft_config(  # bf16 off and use_cpu on CPU: TRL's bf16 default is 14× slower there
        output_dir=str(out), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, lr_scheduler_type="constant",
        max_length=cfg.max_length, seed=cfg.seed, gradient_checkpointing=cfg.gradient_checkpointing,
        ddp_find_unused_parameters=False, disable_tqdm=rank != 0,
    )
    peft_config = None if cfg.method == "full" else LoraConfig(
        r=cfg.r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=cfg.target_modules,
        task_type="CAUSAL_LM")
    losses: list[float] = []

    class _Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    trainer = SFTTrainer(model=build_model(cfg), args=args, train_dataset=train_ds, processing_class=tok,
                         peft_config=peft_config, callbacks=[_Record()])
    trainer.train()
    state = trainer.accelerator.state
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{state.process_index}.json").write_text(json.dumps(
        {"rank": state.process_index, "world_size": state.num_processes, "losses": losses,
         "distributed_type": str(state.distributed_type), "backend": state.backend, "config": asdict(cfg)},
        indent=1))
    if state.is_main_process:
        trainer.save_model(str(out / "adapter" if peft_config else out / "model"))
        print(f"saved to {out}; first/last loss {losses[0]:.3f} → {losses[-1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
