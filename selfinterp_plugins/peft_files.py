"""A PEFT adapter directory, checked before PEFT reads it: one validation on every path.

Three loaders read PEFT directories: `WeightDiff.from_peft(dir)` (a plain LoRA from its two files,
no model), `WeightDiff.from_peft(dir, base=model)` and `DITAdapter.from_pretrained` (through PEFT,
onto a model). PEFT checks little of what it loads: a tensor of a module the model lacks is
dropped, a missing `lora_B` or an empty file leaves PEFT's own initialisation in place (a random
diff, silently), NaN weights and a NaN `lora_alpha` load, a config asking rank 10⁸ makes it
allocate 256 GB. So every directory goes through `read_adapter` (the files alone: the config's
fields, every tensor floating point and finite, each LoRA factor paired with its partner at the
rank the config gives, a scale that fits in float32) and, where there is a model, `check_fits`
(PEFT's own injection run on a meta copy of the model, `model_copies.meta_copy`: the file must
hold exactly the tensors PEFT creates there, at their shapes) before PEFT sees the directory.
`load_onto` then lets PEFT load it onto a weight-sharing copy of the model, never the model itself.

In the core's public API because every plugin that loads a PEFT directory (the PEFT bridge, DIT,
the Activation Oracles, Li et al.'s explainer) needs the same checks, and a plugin never imports
another plugin; `peft` itself is imported only inside the functions that build a model."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from selfinterp_plugins.errors import ArtifactError
from selfinterp_plugins.storage import (
    check_artifact_dir,
    committed_files,
    load_safetensors,
    read_json,
    usual_names,
)
from selfinterp_plugins.storage.validation import Name, NonNegativeInt, check_finite_tensors, validate

from .model_copies import meta_copy, weight_sharing_copy

__all__ = ["AdapterFiles", "FIX", "LORA_FACTORS", "PEFT_CONFIG", "PEFT_DEFAULT_RANK", "PEFT_WEIGHTS", "PeftAdapterConfig",
           "check_fits", "load_onto", "lora_pairs", "lora_rank", "lora_scale", "plain_lora_changes", "read_adapter"]

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
FIX = "re-save the adapter (save_pretrained) or re-download it."
_PREFIX = "base_model.model."
#: (A suffix, B suffix) of a LoRA's factors in PEFT's files: linears (and Conv1D), embeddings
LORA_FACTORS = ((".lora_A.weight", ".lora_B.weight"), (".lora_embedding_A", ".lora_embedding_B"))
#: PEFT's LoraConfig default rank, for a config without `r`
PEFT_DEFAULT_RANK = 8
_FLOAT32_MAX = torch.finfo(torch.float32).max


@dataclass
class PeftAdapterConfig:
    """The fields of a PEFT `adapter_config.json` read here (PEFT writes many more, kept out of the
    way; PEFT checks the rest when it builds the config); PEFT's own defaults where one is absent."""

    peft_type: Name = "LORA"
    use_dora: bool | None = False
    lora_alpha: float = 8
    use_rslora: bool | None = False
    alpha_pattern: dict[str, float] | None = None
    rank_pattern: dict[str, NonNegativeInt] | None = None
    r: NonNegativeInt | None = None  # 0 is OFT's "sized by oft_block_size"; a LoRA's factors must have rank ≥ 1
    base_model_name_or_path: str | None = None


@dataclass
class AdapterFiles:
    """A PEFT adapter directory whose files passed `read_adapter`: its config as read, its tensors,
    and the record our own file beside PEFT's gives ({} for a directory PEFT wrote alone)."""

    directory: Path
    config_path: Path
    weights_path: Path
    config: dict
    tensors: dict[str, torch.Tensor]
    record: dict


def read_adapter(directory: Path, record: dict) -> AdapterFiles:
    """The adapter's two files, checked without a model (see the module docstring)."""
    check_artifact_dir(directory)  # a pickled adapter_model.bin or a symlink out is refused by name
    committed = committed_files(directory, record)
    config_path = committed.get(PEFT_CONFIG, directory / PEFT_CONFIG)
    weights_path = committed.get(PEFT_WEIGHTS, directory / PEFT_WEIGHTS)
    for path in (config_path, weights_path):
        if not Path(path).is_file():
            raise ArtifactError(f"Missing file {path}; pass a directory written by PEFT's save_pretrained.")
    raw = read_json(config_path)
    validate(PeftAdapterConfig, raw, str(config_path), FIX, unknown="ignore")  # types first
    _check_peft_type(config_path, raw.get("peft_type", "LORA"))
    tensors = load_safetensors(weights_path)
    if not tensors:
        raise ArtifactError(f"{weights_path} holds no tensors (PEFT would leave every module at its initialisation, "
                            f"a random change); {FIX}")
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ArtifactError(f"{weights_path}: tensor {key} is {tensor.dtype}, not floating point; {FIX}")
    check_finite_tensors(tensors, weights_path, FIX)
    files = AdapterFiles(Path(directory), Path(config_path), Path(weights_path), raw, tensors, record)
    if raw.get("peft_type", "LORA") == "LORA":
        for module, a_key, b_key in lora_pairs(files):
            _check_factors(files, module, a_key, b_key)
    return files


def _check_peft_type(config_path: Path, peft_type: str) -> None:
    from peft import PeftType, __version__

    known = [t.value for t in PeftType]
    if peft_type not in known:
        raise ArtifactError(f"{config_path}: peft_type {peft_type!r:.40} is none of the {len(known)} adapter types PEFT "
                            f"{__version__} knows (LORA, LOHA, LOKR, IA3, ...); {FIX}")


def lora_pairs(files: AdapterFiles) -> list[tuple[str, str, str]]:
    """(module name, A key, B key) of every LoRA factor pair in the file; a factor without its
    partner is refused (PEFT would keep its initialisation for the missing one)."""
    pairs = []
    for key in files.tensors:
        for a_suffix, b_suffix in LORA_FACTORS:
            for mine, other, swap in ((a_suffix, b_suffix, False), (b_suffix, a_suffix, True)):
                if not key.endswith(mine):
                    continue
                partner = key[: -len(mine)] + other
                if partner not in files.tensors:
                    raise ArtifactError(f"{files.weights_path} has {key} but no {partner} (PEFT would start it at its "
                                        f"initialisation, a random change); {FIX}")
                if not swap:
                    pairs.append((_module_name(key[: -len(mine)]), key, partner))
    return pairs


def _module_name(prefix: str) -> str:
    return prefix[len(_PREFIX):] if prefix.startswith(_PREFIX) else prefix


def lora_rank(config: dict, module: str) -> int:
    """The rank PEFT gives `module`: its `rank_pattern` entry (matched as PEFT matches it), else `r`."""
    from peft.utils.other import get_pattern_key

    pattern = config.get("rank_pattern") or {}
    default = PEFT_DEFAULT_RANK if config.get("r") is None else config["r"]
    return pattern.get(get_pattern_key(pattern.keys(), module), default) if pattern else default


def lora_scale(config: dict, module: str, rank: int) -> float:
    """PEFT's scaling of `module`: lora_alpha (or its alpha_pattern entry) / r, or / √r with rsLoRA."""
    from peft.utils.other import get_pattern_key

    pattern = config.get("alpha_pattern") or {}
    alpha = config.get("lora_alpha", 8)
    alpha = pattern.get(get_pattern_key(pattern.keys(), module), alpha) if pattern else alpha
    return float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _check_factors(files: AdapterFiles, module: str, a_key: str, b_key: str) -> None:
    """One LoRA pair: A (r × in, or r × vocab) and B (out × r, or dim × r) matrices of one rank ≥ 1,
    the config's rank for the module, and a change scale·B·A that cannot overflow float32."""
    a, b = files.tensors[a_key], files.tensors[b_key]
    for key, tensor in ((a_key, a), (b_key, b)):
        if tensor.dim() != 2:
            raise ArtifactError(f"{files.weights_path}: tensor {key} has shape {tuple(tensor.shape)}, not a matrix; {FIX}")
    rank, want = a.shape[0], lora_rank(files.config, module)
    if rank == 0:
        raise ArtifactError(f"{files.weights_path}: tensor {a_key} has rank 0 (its first dimension): a LoRA of no "
                            f"change; {FIX}")
    if rank != want:
        raise ArtifactError(f"{files.weights_path}: tensor {a_key} has rank {rank} (its first dimension), but "
                            f"{files.config_path.name} gives {module} rank {want}; {FIX}")
    if b.shape[1] != rank:
        raise ArtifactError(f"{files.weights_path}: tensor {b_key} is {tuple(b.shape)}, but {a_key} has rank {rank}: "
                            f"the two factors do not multiply; {FIX}")
    scale = lora_scale(files.config, module, rank)
    bound = abs(scale) * rank * float(a.float().abs().max()) * float(b.float().abs().max())  # ≥ every |ΔW| entry
    if not bound < _FLOAT32_MAX:
        raise ArtifactError(f"{files.config_path}: lora_alpha {files.config.get('lora_alpha')} makes the change of "
                            f"{module} overflow float32 (scale {scale:.3g}); {FIX}")


def check_fits(files: AdapterFiles, base: nn.Module) -> None:
    """Refuse an adapter whose file does not hold exactly the tensors PEFT creates for it on `base`
    (found by PEFT's own injection on a meta copy: no memory, whatever rank the config asks), at
    their shapes; an embedding's own copy that PEFT saves beside a LoRA on it must be `base`'s."""
    from peft import PeftConfig, PeftModel
    from peft.utils import get_peft_model_state_dict

    try:  # PEFT on an untrusted config: any exception it raises is this file's fault, said in one line
        config = PeftConfig.from_peft_type(**PeftConfig.check_kwargs(**files.config))
        config.inference_mode = True
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dry = PeftModel(meta_copy(base), config)
            expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(dry, save_embedding_layers=False).items()}
    except Exception as err:  # noqa: BLE001
        raise ArtifactError(f"{files.config_path}: PEFT cannot put this adapter on the model given "
                            f"({_first_line(err)}); load it onto the model it was trained on, or {FIX}") from None
    params = dict(base.named_parameters())
    modules = dict(base.named_modules())
    for key, tensor in files.tensors.items():
        if key.endswith(".base_layer.weight"):
            _check_base_copy(files, key, tensor, params)
            continue
        if key not in expected:
            owner = _owner(key)
            why = ("a module the model lacks, or one its config does not target" if owner is None
                   else f"the model given has no module {owner!r}" if owner not in modules
                   else f"its config does not put this tensor on {owner!r}")
            raise ArtifactError(f"{files.weights_path}: PEFT would drop tensor {key} ({why}); load the adapter onto the "
                                "model it was trained on.")
        if tuple(tensor.shape) != expected[key]:
            raise ArtifactError(f"{files.weights_path}: tensor {key} is {tuple(tensor.shape)}, but on the model given it "
                                f"is {expected[key]}; load the adapter onto the model it was trained on, or {FIX}")
    missing = sorted(set(expected) - set(files.tensors))
    if missing:
        raise ArtifactError(f"{files.weights_path} has no tensor {missing[0]} (and {len(missing) - 1} more), which PEFT "
                            "creates for this config on the model given and would leave at its initialisation (a random "
                            f"change); {FIX}")


def _owner(key: str) -> str | None:
    """The module a LoRA tensor belongs to (`model.layers.7.mlp.down_proj` for its lora_A), else None."""
    for suffix in (*(s for pair in LORA_FACTORS for s in pair), ".lora_B.bias", ".lora_magnitude_vector.weight"):
        if key.endswith(suffix):
            return _module_name(key[: -len(suffix)])
    return None


def _check_base_copy(files: AdapterFiles, key: str, tensor: torch.Tensor, params: dict) -> None:
    """PEFT saves an embedding's weights beside a LoRA on it and loads them over the base's: they
    must be the base's own, or the adapter was trained on another model."""
    name = _module_name(key).replace(".base_layer.", ".")
    param = params.get(name)
    if param is None or tuple(param.shape) != tuple(tensor.shape) or not torch.equal(
            tensor.to(param.device, param.dtype), param.detach()):
        raise ArtifactError(f"{files.weights_path} carries its own {name} (PEFT saves an embedding's weights next to a "
                            "LoRA on it), different from the base model given; pass the base model the adapter was "
                            "trained on.")


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def load_onto(files: AdapterFiles, base: nn.Module, adapter_name: str = "default"):
    """`PeftModel.from_pretrained` of the checked directory onto a weight-sharing copy of `base`
    (`base` itself is never PEFT's: it stays as it was, whether this succeeds or fails)."""
    from peft import PeftModel

    check_fits(files, base)
    try:
        with usual_names(files.directory, files.record) as folder:  # the committed files (storage)
            return PeftModel.from_pretrained(weight_sharing_copy(base), str(folder), adapter_name=adapter_name)
    except Exception as err:  # noqa: BLE001 - PEFT on an untrusted directory, as in check_fits
        raise ArtifactError(f"{files.directory}: PEFT could not load this adapter onto the model given "
                            f"({_first_line(err)}); load it onto the model it was trained on, or {FIX}") from None


#: LoRA config fields that make it more than ΔW = scaling·B·A from the two factor tensors alone
_NEEDS_BASE = ("use_dora", "modules_to_save", "trainable_token_indices", "lora_bias", "use_bdlora",
               "alora_invocation_tokens", "arrow_config", "velora_config", "monteclora_config", "mica",
               "kasa_config", "use_qalora")
#: what a plain LoRA file holds: factors, and (PEFT's save_embedding_layers) an embedding's own weights,
#: which are the base's, not a change
_FACTOR_KEYS = (".lora_A.weight", ".lora_B.weight", ".lora_embedding_A", ".lora_embedding_B", ".base_layer.weight")


def plain_lora_changes(files: AdapterFiles, error_cls) -> dict[str, dict]:
    """{module: {"A", "B", "scale"}} of a plain LoRA from its checked files, as PEFT computes them
    (scaling `lora_scale`; embeddings ΔW = scaling·(B·A)ᵀ, kept as factors of that transpose, as
    `peft_conversion` keeps them). Anything else needs the base model: refused, saying so."""
    config = files.config
    peft_type = config.get("peft_type", "LORA")
    extra = [field for field in _NEEDS_BASE if config.get(field)]
    if config.get("bias", "none") != "none":
        extra.append(f"bias={config['bias']!r}")
    unknown = sorted(key for key in files.tensors if not key.endswith(_FACTOR_KEYS))
    if peft_type != "LORA" or extra or unknown:
        what = (f"a peft_type {peft_type} adapter" if peft_type != "LORA"
                else f"a LoRA adapter with {', '.join(extra)}" if extra else f"a LoRA adapter with tensor {unknown[0]!r}")
        raise error_cls(f"{files.config_path}: {what} is not a plain LoRA, so its change is computed "
                        "by PEFT from the base model's weights; pass the base model "
                        "(WeightDiff.from_peft(dir, base=model); `selfinterp dit extract --adapter DIR --base MODEL`).")
    changes = {}
    for module, a_key, b_key in lora_pairs(files):
        a, b = files.tensors[a_key].float(), files.tensors[b_key].float()
        scale = lora_scale(config, module, a.shape[0])
        if a_key.endswith(".lora_A.weight"):
            changes[module] = {"A": a, "B": b, "scale": scale}
        else:  # embedding: ΔW = scale·(B_e·A_e)ᵀ = scale·A_eᵀ·B_eᵀ (vocab×dim)
            changes[module] = {"A": b.T.contiguous(), "B": a.T.contiguous(), "scale": scale}
    return changes
