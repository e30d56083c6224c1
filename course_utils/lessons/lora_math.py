"""LoRA from scratch with peft's names: ``h = W₀·x + (α/r)·B·A·x``.

A frozen linear layer ``W₀`` (d_out × d_in) gets a trainable low-rank update ``ΔW = scaling · B · A`` with
``A`` (r × d_in, random) and ``B`` (d_out × r, zero), so ``ΔW = 0`` at the start. ``scaling`` is ``α/r``
(``α/√r`` with rsLoRA). ΔW is computed in one place, :func:`delta_weight`, which feeds
``get_delta_weight``, ``merge``, ``unmerge`` and the tests (``tests/test_lora_math.py`` proves parity with peft).

    >>> layer = LoRALinear(nn.Linear(576, 576), r=8, lora_alpha=16)
    >>> layer.get_delta_weight().shape          # (d_out, d_in), rank ≤ 8
    torch.Size([576, 576])
    >>> attn = nn.ModuleDict({name: nn.Linear(8, 8) for name in ("q_proj", "v_proj", "o_proj")})
    >>> inject_lora(attn, ["q_proj", "v_proj"], r=2, lora_alpha=4)     # everything else frozen
    ['q_proj', 'v_proj']
    >>> [name for name, p in attn.named_parameters() if p.requires_grad]
    ['q_proj.lora_A.weight', 'q_proj.lora_B.weight', 'v_proj.lora_A.weight', 'v_proj.lora_B.weight']
    >>> merge_lora(attn); unmerge_lora(attn)                            # W₀ += ΔW, then W₀ −= ΔW
    >>> remove_lora(attn)["q_proj"]                                     # the plain layers back
    Linear(in_features=8, out_features=8, bias=True)

Storage matches peft exactly: ``lora_A`` is ``nn.Linear(d_in, r)``, whose ``weight`` (out × in) is A itself
(r, d_in); ``lora_B`` is ``nn.Linear(r, d_out)`` with ``weight`` B (d_out, r). Copying into a peft model
therefore needs no transpose (only GPT-2-style ``Conv1D`` layers, ``fan_in_fan_out=True``, store W
transposed).

Why one module of ~440 lines: notebook 03's from-scratch LoRA, rsLoRA and DoRA share one merge/unmerge
implementation (``LoRALinear``); splitting them would write those steps twice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from course_utils.core.models import decoder_layers

# --------------------------------------------------------------------------- the math, in one place


def lora_scaling(r: int, lora_alpha: float, use_rslora: bool = False) -> float:
    """The factor in front of B·A: α/r (LoRA) or α/√r (rsLoRA, rank-stabilized).

    >>> lora_scaling(8, 16), lora_scaling(64, 16, use_rslora=True)
    (2.0, 2.0)
    """
    if r <= 0:
        raise ValueError(f"r must be a positive integer, got {r}")
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


def delta_weight(lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """ΔW = scaling · B · A, the update a LoRA pair adds to W₀.

    lora_A: (r, d_in), lora_B: (d_out, r) → ΔW: (d_out, d_in), of rank ≤ r.
    """
    return (lora_B @ lora_A) * scaling  # (d_out, r) @ (r, d_in) → (d_out, d_in)


def lora_param_count(d_in: int, d_out: int, r: int) -> int:
    """Trainable parameters of one LoRA pair: r·(d_in + d_out) instead of d_in·d_out.

    >>> lora_param_count(576, 576, 8)
    9216
    """
    return r * (d_in + d_out)


# --------------------------------------------------------------------------- the layer


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update, with peft's attribute names.

    Forward: ``base_layer(x) + lora_B(lora_A(dropout(x))) · scaling`` — the same order of operations
    as ``peft.tuners.lora.Linear``, so logits agree to float rounding.
    x: (..., d_in) → (..., d_out).
    """

    def __init__(self, base_layer: nn.Linear, r: int = 8, lora_alpha: float = 8, lora_dropout: float = 0.0,
                 use_rslora: bool = False):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.r, self.lora_alpha, self.use_rslora = r, lora_alpha, use_rslora
        self.scaling = lora_scaling(r, lora_alpha, use_rslora)
        w = base_layer.weight
        # Adapters train in fp32 even on a bf16/fp16 base (as peft's autocast_adapter_dtype does).
        dtype = torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, device=w.device, dtype=dtype)   # A: (r, d_in)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, device=w.device, dtype=dtype)  # B: (d_out, r)
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.merged = False
        for p in base_layer.parameters():
            p.requires_grad_(False)
        self.reset_lora_parameters()

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight W₀ (merged: W₀ + ΔW), so code reading ``.weight`` keeps working."""
        return self.base_layer.weight

    def reset_lora_parameters(self) -> None:
        """A like ``nn.Linear``'s default (Kaiming-uniform), B = 0 → ΔW = 0: training starts at W₀ exactly."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def get_delta_weight(self) -> torch.Tensor:
        """ΔW = scaling · B · A, shape (d_out, d_in)."""
        return delta_weight(self.lora_A.weight, self.lora_B.weight, self.scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)  # (..., d_out)
        if self.merged:
            return result  # ΔW already lives inside base_layer.weight
        x = x.to(self.lora_A.weight.dtype)
        update = self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling  # (..., r) → (..., d_out)
        return (result + update).to(result.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """W₀ ← W₀ + ΔW: inference then costs exactly what the base layer costs."""
        if self.merged:
            return
        w, delta = self.base_layer.weight, self.get_delta_weight()  # (d_out, d_in) both
        w.copy_(self._merged_weight(w.to(delta.dtype), delta))  # copy_ casts back when the base is bf16/fp16
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W₀ + ΔW ← W₀ − ΔW: recover the base weight (up to float rounding) to train or swap adapters."""
        if not self.merged:
            return
        w, delta = self.base_layer.weight, self.get_delta_weight()
        w.copy_(self._unmerged_weight(w.to(delta.dtype), delta))
        self.merged = False

    def _merged_weight(self, w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The weight that ``merge`` stores: W₀ + ΔW (DoRA overrides it)."""
        return w + delta

    def _unmerged_weight(self, w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The weight that ``unmerge`` restores from the merged one: W − ΔW (DoRA overrides it)."""
        return w - delta

    def extra_repr(self) -> str:
        return (f"r={self.r}, lora_alpha={self.lora_alpha}, scaling={self.scaling:.4g}, "
                f"use_rslora={self.use_rslora}, merged={self.merged}")


# --------------------------------------------------------------------------- DoRA: magnitude and direction


def weight_norm(weight: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
    """‖W₀ + ΔW‖_c: the L2 norm of each output unit's weight row, as peft's DoRA computes it.

    weight, delta: (d_out, d_in) → (d_out,). The DoRA paper writes W as (d_in × d_out) and calls these
    column norms; in PyTorch's (out × in) storage they are the norms over ``dim=1``.
    """
    w = weight if delta is None else weight + delta.to(weight.dtype)  # (d_out, d_in)
    return torch.linalg.norm(w, dim=1)                                   # (d_out,)


def dora_weight(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """W' = m · (W₀ + ΔW) / ‖W₀ + ΔW‖_c. weight, delta: (d_out, d_in); magnitude m: (d_out,) → (d_out, d_in)."""
    return (magnitude / weight_norm(weight, delta)).unsqueeze(1) * (weight + delta)


class DoRALinear(LoRALinear):
    """DoRA (Liu et al. 2024): a LoRA direction plus a trainable magnitude per output unit.

    W' = m · (W₀ + ΔW) / ‖W₀ + ΔW‖_c with ``lora_magnitude_vector`` m (d_out,) starting at ‖W₀‖_c, so
    W' = W₀ at step 0. As in peft (and the paper's section 4.3) the norm is detached from the gradient.
    Forward as peft computes it: ``(m/‖·‖ − 1)·W₀x + (m/‖·‖)·scaling·B(A(x))`` added to ``base_layer(x)``.
    x: (..., d_in) → (..., d_out).
    """

    def __init__(self, base_layer: nn.Linear, r: int = 8, lora_alpha: float = 8, lora_dropout: float = 0.0,
                 use_rslora: bool = False):
        super().__init__(base_layer, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, use_rslora=use_rslora)
        w = base_layer.weight.detach().to(self.lora_A.weight.dtype)
        self.lora_magnitude_vector = nn.Parameter(weight_norm(w, self.get_delta_weight()))  # m: (d_out,)
        self._merged_norm: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)  # W₀x + bias: (..., d_out)
        if self.merged:
            return result
        dtype = self.lora_A.weight.dtype
        w = self.base_layer.weight.to(dtype)                                        # W₀: (d_out, d_in)
        delta = self.get_delta_weight().detach()                                    # ΔW: (d_out, d_in)
        scale = self.lora_magnitude_vector / weight_norm(w, delta).detach()         # m / ‖W₀ + ΔW‖_c: (d_out,)
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            x = x.to(dtype)
            base = result.to(dtype) - (self.base_layer.bias.to(dtype) if self.base_layer.bias is not None else 0)
        else:                                                                       # peft: W₀ on the dropped-out x
            x = self.lora_dropout(x.to(dtype))
            base = nn.functional.linear(x, w)
        lora = self.lora_B(self.lora_A(x)) * self.scaling                           # ΔWx: (..., d_out)
        return (result + (scale - 1) * base + scale * lora).to(result.dtype)

    def _merged_weight(self, w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """W₀ ← m · (W₀ + ΔW) / ‖W₀ + ΔW‖_c (the norm is kept to unmerge)."""
        self._merged_norm = weight_norm(w, delta)
        return dora_weight(w, delta, self.lora_magnitude_vector)

    def _unmerged_weight(self, w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """W' · ‖W₀ + ΔW‖_c / m − ΔW: back to W₀ up to float rounding."""
        factor = (self.lora_magnitude_vector / self._merged_norm).unsqueeze(1)    # (d_out, 1)
        self._merged_norm = None
        return w / factor - delta


def dora_param_count(d_in: int, d_out: int, r: int) -> int:
    """Trainable parameters of one DoRA layer: LoRA's r·(d_in + d_out) plus the magnitude's d_out.

    >>> dora_param_count(576, 576, 8)
    9792
    """
    return lora_param_count(d_in, d_out, r) + d_out


# --------------------------------------------------------------------------- injection into a model

_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)\.")


def _matches(name: str, target_modules: Iterable[str]) -> bool:
    """peft's rule for a list of targets: the module name equals a target or ends with ``.target``."""
    return any(name == t or name.endswith("." + t) for t in target_modules)


def _layer_index(name: str) -> int | None:
    m = _LAYER_INDEX.search(name)
    return int(m.group(1)) if m else None


def inject_lora(model: nn.Module, target_modules: Iterable[str], r: int = 8, lora_alpha: float = 8,
                lora_dropout: float = 0.0, use_rslora: bool = False,
                layers_to_transform: Iterable[int] | None = None, use_dora: bool = False) -> list[str]:
    """Wrap every ``nn.Linear`` whose name ends with a target in a :class:`LoRALinear`; freeze the rest.

    ``layers_to_transform`` (as in peft) keeps only modules in those decoder-layer indices; ``use_dora``
    wraps in :class:`DoRALinear` instead (peft's ``LoraConfig(use_dora=True)``). Returns the
    wrapped module names. Raises ``ValueError`` when nothing matches.

    Example::

        inject_lora(model, ["q_proj", "v_proj"], r=8, lora_alpha=16)[:2]   # SmolLM2
        # ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj']
    """
    target_modules = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    layers = None if layers_to_transform is None else set(layers_to_transform)
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or not _matches(name, target_modules):
            continue
        if name.endswith(("lora_A", "lora_B")) or name.endswith(".base_layer"):
            continue
        if layers is not None and _layer_index(name) not in layers:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(parent, LoRALinear):
            continue
        cls = DoRALinear if use_dora else LoRALinear
        setattr(parent, child, cls(module, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                   use_rslora=use_rslora))
        wrapped.append(name)
    if not wrapped:
        raise ValueError(f"target modules {target_modules} not found among the model's nn.Linear layers")
    return wrapped


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """name → LoRALinear for every injected layer (names as the wrapped ``nn.Linear`` had)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> None:
    """Merge every LoRA layer of ``model`` into its base weight."""
    for m in lora_modules(model).values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo :func:`merge_lora`."""
    for m in lora_modules(model).values():
        m.unmerge()


def remove_lora(model: nn.Module, merge: bool = False) -> nn.Module:
    """Put the base ``nn.Linear`` layers back (``merge=True``: with ΔW folded in, like ``merge_and_unload``).

    Without ``merge`` a merged layer is unmerged first, so the model returns to W₀.
    """
    for name, m in lora_modules(model).items():
        m.merge() if merge else m.unmerge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, m.base_layer)
    return model


def copy_lora_to_peft(model: nn.Module, peft_model: nn.Module, adapter_name: str = "default") -> int:
    """Copy every A and B (and DoRA's magnitude m) of ``model`` into the same-named peft layers; return the count.

    Shapes are identical (both store A as (r, d_in) and B as (d_out, r)), so no transpose is needed;
    a mismatch raises ``ValueError`` instead of copying silently.
    """
    base = peft_model.base_model.model if hasattr(peft_model, "base_model") else peft_model
    n = 0
    with torch.no_grad():
        for name, m in lora_modules(model).items():
            target = base.get_submodule(name)
            pairs = [(m.lora_A.weight, target.lora_A[adapter_name].weight),
                     (m.lora_B.weight, target.lora_B[adapter_name].weight)]
            if isinstance(m, DoRALinear):  # peft keeps m in lora_magnitude_vector[adapter].weight
                pairs.append((m.lora_magnitude_vector, target.lora_magnitude_vector[adapter_name].weight))
            for ours, theirs in pairs:
                if ours.shape != theirs.shape:
                    raise ValueError(f"{name}: shape {tuple(ours.shape)} vs peft's {tuple(theirs.shape)}")
                theirs.copy_(ours)
                n += 1
    return n


# --------------------------------------------------------------------------- counting


def linear_shapes(model: nn.Module, layer: int = 0) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each ``nn.Linear`` in one decoder layer, keyed by its short name.

    Works on a model built on the ``meta`` device (no memory), e.g. ``Phi3ForCausalLM(Phi3Config())``.
    """
    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, LoRALinear)) and _layer_index(name) == layer and ".lora_" not in name \
                and not name.endswith(".base_layer"):
            shapes[name.rsplit(".", 1)[-1]] = (m.in_features, m.out_features)
    return shapes


def lora_count_table(shapes: dict[str, tuple[int, int]], r: int, n_layers: int) -> list[dict]:
    """Rows (module, d_in, d_out, full, lora, ratio) for one rank, per layer and summed over ``n_layers``."""
    rows = []
    for name, (d_in, d_out) in shapes.items():
        full, lora = d_in * d_out, lora_param_count(d_in, d_out, r)
        rows.append({"module": name, "d_in": d_in, "d_out": d_out, "full": full, "lora": lora,
                     "ratio": lora / full})
    full = sum(x["full"] for x in rows) * n_layers
    lora = sum(x["lora"] for x in rows) * n_layers
    rows.append({"module": f"all × {n_layers} layers", "d_in": None, "d_out": None, "full": full, "lora": lora,
                 "ratio": lora / full})
    return rows


# --------------------------------------------------------------------------- training only the top layers


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted activation is captured."""


@torch.no_grad()
def prefix_hidden_states(model: nn.Module, batch: dict, first_layer: int) -> torch.Tensor:
    """Hidden states entering decoder layer ``first_layer``: (B, T, d). The layers above are not run."""
    captured = {}

    def hook(module, args, kwargs):
        captured["h"] = args[0] if args else kwargs["hidden_states"]
        raise _StopForward

    handle = decoder_layers(model)[first_layer].register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
              use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured["h"].detach()


def cache_frozen_prefix(model: nn.Module, batches: list[dict], first_layer: int) -> list[dict]:
    """Replace ``input_ids`` by the frozen layers' output, computed once per batch.

    When nothing below ``first_layer`` trains, those layers map a batch to the same hidden states at
    every step: computing them once and training only the top saves most of each step's forward pass.
    Use the cached batches inside :func:`top_layers_only`.
    """
    return [{"inputs_embeds": prefix_hidden_states(model, b, first_layer), "attention_mask": b["attention_mask"],
             "labels": b["labels"]} for b in batches]


@contextmanager
def top_layers_only(model: nn.Module, first_layer: int) -> Iterator[nn.Module]:
    """Temporarily keep only decoder layers ``first_layer…`` so cached ``inputs_embeds`` enter there.

    Rotary positions and the causal mask are rebuilt from the batch as usual, so the loss equals the
    full model's loss on the original batch (tests/test_lora_math.py checks this).
    """
    inner, full = model.model, decoder_layers(model)
    use_cache = model.config.use_cache
    inner.layers = nn.ModuleList(list(full)[first_layer:])
    model.config.use_cache = False  # a KV cache would index layers by their original position
    try:
        yield model
    finally:
        inner.layers = full
        model.config.use_cache = use_cache


# --------------------------------------------------------------------------- spectra


def energy_captured(singular_values: torch.Tensor, k: int) -> float:
    """Share of ‖ΔW‖²_F held by the top-k singular values: Σᵢ≤ₖ σᵢ² / Σ σᵢ² (best rank-k approximation).

    >>> energy_captured(torch.tensor([3.0, 1.0]), 1)
    0.9
    """
    s2 = singular_values.double() ** 2
    return float(s2[:k].sum() / s2.sum())
