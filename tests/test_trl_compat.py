import pytest
import torch

from course_utils.core.trl_compat import TorchLogProbs


def _reference(hidden, weight, bias, targets, temperature):
    logits = (hidden @ weight.T + bias) / temperature
    logp = torch.log_softmax(logits, -1)
    return logp.gather(1, targets[:, None])[:, 0], -(logp.exp() * logp).sum(-1), logits.argmax(-1) == targets


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_torch_logprobs_match_direct_formula_and_gradients(temperature):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 5, generator=g, requires_grad=True)
    weight, bias = torch.randn(11, 5, generator=g), torch.randn(11, generator=g)
    targets = torch.randint(0, 11, (7,), generator=g)
    lp, ent, lss, mean, top1 = TorchLogProbs.apply(hidden, weight, bias, targets, temperature, 4,
                                                   token_chunk=3)  # chunks of 3 tokens: 3 + 3 + 1
    ref_lp, ref_ent, ref_top1 = _reference(hidden, weight, bias, targets, temperature)
    torch.testing.assert_close(lp, ref_lp)
    torch.testing.assert_close(ent, ref_ent)
    assert torch.equal(top1, ref_top1) and lss.shape == mean.shape == (7,)
    (g1,) = torch.autograd.grad(lp.sum(), hidden)
    (g2,) = torch.autograd.grad(ref_lp.sum(), hidden)
    torch.testing.assert_close(g1, g2)


def test_optional_outputs_are_none_when_not_asked():
    h, w, t = torch.randn(2, 3), torch.randn(4, 3), torch.tensor([0, 1])
    out = TorchLogProbs.apply(h, w, None, t, 1.0, 4, outputs=())
    assert out[0].shape == (2,) and all(x is None for x in out[1:])


def test_sft_trainer_trains_on_cpu(tmp_path, tiny_llama):
    """The real failure this module fixes: TRL's SFTTrainer on a CPU without Triton."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from course_utils.core.trl_compat import SFTTrainer, sft_config

    vocab = {f"w{i}": i for i in range(60)} | {"<unk>": 60, "<pad>": 61, "<eos>": 62}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    ds = Dataset.from_list([{"prompt": f"w{i} w{i + 1}", "completion": f" w{i + 2} w{i + 3}"} for i in range(16)])
    args = sft_config(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=1e-2,
                      max_length=16, disable_tqdm=True)
    trainer = SFTTrainer(model=tiny_llama, args=args, train_dataset=ds, processing_class=tok)
    assert not args.bf16
    hist = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert torch.isfinite(torch.tensor(hist.training_loss)) and losses[-1] < losses[0]
    assert not trainer.model.is_gradient_checkpointing   # sft_config's default: no recomputation


def test_sft_config_turns_gradient_checkpointing_on_only_when_asked(tmp_path):
    """TRL's SFTConfig checkpoints by default (a slower step); sft_config keeps it off unless the caller asks."""
    import dataclasses

    from trl import SFTConfig

    from course_utils.core.trl_compat import sft_config

    assert {f.name: f.default for f in dataclasses.fields(SFTConfig)}["gradient_checkpointing"] is True  # TRL's
    default = sft_config(output_dir=str(tmp_path))
    assert default.gradient_checkpointing is False
    assert sft_config(output_dir=str(tmp_path), gradient_checkpointing=True).gradient_checkpointing is True
    assert (default.report_to, default.save_strategy, default.logging_steps) == ([], "no", 1)  # the rest as before


def test_a_trainer_prints_one_efficiency_line_with_the_cost_of_checkpointing(tmp_path, tiny_llama, capsys,
                                                                               monkeypatch):
    """Every Trainer gets the EfficiencyCallback; with gradient checkpointing switched on, its cost is measured."""
    from datasets import Dataset

    from course_utils.core import efficiency, peaks
    from course_utils.core.trl_compat import SFTTrainer, sft_config

    monkeypatch.setattr(efficiency, "_in_ipython", lambda: None)
    monkeypatch.setattr(peaks, "machine_peaks", lambda device="cpu", measure=None: {"fp32": 1e11, "bf16": 1e11})
    ds = Dataset.from_dict({"input_ids": [[i % 60, (i + 1) % 60, (i + 2) % 60, (i + 3) % 60] for i in range(8)]})
    args = sft_config(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, max_length=8,
                      disable_tqdm=True, gradient_checkpointing=True)
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 61, "<unk>": 60},
                                                                               unk_token="<unk>")),
                                  pad_token="<pad>", unk_token="<unk>", eos_token="<pad>")
    SFTTrainer(model=tiny_llama, args=args, train_dataset=ds, processing_class=tok).train()
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("efficiency:")]
    assert len(lines) == 1 and "tokens/s" in lines[0] and "MFU" in lines[0]
    assert "gradient checkpointing on: forward+backward" in lines[0], lines[0]
