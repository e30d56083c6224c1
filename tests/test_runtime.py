import pytest

from course_utils import runtime


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

    assert not runtime.in_colab()
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert runtime.in_colab()


def test_print_env_reports_versions(capsys):
    report = runtime.print_env()
    out = capsys.readouterr().out
    assert report["profile"] in out and report["torch"] != "not installed" and "transformers" in out
