"""The preflight with faked hardware: every answer comes from monkeypatched runtime/torch functions or fake Facts."""

import pytest
import torch

from course_utils.core import runtime
from course_utils.lessons import preflight as P
from course_utils.lessons.memory import PHI3_MINI, memory_breakdown

GiB = 2**30
XEON_AMX = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
OLD_LAPTOP = "model name\t: Intel(R) Core(TM) i5-8250U CPU @ 1.60GHz\nflags\t\t: fpu sse2 avx avx2 fma\n"


@pytest.fixture(autouse=True)
def no_profile_env(monkeypatch):
    """Tests decide the profile; `make unit` sets COURSE_PROFILE=cpu, the rehearsal COURSE_REHEARSAL=1."""
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    monkeypatch.delenv("COURSE_REHEARSAL", raising=False)


def cpu_facts(free_gib=20.0, cpuinfo=OLD_LAPTOP, cores=2):
    model, flags = P.parse_cpuinfo(cpuinfo)
    return P.Facts(cpu_model=model, cpu_flags=flags, cores=cores, ram_total=int(32 * GiB),
                   ram_free=int(free_gib * GiB))


def fake_gpu(monkeypatch, name, capability, total_gib, free_gib=None):
    """A CUDA GPU as torch and runtime would report it."""
    free_gib = total_gib if free_gib is None else free_gib
    monkeypatch.setattr(runtime, "_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: name)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (int(free_gib * GiB), int(total_gib * GiB)))


def no_gpu(monkeypatch):
    monkeypatch.setattr(runtime, "_cuda_available", lambda: False)


# --------------------------------------------------------------------------- facts

def test_parse_cpuinfo_reads_model_and_flags():
    model, flags = P.parse_cpuinfo(XEON_AMX)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert {"avx2", "avx512_bf16", "amx_bf16", "amx_tile"} <= flags
    arm_model, arm_flags = P.parse_cpuinfo("processor\t: 0\nFeatures\t: fp asimd bf16 sve\n")
    assert arm_model == "" and "bf16" in arm_flags


def test_probe_reads_a_t4_through_runtime_and_torch(monkeypatch):
    fake_gpu(monkeypatch, "Tesla T4", (7, 5), 15.0, 14.6)
    f = P.probe(cpuinfo=OLD_LAPTOP)
    assert (f.gpu_name, f.capability) == ("Tesla T4", (7, 5))
    assert f.vram_total == 15 * GiB and f.vram_free == int(14.6 * GiB)
    assert f.cpu_model.startswith("Intel(R) Core(TM) i5") and f.avx2 and not f.avx512_bf16
    assert f.cores >= 1 and 0 < f.ram_free <= f.ram_total


def test_probe_without_gpu_reads_no_vram(monkeypatch):
    no_gpu(monkeypatch)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: pytest.fail("no GPU: VRAM must not be asked"))
    f = P.probe(cpuinfo=XEON_AMX)
    assert f.gpu_name is None and f.capability is None and f.vram_free is None
    assert f.amx and f.fast_cpu_bf16


def test_probe_in_the_rehearsal_reports_the_simulated_t4(monkeypatch):
    monkeypatch.setenv("COURSE_REHEARSAL", "1")
    no_gpu(monkeypatch)
    f = P.probe(cpuinfo="")
    assert f.simulated_gpu and f.capability == (7, 5) and f.vram_free == P.SIM_VRAM_BYTES


def test_cgroup_limit_caps_free_ram(monkeypatch):
    files = {"/sys/fs/cgroup/memory.max": "4294967296\n", "/sys/fs/cgroup/memory.current": "3221225472\n",
             "/sys/fs/cgroup/memory.stat": "anon 2147483648\ninactive_file 1073741824\n"}
    monkeypatch.setattr(P, "_read", files.get)
    total, free = P._cgroup_free(64 * GiB, 60 * GiB)   # a 64 GiB host, a 4 GiB container using 2 GiB
    assert (total, free) == (4 * GiB, 2 * GiB)
    monkeypatch.setattr(P, "_read", {"/sys/fs/cgroup/memory.max": "max\n"}.get)
    assert P._cgroup_free(64 * GiB, 60 * GiB) == (64 * GiB, 60 * GiB)   # no limit


# --------------------------------------------------------------------------- the course's choices

def test_t4_uses_fp16_and_fits_the_nb07_qlora(monkeypatch):
    fake_gpu(monkeypatch, "Tesla T4", (7, 5), 15.0)
    r = P.preflight(P.probe(cpuinfo=OLD_LAPTOP))
    assert (r.profile, r.device, r.dtype, r.memory) == ("gpu", "cuda", "fp16", "VRAM")
    assert r.profile_reason == "a CUDA GPU is present"
    nb07 = r.fits["07_qlora_unsloth_translation"]
    assert nb07.model == PHI3_MINI.name and nb07.status in ("fits", "tight"), nb07
    assert not r.warnings
    # the QLoRA training step itself is the course's arithmetic for Phi-3-mini at batch 2 × 2048 tokens
    train = P.notebook_steps(runtime.settings("gpu"), 2)["07_qlora_unsloth_translation"][0]
    assert train.nbytes() == memory_breakdown(PHI3_MINI, "qlora", batch=2, seq_len=2048, r=16, weight_bytes=2,
                                              checkpointing=True)["total"]
    assert train.nbytes() < nb07.need < 15 * GiB


def test_a100_uses_bf16(monkeypatch):
    fake_gpu(monkeypatch, "NVIDIA A100-SXM4-40GB", (8, 0), 40.0)
    r = P.preflight(P.probe(cpuinfo=XEON_AMX))
    assert (r.dtype, r.device) == ("bf16", "cuda")
    assert all(f.status == "fits" for f in r.fits.values())
    assert "bf16 (this GPU has native bf16" in P.format_preflight(r)


def test_a_gpu_too_small_for_nb07_warns(monkeypatch):
    fake_gpu(monkeypatch, "Quadro P2000", (6, 1), 5.0)
    r = P.preflight(P.probe(cpuinfo=OLD_LAPTOP))
    assert r.dtype == "fp16"
    assert r.fits["07_qlora_unsloth_translation"].status == "does not fit"
    assert any(w.startswith("⚠️ 07_qlora_unsloth_translation would run out of memory") and "VRAM" in w
               for w in r.warnings)


def test_cpu_profile_uses_fp32_and_the_embedded_model(monkeypatch):
    no_gpu(monkeypatch)
    r = P.preflight(cpu_facts())
    assert (r.profile, r.device, r.dtype, r.memory) == ("cpu", "cpu", "fp32", "RAM")
    assert r.sizes == {k: getattr(runtime.settings("cpu"), k)
                       for k in ("batch_size", "seq_len", "steps", "eval_size", "max_new_tokens")}
    assert {f.model for f in r.fits.values()} <= {"SmolLM2-135M", "SmolLM2-135M student"}
    assert set(r.fits) == {f"{n}" for n in P.notebook_steps(runtime.settings("cpu"), 4)}
    assert all(f.status == "fits" for f in r.fits.values()) and not r.warnings


def test_every_course_notebook_has_a_plan():
    from course_utils.tools.course import COURSE_MAP

    for profile in ("cpu", "gpu"):
        plans = P.notebook_steps(runtime.settings(profile), 2)
        assert set(plans) == {lesson.file.removesuffix(".ipynb") for lesson in COURSE_MAP}


@pytest.mark.parametrize("free_gib", [4.0, 2.0])
def test_a_cpu_with_little_free_ram_warns_for_the_notebooks_that_need_more(monkeypatch, capsys, free_gib):
    no_gpu(monkeypatch)
    r = P.print_preflight(cpu_facts(free_gib=free_gib))
    out = capsys.readouterr().out
    short = {nb for nb, f in r.fits.items() if f.need > free_gib * GiB}
    tight = {nb for nb, f in r.fits.items() if P.TIGHT_SHARE * free_gib * GiB < f.need <= free_gib * GiB}
    assert {nb for nb, f in r.fits.items() if f.status == "does not fit"} == short
    assert {nb for nb, f in r.fits.items() if f.status == "tight"} == tight
    for nb in short:
        assert f"⚠️ {nb} would run out of memory" in out and f"{free_gib:.1f} GiB RAM is free" in out
    for nb in set(r.fits) - short:
        assert f"⚠️ {nb} would" not in out
    line = P.preflight_line(facts=cpu_facts(free_gib=free_gib))
    assert line.endswith("every notebook fits") == (not short)
    needs = {nb: round(f.need / GiB, 2) for nb, f in r.fits.items()}
    assert "00_setup_and_tour" not in short | tight, needs          # notebook 00 loads and chats: ≈ 1.6 GiB
    if free_gib == 4.0:   # full fine-tuning in fp32 with copies held (01, 04) needs about 4 GiB
        assert {"01_fine_tuning_basics", "04_quantization"} <= short | tight, needs
    else:
        assert len(short) >= 7, needs


def test_cpu_without_avx512_bf16_says_so(monkeypatch, capsys):
    no_gpu(monkeypatch)
    P.print_preflight(cpu_facts(cpuinfo=OLD_LAPTOP))
    out = capsys.readouterr().out
    assert "AVX2 yes · AVX512-BF16 no · AMX no" in out
    assert "fp32 (the course computes in fp32 on every CPU; this one has no fast bf16: no AVX512-BF16, no AMX)" in out


def test_cpu_with_amx_reports_it_and_still_uses_fp32(monkeypatch, capsys):
    no_gpu(monkeypatch)
    r = P.print_preflight(cpu_facts(cpuinfo=XEON_AMX))
    out = capsys.readouterr().out
    assert r.dtype == "fp32" and "AVX512-BF16 yes · AMX yes" in out and "this one has fast bf16: AVX512-BF16 + AMX)" in out


# Peak RSS of each notebook in the cpu profile (GiB): a thread in the kernel sampled VmRSS and VmHWM every 20 ms
# (course_utils.core.train resets VmHWM, so the kernel's ru_maxrss alone undercounts); notebooks as of 2026-12-01, on the
# course's 2-core CI machine (torch 2.13 CPU, AVX512-BF16). Re-measure when a notebook changes what it holds.
MEASURED_CPU_PEAK_GIB = {"00": 1.40, "01": 3.54, "02": 3.44, "03": 2.02, "04": 3.51, "05": 2.63, "06": 3.31,
                         "07": 3.05, "08": 4.09, "09": 1.82, "10": 2.94}


def test_cpu_estimates_agree_with_measured_peaks(monkeypatch):
    no_gpu(monkeypatch)
    r = P.preflight(cpu_facts(), profile="cpu")
    ratios = {nb[:2]: f.need / GiB / MEASURED_CPU_PEAK_GIB[nb[:2]] for nb, f in r.fits.items()}
    assert set(ratios) == set(MEASURED_CPU_PEAK_GIB)
    assert all(0.85 <= x <= 1.25 for x in ratios.values()), {k: round(v, 2) for k, v in ratios.items()}


# --------------------------------------------------------------------------- the one-line version

def test_preflight_line_for_one_notebook(monkeypatch):
    no_gpu(monkeypatch)
    facts = cpu_facts(free_gib=22.9)
    line = P.preflight_line("00", facts=facts)
    assert line.startswith("cpu profile · 2 cores, 22.9 GiB free RAM · fp32 · notebook 00 needs ≈ ")
    assert line.endswith(": fits") and "\n" not in line
    assert P.preflight_line("00_setup_and_tour.ipynb", facts=facts) == line
    assert P.preflight_line(facts=facts).endswith("every notebook fits")
    with pytest.raises(KeyError, match="not one of the course's notebooks"):
        P.preflight_line("42", facts=facts)


def test_preflight_line_warns_on_a_small_gpu(monkeypatch):
    fake_gpu(monkeypatch, "Quadro P2000", (6, 1), 5.0)
    facts = P.probe(cpuinfo=OLD_LAPTOP)
    line = P.preflight_line("07", facts=facts)
    first, warning = line.split("\n")
    assert first.startswith("gpu profile · Quadro P2000 (sm61), 5.0 GiB free VRAM · fp16 · notebook 07 needs ≈ ")
    assert first.endswith("does not fit") and warning.startswith("⚠️ 07_qlora_unsloth_translation")
    assert "07" in P.preflight_line(facts=facts)


def test_print_preflight_on_this_machine(capsys):
    """The real probe runs (whatever this machine is) and prints every notebook."""
    r = P.print_preflight()
    out = capsys.readouterr().out
    assert out.startswith("Preflight — what this machine has") and len(r.fits) == 11
    for nb in r.fits:
        assert nb in out


def test_the_rehearsal_estimates_the_run_it_rehearses(monkeypatch):
    """Stand-in models and capped sizes on a CPU; the memory is the real gpu run's on the simulated T4."""
    monkeypatch.setenv("COURSE_REHEARSAL", "1")
    no_gpu(monkeypatch)
    import course_utils.core.rehearsal as rehearsal

    monkeypatch.setattr(rehearsal, "activate", lambda: None)   # no simulated-GPU patches in this test process
    r = P.preflight(P.probe(cpuinfo=OLD_LAPTOP), profile="gpu")
    assert (r.device, r.dtype, r.memory, r.rehearsal) == ("cuda", "fp16", "VRAM", True)
    assert r.sizes["batch_size"] == runtime.REHEARSAL_CAPS["batch_size"]
    assert r.fits["07_qlora_unsloth_translation"].status in ("fits", "tight")
    monkeypatch.delenv("COURSE_REHEARSAL")
    fake_gpu(monkeypatch, "Tesla T4", (7, 5), 14.7)
    real = P.preflight(P.probe(cpuinfo=OLD_LAPTOP), profile="gpu")   # a real T4, uncapped sizes
    assert {nb: f.need for nb, f in real.fits.items()} == {nb: f.need for nb, f in r.fits.items()}
    assert "the rehearsal's caps" in P.format_preflight(r)


def test_print_env_reports_versions(capsys):
    report = P.print_env()
    out = capsys.readouterr().out
    assert report["profile"] in out and report["torch"] != "not installed" and "transformers" in out
    assert "preflight" in out
