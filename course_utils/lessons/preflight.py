"""Preflight: what this machine has, what the course will use on it, and whether each notebook fits.

Three parts, each testable on its own: ``probe()`` reads the hardware into ``Facts`` (tests pass fake ones),
``preflight()`` turns facts into a ``Report`` — the profile, device and dtype come from ``course_utils.core.runtime``
(the course's one decision), each notebook's memory from ``course_utils.lessons.memory.memory_breakdown`` (the course's
own arithmetic, notebook 01) — and ``print_preflight()`` / ``preflight_line()`` say it in words. ``print_env()``,
the first cell of every notebook, prints the environment report with this notebook's preflight line.

    >>> laptop = Facts("Example CPU", cores=2, ram_total=32 * GiB, ram_free=20 * GiB)   # probe(): this machine's
    >>> print(preflight_line("07", facts=laptop, profile="cpu"))     # a setup cell: one line for notebook 07
    cpu profile · 2 cores, 20.0 GiB free RAM · fp32 · notebook 07 needs ≈ 3.4 GiB: fits

Example::

    print_preflight()               # notebook 00: this machine, the profile, and every notebook's memory

A notebook's need is the peak of its heaviest step (the weights of every model it holds at that moment, plus
the training memory of the one it trains), plus the Python process on a CPU. It is an estimate from the
formulas, not a measurement; on the cpu profile it was checked against each notebook's peak RSS (see
``CPU_PROCESS_BYTES``).

Why one module of ~520 lines: most of it is the per-notebook table of heaviest steps, data that belongs
together with the one formula that prices it.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field, replace

from course_utils.core import runtime
from course_utils.lessons.memory import PHI3_MINI, ModelShape, gib, memory_breakdown

GiB = 2**30

# Shapes from the models' config.json on the Hugging Face hub (HuggingFaceTB/SmolLM2-135M-Instruct,
# HuggingFaceTB/SmolLM2-360M-Instruct; the embedded model is the 135M one). Written out: the cpu profile is offline.
SMOLLM2_135M = ModelShape("SmolLM2-135M", layers=30, hidden=576, intermediate=1536, heads=9, kv_dim=3 * 64,
                          vocab=49152, tied=True)
SMOLLM2_360M = ModelShape("SmolLM2-360M", layers=32, hidden=960, intermediate=2560, heads=15, kv_dim=5 * 64,
                          vocab=49152, tied=True)
# model id (course_utils.core.models.REGISTRY) → shape. The roles the notebooks' peaks depend on; opt-125m and
# flan-t5-small (notebook 08's side sections) are smaller than the SmolLM2 copies that notebook holds.
SHAPES = {
    "embedded:SmolLM2-135M-Instruct": SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-135M-Instruct": SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-360M-Instruct": SMOLLM2_360M,
    "unsloth/Phi-3-mini-4k-instruct-bnb-4bit": PHI3_MINI,
    "microsoft/Phi-3-mini-4k-instruct": PHI3_MINI,
}

# Peak RSS of a kernel that imported torch, transformers, peft, trl, datasets, matplotlib and pandas, before any
# model: 0.50 GiB measured on this course's CI machine (Linux, torch 2.13 CPU). Added to every CPU need.
CPU_PROCESS_BYTES = 0.5 * GiB
# On a CPU the tensors are not all: glibc's heap keeps blocks that were freed, trainers keep logits and metrics.
# Each cpu-profile notebook's peak RSS (sampled every 20 ms, 2026-12-01), less CPU_PROCESS_BYTES, was 0.90-1.19x
# the tensor arithmetic below; the estimates came out at 0.94-1.15x the measured peaks (tests/test_preflight.py).
CPU_HEAP_FACTOR = 1.1
# A GPU's allocator keeps freed blocks cached and cuBLAS keeps a workspace: a need above this share of the free
# VRAM is reported "tight" (it may still run; a second model or a rerun of a cell can tip it over).
TIGHT_SHARE = 0.9
# The rehearsal's simulated T4 (runtime.SIM_GPU_NAME): what torch reports free on a fresh Colab T4 runtime.
SIM_VRAM_BYTES = int(14.7 * GiB)

# --------------------------------------------------------------------------- facts (the only hardware reads)

@dataclass(frozen=True)
class Facts:
    """What the machine has. ``probe()`` reads them; tests build fake ones.

    ram_free: memory a new allocation can get without swapping (psutil's ``available``, capped by a container's
    cgroup limit); vram_*: GPU 0 as ``torch.cuda.mem_get_info`` reports it (None without a GPU).
    """

    cpu_model: str
    cpu_flags: frozenset = field(default_factory=frozenset)
    cores: int = 1
    ram_total: int = 0
    ram_free: int = 0
    gpu_name: str | None = None
    capability: tuple[int, int] | None = None
    vram_total: int | None = None
    vram_free: int | None = None
    simulated_gpu: bool = False

    @property
    def avx2(self) -> bool:
        return "avx2" in self.cpu_flags

    @property
    def avx512_bf16(self) -> bool:
        return "avx512_bf16" in self.cpu_flags

    @property
    def amx(self) -> bool:
        """Intel AMX tiles with bf16 (Sapphire Rapids and newer)."""
        return "amx_bf16" in self.cpu_flags and "amx_tile" in self.cpu_flags

    @property
    def fast_cpu_bf16(self) -> bool:
        """bf16 matrix instructions on the CPU (AVX512-BF16 or AMX); without them bf16 is emulated and slow."""
        return self.avx512_bf16 or self.amx


def parse_cpuinfo(text: str) -> tuple[str, frozenset]:
    """(model name, flags) from the text of ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``)."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _cgroup_free(total: int, free: int) -> tuple[int, int]:
    """(total, free) capped by a container's memory limit (cgroup v2, else v1); unchanged without one."""
    for limit_f, usage_f, stat_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current",
                                      "/sys/fs/cgroup/memory.stat"),
                                     ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                      "/sys/fs/cgroup/memory/memory.usage_in_bytes",
                                      "/sys/fs/cgroup/memory/memory.stat")):
        limit, usage = _read(limit_f), _read(usage_f)
        if not limit or not usage or not limit.strip().isdigit() or not usage.strip().isdigit():
            continue
        limit_b, used = int(limit), int(usage)
        if limit_b >= total:  # "no limit" is a huge number in v1
            return total, free
        stat = dict(ln.split()[:2] for ln in (_read(stat_f) or "").splitlines() if len(ln.split()) >= 2)
        used -= int(stat.get("inactive_file", stat.get("total_inactive_file", 0)))  # page cache it can drop
        return limit_b, max(0, min(free, limit_b - used))
    return total, free


def _ram() -> tuple[int, int]:
    try:
        import psutil

        vm = psutil.virtual_memory()
        total, free = int(vm.total), int(vm.available)
    except ImportError:  # pragma: no cover - psutil is in the course extra; /proc/meminfo on a bare Linux
        info = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in (_read("/proc/meminfo") or "").splitlines()
                if len(ln.split()) >= 2}
        total, free = info.get("MemTotal", 0), info.get("MemAvailable", info.get("MemFree", 0))
    return _cgroup_free(total, free)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use (a container's CPU set)
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def probe(cpuinfo: str | None = None) -> Facts:
    """Read this machine's facts.

    GPU answers come through ``course_utils.core.runtime`` (the rehearsal's simulated T4 included) and
    ``torch.cuda.mem_get_info``, so tests fake them by monkeypatching those."""
    text = cpuinfo if cpuinfo is not None else (_read("/proc/cpuinfo") or "")
    model, flags = parse_cpuinfo(text)
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    ram_total, ram_free = _ram()
    name, cap = runtime.gpu_name(), runtime.cuda_capability()
    vram_total = vram_free = None
    simulated = runtime.rehearsing()
    if simulated:
        vram_total = vram_free = SIM_VRAM_BYTES
    elif cap is not None:
        import torch

        vram_free, vram_total = (int(x) for x in torch.cuda.mem_get_info(0))
    return Facts(cpu_model=model, cpu_flags=flags, cores=_cores(), ram_total=ram_total, ram_free=ram_free,
                 gpu_name=name, capability=cap, vram_total=vram_total, vram_free=vram_free, simulated_gpu=simulated)


# --------------------------------------------------------------------------- each notebook's heaviest step

@dataclass(frozen=True)
class Step:
    """One moment of a notebook: a model trained, run, held or loaded, with the other models it holds.

    ``shape`` trained with ``method`` (``full``, ``lora``, ``qlora``), run (``inference``), held
    (``weights``) or being loaded on a CPU (``load``: the memory-mapped file's pages and the copy
    ``models.load_model`` makes), on a batch of ``batch × seq_len`` tokens, while the models in ``resident``
    are held too.

    weight_bytes: bytes per weight of the trained model (and of everything not quantized in QLoRA);
    resident: (shape, method, weight_bytes) of each other model alive meanwhile, counted by its weights.
    """

    what: str
    shape: ModelShape
    method: str
    weight_bytes: int
    batch: int
    seq_len: int
    r: int = 16
    checkpointing: bool = False
    resident: tuple = ()

    def nbytes(self) -> float:
        if self.method in ("load", "weights"):  # a model held; "load" on a CPU: its file's pages and the copy
            own = (2 if self.method == "load" else 1) * self.shape.params * self.weight_bytes
        elif self.method == "inference":
            s = self.shape
            kv_cache = 2 * s.layers * s.kv_dim * self.weight_bytes
            own = s.params * self.weight_bytes + self.batch * self.seq_len * (kv_cache + 4 * s.vocab)
        else:
            own = memory_breakdown(self.shape, self.method, batch=self.batch, seq_len=self.seq_len, r=self.r,
                                   weight_bytes=self.weight_bytes, checkpointing=self.checkpointing)["total"]
        return own + sum(weights_bytes(*m) for m in self.resident)


def weights_bytes(shape: ModelShape, method: str = "full", weight_bytes: int = 4) -> float:
    """Bytes of a held model's weights.

    All in ``weight_bytes`` (full), or NF4 + adapters (qlora), or base + adapters (lora); ``linear``: one
    tensor per projection weight (a mask or a snapshot of them, notebook 05)."""
    if method == "linear":
        return float(shape.linear_params * weight_bytes)
    return memory_breakdown(shape, method, batch=0, weight_bytes=weight_bytes)["weights"]


def _shape(role: str, profile: str) -> ModelShape:
    from course_utils.core.models import model_id

    name = model_id(role, profile)
    if name not in SHAPES:
        raise KeyError(f"preflight has no shape for {name!r} (role {role!r}, profile {profile!r}): add it to SHAPES")
    return SHAPES[name]


def notebook_steps(s: runtime.Settings, weight_bytes: int) -> dict[str, list[Step]]:
    """The memory-heavy steps of each notebook in the profile of ``s``; ``weight_bytes``: the compute dtype's.

    Sizes mirror the notebooks' config cells (``S`` = ``settings()``); lessons that pin fp32 use 4 bytes. On a
    CPU each notebook also has its first load, which briefly holds the model twice (``models._materialize``).
    """
    p, b, t = s.profile, s.batch_size, s.seq_len
    chat, teacher, translator = _shape("chat", p), _shape("teacher", p), _shape("translator", p)
    fp32 = ("full", 4)
    # notebook 06's student: the teacher with STUDENT_PRUNE = 0.5 of its MLP channels removed
    student = ModelShape(f"{teacher.name} student", teacher.layers, teacher.hidden, teacher.intermediate // 2,
                         teacher.heads, teacher.kv_dim, teacher.vocab, teacher.tied)
    seq07, batch07 = (2048, 2) if p == "gpu" else (128, 4)  # notebook 07's own SIZES
    cpu = s.device == "cpu"
    load = "load" if cpu else "weights"
    four_bit = ((translator, "qlora", weight_bytes),) * 2  # nb07's trained model and the reloaded fresh base
    plans = {
        "00_setup_and_tour": [
            Step("generate a reply", chat, "inference", weight_bytes, 1, t + s.max_new_tokens)],
        "01_fine_tuning_basics": [
            Step("full fine-tuning of a copy in fp32, base + 1 copy held", chat, "full", 4,
                 b, min(t, 40), resident=((chat, *fp32), (chat, *fp32)))],
        "02_peft_methods": [
            Step("full fine-tuning of a copy in fp32, base held", chat, "full", 4, b, min(t, 32),
                 resident=((chat, *fp32),))],
        "03_lora_math": [
            Step("LoRA r=8 on a copy in fp32, the model held", chat, "lora", 4, b, t, r=8,
                 resident=((chat, *fp32),))],
        "04_quantization": [
            Step("QAT (full fine-tuning in fp32), 2 copies held", chat, "full", 4, b,
                 t // 2, resident=((chat, *fp32), (chat, *fp32)))],
        "05_pruning": [
            # held meanwhile: the global masks of section 2, the sweep's snapshot of the weights, the 50 % masks
            Step("LoRA r=8 recovery after pruning, masks + a weight snapshot held", chat, "lora", weight_bytes, b, t,
                 r=8, resident=((chat, "linear", weight_bytes),) * 3)],
        "06_distillation": [
            Step("sequence-level KD of the student in fp32, teacher + 2 students held",
                 student, "full", 4, max(1, b // 2), 2 * t, resident=((teacher, *fp32), (student, *fp32),
                                                                      (student, *fp32)))],
        "07_qlora_unsloth_translation": [
            Step("QLoRA r=16 training, gradient checkpointing", translator, "qlora", weight_bytes,
                 batch07, seq07, checkpointing=True),
            # qlora.export_merged → merge_16bit: the unquantized base loaded in the compute dtype and merged (cast
            # to 16 bits on a CPU), while the trained and the reloaded 4-bit models are still held
            Step("16-bit export (merge), two 4-bit models held", translator, load, weight_bytes, 0, 0,
                 resident=four_bit + (((translator, "full", 2),) if cpu else ())),
            # the merged model read back (LOGITS_DTYPE: its 16-bit file as is on a GPU, fp32 on a CPU), then the
            # 16-bit base + adapter as the reference, one at a time. A GPU's allocator reuses what `del` freed; a
            # CPU's heap keeps it, so there the export's base, the merged model and the reference add up.
            Step("merged model read back, two 4-bit models held", translator, load,
                 weight_bytes if not cpu else 4, 0, 0,
                 resident=four_bit + (((translator, "full", 4), (translator, "full", 2), (translator, "full", 4))
                                      if cpu else ()))],
        "08_instruction_tuning": [
            # nothing is freed: by the recipe section four SmolLM2 copies are held (co, base, fs, hi) while a
            # fifth model (causal_lm: the embedded one on a CPU, opt-125m on a GPU) trains
            Step("LoRA SFT, 4 other copies held", chat, "lora",
                 weight_bytes, b, t + 32, r=8, resident=((chat, "full", weight_bytes),) * 4)],
        "09_capstone_tax_chatbot": [
            Step("a LoRA r=8 training round", chat, "lora", weight_bytes,
                 b, 2 * t, r=8)],
        "10_scaling_out": [
            Step("full fine-tuning steps in fp32", chat, "full", 4, 2, 16)],
    }
    if cpu:
        first = {"06_distillation": (teacher, 4), "07_qlora_unsloth_translation": (translator, weight_bytes)}
        for nb, steps in plans.items():
            shape, nbytes = first.get(nb, (chat, 4 if steps[0].weight_bytes == 4 else weight_bytes))
            steps.insert(0, Step("loading: file pages + the copy in RAM", shape, "load", nbytes,
                                 0, 0))
    return plans


# --------------------------------------------------------------------------- the report

@dataclass(frozen=True)
class Fit:
    """One notebook against the memory it will use (RAM on a CPU, VRAM on a GPU)."""

    notebook: str
    model: str
    step: str
    need: float
    free: float | None
    memory: str

    @property
    def status(self) -> str:
        """``fits``, ``tight`` (above TIGHT_SHARE of what is free), ``does not fit``, or ``unknown``."""
        if self.free is None:
            return "unknown"
        if self.need > self.free:
            return "does not fit"
        return "tight" if self.need > TIGHT_SHARE * self.free else "fits"

    @property
    def warning(self) -> str | None:
        if self.status != "does not fit":
            return None
        return (f"⚠️ {self.notebook} would run out of memory: it needs ≈ {gib(self.need):.1f} GiB "
                f"({self.step}) and {gib(self.free):.1f} GiB {self.memory} is free. "
                + _advice(self.memory))


def _advice(memory: str) -> str:
    if memory == "VRAM":
        return ("Free the GPU first (Runtime → Restart session), or pick a larger GPU; "
                "nb07 is sized for a 16 GB T4.")
    return "Close other programs or notebooks (each kernel holds its models), or use a machine with more RAM."


@dataclass(frozen=True)
class Report:
    """What ``preflight()`` found: the machine, the course's choices for it, and each notebook's fit."""

    facts: Facts
    profile: str
    profile_reason: str
    device: str
    dtype: str
    rehearsal: bool
    sizes: dict
    fits: dict

    @property
    def memory(self) -> str:
        return "VRAM" if self.device == "cuda" else "RAM"

    @property
    def free(self) -> float | None:
        return self.facts.vram_free if self.device == "cuda" else self.facts.ram_free

    @property
    def warnings(self) -> list[str]:
        return [f.warning for f in self.fits.values() if f.warning]


def _dtype_name(dtype) -> str:
    return {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(dtype), str(dtype))


def preflight(facts: Facts | None = None, profile: str | None = None) -> Report:
    """The report for ``facts`` (default: ``probe()``) in ``profile`` (default: the active one)."""
    import torch

    facts = facts or probe()
    env = os.environ.get("COURSE_PROFILE", "").strip()
    name = profile or runtime.profile_name()
    reason = ("asked for" if profile else f"COURSE_PROFILE={env}" if env
              else "a CUDA GPU is present" if name == "gpu" else "no CUDA GPU")
    s = runtime.settings(name)
    dtype = runtime.compute_dtype(s.device)
    weight_bytes = torch.empty((), dtype=dtype).element_size()
    free = facts.vram_free if s.device == "cuda" else facts.ram_free
    memory = "VRAM" if s.device == "cuda" else "RAM"
    fits = {}
    # The rehearsal caps the sizes so that a CPU finishes; the memory is estimated for the run it rehearses.
    sized = replace(s, **runtime._SIZES[name]) if s.rehearsal else s
    for notebook, steps in notebook_steps(sized, weight_bytes).items():
        peak = max(steps, key=Step.nbytes)
        need = (CPU_PROCESS_BYTES + CPU_HEAP_FACTOR * peak.nbytes()) if s.device == "cpu" else peak.nbytes()
        fits[notebook] = Fit(notebook, peak.shape.name, peak.what, need, free, memory)
    sizes = {k: getattr(s, k) for k in ("batch_size", "seq_len", "steps", "eval_size", "max_new_tokens")}
    return Report(facts, name, reason, s.device, _dtype_name(dtype), s.rehearsal, sizes, fits)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _gpu_words(f: Facts) -> str:
    if f.gpu_name is None:
        return "none"
    cap = f"sm{f.capability[0]}{f.capability[1]}" if f.capability else "sm?"
    vram = (f"{gib(f.vram_total):.1f} GiB total, {gib(f.vram_free):.1f} GiB free" if f.vram_total is not None
            else "VRAM unknown")
    return f"{f.gpu_name} · compute capability {cap} · {vram}"


def _dtype_words(r: Report) -> str:
    f = r.facts
    if r.device == "cuda":
        why = ("this GPU has native bf16: Ampere, sm80, or newer" if r.dtype == "bf16"
               else "this GPU has no fast bf16: older than Ampere, sm80")
        return f"{r.dtype} ({why})"
    units = " + ".join(n for n, ok in (("AVX512-BF16", f.avx512_bf16), ("AMX", f.amx)) if ok)
    cpu_bf16 = f"this one has fast bf16: {units}" if f.fast_cpu_bf16 else "this one has no fast bf16: no AVX512-BF16, no AMX"
    return f"{r.dtype} (the course computes in fp32 on every CPU; {cpu_bf16})"


def format_preflight(r: Report) -> str:
    """The text ``print_preflight`` prints."""
    f = r.facts
    flags = f"AVX2 {_yes(f.avx2)} · AVX512-BF16 {_yes(f.avx512_bf16)} · AMX {_yes(f.amx)}"
    lines = [
        "Preflight — what this machine has",
        f"  CPU     : {f.cpu_model} · {f.cores} cores · {flags}",
        f"  RAM     : {gib(f.ram_total):.1f} GiB total, {gib(f.ram_free):.1f} GiB free",
        f"  GPU     : {_gpu_words(f)}",
        "What the course will use",
        f"  profile : {r.profile} ({r.profile_reason}) · device {r.device}"
        + (" · rehearsal: stand-in models on a simulated GPU" if r.rehearsal else ""),
        f"  dtype   : {_dtype_words(r)}",
        "  sizes   : " + " · ".join(f"{k} {v}" for k, v in r.sizes.items())
        + (" (the rehearsal's caps; memory below is for the real gpu run)" if r.rehearsal else ""),
        "Memory per notebook (course_utils.lessons.memory.memory_breakdown, heaviest step) against "
        + (f"{gib(r.free):.1f} GiB free {r.memory}" if r.free is not None else f"{r.memory} (free unknown)"),
    ]
    width = max(map(len, r.fits))
    for nb, fit in r.fits.items():
        mark = {"fits": "fits", "tight": "tight", "does not fit": "⚠️ does not fit", "unknown": "?"}[fit.status]
        lines.append(f"  {nb:<{width}}  ≈ {gib(fit.need):5.1f} GiB  {mark:<15}  {fit.model}: {fit.step}")
    lines.extend(r.warnings)
    return "\n".join(lines)


def print_preflight(facts: Facts | None = None, profile: str | None = None) -> Report:
    """Print the preflight (notebook 00) and return the report."""
    report = preflight(facts, profile)
    print(format_preflight(report))
    return report


def _notebook_key(report: Report, notebook: str) -> str:
    stem = os.path.basename(notebook).removesuffix(".ipynb")
    matches = [nb for nb in report.fits if nb == stem or nb.split("_")[0] == stem.split("_")[0]]
    if len(matches) != 1:
        raise KeyError(f"{notebook!r} is not one of the course's notebooks {list(report.fits)}")
    return matches[0]


def preflight_line(notebook: str | None = None, facts: Facts | None = None, profile: str | None = None) -> str:
    """One line for a setup cell: the machine, the dtype, and whether ``notebook`` ("07", or its file name) fits.

    Without a notebook the line names the notebooks that would not fit, if any.

    >>> small = Facts("Example CPU", cores=2, ram_total=8 * GiB, ram_free=2 * GiB)
    >>> preflight_line(facts=small, profile="cpu")
    'cpu profile · 2 cores, 2.0 GiB free RAM · fp32 · ⚠️ would run out of memory: notebooks 01, 02, 03, 04, 05, 06, 07, 08, 10 (print_preflight() says why)'
    """
    r = preflight(facts, profile)
    f = r.facts
    if r.device == "cuda":
        cap = f"sm{f.capability[0]}{f.capability[1]}" if f.capability else "sm?"
        machine = f"{f.gpu_name} ({cap}), " + (f"{gib(r.free):.1f} GiB free VRAM" if r.free is not None
                                               else "free VRAM unknown")
    else:
        machine = f"{f.cores} cores, {gib(f.ram_free):.1f} GiB free RAM"
    head = f"{r.profile} profile · {machine} · {r.dtype}"
    if notebook is None:
        bad = [nb.split("_")[0] for nb, fit in r.fits.items() if fit.status == "does not fit"]
        tail = (f"⚠️ would run out of memory: notebooks {', '.join(bad)} (print_preflight() says why)" if bad
                else "every notebook fits")
        return f"{head} · {tail}"
    fit = r.fits[_notebook_key(r, notebook)]
    short = fit.notebook.split("_")[0]
    line = f"{head} · notebook {short} needs ≈ {gib(fit.need):.1f} GiB: {fit.status}"
    return f"{line}\n{fit.warning}" if fit.warning else line


if __name__ == "__main__":
    print_preflight()


def print_env() -> dict:
    """Print the environment report (first cell of every notebook) and return it.

    It first installs the course's filters for known harmless library messages (``course_utils.core.quiet``), so that
    they are in place before bitsandbytes, peft or Unsloth are imported; then every training cell's efficiency
    line (``course_utils.core.efficiency.install``); then ``runtime.env_report()``, the profile's sizes and this
    notebook's preflight line. It lives here, above ``runtime``, because it calls on those modules.
    """
    from course_utils.core.quiet import quiet_known_warnings

    quiet_known_warnings()
    from course_utils.core.efficiency import install

    install()  # every training cell prints one efficiency line
    report = runtime.env_report()
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}} : {value}")
    print("sizes".ljust(width), ":", {k: v for k, v in asdict(runtime.settings()).items()
                                        if k not in ("profile", "device", "threads", "rehearsal")})
    print("preflight".ljust(width), ":", preflight_line())  # notebook 00 prints the whole preflight
    return report
