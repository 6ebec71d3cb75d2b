"""Transluce's published explainers (Li et al. 2025) loaded as `LoRAExplainer`s.

The reference saves two layouts (`train.py` line 315, `model/continuous_peft.py` lines 78-88): a
full fine-tune is a plain transformers directory (`config.json`, `model*.safetensors`); the
activation-patching explainer is a PEFT LoRA saved with `save_embedding_layers=True`, so its
`adapter_model.safetensors` carries whole `embed_tokens` and `lm_head` matrices beside the factors.
Those matrices differ from the base model's at the marker tokens only: before training, the
reference re-draws the rows of its begin / feature / end markers from the embedding's mean and
spread (`utils.py` lines 152-210, `initialize_reserved_token_embeddings`), and the fine-tune or
the saved embedding layers keep them. So a LoRA directory is accepted when its embedding copies
equal the base everywhere but the marker rows; those rows go onto the explainer's own copy of the
two matrices (the caller's model is never changed).

The markers are the reference's per family (`config/*/*.yaml`, `begin_continuous`,
`continuous_rep`, `end_continuous`): Llama 3 / 3.1 `<|reserved_special_token_10|>`, `_12|>`,
`_11|>`; Qwen3 `<|vision_start|>`, `<|vision_pad|>`, `<|vision_end|>`. What a directory is for
(task, prompt form) is not in its files: the published hub id says it (`PUBLISHED`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fnmatch import fnmatch
from pathlib import Path

import torch

from selfinterp_plugins.errors import ArtifactError, OptionError, TemplateError
from selfinterp_plugins.model_copies import weight_sharing_copy
from selfinterp_plugins.peft_files import PEFT_CONFIG, PEFT_WEIGHTS, check_fits, read_adapter
from selfinterp_plugins.storage import check_artifact_dir, load_safetensors, member, read_json

from .config import LoRAExplainerConfig

#: the reference's marker tokens per `model_type` (begin, feature, end)
MARKERS = {"llama": ("<|reserved_special_token_10|>", "<|reserved_special_token_12|>", "<|reserved_special_token_11|>"),
           "qwen3": ("<|vision_start|>", "<|vision_pad|>", "<|vision_end|>")}
#: config.json fields that must equal the base model's for its weights to be this model's
SHAPE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size")
FIX = "download the published directory again (safetensors files only: hf download ID --exclude '*.bin' '*.pt')."


@dataclass(frozen=True)
class Published:
    """What a published explainer is: the base it was fine-tuned from and how it is asked."""

    base: str  # the hub id of the model to load it onto
    model_type: str
    task: str
    finetune: str  # "full" (a transformers directory) or "lora" (PEFT, embedding layers saved)
    prompt_format: str  # "raw" for base-model explainers (strings), "chat" otherwise


_LLAMA, _LLAMA_IT, _QWEN = "meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen3-8B"
PUBLISHED = {
    "Transluce/features_explain_llama3.1_8b_llama3.1_8b": Published(_LLAMA, "llama", "feature_descriptions", "full", "raw"),
    "Transluce/features_explain_llama3.1_8b_llama3.1_8b_instruct": Published(_LLAMA_IT, "llama", "feature_descriptions",
                                                                             "full", "chat"),
    "Transluce/features_explain_llama3.1_8b_llama3_8b": Published("meta-llama/Meta-Llama-3-8B", "llama",
                                                                  "feature_descriptions", "full", "raw"),
    "Transluce/act_patch_llama3.1_8b_llama3.1_8b": Published(_LLAMA, "llama", "activation_patching", "lora", "raw"),
    "Transluce/act_patch_qwen3_8b_qwen3_8b": Published(_QWEN, "qwen3", "activation_patching", "lora", "chat"),
    "Transluce/input_ablation_llama3.1_8b_instruct_llama3.1_8b_instruct": Published(_LLAMA_IT, "llama", "input_ablation",
                                                                                   "full", "chat"),
    "Transluce/input_ablation_qwen3_8b_qwen3_8b_hint": Published(_QWEN, "qwen3", "input_ablation", "full", "chat"),
}
#: published, but not an explainer of vectors: it predicts activations from a description
NOT_EXPLAINERS = {"Transluce/features_explain_llama3.1_8b_simulator": "a simulator (it scores descriptions)"}


def published(hub_id: str) -> Published:
    if hub_id in NOT_EXPLAINERS:
        raise OptionError(f"{hub_id} is {NOT_EXPLAINERS[hub_id]}, not an explainer; pass one of {', '.join(PUBLISHED)}.")
    if hub_id not in PUBLISHED:
        raise OptionError(f"Unknown Transluce explainer {hub_id!r}; pass one of {', '.join(PUBLISHED)}.")
    return PUBLISHED[hub_id]


def marker_ids(tokenizer, model_type: str) -> list[int]:
    """The family's three markers, each one token of `tokenizer`, or one line naming the missing one."""
    ids = []
    for marker in MARKERS[model_type]:
        encoded = tokenizer(marker, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise TemplateError(f"The tokenizer has no single token {marker} (the reference's marker for {model_type}); "
                                "pass the explainer's own tokenizer (the one saved in its directory).")
        ids.append(encoded[0])
    return ids


def _check_family(model, spec: Published, hub_id: str) -> None:
    model_type = getattr(model.config, "model_type", None)
    if model_type != spec.model_type:
        raise ArtifactError(f"{hub_id} is fine-tuned from {spec.base} ({spec.model_type}), but the model given is "
                            f"{model_type}; load it onto {spec.base}.")


def _check_config(directory: Path, model, hub_id: str) -> None:
    """config.json describes the model given (another width, depth or vocabulary: another model)."""
    path = member(directory, "config.json", what="model config")
    if not path.is_file():
        raise ArtifactError(f"{directory} has no config.json, so it is no transformers directory; {FIX}")
    saved = read_json(path)
    if not isinstance(saved, dict):
        raise ArtifactError(f"{path} is not a JSON object; {FIX}")
    for name in SHAPE_FIELDS:
        ours = getattr(model.config, name, None)
        if ours is not None and saved.get(name) != ours:
            raise ArtifactError(f"{path}: {name} is {saved.get(name)!r}, the model given has {ours!r}; {hub_id} must be "
                                "loaded onto the model it was fine-tuned from.")


def _tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    state = {}
    for path in files:
        for key, tensor in load_safetensors(path).items():
            if not tensor.is_floating_point():
                raise ArtifactError(f"{path}: tensor {key} is {tensor.dtype}, not floating point; {FIX}")
            if not torch.isfinite(tensor).all():
                raise ArtifactError(f"{path}: tensor {key} holds NaN or infinite values; {FIX}")
            state[key] = tensor
    return state


def _load_full(directory: Path, model, hub_id: str):
    """The full fine-tune as a new model: a copy of `model`'s modules whose every weight is replaced
    (assigned, never copied into: the caller's model keeps its own) by the files' (each present, of
    its shape); buffers such as the rotary frequencies stay shared."""
    _check_config(directory, model, hub_id)
    files = sorted(p for p in directory.iterdir() if fnmatch(p.name, "model*.safetensors"))
    if not files:
        raise ArtifactError(f"No model*.safetensors in {directory}; {FIX}")
    state = _tensors(files)
    tuned = weight_sharing_copy(model)
    expected = dict(tuned.state_dict())
    tied = {n for n, _ in tuned.named_parameters(remove_duplicate=False)} - {n for n, _ in tuned.named_parameters()}
    missing = sorted(set(expected) - set(state) - tied)
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ArtifactError(f"{directory} does not hold this model's weights (missing {missing[:2]}, unexpected "
                            f"{unexpected[:2]}); load {hub_id} onto the model it was fine-tuned from.")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ArtifactError(f"{directory}: {key} is {tuple(tensor.shape)}, this model's is "
                                f"{tuple(expected[key].shape)}; load {hub_id} onto the model it was fine-tuned from.")
    first = next(model.parameters())
    tuned.load_state_dict({k: v.to(first.device, first.dtype) for k, v in state.items()}, strict=False, assign=True)
    if tied:
        tuned.tie_weights()
    return tuned


def _with_marker_rows(model, saved: dict[str, torch.Tensor], rows: list[int], weights_path: Path):
    """A weight-sharing copy of `model` whose input and output embeddings are its own, with the
    saved copies' marker rows; refused if a saved copy differs from the base anywhere else."""
    copy = weight_sharing_copy(model)
    layers = {"embed_tokens": copy.get_input_embeddings(), "lm_head": copy.get_output_embeddings()}
    tied = layers["lm_head"] is not None and layers["lm_head"].weight is layers["embed_tokens"].weight
    others = torch.ones(layers["embed_tokens"].weight.shape[0], dtype=torch.bool)
    others[rows] = False
    for name, layer in layers.items():
        key = next((k for k in saved if k.endswith(f"{name}.weight") or k.endswith(f"{name}.base_layer.weight")), None)
        if key is None or layer is None or (tied and name == "lm_head"):
            continue
        tensor = saved[key]
        base = layer.weight.detach()
        if tuple(tensor.shape) != tuple(base.shape) or not torch.equal(tensor[others].to(base.dtype), base[others]):
            raise ArtifactError(f"{weights_path}: its {name} differs from the base model's beyond the marker tokens; "
                                "pass the base model the explainer was fine-tuned from.")
        own = base.clone()
        own[rows] = tensor[rows].to(base.dtype)
        layer.weight = torch.nn.Parameter(own, requires_grad=False)
    if tied:
        copy.get_output_embeddings().weight = copy.get_input_embeddings().weight
    return copy


def _is_embedding_copy(key: str) -> bool:
    return "lora_" not in key and key.endswith(("embed_tokens.weight", "lm_head.weight"))


def _load_lora(directory: Path, model, rows: list[int]):
    """The LoRA factors through PEFT onto a copy of `model` carrying the saved marker rows; the
    embedding copies themselves are checked (`_with_marker_rows`) and never handed to PEFT."""
    from peft import PeftConfig, PeftModel, set_peft_model_state_dict

    files = read_adapter(directory, {})  # the PEFT checks: files, types, finite, factor shapes
    base = _with_marker_rows(model, files.tensors, rows, files.weights_path)
    factors = replace(files, tensors={k: v for k, v in files.tensors.items() if not _is_embedding_copy(k)})
    check_fits(factors, base)  # exactly the tensors PEFT creates on this model, at their shapes
    try:
        config = PeftConfig.from_peft_type(**PeftConfig.check_kwargs(**files.config))
        config.inference_mode = True
        tuned = PeftModel(base, config)
        result = set_peft_model_state_dict(tuned, factors.tensors)
    except Exception as err:  # noqa: BLE001 - PEFT on an untrusted directory: one line, as check_fits says it
        raise ArtifactError(f"{directory}: PEFT could not load this LoRA onto the model given "
                            f"({type(err).__name__}: {str(err).strip()[:200]}); {FIX}") from None
    if result.unexpected_keys:
        raise ArtifactError(f"{files.weights_path}: PEFT would drop {result.unexpected_keys[0]}; {FIX}")
    return tuned


def load_transluce(directory: str | Path, model, tokenizer, hub_id: str):
    """The published explainer `hub_id`, downloaded to `directory`, on `model` (its base) with the
    tokenizer saved beside it: a `LoRAExplainer` asked as the reference asks it."""
    from .explainer import LoRAExplainer
    from .tasks import TASK_DEFAULTS

    spec = published(hub_id)
    # refuses a pickle-format file by name (the HF Trainer's training_args.bin too: delete it, or download
    # without it), a symlink out
    directory = check_artifact_dir(directory, pickle_fix=f"delete it, or {FIX}")
    _check_family(model, spec, hub_id)
    rows = marker_ids(tokenizer, spec.model_type)
    if spec.finetune == "full":
        tuned = _load_full(directory, model, hub_id)
    else:
        for name in (PEFT_CONFIG, PEFT_WEIGHTS):
            if not member(directory, name).is_file():
                raise ArtifactError(f"{directory} has no {name}: {hub_id} is a PEFT LoRA; {FIX}")
        tuned = _load_lora(directory, model, rows)
    tuned.eval()
    settings = {**TASK_DEFAULTS[spec.task], "finetune": spec.finetune, "prompt_format": spec.prompt_format}
    config = LoRAExplainerConfig(**settings, markers=list(MARKERS[spec.model_type]))
    return LoRAExplainer(tuned, tokenizer, config, torch.nn.ModuleDict())
