"""The gpu profile rehearsed on a CPU: a simulated GPU and a device audit that fails like CUDA would.

The gpu profile runs on Colab, where no CI machine of this project can go. ``make rehearse-gpu`` runs every
notebook with ``COURSE_PROFILE=gpu COURSE_REHEARSAL=1`` on a CPU, offline:

- **stand-ins** (``course_utils.tools.standins``): each hub model of the gpu profile (``models.REGISTRY``) is replaced
  by a small model of the same architecture, registered under the real id in a local Hugging Face cache
  (``HF_HUB_CACHE``), so that ``from_pretrained("facebook/opt-125m")`` and Unsloth's loader find it as they
  would after a download;
- **a simulated CUDA device**: ``settings().device`` is ``"cuda"``, and a ``TorchFunctionMode`` keeps, for every
  tensor, whether it would live on the GPU. Moving to ``"cuda"`` (``.to``, ``.cuda()``, ``Module.to``,
  ``device_map``, factory functions) marks a tensor; results of math on marked tensors are marked;
- **what each side sees**: the course's code sees ``device == cuda:0`` on such tensors; libraries see the CPU
  they really run on (so their own device checks and CUDA-only branches stay consistent);
- **the audit**: in the course's own code (notebook cells and ``course_utils``) the crash classes of a real GPU
  raise here too: a CPU input given to a model on the GPU, math that mixes GPU tensors with CPU tensors, and
  ``.numpy()`` on a GPU tensor (in any code, as numpy itself refuses it on CUDA). Library code is trusted to
  place its own tensors and is not checked.

Checkpoints that measure learning on real weights cannot hold on random stand-ins; they use
``runtime.check_real`` (the one mechanism that reports instead of asserting, and only here).

    $ python -m course_utils.tools.standins build         # the stand-in cache (about 10 s, once)
    $ make rehearse-gpu                             # every notebook, gpu profile, on the CPU

Why one module of ~450 lines: the simulated GPU is one mechanism (placement marks, the patched torch /
transformers / peft / Unsloth entry points, the audit); split, its patches would be harder to see together.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

COURSE_DIR = str(Path(__file__).resolve().parents[1])  # all of course_utils, not only core/
_AUDIT_FILE = str(Path(__file__).resolve())
TAG = "_course_on_gpu"


class DeviceAuditError(RuntimeError):
    """Code that would crash on a real GPU: the rehearsal's simulated CUDA device caught it."""


# --------------------------------------------------------------------------- which code is ours

def _is_ours(filename: str) -> bool:
    """Notebook cells and course_utils are audited; libraries are trusted to place their own tensors."""
    if filename == _AUDIT_FILE:
        return False
    return filename.startswith(COURSE_DIR) or "ipykernel_" in filename or filename.startswith("<ipython-input")


def _caller_is_ours(skip: int = 2, skip_modules: bool = False) -> str | None:
    """The code that made the call, if it is ours: 'file:line', else None.

    ``skip_modules``: look past ``nn.Module.__call__`` (for hooks), to the code that called the model.
    """
    f = sys._getframe(skip)
    module_py = f"{os.sep}torch{os.sep}nn{os.sep}modules{os.sep}module.py"
    while f is not None and (f.f_code.co_filename == _AUDIT_FILE
                             or skip_modules and f.f_code.co_filename.endswith(module_py)):
        f = f.f_back
    if f is not None and _is_ours(f.f_code.co_filename):
        return f"{f.f_code.co_filename}:{f.f_lineno}"
    return None


# --------------------------------------------------------------------------- marks

def on_gpu(t) -> bool:
    """True when ``t`` would live on the (simulated) GPU."""
    return isinstance(t, torch.Tensor) and getattr(t, TAG, False)


def _mark(t, value: bool = True):
    if isinstance(t, torch.Tensor):
        try:
            setattr(t, TAG, value)
        except (AttributeError, RuntimeError):  # pragma: no cover - exotic tensor types
            pass
    return t


def _tensors(obj, out: list, depth: int = 0) -> list:
    """Tensors inside args/kwargs (lists, tuples, dicts, one level of nesting deep enough for batches)."""
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif depth < 3 and isinstance(obj, (list, tuple)):
        for x in obj:
            _tensors(x, out, depth + 1)
    elif depth < 3 and isinstance(obj, dict):
        for x in obj.values():
            _tensors(x, out, depth + 1)
    return out


def _mark_all(obj, value: bool = True) -> None:
    for t in _tensors(obj, []):
        _mark(t, value)


def _is_cuda_device(d) -> bool:
    if isinstance(d, torch.device):
        return d.type == "cuda"
    if isinstance(d, str):
        return d.split(":")[0] == "cuda"
    return isinstance(d, int) and not isinstance(d, bool)


def _cpu_device(d):
    return torch.device("cpu") if isinstance(d, torch.device) else "cpu"


def _descriptor(name: str):
    return next(k.__dict__[name] for k in torch.Tensor.__mro__ if name in k.__dict__)


_GETTERS = {_descriptor(name): name for name in ("device", "is_cuda", "is_cpu")}
_FACTORY_KW = "device"
_NUMPY = {"numpy", "__array__"}
# CUDA accepts CPU index tensors and cross-device copies in these: not a mix.
_MIX_OK = {"__getitem__", "__setitem__", "copy_", "index_put_", "index_put", "to", "cpu", "cuda",
           "__get__", "__set__", "set_", "__format__", "__repr__", "__str__", "tolist", "item", "size", "dim"}


_CPU_ONLY_OPS = ("quantized.",)  # torch.ops.quantized.*: fbgemm/onednn kernels, no CUDA ones
_INDEXING = {"__getitem__", "__setitem__", "index_put_", "index_put"}


class SimulatedCuda(TorchFunctionMode):
    """Tracks which tensors would live on the GPU, and raises where a real GPU would."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "__get__":
            prop = _GETTERS.get(getattr(func, "__self__", None))
            if prop is not None and args and on_gpu(args[0]) and _caller_is_ours():
                return {"device": torch.device("cuda", 0), "is_cuda": True, "is_cpu": False}[prop]
            out = func(*args, **kwargs)
            if args and on_gpu(args[0]) and isinstance(out, torch.Tensor):  # .data, .grad, .T, …
                _mark(out)
            return out
        if name in _NUMPY:
            if args and on_gpu(args[0]):
                raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
                                "tensor to host memory first. [rehearsal device audit: this tensor lives on the "
                                "GPU in the gpu profile; convert it with course_utils.core.runtime.to_numpy]")
            return func(*args, **kwargs)
        if name == "cuda":
            return _mark(args[0].view_as(args[0]) if args[0].requires_grad else args[0].detach().view_as(args[0]))
        if name == "cpu":
            src = args[0]
            return _mark(src.view_as(src), False) if on_gpu(src) else func(*args, **kwargs)
        if name == "to" and args and isinstance(args[0], torch.Tensor):
            return self._to(func, args, kwargs)
        if _FACTORY_KW in kwargs and _is_cuda_device(kwargs[_FACTORY_KW]):
            kwargs = {**kwargs, _FACTORY_KW: _cpu_device(kwargs[_FACTORY_KW])}
            return _mark(func(*args, **kwargs))
        inputs = _tensors(args, []) + _tensors(kwargs, [])
        gpu = [t for t in inputs if on_gpu(t)]
        if gpu and str(func).startswith(_CPU_ONLY_OPS):
            raise NotImplementedError(
                f"Could not run '{func}' with arguments from the 'CUDA' backend. [rehearsal device audit: this "
                "operator has CPU kernels only (torch.ao dynamic quantization); run it on a CPU copy]")
        if name in _INDEXING and args and not on_gpu(args[0]) and len(args) > 1 and any(
                on_gpu(t) and t.dim() > 0 for t in _tensors(args[1], [])):
            where = _caller_is_ours()
            if where:  # a CPU tensor indexed by GPU indices
                raise DeviceAuditError(
                    f"indices should be either on cpu or on the same device as the indexed tensor (cpu) at {where} "
                    "[rehearsal device audit: the indices live on the GPU; move one side]")
        if gpu and name not in _MIX_OK:
            cpu = [t for t in inputs if not on_gpu(t) and t.dim() > 0]  # CUDA takes CPU scalars (0-dim)
            if cpu:
                where = _caller_is_ours()
                if where:
                    raise DeviceAuditError(
                        f"Expected all tensors to be on the same device, but found at least two devices, cuda:0 "
                        f"and cpu! ({name or func}: a CPU tensor of shape {tuple(cpu[0].shape)} meets GPU tensors "
                        f"at {where}) [rehearsal device audit: move it with course_utils.core.runtime.to_device]")
        out = func(*args, **kwargs)
        if gpu:
            _mark_all(out)
        return out

    @staticmethod
    def _to(func, args, kwargs):
        src, rest = args[0], list(args[1:])
        target = kwargs.get("device")
        pos = None
        for i, a in enumerate(rest):
            if isinstance(a, (str, torch.device)) or (isinstance(a, int) and not isinstance(a, bool)):
                target, pos = a, i
            elif isinstance(a, torch.Tensor):  # .to(other): device and dtype of other
                target = torch.device("cuda", 0) if on_gpu(a) else a.device
        if target is None:
            out = func(*args, **kwargs)
            return _mark(out, True) if on_gpu(src) and out is not src else out
        to_gpu = _is_cuda_device(target)
        if pos is not None:
            rest[pos] = _cpu_device(target)
        if "device" in kwargs:
            kwargs = {**kwargs, "device": _cpu_device(target)}
        rest = [torch.empty(0, dtype=a.dtype) if isinstance(a, torch.Tensor) else a for a in rest]
        out = func(src, *rest, **kwargs)
        if out is src:
            if to_gpu == on_gpu(src):
                return out
            out = src.view_as(src)  # a real move makes a new tensor; here only the mark moves
        return _mark(out, to_gpu)


# --------------------------------------------------------------------------- models on the simulated GPU

def place(model):
    """Mark a model's parameters and buffers as GPU-resident and audit what our code feeds it."""
    for t in list(model.parameters()) + list(model.buffers()):
        _mark(t)
    if not getattr(model, "_course_audited", False):
        model.register_forward_hook(_mark_outputs)
        model._course_audited = True
    model._course_on_gpu = True
    return model


def _on_gpu_module(module) -> bool:
    """True if ``module`` or a module inside it (a peft wrapper's base model) was placed on the simulated GPU."""
    return getattr(module, "_course_on_gpu", False) or any(getattr(m, "_course_on_gpu", False)
                                                           for m in module.modules())


def _check_inputs(module, args, kwargs, where: str) -> None:
    for t in _tensors(args, []) + _tensors(kwargs, []):
        if t.dim() > 0 and not on_gpu(t) and t.dtype in (torch.long, torch.int, torch.bool) + _FLOATS:
            raise DeviceAuditError(
                f"{type(module).__name__} is on cuda:0 but got a CPU input of shape {tuple(t.shape)} at {where}: "
                f"on a GPU this raises 'Expected all tensors to be on the same device'. [rehearsal device audit: "
                f"move inputs with course_utils.core.runtime.to_device(batch, model)]")


def _wrap_module_call(orig):
    """Every model our code calls is checked: its tensor inputs must be where its weights are."""
    @functools.wraps(orig)
    def __call__(self, *args, **kwargs):
        f = sys._getframe(1)
        if _is_ours(f.f_code.co_filename) and _on_gpu_module(self):
            _check_inputs(self, args, kwargs, f"{f.f_code.co_filename}:{f.f_lineno}")
        return orig(self, *args, **kwargs)
    return __call__


_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _mark_outputs(module, args, output):
    if not getattr(module, "_course_on_gpu", False):
        return None
    _mark_all(output if not hasattr(output, "to_tuple") else dict(output))
    return None


def _wrap_module_to(orig):
    @functools.wraps(orig)
    def to(self, *args, **kwargs):
        device = kwargs.get("device")
        for a in args:
            if isinstance(a, (str, torch.device)) or (isinstance(a, int) and not isinstance(a, bool)):
                device = a
        out = orig(self, *args, **kwargs)
        if device is not None and _is_cuda_device(device):
            place(out)
        elif device is not None:
            _unplace(out)
        return out
    return to


def _unplace(module):
    """Mark a module's parameters and buffers as back on the CPU (``.to("cpu")``, ``.cpu()``)."""
    for t in list(module.parameters()) + list(module.buffers()):
        _mark(t, False)
    module._course_on_gpu = False
    return module


def _wrap_module_cpu(orig):
    @functools.wraps(orig)
    def cpu(self):
        return _unplace(orig(self))
    return cpu


def _wrap_module_cuda(orig):
    @functools.wraps(orig)
    def cuda(self, device=None):
        return place(self)
    return cuda


def _wrap_from_pretrained(orig):
    """``device_map`` naming the GPU loads on the CPU and places the model on the simulated GPU."""
    @functools.wraps(orig)
    def from_pretrained(*args, **kwargs):
        dm = kwargs.get("device_map")
        to_gpu = dm is not None and (_is_cuda_device(dm) or dm in ("auto", "sequential") or (
            isinstance(dm, dict) and any(_is_cuda_device(v) for v in dm.values())))
        if to_gpu:
            kwargs["device_map"] = {"": "cpu"}
        model = orig(*args, **kwargs)
        if to_gpu and isinstance(model, torch.nn.Module):
            place(model)
        return model
    return from_pretrained


def _wrap_parameter_new(orig):
    def __new__(cls, data=None, requires_grad=True):
        p = orig(cls, data, requires_grad)
        if on_gpu(data):
            _mark(p)
        return p
    return __new__


def _wrap_generate(orig):
    @functools.wraps(orig)
    def generate(self, *args, **kwargs):
        where = _caller_is_ours()
        if where and _on_gpu_module(self):
            for t in _tensors(args, []) + _tensors({k: v for k, v in kwargs.items() if k != "streamer"}, []):
                if t.dim() > 0 and not on_gpu(t):
                    raise DeviceAuditError(
                        f"{type(self).__name__}.generate on cuda:0 got a CPU tensor of shape {tuple(t.shape)} at "
                        f"{where} [rehearsal device audit: move inputs with course_utils.core.runtime.to_device]")
        return orig(self, *args, **kwargs)
    return generate


_ACTIVE: list[SimulatedCuda] = []
_LOCK = threading.Lock()


def activate() -> bool:
    """Turn on the simulated GPU and the audit in this process (idempotent); False if already on."""
    with _LOCK:
        if _ACTIVE:
            return False
        torch.nn.Module.__call__ = _wrap_module_call(torch.nn.Module.__call__)
        torch.nn.Module.to = _wrap_module_to(torch.nn.Module.to)
        torch.nn.Module.cuda = _wrap_module_cuda(torch.nn.Module.cuda)
        torch.nn.Module.cpu = _wrap_module_cpu(torch.nn.Module.cpu)
        torch.nn.Parameter.__new__ = _wrap_parameter_new(torch.nn.Parameter.__new__)
        # transformers and Unsloth are patched when first imported, so that the notebooks' import order (Unsloth
        # before transformers, as Unsloth asks) stays what it is outside the rehearsal.
        _after_import("transformers", _patch_transformers)
        _after_import("unsloth", _patch_unsloth)
        _after_import("peft", _patch_peft)
        mode = SimulatedCuda()
        mode.__enter__()
        _ACTIVE.append(mode)
        threading.Thread.run = _wrap_thread_run(threading.Thread.run)  # torch's mode stack is per thread
        return True


def _patch_transformers(transformers) -> None:
    from transformers import GenerationMixin, PreTrainedModel

    for cls in [PreTrainedModel] + [getattr(transformers, n) for n in ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM",
                                                                       "AutoModel")]:
        if not getattr(cls.from_pretrained, "_course_wrapped", False):
            wrapped = _wrap_from_pretrained(cls.from_pretrained.__func__)
            wrapped._course_wrapped = True
            cls.from_pretrained = classmethod(wrapped)
    if not getattr(GenerationMixin.generate, "_course_wrapped", False):
        GenerationMixin.generate = _wrap_generate(GenerationMixin.generate)
        GenerationMixin.generate._course_wrapped = True


def _patch_peft(peft) -> None:
    """peft's wrappers have their own ``generate``: audit what our code passes to it too."""
    for cls in (peft.PeftModel, peft.PeftModelForCausalLM, peft.PeftModelForSeq2SeqLM):
        if "generate" in cls.__dict__ and not getattr(cls.__dict__["generate"], "_course_wrapped", False):
            wrapped = _wrap_generate(cls.__dict__["generate"])
            wrapped._course_wrapped = True
            cls.generate = wrapped


def _patch_unsloth(unsloth) -> None:
    """Unsloth loads onto the GPU it finds; here it finds none, so its models are placed on the simulated one."""
    flm = unsloth.FastLanguageModel
    orig = flm.from_pretrained

    @functools.wraps(orig)
    def from_pretrained(*args, **kwargs):
        model, tok = orig(*args, **kwargs)
        return place(model), tok

    flm.from_pretrained = staticmethod(from_pretrained)
    _patch_transformers(sys.modules["transformers"])  # again: Unsloth replaces some of transformers' loaders

def _after_import(name: str, patch) -> None:
    """Call ``patch(module)`` once ``name`` is imported (now, if it already is)."""
    if name in sys.modules:
        patch(sys.modules[name])
        return
    import importlib.abc
    import importlib.util

    class Finder(importlib.abc.MetaPathFinder):
        busy = False

        def find_spec(self, fullname, path, target=None):
            if fullname != name or self.busy:
                return None
            self.busy = True  # a plain find_spec (an "is it installed?" check) must not consume the hook
            try:
                spec = importlib.util.find_spec(fullname)
            finally:
                self.busy = False
            if spec is None or spec.loader is None:
                return None
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                patch(sys.modules.get(name, module))  # transformers swaps in a lazy module while importing

            spec.loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, Finder())


def _wrap_thread_run(orig):
    @functools.wraps(orig)
    def run(self):
        with SimulatedCuda():
            return orig(self)
    return run
