"""The LoRA-tuned explainer's configuration and examples (Li et al. 2025): `LoRAExplainerConfig` (the
reference's defaults, validated field by field so a damaged config file fails by name),
`TaskExample`, the reference's feature-description prompts, marker tokens and stop strings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from selfinterp_plugins.errors import ArtifactError, TemplateError

CONFIG_FILE = "lora_explainer_config.json"
PROJECTIONS_FILE = "projections.safetensors"
#: the reference's feature-description prompts for chat explainers (one per example, at random)
FEATURE_PROMPTS = (
    "Generate a description of this feature at layer {layer}: {feature}",
    "What does {feature} encode at layer {layer}?",
    "{feature} activates at layer {layer} for inputs with the following features:",
)
#: ... and for base-model explainers: raw strings, the answer written straight after the space
FEATURE_PROMPTS_RAW = (
    "At layer {layer}, {feature} encodes ",
    "{feature} activates at layer {layer} for ",
    "We can describe {feature} at layer {layer} as encoding ",
    "Generate a description of this feature at layer {layer}: {feature}. ",
    "What does {feature} encode at layer {layer}? ",
    "{feature} activates at layer {layer} for inputs with the following features: ",
)
#: rare single tokens tried, in order, for begin / feature / end markers: the reference's for Llama 3
#: and Qwen, then SmolLM2's StarCoder vocabulary and Gemma's unused tokens (the reference has none)
MARKER_CANDIDATES = (
    ("<|reserved_special_token_10|>", "<|reserved_special_token_12|>", "<|reserved_special_token_11|>"),
    ("<|vision_start|>", "<|vision_pad|>", "<|vision_end|>"),
    ("<jupyter_start>", "<empty_output>", "<jupyter_output>"),
    ("<unused1>", "<unused0>", "<unused2>"),
)
#: where the reference's evaluator stops a generation (`base_evaluator.py`)
STOP_STRINGS = (" [END]", "\n", ">>>.")
FINETUNES = ("lora", "full")
PROMPT_FORMATS = ("chat", "raw")
LOSS_REDUCTIONS = ("padded", "token")


@dataclass
class LoRAExplainerConfig:
    """The explainer and its training; defaults are the reference's (see the module docstring and
    docs/fidelity.md), the per-task choices in `tasks.TASK_DEFAULTS`."""

    finetune: str = "lora"  # "lora" or "full" (the reference's peft_lora false)
    rank: int = 128
    alpha: int = 16
    dropout: float = 0.1
    lr: float = 5e-5
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    epochs: int = 1
    batch_size: int = 8
    shuffle: bool = False  # the reference streams its data in order (an IterableDataset: the Trainer never shuffles)
    loss_reduction: str = "padded"  # "padded": Σ answer CE / padded length per row (the reference); "token": mean per token
    prompt_format: str = "chat"  # "chat" or "raw" (the reference's base-model strings ending in a newline)
    max_new_tokens: int = 50
    seed: int = 0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    markers: list[str] | None = None  # [begin, feature, end]; None: the first MARKER_CANDIDATES the tokenizer has
    subject_d_model: int | None = None  # None: vectors come from the explainer model itself
    subject_layers: list[int] = field(default_factory=list)  # layers that get a projection when sizes differ
    projection: str = "auto"  # "auto": Transluce's (none when sizes match); "ridge": always, ridge-initialised
    ridge: float = 1.0  # the ridge penalty of projection="ridge" (> 0)

    @classmethod
    def from_dict(cls, data: dict) -> LoRAExplainerConfig:
        if not isinstance(data, dict):
            raise ArtifactError(f"A LoRA-explainer config is a JSON object, not {type(data).__name__}; re-save the explainer.")
        known = {f for f in cls.__dataclass_fields__}
        config = cls(**{k: v for k, v in data.items() if k in known})
        config.validate()
        return config

    def validate(self) -> None:
        """Every field of the right type and range, so a damaged config file fails here, by name."""
        def bad(name, expected):
            raise ArtifactError(f"LoRA-explainer config: {name} should be {expected}, not {getattr(self, name)!r}; "
                                "fix it in lora_explainer_config.json or re-save the explainer.")

        def is_int(v, low):
            return isinstance(v, int) and not isinstance(v, bool) and v >= low

        def is_number(v, low, high=math.inf):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high

        def strings(v, n=None):
            return isinstance(v, list) and bool(v) and all(isinstance(x, str) and x for x in v) and (n is None or len(v) == n)

        for name, low in (("rank", 1), ("epochs", 0), ("batch_size", 1), ("max_new_tokens", 1), ("seed", 0)):
            if not is_int(getattr(self, name), low):
                bad(name, f"an integer >= {low}")
        for name, low, high in (("alpha", 1e-12, math.inf), ("lr", 0, math.inf), ("weight_decay", 0, math.inf),
                                ("dropout", 0, 0.999), ("grad_clip", 0, math.inf)):
            if not is_number(getattr(self, name), low, high):
                bad(name, f"a number in [{low}, {high}]")
        for name, choices in (("finetune", FINETUNES), ("prompt_format", PROMPT_FORMATS), ("loss_reduction", LOSS_REDUCTIONS)):
            if getattr(self, name) not in choices:
                bad(name, " or ".join(repr(c) for c in choices))
        if not isinstance(self.shuffle, bool):
            bad("shuffle", "true or false")
        if not strings(self.target_modules):
            bad("target_modules", "a non-empty list of module names")
        if self.markers is not None and not strings(self.markers, 3):
            bad("markers", "null or three token strings [begin, feature, end]")
        if self.subject_d_model is not None and not is_int(self.subject_d_model, 1):
            bad("subject_d_model", "null or a positive integer")
        if not (isinstance(self.subject_layers, list) and all(is_int(x, 0) for x in self.subject_layers)):
            bad("subject_layers", "a list of layer numbers")
        if self.projection not in ("auto", "ridge"):
            bad("projection", "'auto' or 'ridge'")
        if not is_number(self.ridge, 1e-12):
            bad("ridge", "a positive number")  # 0 makes the solve singular with fewer vectors than dimensions


@dataclass
class TaskExample:
    """One training / evaluation example: a chat prompt (token ids, the soft position if any) and
    the answer the explainer should give."""

    prompt_ids: list[int]
    answer: str
    vector: torch.Tensor | None = None
    feature_pos: int | None = None
    subject_layer: int | None = None
    meta: dict = field(default_factory=dict)


def pick_markers(tokenizer) -> list[str]:
    vocab = tokenizer.get_vocab()
    for triple in MARKER_CANDIDATES:
        if all(t in vocab for t in triple):
            return list(triple)
    raise TemplateError("No begin/feature/end marker tokens found; pass LoRAExplainerConfig(markers=[begin, feature, end]) "
                        "naming three special tokens of this tokenizer.")


def cut_at_stop(text: str) -> str:
    """The text up to and including the first stop string, as a generation that stops there reads
    (a batched generation runs on for rows that have already stopped)."""
    ends = [text.index(s) + len(s) for s in STOP_STRINGS if s in text]
    return text[: min(ends)] if ends else text
