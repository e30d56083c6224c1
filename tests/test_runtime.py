import os

import pytest

from course_utils.core import runtime


def test_profile_override_and_validation(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "gpu")
    assert runtime.profile_name() == "gpu"
    monkeypatch.setenv("COURSE_PROFILE", "tpu")
    with pytest.raises(ValueError, match="COURSE_PROFILE='tpu'"):
        runtime.profile_name()


def test_default_profile_follows_cuda(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    monkeypatch.setattr(runtime, "_cuda_available", lambda: False)
    assert runtime.profile_name() == "cpu"
    monkeypatch.setattr(runtime, "_cuda_available", lambda: True)
    assert runtime.profile_name() == "gpu"


def test_settings_per_profile():
    cpu, gpu = runtime.settings("cpu"), runtime.settings("gpu")
    assert cpu.device == "cpu" and cpu.steps < gpu.steps and cpu.seq_len < gpu.seq_len
    with pytest.raises(ValueError, match="profile 'x'"):
        runtime.settings("x")


def test_offline_defaults_in_cpu_profile(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "cpu")
    for var in runtime.OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    runtime.apply_offline_defaults()
    assert runtime.is_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # a user's explicit choice is kept
    runtime.apply_offline_defaults()
    assert not runtime.is_offline()


def test_colab_detection(monkeypatch):
    import sys
    import types

    monkeypatch.delitem(sys.modules, "google.colab", raising=False)   # the same answer wherever the test runs
    assert not runtime.in_colab()
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert runtime.in_colab()


# --------------------------------------------------------------------------- the one dtype decision

@pytest.mark.parametrize("capability, dtype", [((7, 5), "float16"), ((7, 0), "float16"), ((8, 0), "bfloat16"),
                                               ((8, 6), "bfloat16"), ((9, 0), "bfloat16")])
def test_gpu_dtype_follows_compute_capability(monkeypatch, capability, dtype):
    import torch

    monkeypatch.delenv("COURSE_REHEARSAL", raising=False)
    monkeypatch.setattr(runtime, "_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # a T4 says True (emulation)
    assert runtime.compute_dtype("cuda") == getattr(torch, dtype)
    flags = runtime.precision_flags("cuda")
    assert flags == {"bf16": dtype == "bfloat16", "fp16": dtype == "float16"}
    assert runtime.compute_dtype("cpu") == torch.float32 and runtime.precision_flags("cpu") == {"bf16": False,
                                                                                              "fp16": False}


def test_the_profile_decides_not_the_machine(monkeypatch):
    """COURSE_PROFILE=cpu on a GPU machine: CPU device, fp32, and TRL's config without mixed precision."""
    monkeypatch.setenv("COURSE_PROFILE", "cpu")
    monkeypatch.delenv("COURSE_REHEARSAL", raising=False)
    monkeypatch.setattr(runtime, "_cuda_available", lambda: True)
    s = runtime.settings()
    assert s.device == "cpu" and not s.rehearsal
    from course_utils.core.trl_compat import sft_config

    args = sft_config(output_dir="/tmp/course-test-sft", max_steps=1)
    assert args.use_cpu and not args.bf16 and not args.fp16


def test_rehearsal_settings_are_the_gpu_branch_capped(monkeypatch):
    monkeypatch.setenv("COURSE_REHEARSAL", "1")
    monkeypatch.setattr("course_utils.core.rehearsal.activate", lambda: False)   # no global patching in this process
    s = runtime.settings("gpu")
    assert s.device == "cuda" and s.rehearsal
    assert all(getattr(s, k) <= v for k, v in runtime.REHEARSAL_CAPS.items())
    assert runtime.cuda_capability() == (7, 5) and str(runtime.compute_dtype("cuda")) == "torch.float16"
    assert runtime.capped(60, 4) == 4
    monkeypatch.delenv("COURSE_REHEARSAL")
    assert runtime.capped(60, 4) == 60


def test_check_real_asserts_outside_the_rehearsal_only(monkeypatch, capsys):
    monkeypatch.delenv("COURSE_REHEARSAL", raising=False)
    with pytest.raises(AssertionError, match="answers in Korean"):
        runtime.check_real(False, "answers in Korean")
    monkeypatch.setenv("COURSE_REHEARSAL", "1")
    assert runtime.check_real(False, "answers in Korean") is False
    assert "not asserted" in capsys.readouterr().out


def test_to_device_copies_batches_and_to_numpy_handles_16_bit():
    import torch
    from transformers import BatchEncoding

    batch = BatchEncoding({"input_ids": torch.ones(1, 3, dtype=torch.long)})
    moved = runtime.to_device(batch, "cpu")
    assert moved is not batch and isinstance(moved, BatchEncoding) and moved["input_ids"].shape == (1, 3)
    nested = runtime.to_device({"a": [torch.zeros(2)], "n": 3}, torch.nn.Linear(2, 2))
    assert nested["n"] == 3 and nested["a"][0].device.type == "cpu"
    assert runtime.to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype.name == "float32"
    with pytest.raises(TypeError, match="cannot move a str"):
        runtime.to_device("text", "cpu")


def test_import_has_no_side_effects():
    """``import course_utils`` (and its core modules) leaves the environment alone and does not import torch;
    the offline defaults are applied by ``settings()`` (every notebook's setup cell) and the model loaders."""
    import subprocess
    import sys

    code = ("import os, sys; before = dict(os.environ); import course_utils, course_utils.core.runtime, course_utils.core.models; "
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items()); "
            "assert 'torch' not in sys.modules; course_utils.core.runtime.settings('cpu'); "
            "assert os.environ['HF_HUB_OFFLINE'] == '1'")
    env = {k: v for k, v in os.environ.items() if k not in runtime.OFFLINE_VARS}
    env["COURSE_PROFILE"] = "cpu"
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def test_env_report_says_whether_bf16_autocast_was_forced_or_measured(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "cpu")
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "1")
    assert runtime.env_report()["dtype"] == "float32 weights, bf16 autocast (forced by COURSE_CPU_BF16)"
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "0")
    assert runtime.env_report()["dtype"] == "float32"
