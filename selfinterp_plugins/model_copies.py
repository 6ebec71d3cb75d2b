"""Copies of a base model for PEFT to wrap, so that the caller's model is never PEFT's.

PEFT edits the model it wraps in place: it swaps each target linear for its LoRA layer and turns
off `requires_grad` on every base weight. A researcher passes one base object to everything (a
DIT adapter, `WeightDiff.from_peft`, `WeightDiff.from_models`), so a wrapped base changed every
later result: `from_peft` unloading its own LoRA took the DIT adapter's off too, and a load that
failed halfway left PEFT's layers in. PEFT gets a copy instead:

- `weight_sharing_copy`: new modules over the same weight storage (new `Parameter` objects, the
  same tensors' memory), so it costs no weights' memory; an in-place change of the base's weights
  (`diff.applied(base)`) shows in the copy, a change of the copy's modules never in the base;
- `meta_copy`: the same modules on the meta device (shapes only, no memory), for a dry run of
  PEFT's injection that says which tensors an adapter must hold, at which shapes, before anything
  is allocated (an adapter_config.json asking rank 10⁸ costs nothing there).

In the core's public API because loading any adapter onto a shared base (the PEFT plugin's diffs,
Li et al.'s explainer) needs it, and a plugin never imports another plugin."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["meta_copy", "weight_sharing_copy"]


def weight_sharing_copy(model: nn.Module) -> nn.Module:
    """`model` with its own modules (and hooks, config), its parameters and buffers sharing storage."""
    memo = {id(p): nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in model.parameters()}
    memo.update({id(b): b for b in model.buffers()})
    return copy.deepcopy(model, memo)  # tied weights stay tied: one memo entry per parameter object


def meta_copy(model: nn.Module) -> nn.Module:
    """`model`'s modules with every parameter and buffer on the meta device (no memory)."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}
    memo.update({id(b): torch.empty_like(b, device="meta") for b in model.buffers()})
    return copy.deepcopy(model, memo)
