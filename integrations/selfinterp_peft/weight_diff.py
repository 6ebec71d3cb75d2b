"""Weight diffs as first-class objects: what a fine-tune changed, module by module.

A `WeightDiff` maps module names of the base model (`model.layers.0.self_attn.q_proj`) to a
`ModuleDiff`: low-rank factors (ΔW = scale·B·A, A: r×in, B: out×r) or a dense ΔW (out×in).
It comes from a PEFT LoRA adapter (a directory or a loaded `PeftModel`), or from a full fine-tune
next to its base (per-module truncated SVD, reporting the fraction of the diff's energy kept);
it is applied to a base model in place and undone exactly, and saved as a plain PEFT LoRA
adapter so any PEFT user can load it. GPT-2-style `Conv1D` layers store weights as in×out; the
diff is always kept out×in and transposed only where it touches such a weight.
Files are read with safetensors and JSON only.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
from torch import nn

from selfinterp_plugins.errors import ArtifactError, SelfInterpError
from selfinterp_plugins.locks import DirectoryLock
from selfinterp_plugins.serialization import (
    check_artifact_dir,
    load_safetensors,
    output_errors,
    read_json,
    save_safetensors,
    write_json,
)
from selfinterp_plugins.validation import Name, NonNegativeInt, between, check_finite_tensors, validate

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
FIX = "re-save the adapter (save_pretrained) or re-download it."


@dataclass
class PeftLoraConfig:
    """The fields of a PEFT LoRA `adapter_config.json` a weight diff is read with (PEFT writes many
    more, kept out of the way); PEFT's own defaults where a field is absent."""

    peft_type: Name = "LORA"
    use_dora: bool | None = False
    lora_alpha: float = 8
    use_rslora: bool | None = False
    alpha_pattern: dict[str, float] | None = None
    r: NonNegativeInt | None = None
    base_model_name_or_path: str | None = None


@dataclass
class WeightDiffInfo:
    """The fields of `weight_diff.json`: per-module energy kept by the SVD (a fraction), and where
    the diff came from."""

    energy_kept: dict[str, Annotated[float, between(0, 1.0 + 1e-6)]] = field(default_factory=dict)
    source: str | None = None
    rank: NonNegativeInt | None = None
    base_model: str | None = None


class WeightDiffError(SelfInterpError):
    """A weight diff that does not fit the model or the file it came from."""


@dataclass
class ModuleDiff:
    """One module's change: low-rank (A, B, scale) or dense; `energy_kept` when compressed by SVD."""

    A: torch.Tensor | None = None
    B: torch.Tensor | None = None
    scale: float = 1.0
    dense: torch.Tensor | None = None
    energy_kept: float | None = None

    @property
    def rank(self) -> int | None:
        return None if self.A is None else self.A.shape[0]

    def delta(self) -> torch.Tensor:
        """ΔW as out×in."""
        if self.dense is not None:
            return self.dense
        return self.scale * (self.B.float() @ self.A.float())


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


def _linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) or _is_conv1d(m)}


def _weight_out_in(module: nn.Module) -> torch.Tensor:
    return module.weight.T if _is_conv1d(module) else module.weight


class WeightDiff:
    """What a fine-tune changed, per module; see the module docstring."""

    def __init__(self, modules: dict[str, ModuleDiff], meta: dict | None = None):
        if not modules:
            raise WeightDiffError("A weight diff needs at least one module; check the adapter or the two models given.")
        self.modules = dict(modules)
        self.meta = dict(meta or {})

    def __repr__(self) -> str:
        ranks = sorted({m.rank for m in self.modules.values() if m.rank is not None})
        return f"WeightDiff({len(self.modules)} modules, ranks {ranks or 'dense'})"

    # ---- sources ----------------------------------------------------------------------------

    @classmethod
    def from_peft(cls, source, adapter_name: str = "default") -> WeightDiff:
        """From a loaded `PeftModel` or a PEFT LoRA adapter directory (no base model needed)."""
        if isinstance(source, (str, Path)):
            return cls._from_peft_dir(Path(source))
        modules = {}
        config = source.peft_config[adapter_name]
        if getattr(config, "use_dora", False):
            raise WeightDiffError("DoRA adapters are not low-rank weight diffs; use a plain LoRA adapter.")
        for name, module in source.named_modules():
            if hasattr(module, "lora_A") and adapter_name in getattr(module, "lora_A", {}):
                base_name = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
                modules[base_name] = ModuleDiff(A=module.lora_A[adapter_name].weight.detach().float().clone(),
                                                B=module.lora_B[adapter_name].weight.detach().float().clone(),
                                                scale=float(module.scaling[adapter_name]))
        return cls(modules, {"source": "peft", "base_model": getattr(config, "base_model_name_or_path", None)})

    @classmethod
    def _from_peft_dir(cls, directory: Path) -> WeightDiff:
        check_artifact_dir(directory)  # a pickled adapter_model.bin or a symlink out is refused by name
        config = validate(PeftLoraConfig, read_json(directory / PEFT_CONFIG), str(directory / PEFT_CONFIG), FIX,
                          unknown="ignore")
        if config.peft_type != "LORA" or config.use_dora:
            raise WeightDiffError(f"{directory} is not a plain LoRA adapter (peft_type {config.peft_type}); "
                                  "only LoRA adapters are weight diffs here.")
        tensors = check_finite_tensors(load_safetensors(directory / PEFT_WEIGHTS), directory / PEFT_WEIGHTS, FIX)
        alpha, rslora = config.lora_alpha, bool(config.use_rslora)
        alpha_pattern = config.alpha_pattern or {}
        modules = {}
        for key, a in tensors.items():
            if not key.endswith(".lora_A.weight"):
                continue
            name = key[: -len(".lora_A.weight")]
            name = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
            b_key = key.replace(".lora_A.weight", ".lora_B.weight")
            if b_key not in tensors:
                raise ArtifactError(f"{directory / PEFT_WEIGHTS} has {key} but no {b_key}; re-save the adapter.")
            r = a.shape[0]
            module_alpha = next((v for k, v in alpha_pattern.items() if name == k or name.endswith("." + k)), alpha)
            scale = module_alpha / (math.sqrt(r) if rslora else r)
            modules[name] = ModuleDiff(A=a.float(), B=tensors[b_key].float(), scale=float(scale))
        return cls(modules, {"source": "peft", "base_model": config.base_model_name_or_path})

    @classmethod
    def from_models(cls, base: nn.Module, finetuned: nn.Module, rank: int | None = None, atol: float = 0.0) -> WeightDiff:
        """The difference of every linear layer that changed, truncated to `rank` by SVD (None keeps it
        dense); `energy_kept` = Σ top-r σ² / Σ σ² per module."""
        base_modules, tuned_modules = _linear_modules(base), _linear_modules(finetuned)
        if base_modules.keys() != tuned_modules.keys():
            raise WeightDiffError("The two models have different linear layers; pass a fine-tune of this base model.")
        modules = {}
        for name, module in base_modules.items():
            delta = (_weight_out_in(tuned_modules[name]) - _weight_out_in(module)).detach().float()
            if delta.abs().max() <= atol:
                continue
            if rank is None:
                modules[name] = ModuleDiff(dense=delta.clone(), energy_kept=1.0)
                continue
            U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
            r = min(rank, S.shape[0])
            energy = float((S[:r] ** 2).sum() / (S ** 2).sum())
            modules[name] = ModuleDiff(A=Vh[:r].clone(), B=(U[:, :r] * S[:r]).clone(), scale=1.0, energy_kept=energy)
        return cls(modules, {"source": "full fine-tune", "rank": rank})

    # ---- use --------------------------------------------------------------------------------

    def energy_report(self) -> dict[str, float]:
        return {name: m.energy_kept for name, m in self.modules.items() if m.energy_kept is not None}

    @contextlib.contextmanager
    def applied(self, model: nn.Module, alpha: float = 1.0):
        """Add alpha·ΔW to `model`'s weights for the duration of the block, then remove it exactly."""
        targets = _linear_modules(model)
        missing = sorted(set(self.modules) - set(targets))
        if missing:
            raise WeightDiffError(f"The model has no module {missing[0]!r} (and {len(missing) - 1} more); "
                                  "apply the diff to the base model it was made from.")
        saved = {}
        try:
            with torch.no_grad():
                for name, diff in self.modules.items():
                    weight = targets[name].weight
                    delta = diff.delta().to(weight.device)
                    if tuple(delta.shape) != tuple(_weight_out_in(targets[name]).shape):
                        raise WeightDiffError(f"Diff for {name} is {tuple(delta.shape)} but the module is "
                                              f"{tuple(_weight_out_in(targets[name]).shape)}; use the base model it was made from.")
                    saved[name] = weight.detach().clone()
                    weight.add_((alpha * (delta.T if _is_conv1d(targets[name]) else delta)).to(weight.dtype))
            yield model
        finally:
            with torch.no_grad():
                for name, original in saved.items():
                    targets[name].weight.copy_(original)

    # ---- PEFT format ------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, base_model: nn.Module, rank: int | None = None) -> Path:
        """Write a plain PEFT LoRA adapter (`PeftModel.from_pretrained(base, directory)` loads it).
        Low-rank modules are zero-padded to one rank; dense ones are factorised by SVD at `rank`
        (default: exact, full rank)."""
        directory = Path(directory)
        with output_errors(directory):
            directory.mkdir(parents=True, exist_ok=True)
        targets = _linear_modules(base_model)
        factors = {}
        for name, diff in self.modules.items():
            if diff.A is not None:
                factors[name] = (diff.A.float(), diff.scale * diff.B.float())
            else:
                U, S, Vh = torch.linalg.svd(diff.dense.float(), full_matrices=False)
                r = S.shape[0] if rank is None else min(rank, S.shape[0])
                factors[name] = (Vh[:r], U[:, :r] * S[:r])
        r = max(a.shape[0] for a, _ in factors.values())
        tensors = {}
        for name, (a, b) in factors.items():
            pad = r - a.shape[0]
            tensors[f"{_PREFIX}{name}.lora_A.weight"] = torch.cat([a, a.new_zeros(pad, a.shape[1])]).contiguous()
            tensors[f"{_PREFIX}{name}.lora_B.weight"] = torch.cat([b, b.new_zeros(b.shape[0], pad)], dim=1).contiguous()
        conv1d = {name for name in factors if _is_conv1d(targets.get(name, nn.Identity()))}
        if conv1d and len(conv1d) != len(factors):
            raise WeightDiffError("A diff mixing Conv1D and Linear modules cannot be one PEFT adapter (fan_in_fan_out "
                                  "is global); save the two groups separately.")
        config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": r, "lora_dropout": 0.0,
                  "target_modules": sorted(factors), "fan_in_fan_out": bool(conv1d), "bias": "none",
                  "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
                  "base_model_name_or_path": getattr(getattr(base_model, "config", None), "_name_or_path", None),
                  "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None}
        with DirectoryLock(directory):  # made, and locked: a second writer fails at once instead of mixing two diffs
            save_safetensors(tensors, directory / PEFT_WEIGHTS)
            write_json(config, directory / PEFT_CONFIG)
            write_json({"energy_kept": self.energy_report(), **{k: v for k, v in self.meta.items() if _jsonable(v)}},
                       directory / "weight_diff.json")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> WeightDiff:
        diff = cls._from_peft_dir(Path(directory))
        extra = Path(directory) / "weight_diff.json"
        if extra.exists():
            info = validate(WeightDiffInfo, read_json(extra), str(extra), FIX, unknown="ignore")
            for name, energy in info.energy_kept.items():
                if name in diff.modules:
                    diff.modules[name].energy_kept = energy
        return diff


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
