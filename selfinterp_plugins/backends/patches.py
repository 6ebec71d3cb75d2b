"""A low-rank change to the frozen model's linear layers, on while an explainer runs.

An Activation Oracle is the base model plus a LoRA, and what it reads are the *base* model's
activations: so the LoRA must be on during the oracle's own forward passes and off everywhere
else (the user's own reads, `capture`, other explainers on the same model). A `LowRankPatch`
holds the factors by module name (transformers naming, as PEFT saves them); a backend turns it
on for a block of calls (`Backend.patched`). The PEFT plugin builds one from a LoRA directory
with PEFT's own loader; the core never imports PEFT.

Each patched module's output gains PEFT's LoRA term, `lora_B(lora_A(x)) * scaling` with the input
cast to the factors' dtype and the sum cast back to the output's (peft `tuners/lora/layer.py`,
`Linear.forward`, dropout off as in eval): the same function the reference's oracle runs, unmerged,
so in bfloat16 the base weights are not rounded together with the change.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import BackendError

_PEFT_PREFIX = "base_model.model."


@dataclass
class LowRankPatch:
    """{module name: (A (r, in), B (out, r), scale)}; each module's output y becomes
    y + scale·(x·Aᵀ)·Bᵀ for its input x."""

    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]]

    def __post_init__(self):
        if not self.modules:
            raise BackendError("A low-rank patch needs at least one module; build it from a LoRA with factors.")
        self.modules = {_base_name(name): factors for name, factors in self.modules.items()}
        for name, (a, b, _scale) in self.modules.items():
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
                raise BackendError(f"The patch of {name} has factors {tuple(a.shape)} and {tuple(b.shape)}, not "
                                   "(r, in) and (out, r); rebuild it from the adapter.")

    @property
    def num_floats(self) -> int:
        """Floats in the factors: what a remote request carries (NDIF serves base weights only)."""
        return sum(a.numel() + b.numel() for a, b, _ in self.modules.values())

    @staticmethod
    def delta(x: torch.Tensor, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
        """The patched output: PEFT's LoRA term added to `out`, computed in the factors' dtype. Torch
        only (nnsight ships it inside a remote request)."""
        lora = (x.to(a.dtype) @ a.T) @ b.T
        return (out + lora * scale).to(out.dtype)

    def targets(self, root: nn.Module) -> dict[str, nn.Module]:
        """The module each name gives in `root`, checked to fit the factors (a linear layer of the
        same in and out widths); a missing or misfitting one is refused before anything runs."""
        found = {}
        for name, (a, b, _scale) in self.modules.items():
            try:
                module = root.get_submodule(name)
            except AttributeError:
                raise BackendError(f"The model has no module {name!r} that the patch changes; load the adapter onto the "
                                   "model it was trained for.") from None
            weight = getattr(module, "weight", None)
            shape = None if not isinstance(weight, torch.Tensor) else tuple(weight.shape)
            if shape is not None and shape != (b.shape[0], a.shape[1]):
                raise BackendError(f"{name} is {shape[0]}x{shape[1]} (out x in) in this model but the patch is for "
                                   f"{b.shape[0]}x{a.shape[1]}; load the adapter onto the model it was trained for.")
            found[name] = module
        return found

    @contextlib.contextmanager
    def hooked(self, root: nn.Module):
        """The patch on `root`'s modules (forward hooks) for the enclosed block, then off again."""
        handles = []
        try:
            for name, module in self.targets(root).items():
                a, b, scale = self.modules[name]
                device = _device_of(module, a.device)
                a, b = a.to(device), b.to(device)

                def hook(_module, args, output, a=a, b=b, scale=scale):
                    return self.delta(args[0], output, a, b, scale)

                handles.append(module.register_forward_hook(hook))
            yield self
        finally:
            for handle in handles:
                handle.remove()


def _base_name(name: str) -> str:
    return name[len(_PEFT_PREFIX):] if name.startswith(_PEFT_PREFIX) else name


def _device_of(module: nn.Module, default: torch.device) -> torch.device:
    for p in module.parameters():
        return p.device
    return default
