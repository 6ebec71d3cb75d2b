"""Many weight diffs in one forward pass: batch row i runs with its own diff ΔW_i.

Training hundreds of synthetic diffs, or a DIT adapter over batches that mix diffs, one diff at a
time would cost one forward per diff. Instead a forward hook on every target linear adds, row by
row, the low-rank update  y_i += s_i · B_i (A_i x_i)  (einsum over stacked factors), so a batch of
n rows carries n different fine-tunes for about the cost of rank-r matmuls. The factors may
require grad: the same hook trains all n diffs at once. Rows whose diff lacks a module get no
update there. Conv1D (GPT-2) layers are handled like linears: the hook sees their output.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .weight_diff import WeightDiff, WeightDiffError, _linear_modules, _weight_out_in


def stack_factors(diffs: list[WeightDiff], name: str, out_features: int, in_features: int):
    """(A: n×r×in, B: n×out×r, scale: n) for one module, zero-padded to the largest rank; None if no
    diff touches it. Dense diffs are refused: per-row dense updates would cost a full matmul each."""
    ranks = []
    for diff in diffs:
        module = diff.modules.get(name)
        if module is not None and module.A is None:
            raise WeightDiffError(f"Diff for {name} is dense; compress it first (diff.compress(rank)).")
        if module is not None and (module.A.shape[1], module.B.shape[0]) != (in_features, out_features):
            raise WeightDiffError(f"{diff.directory or 'A weight diff'}: its change of {name} is "
                                  f"{module.B.shape[0]}×{module.A.shape[1]} but the model's module is "
                                  f"{out_features}×{in_features}; use it with the base model it was made from.")
        ranks.append(0 if module is None else module.A.shape[0])
    r = max(ranks)
    if r == 0:
        return None
    A = torch.zeros(len(diffs), r, in_features)
    B = torch.zeros(len(diffs), out_features, r)
    scale = torch.zeros(len(diffs))
    rows_a, rows_b = [], []
    for i, diff in enumerate(diffs):
        module = diff.modules.get(name)
        if module is None:
            rows_a.append(A[i])
            rows_b.append(B[i])
            continue
        k = module.A.shape[0]
        # keep the autograd graph to trainable factors: pad by concatenation, not by copying
        rows_a.append(torch.cat([module.A, module.A.new_zeros(r - k, in_features)]))
        rows_b.append(torch.cat([module.B, module.B.new_zeros(out_features, r - k)], dim=1))
        scale[i] = module.scale
    return torch.stack(rows_a), torch.stack(rows_b), scale


def resolve_targets(model: nn.Module, names) -> dict[str, nn.Module]:
    """The linear layer for each base-model module name; inside a PEFT-wrapped model that is the
    LoRA layer's `base_layer`, so a per-row diff adds to the frozen weight and PEFT's own LoRA
    (a DIT adapter) adds on top: y = (W + ΔW_i + L) x."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    targets = _linear_modules(inner)
    out = {}
    for name in names:
        module = targets.get(name) or targets.get(name + ".base_layer")
        if module is None and name in dict(inner.named_modules()):
            raise WeightDiffError(f"Per-row diffs add B·A·x at linear layers; {name!r} is a "
                                  f"{type(dict(inner.named_modules())[name]).__name__} (a LoRA on embeddings, "
                                  "modules_to_save): use diff.applied(model) one diff at a time.")
        if module is None:
            raise WeightDiffError(f"The model has no module {name!r}; apply diffs to the base model they were made from.")
        out[name] = module
    return out


@contextlib.contextmanager
def per_row_factors(model: nn.Module, factors: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Inside the block, row i of every forward batch adds scale[i]·B[i]·A[i]·x at each named module
    (A: n×r×in, B: n×out×r, scale: n). The factors may require grad: one forward trains n diffs."""
    targets = resolve_targets(model, factors)
    handles = []
    for name, (A, B, scale) in factors.items():

        def hook(_module, args, output, A=A, B=B, scale=scale):
            x = args[0]
            if x.shape[0] != A.shape[0]:
                raise WeightDiffError(f"The batch has {x.shape[0]} rows but {A.shape[0]} diffs were given; "
                                      "pass one diff per row.")
            low = torch.einsum("b...i,bri->b...r", x.to(A.dtype), A)
            update = torch.einsum("b...r,bor->b...o", low, B) * scale.view(-1, *([1] * (low.dim() - 1)))
            return output + update.to(output.dtype)

        handles.append(targets[name].register_forward_hook(hook))
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def per_row_diffs(model: nn.Module, diffs: list[WeightDiff]):
    """Inside the block, row i of every forward batch (of exactly len(diffs) rows) runs with diffs[i];
    a diff recorded for another model (`WeightDiff.check_model`) or of other shapes is refused."""
    for diff in diffs:
        diff.check_model(model)
    names = sorted({name for diff in diffs for name in diff.modules})
    targets = resolve_targets(model, names)
    factors = {}
    for name in names:
        weight = targets[name].weight
        out_features, in_features = _weight_out_in(targets[name]).shape
        stacked = stack_factors(diffs, name, out_features, in_features)
        if stacked is not None:
            factors[name] = tuple(t.to(weight.device) for t in stacked)
    with per_row_factors(model, factors):
        yield model
