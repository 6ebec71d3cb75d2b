"""The selfie-adapters file format of Pepper et al. 2026, in and out.

The paper's adapters are published as one safetensors file each (hub repo
`keenanpepper/selfie-adapters-llama-3.1-8b-instruct`: `goodfire-sae-scalar-affine.safetensors`,
`wikipedia-full-rank.safetensors`, `wikipedia-scalar-affine.safetensors`, and the topic mean
`mean-vectors.safetensors` with keys `layer_{L}`), read by the reference's
`selfie_adapters/inference.py::SelfIEAdapter._load_safetensors`. The file holds the projection's
state dict (`projection.py`: `log_scale` of shape (1,), `bias`, `U`/`V`, `weight` applied as x·Wᵀ)
and, in the header's `__metadata__`, either `config_json` (a JSON config whose `projection` section
has type, normalize_input, init_scale, low_rank_rank, low_rank_init_factor) or the flat keys
`projection_type`, `normalize_input`, `init_scale`, `low_rank_rank`; plus `model_dim`,
`global_step`, `best_val_loss`. Nothing says which prompt, site or model it was trained with: the
file is an adapter, not an explainer, so `load_parts` completes it with the reference's
choices (its prompt for the model's family, the embedding site) and says so in the explainer's
metadata; `save_selfie_adapter` writes a file the reference's loader accepts, and records this
library's own explainer config beside the reference's keys so a round trip loses nothing.

The reference's legacy `.pt` checkpoints are pickles (the reference unpickles them in full): refused by
name, never read. Docs: docs/artifacts.md; the settings mapped, with file and line: docs/fidelity.md.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .backends.decoding import Sampling
from .errors import ArtifactError, ModelMismatchError, OptionError, TemplateError
from .storage._files import PICKLE_SUFFIXES, load_safetensors_with_metadata, output_errors, save_safetensors
from .storage.validation import check_finite_tensors
from .templates import PromptTemplate

__all__ = ["FORMAT", "KINDS", "LABEL_PRESETS", "label_preset", "load_parts", "read_selfie_adapter",
           "reference_template", "save_selfie_adapter"]

FORMAT = "selfie-adapters"
#: the reference's projection types (`projection.py::create_projection_module`) -> this library's kinds
KINDS = {"scale_only": "scale_only", "scalar_affine": "scalar_affine", "low_rank_only": "low_rank",
         "scalar_affine_plus_low_rank": "scalar_affine_plus_low_rank", "full_rank": "full_rank"}
#: each reference projection's state dict: name -> shape, in model widths d and ranks r
SHAPES = {"scale_only": {"log_scale": (1,)}, "scalar_affine": {"log_scale": (1,), "bias": ("d",)},
          "low_rank_only": {"U": ("d", "r"), "V": ("d", "r"), "bias": ("d",)},
          "scalar_affine_plus_low_rank": {"log_scale": (1,), "U": ("d", "r"), "V": ("d", "r"), "bias": ("d",)},
          "full_rank": {"weight": ("d", "d"), "bias": ("d",)}}
#: kinds of this library written as a reference type: bias_only is scalar_affine with s frozen (same math)
EXPORTS = {**{ours: theirs for theirs, ours in KINDS.items()}, "bias_only": "scalar_affine"}
#: `inference.py` line 72 and `projection.py::create_projection_module`: init_scale when a file gives none
REFERENCE_INIT_SCALE = 30.0
#: `training/config.py::ProjectionConfig.low_rank_init_factor`
REFERENCE_LOW_RANK_INIT_FACTOR = 0.01

#: the reference's Llama-3.1 prompt, `training/config.py::SoftPromptConfig.template` (lines 57-62)
LLAMA31_PROMPT = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
                  'What is the meaning of "<|reserved_special_token_0|>"?<|eot_id|>'
                  "<|start_header_id|>assistant<|end_header_id|>\n\n"
                  'The meaning of "<|reserved_special_token_0|>" is "')
#: the reference's Qwen prompt, `evals/generation_scoring/configs/qwen_scaling/*.json` (written for Qwen2.5)
QWEN_PROMPT = ('<|im_start|>user\nWhat is the meaning of "<|fim_pad|>"?<|im_end|>\n<|im_start|>assistant\n'
               'The meaning of "<|fim_pad|>" is "')
#: (marker tokens of the family, prompt, placeholder, end of turn, template name)
REFERENCE_PROMPTS = (
    (("<|start_header_id|>", "<|reserved_special_token_0|>"), LLAMA31_PROMPT, "<|reserved_special_token_0|>",
     "<|eot_id|>", "selfie-adapters-llama3"),
    (("<|im_start|>", "<|fim_pad|>"), QWEN_PROMPT, "<|fim_pad|>", "<|im_end|>", "selfie-adapters-qwen"),
)

#: the reference's label sampling: `evals/generation_scoring/configs/example_label_generator.json`
#: (scales 0.5..5.5, T 0.7, top-p 0.9 with transformers' default top-k 50, 30 new tokens, one label a
#: scale) and the scaling study's trained setting (s = 1, greedy); pass as `explain(v, **label_preset(name))`
LABEL_PRESETS = {
    "pepper-sae-eval": {"scales": (0.5, 0.8, 1.3, 2.1, 3.4, 5.5),
                        "sampling": Sampling(temperature=0.7, top_p=0.9, top_k=50, max_new_tokens=30)},
    "pepper-greedy": {"scales": (1.0,), "sampling": Sampling(max_new_tokens=30)},
}

FIX = "re-download the file, or export it again with save_pretrained(path, format='selfie-adapters')."


def label_preset(name: str) -> dict:
    """`scales` and `sampling` of a reference label-generation setting (`LABEL_PRESETS`)."""
    if name not in LABEL_PRESETS:
        raise OptionError(f"Unknown label preset {name!r}; use one of {', '.join(LABEL_PRESETS)}.")
    return dict(LABEL_PRESETS[name])


@dataclass
class SelfieAdapterFile:
    """What a selfie-adapters file says, read as the reference's loader reads it."""

    projection_type: str
    normalize_input: bool
    init_scale: float
    low_rank_rank: int | None
    low_rank_init_factor: float | None
    model_dim: int
    state: dict
    config: dict  # the whole `config_json` (empty in the flat style)
    extra: dict  # global_step, best_val_loss when given


def _meta_number(meta: dict, key: str, kind, path):
    try:
        return kind(meta[key])
    except (TypeError, ValueError):
        raise ArtifactError(f"{path}: metadata {key} should be a number, got {meta[key]!r:.40}; {FIX}") from None


def _projection(meta: dict, path) -> tuple[dict, dict]:
    """(the projection section, the whole config) from either metadata style, as `inference.py`
    lines 116-127 read them (the flat style: normalize_input 'true'/'false', no init factor)."""
    if "config_json" in meta:
        try:
            config = json.loads(meta["config_json"])
        except (json.JSONDecodeError, RecursionError):
            raise ArtifactError(f"{path}: metadata config_json is not valid JSON; {FIX}") from None
        section = config.get("projection") if isinstance(config, dict) else None
        if not isinstance(section, dict):
            raise ArtifactError(f"{path}: metadata config_json has no 'projection' section; {FIX}")
        return section, config
    if "projection_type" not in meta:
        raise ArtifactError(f"{path} says neither config_json nor projection_type in its metadata, so its adapter kind "
                            f"is unknown; {FIX}")
    section = {"type": meta["projection_type"], "normalize_input": meta.get("normalize_input", "true").lower() == "true",
               "init_scale": _meta_number(meta, "init_scale", float, path) if "init_scale" in meta else REFERENCE_INIT_SCALE,
               "low_rank_rank": _meta_number(meta, "low_rank_rank", int, path) if meta.get("low_rank_rank") else None,
               "low_rank_init_factor": None}
    return section, {}


def read_selfie_adapter(path) -> SelfieAdapterFile:
    """A selfie-adapters file, checked as the reference's loader checks it (and more: every
    tensor's name, shape, dtype and finiteness), or one ArtifactError naming the file and the fix."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ArtifactError(f"{path} is the reference's legacy .pt checkpoint, a pickle (it can run code): never read. "
                            "Use the published .safetensors file, or convert the .pt where you trust its source "
                            "(its projection_state saved with safetensors and the metadata of docs/artifacts.md).")
    state, meta = load_safetensors_with_metadata(path)
    if meta is None:
        raise ArtifactError(f"{path} has no metadata header, so it is not a selfie-adapters file (its kind and width "
                            f"are unknown); {FIX}")
    section, config = _projection(meta, path)
    kind = section.get("type")
    if kind not in KINDS:
        raise ArtifactError(f"{path}: unknown projection type {kind!r:.40}; the selfie-adapters kinds are "
                            f"{', '.join(KINDS)}. {FIX}")
    if "normalize_input" not in section:
        raise ArtifactError(f"{path}: config_json's projection section has no normalize_input; {FIX}")
    if section.get("normalize_input") is not True:
        raise ArtifactError(f"{path}: normalize_input is {section.get('normalize_input')!r}; this library's adapters "
                            "always normalise their input (every published adapter does), so this one cannot be "
                            "run as trained.")
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            raise ArtifactError(f"{path}: tensor {name} is {tensor.dtype}, not floating point; {FIX}")
    check_finite_tensors(state, path, FIX)
    expected = SHAPES[kind]
    if set(state) != set(expected):
        raise ArtifactError(f"{path}: a {kind} adapter holds tensors {sorted(expected)}, this file {sorted(state)}; {FIX}")
    d = int(state["bias"].shape[0]) if "bias" in state else None
    if "model_dim" in meta:
        d = _meta_number(meta, "model_dim", int, path)
    if d is None or d < 1:
        raise ArtifactError(f"{path}: metadata model_dim is missing, and a {kind} adapter's tensors do not give it; {FIX}")
    rank = int(state["U"].shape[1]) if "U" in state and state["U"].dim() == 2 else None
    sizes = {"d": d, "r": rank}
    for name, shape in expected.items():
        want = tuple(sizes[s] if isinstance(s, str) else s for s in shape)
        if tuple(state[name].shape) != want:
            raise ArtifactError(f"{path}: tensor {name} has shape {tuple(state[name].shape)}, a {kind} adapter of width "
                                f"{d} needs {want}; {FIX}")
    if section.get("low_rank_rank") not in (None, rank) and rank is not None:
        raise ArtifactError(f"{path}: low_rank_rank {section['low_rank_rank']} but U and V have rank {rank}; {FIX}")
    extra = {k: _meta_number(meta, k, t, path) for k, t in (("global_step", int), ("best_val_loss", float)) if k in meta}
    init_scale = section.get("init_scale", REFERENCE_INIT_SCALE)
    if not isinstance(init_scale, (int, float)) or isinstance(init_scale, bool):
        raise ArtifactError(f"{path}: init_scale should be a number, got {init_scale!r:.40}; {FIX}")
    factor = section.get("low_rank_init_factor")
    return SelfieAdapterFile(kind, True, float(init_scale), rank, factor if isinstance(factor, (int, float)) else None, d,
                             state, config, extra)


def reference_template(tokenizer) -> PromptTemplate:
    """The reference's prompt for the tokenizer's family: its Llama-3.1 prompt (`training/config.py`)
    or its Qwen prompt (the qwen_scaling configs); for a family it wrote none for (Gemma, SmolLM2),
    this library's own written-out chat prompt (`PromptTemplate.chat`: the same question and answer,
    no system turn). Labels end at the end-of-turn, and are the text before the last `"`, as the
    reference generates them (`label_generator.py`, `strip_last_quote`)."""
    vocab = tokenizer.get_vocab()
    for markers, prompt, placeholder, end, name in REFERENCE_PROMPTS:
        if all(marker in vocab for marker in markers):
            return PromptTemplate(prompt=prompt, placeholder=placeholder, closing='"', end=end, name=name,
                                  stop_at_closing=False)
    chat = PromptTemplate.chat(tokenizer, name="selfie-adapters-chat")
    chat.stop_at_closing = False
    return chat


def _file_template(config: dict, tokenizer) -> PromptTemplate | None:
    """The prompt a file records: this library's own section, else the reference config's
    `soft_prompt` (its Config.to_dict(), `training/config.py`), else None."""
    ours = config.get("selfinterp", {}).get("template") if isinstance(config.get("selfinterp"), dict) else None
    if isinstance(ours, dict):
        return PromptTemplate.from_dict(ours, source="selfie-adapters config_json", prefix="selfinterp.template")
    soft = config.get("soft_prompt")
    if isinstance(soft, dict) and isinstance(soft.get("template"), str) and isinstance(soft.get("reserved_token"), str):
        eos = (config.get("data") or {}).get("eos_token") if isinstance(config.get("data"), dict) else None
        end = eos if isinstance(eos, str) else reference_template(tokenizer).end
        return PromptTemplate(prompt=soft["template"], placeholder=soft["reserved_token"], closing='"', end=end,
                              name="selfie-adapters-file", stop_at_closing=False)
    return None


def _download(repo: str, filename: str) -> Path:
    """`hf_hub_download(repo, filename)`, as the reference's README does, its failures one line."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id=repo, filename=filename))
    except Exception as err:  # offline, a missing repo or file, a gated repo: all the user's to fix
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ArtifactError(f"Cannot fetch {filename} from the hub repo {repo} ({type(err).__name__}: {reason}); "
                            "download it where the hub is reachable and pass the file's path.") from None


def resolve(source, filename: str | None) -> Path:
    """The local file `source` + `filename` name: a .safetensors path, a folder holding `filename`,
    or a hub repo id (downloaded)."""
    path = Path(source)
    if filename is None:
        return path
    if path.is_dir():
        from .storage._paths import member

        return member(path, filename, what="adapter file")
    return _download(str(source), filename)


def is_selfie_adapter(source, filename: str | None) -> bool:
    """Whether `Explainer.from_pretrained` was given a selfie-adapters file rather than an explainer folder."""
    return filename is not None or (str(source).lower().endswith((".safetensors", *PICKLE_SUFFIXES))
                                    and not Path(source).is_dir())


def _topic_spec(mean_path, layer, backend, repo, d_model):
    """The vector spec and mean of a topic adapter: `Tell me about {title}.` in the chat template,
    the residual after `layer` at the last token, minus `mean-vectors.safetensors[layer_{L}]`
    (`data_prep/wikipedia_topics/extract_wikipedia_vectors.py`, `examples/contrastive_topic_vector.py`)."""
    from .sites import Site
    from .storage._files import load_safetensors
    from .topics import TOPIC_PROMPT
    from .vector_spec import MEAN_KEY, VectorSpec

    path = Path(mean_path)
    if not path.is_file() and repo is not None:
        path = resolve(repo, str(mean_path))  # a file of the adapter's repo (a local folder, or the hub)
    means = load_safetensors(path)
    layers = sorted(int(k.removeprefix("layer_")) for k in means if k.startswith("layer_") and k[6:].isdigit())
    if layer is None:
        layer = layers[0] if len(layers) == 1 else 19 if 19 in layers else None
    if layer is None or f"layer_{layer}" not in means:
        raise ArtifactError(f"{path} holds the means of layers {layers}, not of layer {layer}; pass layer= one of them.")
    mean = means[f"layer_{layer}"]
    if mean.dim() != 1 or mean.shape[0] != d_model or not mean.is_floating_point() or not torch.isfinite(mean).all():
        raise ArtifactError(f"{path}: layer_{layer} should be a finite float vector of the model's width {d_model}, got "
                            f"{mean.dtype} {tuple(mean.shape)}; pass the mean-vectors file of this model.")
    site = backend.check_site(Site.parse(f"resid_post.{layer}"))
    spec = VectorSpec(source="topic_vectors", site=site.name, prompt=TOPIC_PROMPT, prompt_format="chat",
                      centring="mean", mean_key=MEAN_KEY)
    return spec, {MEAN_KEY: mean.float().tolist(), "layer": layer, "mean_vectors_file": path.name}


def load_parts(source, model, tokenizer=None, filename=None, template=None, mean_vectors=None, layer=None,
               check_model: bool = True, backend_options: dict | None = None) -> tuple[dict, list | None]:
    """What `Explainer.from_pretrained` builds an explainer of from a selfie-adapters file: the
    constructor's arguments (backend, adapter, template, site, model_id, metadata, vector_spec), and
    the prompt ids it was trained with when the file records them (written by this library)."""
    from .adapters import AdapterConfig, make_adapter
    from .models.identity import check_same_model, model_id_of
    from .plugins import backend_for
    from .sites import Site
    from .vector_spec import VectorSpec

    path = resolve(source, filename)
    repo = source if filename is not None else None
    read = read_selfie_adapter(path)
    backend = backend_for(model, tokenizer=tokenizer, **(backend_options or {}))
    if read.model_dim != backend.d_model:
        raise ModelMismatchError(f"{path} is an adapter for models of width {read.model_dim}; this model's is "
                                 f"{backend.d_model}. Load it onto the model it was trained for.")
    ours = read.config.get("selfinterp") if isinstance(read.config.get("selfinterp"), dict) else {}
    if check_model and ours.get("embedding_fingerprint"):
        check_same_model(ours, backend, path)
    trained_for = (read.config.get("model") or {}).get("name") if isinstance(read.config.get("model"), dict) else None
    given = model_id_of(backend)
    if trained_for and given and _short(trained_for) != _short(given) and not ours:
        warnings.warn(f"{path.name} was trained on {trained_for}; it is being loaded onto {given}.", stacklevel=3)
    options = {"init_scale": read.init_scale} if read.init_scale > 0 else {}
    if read.low_rank_rank is not None:
        options.update(rank=read.low_rank_rank, low_rank_init_factor=read.low_rank_init_factor or REFERENCE_LOW_RANK_INIT_FACTOR)
    kind = KINDS[read.projection_type]
    saved_kind = (ours.get("adapter") or {}).get("kind") if isinstance(ours.get("adapter"), dict) else None
    if EXPORTS.get(saved_kind) == read.projection_type:
        kind = saved_kind  # written by this library: bias_only travels as scalar_affine
    # the file's values: a bad one is the file's ArtifactError, not a Python caller's OptionError
    adapter = make_adapter(AdapterConfig.from_dict({"kind": kind, "d_model": read.model_dim, **options}, source=str(path)))
    state = {k: (v.reshape(()) if k == "log_scale" else v).float() for k, v in read.state.items()}
    adapter.load_state_dict(state)
    tok = backend.tokenizer
    recorded = template is None and isinstance(ours.get("template"), dict)
    if isinstance(template, str):
        template = PromptTemplate.named(template, tok)
    elif template is None:
        template = _file_template(read.config, tok) or reference_template(tok)
    elif not isinstance(template, PromptTemplate):
        raise TemplateError(f"template= takes a template name or a PromptTemplate, got {type(template).__name__}.")
    site = Site.from_dict(ours["site"], source=str(path), prefix="selfinterp.site") if isinstance(ours.get("site"), dict) \
        else Site.parse("embed")
    metadata = {**(ours.get("metadata") or {}), "format": FORMAT, "projection_type": read.projection_type,
                "source_file": path.name, **read.extra}
    if trained_for:
        metadata["trained_for"] = trained_for
    spec = VectorSpec.from_dict(ours["vector_spec"], path) if isinstance(ours.get("vector_spec"), dict) else None
    if mean_vectors is not None:
        spec, topic = _topic_spec(mean_vectors, layer, backend, repo, read.model_dim)
        metadata.update(topic, source="topics")
    parts = dict(backend=backend, adapter=adapter, template=template, site=backend.check_site(site),
                 model_id=trained_for or given, metadata=metadata, vector_spec=spec)
    return parts, (ours["prompt_ids"] if recorded and isinstance(ours.get("prompt_ids"), list) else None)


def _short(name: str) -> str:
    """A model name compared across spellings (`meta-llama/Meta-Llama-3.1-8B-Instruct` = `Llama-3.1-8B-Instruct`)."""
    return str(name).rstrip("/").rsplit("/", 1)[-1].lower().removeprefix("meta-")


def save_selfie_adapter(explainer, path) -> Path:
    """Write `explainer`'s adapter as one selfie-adapters file the reference's loader accepts
    (`inference.py`: config_json with its projection section, model_dim, the state dict's names and
    shapes), atomically; this library's explainer config rides along under config_json's
    `selfinterp` key, which the reference ignores."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise OptionError(f"A selfie-adapters file is one .safetensors file; got {path}. Pass a path ending in .safetensors.")
    adapter = explainer.adapter
    kind = EXPORTS.get(adapter.kind)
    if kind is None:
        raise OptionError(f"Adapter kind {adapter.kind!r} has no selfie-adapters counterpart (it has "
                          f"{', '.join(sorted(EXPORTS))}); save it in this library's format: save_pretrained(directory).")
    config = adapter.config
    rank = getattr(config, "rank", None) if "U" in dict(adapter.named_parameters()) else None
    projection = {"type": kind, "normalize_input": True, "init_scale": float(config.init_scale), "low_rank_rank": rank,
                  "low_rank_init_factor": float(getattr(config, "low_rank_init_factor", REFERENCE_LOW_RANK_INIT_FACTOR))}
    template = explainer.template
    ours = {key: value for key, value in explainer.config_dict().items() if key != "adapter"}
    ours["adapter"] = config.to_dict()
    full = {"projection": projection, "model": {"name": explainer.model_id}, "selfinterp": ours,
            "soft_prompt": {"template": template.prompt, "reserved_token": template.placeholder},
            "data": {"eos_token": template.end}}
    meta = {"format": "selfie_adapter_v1", "config_json": json.dumps(full, allow_nan=False), "projection_type": kind,
            "normalize_input": "true", "init_scale": repr(float(config.init_scale)), "model_dim": str(adapter.d_model)}
    if rank is not None:
        meta["low_rank_rank"] = str(rank)
    for key in ("global_step", "best_val_loss"):
        if isinstance(explainer.metadata.get(key), (int, float)):
            meta[key] = str(explainer.metadata[key])
    tensors = {name: (p.detach().reshape(1) if name == "log_scale" else p.detach()).float().contiguous()
               for name, p in adapter.named_parameters() if name in SHAPES[kind]}
    with output_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, path, metadata=meta)
    return path
