"""Activation Oracles' published LoRAs (Karvonen et al. 2025) as explainers.

A published oracle (`adamkarvonen/checkpoints_latentqa_cls_past_lens_addition_Qwen3-8B`, ...) is a
PEFT LoRA directory (adapter_config.json + adapter_model.safetensors) on its base model. Loaded
here, it is the core's `oracles.activation_oracle` (the prompt, the norm-matched addition after
layer 1, greedy decoding) with the LoRA as the explainer's `model_patch`: on during the oracle's own
calls, off for everything else, so the model it reads activations from stays the base model, as
the reference's `disable_adapter()` keeps it (nl_probes/utils/dataset_utils.py line 224).

The factors are read by PEFT's own loader onto the model (`WeightDiff.from_peft`, through the
storage layer's checks) where the model is a transformers one, and from the adapter's two files
with PEFT's scaling rules otherwise (a TransformerBridge or a HookedTransformer, whose modules PEFT
does not wrap). A directory for another model is refused before PEFT reads it: the factors' widths
against the model's, its layers, and the family its config names.

`Explainer.from_pretrained(source, model=..., layer=L, question=...)` reaches `load_oracle` through
the plugin's `register_explainer_formats`; `oracle_stand_in` writes a folder of the published
layout for a small model, what docs/artifacts.md runs offline.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from selfinterp_plugins.backends import LowRankPatch
from selfinterp_plugins.errors import ArtifactError, ModelLoadError, ModelMismatchError, OptionError
from selfinterp_plugins.oracles import INJECTION_LAYER, STEERING_COEFFICIENT, activation_oracle
from selfinterp_plugins.peft_files import FIX, PEFT_CONFIG, PEFT_WEIGHTS, PeftAdapterConfig
from selfinterp_plugins.storage import check_artifact_dir, output_errors, read_json, save_safetensors, write_json
from selfinterp_plugins.storage.validation import validate

from .weight_diff import WeightDiff

FORMAT = "activation-oracle"
#: the oracles published with the paper (its Hugging Face collection `adamkarvonen/activation-oracles`)
PUBLISHED = ("adamkarvonen/checkpoints_latentqa_cls_past_lens_addition_Qwen3-8B",
             "adamkarvonen/checkpoints_latentqa_cls_past_lens_addition_gemma-2-9b-it",
             "adamkarvonen/checkpoints_latentqa_cls_past_lens_addition_Llama-3_3-70B-Instruct")
_PUBLISHED_PREFIX = "adamkarvonen/checkpoints_"
#: records of this library's own PEFT-based artifacts: such a folder is not a published oracle
_OWN_RECORDS = ("explainer_config.json", "weight_diff.json", "dit_config.json", "lora_explainer_config.json")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_FACTOR = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])\.weight$")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
#: modules that read the residual stream (their input width is d_model) and that write it (output)
_READS, _WRITES = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"), ("o_proj", "down_proj")
_FAMILIES = ("qwen", "gemma", "llama", "mistral")


def is_oracle(source) -> bool:
    """A PEFT LoRA directory that is none of this library's own artifacts, or a published oracle's
    hub id (where no folder of that name exists)."""
    path = Path(str(source))
    if path.is_dir():
        return (path / PEFT_CONFIG).is_file() and not any((path / name).exists() for name in _OWN_RECORDS)
    return str(source).startswith(_PUBLISHED_PREFIX)


def load_oracle(source, model, tokenizer=None, *, layer: int | None = None, question: str | None = None,
                positions: int = 1, coef: float = STEERING_COEFFICIENT, injection_layer: int = INJECTION_LAYER,
                check_model: bool = True, backend_options: dict | None = None):
    """A published Activation Oracle (a PEFT LoRA directory or its hub id) on `model`, asking
    `question` about `positions` activations per prompt read at `layer`."""
    from selfinterp_plugins.plugins import backend_for

    if layer is None or question is None:
        raise OptionError("An Activation Oracle needs layer= (the layer its vectors were read at; the reference reads "
                          "at 50% depth: selfinterp_plugins.oracles.oracle_layer(n_layers)) and question= (what to ask "
                          "about them).")
    directory, config, shapes = read_oracle_files(source)
    backend = backend_for(model, tokenizer=tokenizer, **(backend_options or {}))
    check_fits(directory, config.base_model_name_or_path, shapes, backend, check_model)
    explainer = activation_oracle(backend, layer=layer, question=question, positions=positions, coef=coef,
                                  injection_layer=injection_layer)
    explainer.model_patch = oracle_patch(directory, backend)
    explainer.metadata.update(oracle=str(source), base_model=config.base_model_name_or_path)
    return explainer


def read_oracle_files(source):
    """An oracle's directory (the folder, or the hub repository's two files downloaded), its PEFT
    config and its factors' shapes, all checked without a model: so a command can refuse a bad
    oracle before it spends minutes loading the base model."""
    directory = _local_copy(source)
    check_artifact_dir(directory)  # a pickled adapter_model.bin or a link out is refused before anything reads it
    config_path, weights_path = directory / PEFT_CONFIG, directory / PEFT_WEIGHTS
    if not weights_path.is_file():
        raise ArtifactError(f"Missing file {weights_path}; an oracle directory holds {PEFT_CONFIG} and {PEFT_WEIGHTS} "
                            "(PEFT's save_pretrained writes both).")
    config = validate(PeftAdapterConfig, read_json(config_path), str(config_path), FIX, unknown="ignore")
    if config.peft_type != "LORA":
        raise ArtifactError(f"{config_path} is a {config.peft_type} adapter; an Activation Oracle is a LoRA.")
    return directory, config, factor_shapes(weights_path)


def factor_shapes(weights: Path) -> dict[str, tuple[int, int, int]]:
    """{module: (rank, in, out)} from the file's header alone; a file holding anything but the
    factors of linear layers is not an oracle's plain LoRA and is refused by name."""
    try:
        with safe_open(str(weights), framework="pt") as handle:
            found = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as err:  # safetensors raises several types for a bad header
        raise ArtifactError(f"{weights} is not a valid safetensors file ({err}); re-download the oracle.") from None
    factors: dict[str, dict[str, tuple]] = {}
    for key, shape in found.items():
        match = _FACTOR.match(key)
        if match is None or len(shape) != 2:
            raise ArtifactError(f"{weights} holds {key!r} {shape}, not the factors of a LoRA on linear layers, which "
                                "a published Activation Oracle is; pass an oracle's directory.")
        factors.setdefault(match.group(1), {})[match.group(2)] = shape
    shapes = {}
    for name, pair in factors.items():
        if set(pair) != {"A", "B"} or pair["A"][0] != pair["B"][1]:
            raise ArtifactError(f"{weights} has unmatched LoRA factors for {name} ({pair}); re-download the oracle.")
        shapes[name] = (pair["A"][0], pair["A"][1], pair["B"][0])
    if not shapes:
        raise ArtifactError(f"{weights} holds no LoRA factors; re-download the oracle.")
    return shapes


def check_fits(directory: Path, base: str | None, shapes: dict, backend, check_model: bool) -> None:
    """Refuse an oracle for another model in one line: the width its factors read and write, the
    layers it changes, and (with `check_model`) the family its config names."""
    named = base or "the model it names"
    d_model, n_layers = backend.d_model, backend.n_layers
    for name, (_rank, fan_in, fan_out) in shapes.items():
        short = name.rsplit(".", 1)[-1]
        width = fan_in if short in _READS else fan_out if short in _WRITES else None
        if width is not None and width != d_model:
            raise ModelMismatchError(f"{directory} is an oracle for {named} (width {width}), but this model's d_model is "
                                     f"{d_model}; load it onto {named}.")
        layer = _LAYER.search(name)
        if layer is not None and int(layer.group(1)) >= n_layers:
            raise ModelMismatchError(f"{directory} changes layer {layer.group(1)}, but this model has {n_layers} layers; "
                                     f"load it onto {named}.")
    if check_model and base:
        wanted, got = _family(base), _family(model_kind(backend))
        if wanted and got and wanted != got:
            raise ModelMismatchError(f"{directory} is an oracle for {base} (a {wanted} model), but this model is a "
                                     f"{got} one; load it onto {base} (check_model=False skips this check).")


def model_kind(backend) -> str:
    """What a backend's model says it is: its transformers `model_type` (hf, nnsight, a bridge's
    wrapped model), or a HookedTransformer's original architecture."""
    model = backend.model
    for holder in (model, getattr(model, "original_model", None), getattr(backend, "hf", None)):
        kind = getattr(getattr(holder, "config", None), "model_type", None)
        if isinstance(kind, str) and kind:
            return kind
    return str(getattr(getattr(model, "cfg", None), "original_architecture", "") or "")


def _family(text: str) -> str | None:
    text = text.lower().replace("smollm", "llama")  # SmolLM2 is a Llama architecture
    return next((family for family in _FAMILIES if family in text), None)


def oracle_patch(directory: Path, backend) -> LowRankPatch:
    """The oracle's LoRA as a `LowRankPatch`: read by PEFT onto the model's own linear layers when it
    has them, else from the files (the same factors and scaling: tests/integrations/peft)."""
    root = backend.patch_root()
    if root is not None and _all_linear(root, factor_shapes(directory / PEFT_WEIGHTS)):
        diff = WeightDiff.from_peft(directory, base=root)  # PEFT's loader; the model is left as it was
    else:
        diff = WeightDiff.from_pretrained(directory)
    modules = {}
    for name, change in diff.modules.items():
        if change.A is None:
            raise ArtifactError(f"{directory}: {name} is not a plain LoRA factor pair, which a published Activation "
                                "Oracle is; pass an oracle's directory.")
        modules[name] = (change.A, change.B, change.scale)
    return LowRankPatch(modules)


def _all_linear(root: nn.Module, shapes: dict) -> bool:
    """Whether PEFT can wrap every module the LoRA names (a bridge's are its own components)."""
    for name in shapes:
        try:
            if not isinstance(root.get_submodule(name.removeprefix("base_model.model.")), nn.Linear):
                return False
        except AttributeError:
            return False
    return True


def _local_copy(source) -> Path:
    """A local oracle directory: the path itself, or the hub repository's two files downloaded."""
    path = Path(str(source))
    if path.is_dir():
        return path
    if not _HUB_ID.fullmatch(str(source)):
        raise ArtifactError(f"No oracle directory at {source}; pass a folder holding {PEFT_CONFIG} and {PEFT_WEIGHTS}, or "
                            f"a hub id such as {PUBLISHED[0]!r}.")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(source), allow_patterns=[PEFT_CONFIG, PEFT_WEIGHTS]))
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, no access: each is the same one line
        raise ModelLoadError(f"Cannot fetch {source} from the Hugging Face hub ({type(err).__name__}); check the id and "
                             f"the connection, or pass a local folder holding {PEFT_CONFIG} and {PEFT_WEIGHTS}.") from None


# ---- sizes ------------------------------------------------------------------------------------

#: the reference's LoRA (nl_probes/configs/sft_config.py lines 32-36: r 64, alpha 128, all-linear,
#: which PEFT resolves to the decoder layers' seven projections); the published adapter_config.json
#: files were not read here
REFERENCE_LORA = {"r": 64, "lora_alpha": 128, "target_modules": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                  "up_proj", "down_proj")}
#: the published oracles' base models, from their config.json files (hidden, intermediate, layers,
#: attention heads, key-value heads, head dim)
PUBLISHED_SHAPES = {"Qwen/Qwen3-8B": (4096, 12288, 36, 32, 8, 128),
                    "google/gemma-2-9b-it": (3584, 14336, 42, 16, 8, 256),
                    "meta-llama/Llama-3.3-70B-Instruct": (8192, 28672, 80, 64, 8, 128)}


def lora_floats(shape: tuple, rank: int, targets=REFERENCE_LORA["target_modules"]) -> int:
    """Floats in a LoRA of `rank` on `targets` of every decoder layer of a model of `shape`
    (`PUBLISHED_SHAPES`): r·(in + out) per module."""
    hidden, inter, layers, heads, kv_heads, head_dim = shape
    widths = {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv_heads * head_dim),
              "v_proj": (hidden, kv_heads * head_dim), "o_proj": (heads * head_dim, hidden),
              "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    return layers * sum(rank * sum(widths[t]) for t in targets)


# ---- an offline stand-in --------------------------------------------------------------------


def oracle_stand_in(directory, model, rank: int = 8, alpha: int = 16, seed: int = 0, base_model: str | None = None) -> Path:
    """A folder laid out as a published oracle for `model` (a transformers model): what PEFT's
    `save_pretrained` writes for a LoRA on every linear of the decoder layers (the reference's
    all-linear), `adapter_config.json` naming the base model and `adapter_model.safetensors` with
    random factors (both nonzero, so the LoRA changes the answers). Written through the storage
    layer's writers; PEFT loads it (tests/integrations/peft/test_peft_oracles.py)."""
    directory = Path(directory)
    g = torch.Generator().manual_seed(seed)
    tensors, short = {}, set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and _LAYER.search(name) and name.rsplit(".", 1)[-1] in REFERENCE_LORA["target_modules"]:
            short.add(name.rsplit(".", 1)[-1])
            tensors[f"base_model.model.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=g) / math.sqrt(module.in_features)
            tensors[f"base_model.model.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=g) * 0.2
    config = {"alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": base_model or _name_of(model),
              "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
              "layers_pattern": None, "layers_to_transform": None, "lora_alpha": alpha, "lora_dropout": 0.05,
              "modules_to_save": None, "peft_type": "LORA", "r": rank, "rank_pattern": {}, "revision": None,
              "target_modules": sorted(short), "task_type": "CAUSAL_LM", "use_dora": False, "use_rslora": False}
    with output_errors(directory):
        directory.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, directory / PEFT_WEIGHTS)
    write_json(config, directory / PEFT_CONFIG)
    return directory


def _name_of(model) -> str:
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return name or f"tiny-{getattr(getattr(model, 'config', None), 'model_type', 'model')}"
