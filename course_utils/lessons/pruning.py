"""Pruning from scratch: magnitude masks, structured rows and MLP channels, the 2:4 pattern, and the costs.

Masks per layer and global; the honest costs are sparse storage with its indices and dense-kernel latency.

    >>> w = torch.tensor([[0.1, -2.0], [0.5, -0.3]])
    >>> magnitude_mask(w, 0.5)                  # by hand; equals torch's l1_unstructured
    tensor([[0., 1.],
            [1., 0.]])
    >>> global_magnitude_masks({"a": torch.tensor([1.0, -0.2]), "b": torch.tensor([0.1, 3.0, -0.5])}, 0.4)
    {'a': tensor([ True, False]), 'b': tensor([False,  True,  True])}
    >>> storage_bytes(w * magnitude_mask(w, 0.5))    # 2 of 4 kept: the indices cost more than the zeros save
    {'dense': 16, 'COO (int64)': 40, 'CSR (int64)': 48, 'CSR (int32)': 28}

Example::

    keep = keep_channels(mlp_channel_scores(mlp), 0.5)    # the MLP channels worth keeping
    slice_mlp_channels_(mlp, keep)                        # smaller matrices, same outputs as masking

A mask holds 1 where a weight is kept and 0 where it is pruned; pruning multiplies the weight by it.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from course_utils.core.models import LORA_TARGETS

ATTN_KINDS = LORA_TARGETS[:4]   # q, k, v, o
MLP_KINDS = LORA_TARGETS[4:]    # gate, up, down
LINEAR_KINDS = ATTN_KINDS + MLP_KINDS


# --------------------------------------------------------------------------- unstructured (magnitude)

def n_to_prune(n: int, amount: float) -> int:
    """How many of ``n`` weights a fraction ``amount`` prunes (rounded as ``torch.nn.utils.prune`` does).

    >>> n_to_prune(10, 0.25)
    2
    """
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount={amount} must be a fraction in [0, 1]")
    return round(amount * n)


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest entry (1-based) of a tensor, as a 0-d tensor.

    On CPU this uses numpy's introselect (``np.partition``) instead of ``torch.kthvalue``: faster, which
    matters when a sweep thresholds 100 M weights many times. Same value either way.
    """
    flat = values.detach().reshape(-1)
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        arr = flat.numpy()
        return torch.tensor(np.partition(arr, k - 1)[k - 1], dtype=values.dtype)
    return flat.kthvalue(k).values


def magnitude_mask(weight: torch.Tensor, amount: float) -> torch.Tensor:
    """Mask that prunes the fraction ``amount`` of ``weight`` with the smallest magnitude.

    Keeps |w| > t where t is the k-th smallest |w| (k = round(amount·n)). With distinct magnitudes this
    is exactly ``torch.nn.utils.prune.l1_unstructured``'s mask; with ties at t it prunes all tied weights
    (torch picks an arbitrary subset of them). Shape: same as ``weight``.
    """
    k = n_to_prune(weight.numel(), amount)
    if k == 0:
        return torch.ones_like(weight)
    t = kth_smallest(weight.abs(), k)
    return (weight.detach().abs() > t).to(weight.dtype)


def global_threshold(weights: dict[str, torch.Tensor], amount: float) -> torch.Tensor | None:
    """The one magnitude threshold of global pruning: the k-th smallest |w| over all ``weights`` together.

    None when nothing is pruned (k = 0).
    """
    flat = torch.cat([w.detach().reshape(-1) for w in weights.values()]).abs_()       # (N_total,)
    k = n_to_prune(flat.numel(), amount)
    return kth_smallest(flat, k) if k else None


def global_magnitude_masks(weights: dict[str, torch.Tensor], amount: float) -> dict[str, torch.Tensor]:
    """Bool masks pruning the fraction ``amount`` of *all* the weights together by magnitude (one threshold).

    Equals ``torch.nn.utils.prune.global_unstructured(..., L1Unstructured)`` for distinct magnitudes, but
    vectorised: one concatenation and one selection instead of a Python loop over modules. The masks are
    bool: as floats, masks for a whole model would take as much memory as the model.
    """
    t = global_threshold(weights, amount)
    if t is None:
        return {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    return {n: w.detach().abs() > t for n, w in weights.items()}


def sparsity(tensors) -> float:
    """Fraction of exact zeros in a tensor or an iterable of tensors.

    >>> sparsity(torch.tensor([0.0, 1.0, 0.0, 2.0]))
    0.5
    """
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    zeros = total = 0
    for t in tensors:
        zeros += int((t == 0).sum())
        total += t.numel()
    return zeros / max(total, 1)


# --------------------------------------------------------------------------- structured

def row_norm_mask(weight: torch.Tensor, amount: float, n: float = 2) -> torch.Tensor:
    """Mask that prunes whole rows (output neurons) with the smallest L``n`` norm.

    Equals ``torch.nn.utils.prune.ln_structured(module, "weight", amount, n=n, dim=0)``. Shape: like weight.
    """
    rows = weight.shape[0]
    norms = weight.detach().reshape(rows, -1).norm(p=n, dim=1)                    # (out,)
    keep = torch.topk(norms, rows - n_to_prune(rows, amount)).indices
    mask = torch.zeros_like(weight)
    mask[keep] = 1
    return mask


def mlp_channel_scores(mlp: nn.Module, act_norm: torch.Tensor | None = None) -> torch.Tensor:
    """Importance of each intermediate channel of a gated MLP. Shape: (intermediate,).

    Channel i computes h_i = silu(g_i·x)·(u_i·x) and writes h_i·down[:, i] into the output.
    With ``act_norm`` (‖h_i‖ over calibration tokens, see ``activation_norms``): ‖h_i‖·‖down[:, i]‖, the
    size of what the channel really contributes. Without it, weights only: ‖g_i‖·‖u_i‖·‖down[:, i]‖.
    """
    d = mlp.down_proj.weight.detach().norm(dim=0)                                  # (I,)
    if act_norm is not None:
        return act_norm.to(d) * d
    g = mlp.gate_proj.weight.detach().norm(dim=1)                                  # (I,)
    u = mlp.up_proj.weight.detach().norm(dim=1)                                    # (I,)
    return g * u * d


def keep_channels(scores: torch.Tensor, amount: float) -> torch.Tensor:
    """Sorted indices of the channels to keep after pruning the fraction ``amount`` with the lowest score."""
    n_keep = scores.numel() - n_to_prune(scores.numel(), amount)
    return torch.topk(scores, n_keep).indices.sort().values


@torch.no_grad()
def mask_mlp_channels_(mlp: nn.Module, keep: torch.Tensor) -> None:
    """Zero the pruned channels in place: rows of gate/up, columns of down. The shapes do not change."""
    drop = torch.ones(mlp.gate_proj.out_features, dtype=torch.bool, device=keep.device)
    drop[keep] = False
    mlp.gate_proj.weight[drop] = 0
    mlp.up_proj.weight[drop] = 0
    mlp.down_proj.weight[:, drop] = 0


def _sliced_linear(linear: nn.Linear, weight: torch.Tensor) -> nn.Linear:
    out_f, in_f = weight.shape
    new = nn.Linear(in_f, out_f, bias=False, device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    new.weight.requires_grad_(linear.weight.requires_grad)
    return new


@torch.no_grad()
def slice_mlp_channels_(mlp: nn.Module, keep: torch.Tensor) -> None:
    """Remove the pruned channels for real: gate/up lose rows, down loses columns (in place).

    (I, d) → (len(keep), d) for gate and up, (d, I) → (d, len(keep)) for down. The output equals the
    masked MLP's, but every matmul is smaller, so a dense kernel runs faster.
    """
    keep = keep.to(mlp.gate_proj.weight.device)
    mlp.gate_proj = _sliced_linear(mlp.gate_proj, mlp.gate_proj.weight[keep])     # (k, d)
    mlp.up_proj = _sliced_linear(mlp.up_proj, mlp.up_proj.weight[keep])           # (k, d)
    mlp.down_proj = _sliced_linear(mlp.down_proj, mlp.down_proj.weight[:, keep])   # (d, k)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = int(keep.numel())


# --------------------------------------------------------------------------- activation-aware scores

@torch.no_grad()
def activation_norms(model: nn.Module, linears: dict[str, nn.Linear], batch: dict) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ of every input feature j of each layer, over the (unpadded) tokens of a calibration batch.

    Hooks record each layer's input during one forward pass. Returns name → (in_features,).
    """
    keep = batch["attention_mask"].reshape(-1).bool()                              # (B·T,)
    sums: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(_mod, inputs, _out):
            x = inputs[0].reshape(-1, inputs[0].shape[-1])[keep].float()           # (tokens, in)
            sums[name] = sums.get(name, 0) + x.pow(2).sum(0)                     # (in,)
        return record

    handles = [mod.register_forward_hook(hook(name)) for name, mod in linears.items()]
    try:
        model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")})
    finally:
        for h in handles:
            h.remove()
    return {name: s.sqrt() for name, s in sums.items()}


def wanda_mask(weight: torch.Tensor, in_norm: torch.Tensor, amount: float) -> torch.Tensor:
    """Wanda (Sun et al., 2023): prune the fraction ``amount`` of each row with the smallest |W_ij|·‖X_j‖.

    A small weight on an input that is always large can matter more than a large weight on a quiet
    input; magnitude pruning cannot see that. Shape: (out, in) → (out, in).
    """
    score = weight.detach().abs() * in_norm.to(weight)[None, :]                   # (out, in)
    k = n_to_prune(weight.shape[1], amount)
    mask = torch.ones_like(weight)
    if k:
        mask.scatter_(1, score.topk(k, dim=1, largest=False).indices, 0.0)
    return mask


# --------------------------------------------------------------------------- 2:4 semi-structured

def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """Mask keeping the 2 largest-magnitude weights of every 4 consecutive inputs (the N:M = 2:4 pattern).

    Groups run along the input dimension (each row), as NVIDIA's sparse tensor cores expect.
    Shape: (out, in) → (out, in), in divisible by 4; exactly 50 % zeros.
    """
    out_f, in_f = weight.shape
    if in_f % 4:
        raise ValueError(f"the input dimension {in_f} is not divisible by 4")
    groups = weight.detach().abs().reshape(out_f, in_f // 4, 4)                    # (out, in/4, 4)
    top2 = groups.topk(2, dim=-1).indices                                          # (out, in/4, 2)
    mask = torch.zeros_like(groups).scatter_(-1, top2, 1.0)                        # (out, in/4, 4)
    return mask.reshape(out_f, in_f).to(weight.dtype)


def semi_structured_available() -> bool:
    """True where ``torch.sparse.to_sparse_semi_structured`` can run: a CUDA GPU of compute capability ≥ 8.0.

    On CPU it raises "Only CUDA tensors are currently supported" (measured), so lessons call this first.
    """
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def to_semi_structured(weight: torch.Tensor):
    """The 2:4-masked ``weight`` as a compressed fp16 CUDA sparse tensor (GPU only, see above)."""
    if not semi_structured_available():
        raise RuntimeError("2:4 sparse kernels need a CUDA GPU with compute capability ≥ 8.0 (Ampere or newer); "
                           "on CPU apply two_four_mask() and keep the matrix dense")
    from torch.sparse import to_sparse_semi_structured

    w = (weight * two_four_mask(weight)).half().cuda()
    return to_sparse_semi_structured(w)


# --------------------------------------------------------------------------- honest costs

def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def storage_bytes(weight: torch.Tensor) -> dict[str, int]:
    """Bytes of ``weight`` stored dense, as COO and as CSR (int64 and int32 indices), measured on the tensors.

    Sparse formats store every kept value *plus its position*: they only save memory at high sparsity.
    """
    w = weight.detach()
    with warnings.catch_warnings():  # "sparse CSR support is in beta" is not news to the lesson
        warnings.simplefilter("ignore", UserWarning)
        coo = w.to_sparse_coo().coalesce()
        csr = w.to_sparse_csr()
        crow, col = csr.crow_indices(), csr.col_indices()
        csr32 = torch.sparse_csr_tensor(crow.int(), col.int(), csr.values(), size=w.shape, check_invariants=True)
    return {"dense": _nbytes(w),
            "COO (int64)": _nbytes(coo.indices(), coo.values()),
            "CSR (int64)": _nbytes(crow, col, csr.values()),
            "CSR (int32)": _nbytes(csr32.crow_indices(), csr32.col_indices(), csr32.values())}


# --------------------------------------------------------------------------- whole-model helpers

def decoder_linears(model: nn.Module, kinds: tuple[str, ...] = LINEAR_KINDS) -> dict[str, nn.Linear]:
    """The Linear layers of the decoder blocks whose name ends in one of ``kinds`` (name → module).

    The embedding and the (tied) LM head are left out: the course prunes the transformer blocks. Inside a
    peft model the frozen ``base_layer`` of each LoRA layer is returned, under the LoRA layer's name.
    """
    out = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or ".layers." not in name or ".lora_" in name:
            continue
        if name.endswith(".base_layer"):
            name = name[: -len(".base_layer")]
        name = name.removeprefix("base_model.model.")  # peft's wrapper prefix
        if name.rsplit(".", 1)[-1] in kinds:
            out[name] = mod
    return out


def snapshot(linears: dict[str, nn.Linear]) -> dict[str, torch.Tensor]:
    """Copies of the weights, to restore with ``restore_`` between experiments."""
    return {name: mod.weight.detach().clone() for name, mod in linears.items()}


@torch.no_grad()
def restore_(linears: dict[str, nn.Linear], saved: dict[str, torch.Tensor]) -> None:
    """Copy saved weights back into the layers (in place)."""
    for name, mod in linears.items():
        mod.weight.copy_(saved[name])


@torch.no_grad()
def apply_masks_(linears: dict[str, nn.Linear], masks: dict[str, torch.Tensor]) -> None:
    """Multiply each layer's weight by its mask (in place): the pruned weights become exact zeros."""
    for name, mask in masks.items():
        linears[name].weight.mul_(mask)


def prune_unstructured_(linears: dict[str, nn.Linear], amount: float,
                        act_norms: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per-layer unstructured pruning of every layer in ``linears`` (in place); returns the (bool) masks.

    By magnitude, or by Wanda's |W|·‖X‖ per row when ``act_norms`` is given.
    """
    masks = {}
    for name, mod in linears.items():
        mask = magnitude_mask(mod.weight, amount) if act_norms is None else \
            wanda_mask(mod.weight, act_norms[name], amount)
        masks[name] = mask.bool()
    apply_masks_(linears, masks)
    return masks


def prune_mlp_channels_(model: nn.Module, amount: float, act_norms: dict[str, torch.Tensor] | None = None,
                        slice_: bool = False) -> list[torch.Tensor]:
    """Prune the fraction ``amount`` of MLP channels in every decoder block by ``mlp_channel_scores``.

    ``act_norms`` (from ``activation_norms``, keyed by layer name) makes the scores activation-aware.
    ``slice_=False`` zeroes the channels (shapes kept), ``slice_=True`` removes them. Returns kept indices.
    """
    kept = []
    for i, layer in enumerate(model.model.layers):
        act = act_norms[f"model.layers.{i}.mlp.down_proj"] if act_norms is not None else None
        keep = keep_channels(mlp_channel_scores(layer.mlp, act), amount)
        (slice_mlp_channels_ if slice_ else mask_mlp_channels_)(layer.mlp, keep)
        kept.append(keep)
    return kept
