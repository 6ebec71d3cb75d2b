"""A loaded PEFT model -> each module's exact change, as PEFT itself defines it.

Reading an adapter's tensors by hand re-implements PEFT and drops whatever it does not know (a
LoRA on `embed_tokens` was lost that way, DoRA was refused). Here PEFT does the arithmetic:

- a plain LoRA layer (Linear, GPT-2 Conv1D, Embedding; no variant such as DoRA, no `lora_bias`)
  gives its factors: ΔW = scaling·B·A with PEFT's own `scaling` (lora_alpha/r, rsLoRA's
  alpha/√r, rank_pattern / alpha_pattern already resolved per module); for an embedding
  ΔW = scaling·(B·A)ᵀ (vocab×dim), kept as factors of that transpose;
- every other tuner layer (DoRA, LoHa, LoKr, IA3, VeRA, OFT, lora_bias, ...) is merged by PEFT
  into a copy of the layer and the dense change (weight, and bias where the merge changes it)
  is the merged copy minus the original: exact whatever the method's formula;
- `modules_to_save` (full replaced modules): new parameters minus the original ones.

Methods that do not change weights (prompt / prefix tuning, ...) and layers PEFT cannot merge
(aLoRA, Arrow routers, ...) are refused by name.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

_PREFIX = "base_model.model."


def _base_name(name: str) -> str:
    return name[len(_PREFIX):] if name.startswith(_PREFIX) else name


def _out_in(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """Conv1D (GPT-2) stores in×out; every diff is kept out×in (embeddings as stored: vocab×dim)."""
    return weight.T if type(module).__name__ == "Conv1D" else weight


def unsupported(peft_type: str, why: str, error_cls):
    """The one refusal: names the type, what is supported and what to do."""
    return error_cls(f"PEFT adapter type {peft_type} is not supported as a weight diff ({why}); supported: "
                     "PEFT methods that change weights and can be merged (LORA incl. rsLoRA, DoRA, rank/alpha "
                     "patterns, embeddings, modules_to_save; LOHA, LOKR, IA3, VERA, OFT, ...). "
                     "Use an adapter of one of those types.")


def module_changes(peft_model, adapter_name: str, error_cls, progress: bool = False) -> dict[str, dict]:
    """{base-model module name: {"A", "B", "scale"} or {"dense", "bias"}} for `adapter_name`; see the
    module docstring. Nothing in `peft_model` is modified."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper
    from tqdm.auto import tqdm

    if adapter_name not in peft_model.peft_config:
        raise error_cls(f"The PEFT model has no adapter {adapter_name!r} (it has {sorted(peft_model.peft_config)}); "
                        "pass adapter_name=one of those.")
    config = peft_model.peft_config[adapter_name]
    peft_type = str(getattr(config.peft_type, "value", config.peft_type))
    if config.is_prompt_learning:
        raise unsupported(peft_type, "it adds virtual tokens, not weights", error_cls)
    if getattr(config, "bias", "none") != "none":
        raise unsupported(peft_type, f"bias={config.bias!r} trains the base model's own biases in place, so "
                                     "their original values are gone once loaded", error_cls)
    layers = [(name, module) for name, module in peft_model.named_modules()
              if (isinstance(module, BaseTunerLayer) and adapter_name in _adapters(module))
              or (isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save)]
    changes = {}
    for name, module in tqdm(layers, desc="weight diff", disable=not progress, unit="module"):
        if isinstance(module, ModulesToSaveWrapper):
            changes[_base_name(name)] = _replaced(module.original_module, module.modules_to_save[adapter_name])
            continue
        if name.endswith(".token_adapter"):  # trainable_token_indices: the wrapper is the embedding
            name = name[: -len(".token_adapter")]
        if any(isinstance(parent, AuxiliaryTrainingWrapper) and not name.startswith(parent_name + ".token_adapter")
               for parent_name, parent in _parents(peft_model, name)):
            continue  # a tuner layer inside a modules_to_save copy: the replacement already covers it
        if isinstance(module, LoraLayer) and _plain_lora(module, adapter_name):
            changes[_base_name(name)] = _lora_factors(module, adapter_name)
        else:
            changes[_base_name(name)] = _merged_minus_base(module, adapter_name, peft_type, error_cls)
    return changes


def _adapters(module) -> set[str]:
    names = set()
    for attr in getattr(module, "adapter_layer_names", ()):
        layer = getattr(module, attr, None)
        if hasattr(layer, "keys"):
            names.update(layer.keys())
    return names


def _parents(model: nn.Module, name: str):
    parts = name.split(".")
    for i in range(1, len(parts)):
        parent_name = ".".join(parts[:i])
        yield parent_name, model.get_submodule(parent_name)


def _plain_lora(module, adapter_name: str) -> bool:
    base = module.get_base_layer()
    return (adapter_name not in getattr(module, "lora_variant", {})
            and not module.lora_bias.get(adapter_name, False)
            and (isinstance(base, (nn.Linear, nn.Embedding)) or type(base).__name__ == "Conv1D"))


def _lora_factors(module, adapter_name: str) -> dict:
    scale = float(module.scaling[adapter_name])
    if adapter_name in module.lora_embedding_A:  # ΔW = scale·(B_e·A_e)ᵀ = scale·A_eᵀ·B_eᵀ, vocab×dim
        a, b = module.lora_embedding_A[adapter_name], module.lora_embedding_B[adapter_name]
        return {"A": b.detach().float().T.clone(), "B": a.detach().float().T.clone(), "scale": scale}
    return {"A": module.lora_A[adapter_name].weight.detach().float().clone(),
            "B": module.lora_B[adapter_name].weight.detach().float().clone(), "scale": scale}


def _merged_minus_base(module, adapter_name: str, peft_type: str, error_cls) -> dict:
    base = module.get_base_layer()
    merged = copy.deepcopy(module)
    try:
        with torch.no_grad():
            merged.merge(safe_merge=True, adapter_names=[adapter_name])
    except (NotImplementedError, RuntimeError, ValueError, AttributeError, TypeError) as error:
        raise unsupported(peft_type, f"PEFT cannot merge its {type(module).__name__} layers: {error}", error_cls) from error
    new = merged.get_base_layer()
    return _difference(base, new)


def _replaced(original: nn.Module, replacement: nn.Module) -> dict:
    return _difference(original, replacement)


def _difference(old: nn.Module, new: nn.Module) -> dict:
    with torch.no_grad():
        dense = (_out_in(new, new.weight).float() - _out_in(old, old.weight).float()).detach().clone()
        bias = None
        if getattr(old, "bias", None) is not None:
            bias = (new.bias.float() - old.bias.float()).detach().clone()
            if not bias.any():
                bias = None
    return {"dense": dense, "bias": bias}


def unload_keeping_base(peft_model) -> nn.Module:
    """PEFT's `unload()`, except that modules_to_save put back the *original* module (PEFT's own
    unload keeps the trained copy), so a base that PEFT loaded an adapter onto is the caller's again."""
    from peft.utils.other import AuxiliaryTrainingWrapper

    inner = peft_model.get_base_model()
    for name, module in list(inner.named_modules()):
        if isinstance(module, AuxiliaryTrainingWrapper) and name:
            parent_name, _, child = name.rpartition(".")
            setattr(inner.get_submodule(parent_name) if parent_name else inner, child, module.original_module)
    return peft_model.unload()


def base_copies(tensor_names, base: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The base parameters an adapter file carries its own copy of (PEFT saves an embedding's
    `base_layer.weight` next to a LoRA on it, and loads it over the base's): {parameter name:
    (the parameter itself, a snapshot of its value)}, to compare and restore them."""
    params = dict(base.named_parameters())
    copies = {}
    for key in tensor_names:
        if ".base_layer." in key:
            name = _base_name(key).replace(".base_layer.", ".")
            if name in params:
                copies[name] = (params[name], params[name].detach().clone())
    return copies
