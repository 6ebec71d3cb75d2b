"""Weight diffs as first-class objects: what a fine-tune changed, module by module.

A `WeightDiff` maps module names of the base model (`model.layers.0.self_attn.q_proj`) to a
`ModuleDiff`: low-rank factors (ΔW = scale·B·A, A: r×in, B: out×r) or a dense ΔW (out×in).
It comes from a PEFT adapter through PEFT itself (`peft_conversion`: any method PEFT can merge,
LoRA on embeddings, DoRA, modules_to_save, ...; a directory needs the base model, except a plain
LoRA, whose change does not depend on it), or from a full fine-tune next to its base (per-module
truncated SVD, `low_rank`, reporting the fraction of the diff's energy kept); it is applied to a
base model in place and undone exactly, and saved as a plain PEFT LoRA adapter so any PEFT user
can load it. GPT-2-style `Conv1D` layers store weights as in×out; the diff is always kept out×in
(an embedding's as stored, vocab×dim) and transposed only where it touches such a weight.
Files are read with safetensors and JSON only; PEFT reads a directory only after the checks of
`adapter_files` (the same with a base model or without), and only onto a copy of the base sharing
its weights (`model_copies`). A diff records the base model it was made on (`model_identity`).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
from torch import nn

from selfinterp_plugins.errors import SelfInterpError
from selfinterp_plugins.peft_files import FIX, PEFT_CONFIG, PEFT_WEIGHTS, load_onto, plain_lora_changes, read_adapter
from selfinterp_plugins.storage import (
    DirectoryLock,
    read_json,
    save_safetensors,
    save_serialised_committed,
    write_json,
)
from selfinterp_plugins.storage.validation import NonNegativeInt, between, validate

from .low_rank import factor_svd, truncated_factors
from .model_identity import check_model, model_record
from .peft_conversion import module_changes

#: our own file beside PEFT's, and the commit record of a saved diff (storage)
INFO_FILE = "weight_diff.json"
_PREFIX = "base_model.model."

@dataclass
class WeightDiffInfo:
    """The fields of `weight_diff.json`: per-module energy kept by the SVD (a fraction), and where
    the diff came from."""

    energy_kept: dict[str, Annotated[float, between(0, 1.0 + 1e-6)]] = field(default_factory=dict)
    source: str | None = None
    rank: NonNegativeInt | None = None
    base_model: str | None = None
    model_id: str | None = None  # the base model the diff was saved against (model_identity)
    embedding_fingerprint: str | None = None


class WeightDiffError(SelfInterpError):
    """A weight diff that does not fit the model or the file it came from."""


@dataclass
class ModuleDiff:
    """One module's change: low-rank (A, B, scale) or dense; `energy_kept` when compressed by SVD;
    `bias`: the change of the module's bias, when the method changes it (IA3, lora_bias, modules_to_save)."""

    A: torch.Tensor | None = None
    B: torch.Tensor | None = None
    scale: float = 1.0
    dense: torch.Tensor | None = None
    energy_kept: float | None = None
    bias: torch.Tensor | None = None

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


def _weight_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module with its own weight: linears, embeddings, norms, a modules_to_save head."""
    return {name: m for name, m in model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)}


class WeightDiff:
    """What a fine-tune changed, per module; see the module docstring."""

    def __init__(self, modules: dict[str, ModuleDiff], meta: dict | None = None, directory: Path | None = None):
        if not modules:
            raise WeightDiffError("A weight diff needs at least one module; check the adapter or the two models given.")
        self.modules = dict(modules)
        self.meta = dict(meta or {})  # with `embedding_fingerprint`: the base model it belongs to (model_identity)
        self.directory = directory  # where it was read from, to name it in an error

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model other than the one this diff was made on (a diff without a recorded
        fingerprint, made elsewhere or saved before, passes; its shapes are still checked)."""
        check_model(self.meta, model, self.directory or "a weight diff", "weight diff")

    def __repr__(self) -> str:
        ranks = sorted({m.rank for m in self.modules.values() if m.rank is not None})
        return f"WeightDiff({len(self.modules)} modules, ranks {ranks or 'dense'})"

    # ---- sources ----------------------------------------------------------------------------

    @classmethod
    def from_peft(cls, source, adapter_name: str = "default", base: nn.Module | None = None,
                  progress: bool = False) -> WeightDiff:
        """From a loaded `PeftModel`, or a PEFT adapter directory loaded onto `base` through PEFT
        (`PeftModel.from_pretrained` onto a copy sharing base's weights, so `base` is left exactly as it
        was, also when the load fails). Each module's change is PEFT's own
        (`peft_conversion`): every method PEFT can merge converts exactly, others are refused by name.
        Without `base` a directory must hold a plain LoRA (its change does not depend on the base)."""
        if isinstance(source, (str, Path)):
            if base is None:
                return cls._from_peft_dir(Path(source))
            return cls._from_peft_dir_on(Path(source), base, adapter_name, progress)
        changes = module_changes(source, adapter_name, WeightDiffError, progress=progress)
        config = source.peft_config[adapter_name]
        return cls({name: ModuleDiff(**change) for name, change in changes.items()},
                   {"source": "peft", "base_model": getattr(config, "base_model_name_or_path", None),
                    **model_record(source)})

    @classmethod
    def _from_peft_dir_on(cls, directory: Path, base: nn.Module, adapter_name: str, progress: bool) -> WeightDiff:
        record = _record(directory)
        files = read_adapter(directory, record)  # the same checks as without a base, before PEFT reads anything
        info = validate(WeightDiffInfo, record, str(directory / INFO_FILE), FIX, unknown="ignore")
        check_model(vars(info), base, directory, "weight diff")
        peft_model = load_onto(files, base, adapter_name)  # PEFT wraps a copy sharing base's weights, never base
        diff = cls.from_peft(peft_model, adapter_name, progress=progress)
        diff.directory = directory
        return diff

    @classmethod
    def _from_peft_dir(cls, directory: Path) -> WeightDiff:
        files = read_adapter(directory, _record(directory))
        modules = {name: ModuleDiff(**change) for name, change in plain_lora_changes(files, WeightDiffError).items()}
        return cls(modules, {"source": "peft", "base_model": files.config.get("base_model_name_or_path")}, directory)

    @classmethod
    def from_models(cls, base: nn.Module, finetuned: nn.Module, rank: int | None = None, atol: float = 0.0,
                    progress: bool = False) -> WeightDiff:
        """The difference of every linear layer that changed, truncated to `rank` by a randomized
        truncated SVD (`low_rank.truncated_factors`: accuracy measured there; None keeps it dense);
        `energy_kept` = Σ top-r σ² / Σ σ² per module. `progress`: a bar over the modules."""
        from tqdm.auto import tqdm

        base_modules, tuned_modules = _linear_modules(base), _linear_modules(finetuned)
        if base_modules.keys() != tuned_modules.keys():
            raise WeightDiffError("The two models have different linear layers; pass a fine-tune of this base model.")
        modules = {}
        for name, module in tqdm(base_modules.items(), desc="weight diff", disable=not progress, unit="module"):
            delta = (_weight_out_in(tuned_modules[name]) - _weight_out_in(module)).detach().float()
            if delta.abs().max() <= atol:
                continue
            if rank is None:
                modules[name] = ModuleDiff(dense=delta.clone(), energy_kept=1.0)
                continue
            A, B, energy = truncated_factors(delta, rank)
            modules[name] = ModuleDiff(A=A, B=B, scale=1.0, energy_kept=energy)
        return cls(modules, {"source": "full fine-tune", "rank": rank, **model_record(base)})

    def compress(self, rank: int, progress: bool = False) -> WeightDiff:
        """The same diff with every module at rank ≤ `rank` (what per-row batches and DIT need):
        low-rank modules through QR of their factors (exact; unchanged when already at most `rank`),
        dense ones (DoRA, LoHa, modules_to_save, ...) by truncated SVD; bias changes are kept."""
        from tqdm.auto import tqdm

        modules = {}
        for name, diff in tqdm(self.modules.items(), desc="compress", disable=not progress, unit="module"):
            if diff.A is not None:
                A, B, energy = factor_svd(diff.A, diff.B, diff.scale, rank)
            elif diff.dense.dim() == 2:
                A, B, energy = truncated_factors(diff.dense, rank)
            else:
                raise WeightDiffError(f"Diff for {name} has shape {tuple(diff.dense.shape)}, not a matrix; "
                                      "only 2-D weights (linears, embeddings) have a rank: drop that module first.")
            kept = energy if diff.energy_kept is None else energy * diff.energy_kept
            modules[name] = ModuleDiff(A=A, B=B, scale=1.0, energy_kept=kept, bias=diff.bias)
        return WeightDiff(modules, {**self.meta, "rank": rank})

    # ---- use --------------------------------------------------------------------------------

    def energy_report(self) -> dict[str, float]:
        return {name: m.energy_kept for name, m in self.modules.items() if m.energy_kept is not None}

    @contextlib.contextmanager
    def applied(self, model: nn.Module, alpha: float = 1.0):
        """Add alpha·ΔW to `model`'s weights for the duration of the block, then remove it exactly."""
        self.check_model(model)
        targets = _weight_modules(model)
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
                    bias = targets[name].bias if diff.bias is not None else None
                    if bias is None and diff.bias is not None:
                        raise WeightDiffError(f"Diff for {name} changes a bias the module does not have; "
                                              "use the base model it was made from.")
                    saved[name] = (weight.detach().clone(), None if bias is None else bias.detach().clone())
                    weight.add_((alpha * (delta.T if _is_conv1d(targets[name]) else delta)).to(weight.dtype))
                    if bias is not None:
                        bias.add_((alpha * diff.bias.to(bias.device)).to(bias.dtype))
            yield model
        finally:
            with torch.no_grad():
                for name, (original, original_bias) in saved.items():
                    targets[name].weight.copy_(original)
                    if original_bias is not None:
                        targets[name].bias.copy_(original_bias)

    # ---- PEFT format ------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, base_model: nn.Module, rank: int | None = None) -> Path:
        """Write a plain PEFT LoRA adapter (`PeftModel.from_pretrained(base, directory)` loads it).
        Low-rank modules are zero-padded to one rank; dense ones are factorised by SVD at `rank`
        (default: exact, full rank; a rank: truncated SVD). Linears, Conv1D and embeddings only; a
        bias change (IA3, lora_bias, modules_to_save) has no place in a plain LoRA and is refused."""
        directory = Path(directory)  # made by the DirectoryLock below, once the diff is known to fit
        targets = _weight_modules(base_model)
        factors = {}
        for name, diff in self.modules.items():
            module = targets.get(name)
            if not (isinstance(module, (nn.Linear, nn.Embedding)) or _is_conv1d(module)):
                raise WeightDiffError(f"Diff for {name} touches a {type(module).__name__}, not a linear or an embedding; "
                                      "a plain LoRA adapter cannot hold it: use the diff in memory (diff.applied).")
            if diff.bias is not None:
                raise WeightDiffError(f"Diff for {name} changes its bias, which a plain LoRA adapter cannot hold; "
                                      "use the diff in memory (diff.applied), or an adapter method that keeps biases.")
            if diff.A is not None:
                factors[name] = (diff.A.float(), diff.scale * diff.B.float())
            elif rank is None:
                U, S, Vh = torch.linalg.svd(diff.dense.float(), full_matrices=False)
                factors[name] = (Vh, U * S)
            else:
                factors[name] = truncated_factors(diff.dense, rank)[:2]
        r = max(a.shape[0] for a, _ in factors.values())
        tensors = {}
        for name, (a, b) in factors.items():
            pad = r - a.shape[0]
            a = torch.cat([a, a.new_zeros(pad, a.shape[1])]).contiguous()
            b = torch.cat([b, b.new_zeros(b.shape[0], pad)], dim=1).contiguous()
            if isinstance(targets[name], nn.Embedding):  # PEFT's ΔW = (B_e·A_e)ᵀ: A_e = Bᵀ (r×vocab), B_e = Aᵀ
                tensors[f"{_PREFIX}{name}.lora_embedding_A"] = b.T.contiguous()
                tensors[f"{_PREFIX}{name}.lora_embedding_B"] = a.T.contiguous()
            else:
                tensors[f"{_PREFIX}{name}.lora_A.weight"] = a
                tensors[f"{_PREFIX}{name}.lora_B.weight"] = b
        linear = {name for name in factors if not isinstance(targets[name], nn.Embedding)}
        conv1d = {name for name in factors if _is_conv1d(targets[name])}
        if conv1d and len(conv1d) != len(linear):
            raise WeightDiffError("A diff mixing Conv1D and Linear modules cannot be one PEFT adapter (fan_in_fan_out "
                                  "is global); save the two groups separately.")
        config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": r, "lora_dropout": 0.0,
                  "target_modules": sorted(factors), "fan_in_fan_out": bool(conv1d), "bias": "none",
                  "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
                  "base_model_name_or_path": getattr(getattr(base_model, "config", None), "_name_or_path", None),
                  "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None}
        def serialise(folder: Path) -> None:
            save_safetensors(tensors, folder / PEFT_WEIGHTS)
            write_json(config, folder / PEFT_CONFIG)

        self.check_model(base_model)  # a diff made on another model saved as this one's would pass every later check
        info = {"energy_kept": self.energy_report(), **{k: v for k, v in self.meta.items() if _jsonable(v)},
                **model_record(base_model)}
        with DirectoryLock(directory):  # made, and locked: a second writer fails at once instead of mixing two diffs
            # weight_diff.json is the commit record: a kill leaves the old adapter or the new one
            save_serialised_committed(directory, serialise, info, INFO_FILE)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> WeightDiff:
        diff = cls._from_peft_dir(Path(directory))
        extra = Path(directory) / INFO_FILE
        if extra.exists():
            info = validate(WeightDiffInfo, _record(Path(directory)), str(extra), FIX, unknown="ignore")
            for name, energy in info.energy_kept.items():
                if name in diff.modules:
                    diff.modules[name].energy_kept = energy
            diff.meta.update({"model_id": info.model_id, "embedding_fingerprint": info.embedding_fingerprint})
        return diff


def _record(directory: Path) -> dict:
    """weight_diff.json, the commit record of a diff saved by `save_pretrained` ({} for a PEFT
    directory made elsewhere, or saved before the record: its files are the usual ones)."""
    path = directory / INFO_FILE
    return read_json(path) if path.is_file() else {}


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
