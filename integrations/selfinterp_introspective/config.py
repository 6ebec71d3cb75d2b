"""The LoRA-tuned explainer's configuration and examples (Li et al. 2025): `LoRAExplainerConfig` (the
reference's defaults, validated field by field so a damaged config file fails by name),
`TaskExample`, the reference's feature-description prompts, marker tokens and stop strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, get_args

import torch

from selfinterp_plugins.errors import TemplateError
from selfinterp_plugins.storage.validation import (
    Name,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    between,
    check_fields,
    length,
    validate,
)

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
Finetune = Literal["lora", "full"]
PromptFormat = Literal["chat", "raw"]
LossReduction = Literal["padded", "token"]
ChatPrompt = Literal["template", "user_turn"]
Paraphrases = Literal["per_pass", "per_example"]
FINETUNES, PROMPT_FORMATS, LOSS_REDUCTIONS = get_args(Finetune), get_args(PromptFormat), get_args(LossReduction)
#: what an explainer saved before a field existed was trained with (its config file lacks the key)
BEFORE_FIELD = {"chat_prompt": "user_turn", "paraphrases": "per_example"}


@dataclass
class LoRAExplainerConfig:
    """The explainer and its training; defaults are the reference's (see the module docstring and
    docs/fidelity.md), the per-task choices in `tasks.TASK_DEFAULTS`."""

    finetune: Finetune = "lora"  # "lora" or "full" (the reference's peft_lora false)
    rank: PositiveInt = 128
    alpha: PositiveFloat = 16
    dropout: Annotated[float, between(0, 0.999)] = 0.1
    lr: NonNegativeFloat = 5e-5
    weight_decay: NonNegativeFloat = 0.01
    grad_clip: NonNegativeFloat = 1.0
    epochs: NonNegativeInt = 1
    batch_size: PositiveInt = 8
    shuffle: bool = False  # the reference streams its data in order (an IterableDataset: the Trainer never shuffles)
    loss_reduction: LossReduction = "padded"  # "padded": Σ answer CE / padded length per row (the reference); "token": mean per token
    prompt_format: PromptFormat = "chat"  # "chat" or "raw" (the reference's base-model strings ending in a newline)
    # "template": a chat prompt as the reference's format_messages renders it (the template's own
    # rendering of the turns and an empty assistant turn, its closing cut, tokenised with the
    # tokenizer's special tokens); "user_turn": one written-out user turn, no system turn, no think block
    chat_prompt: ChatPrompt = "template"
    # "per_pass": each training epoch draws each example's paraphrased prompt anew (the reference's
    # `random.choice` in `__iter__`); "per_example": the one drawn when the examples were built
    paraphrases: Paraphrases = "per_pass"
    max_new_tokens: PositiveInt = 50
    seed: NonNegativeInt = 0
    target_modules: Annotated[list[Name], length(1)] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    markers: Annotated[list[Name], length(3, 3)] | None = None  # [begin, feature, end]; None: the first MARKER_CANDIDATES the tokenizer has
    subject_d_model: PositiveInt | None = None  # None: vectors come from the explainer model itself
    subject_layers: list[NonNegativeInt] = field(default_factory=list)  # layers that get a projection when sizes differ
    projection: Literal["auto", "ridge"] = "auto"  # "auto": Transluce's (none when sizes match); "ridge": always, ridge-initialised
    ridge: PositiveFloat = 1.0  # the ridge penalty of projection="ridge" (> 0: 0 makes the solve singular)

    @classmethod
    def from_dict(cls, data: dict, source: str = CONFIG_FILE) -> LoRAExplainerConfig:
        """The config a file holds; a key it lacks takes the value the explainer was trained with
        before that field existed (`BEFORE_FIELD`), not today's default."""
        if isinstance(data, dict):
            data = {**BEFORE_FIELD, **data}
        return validate(cls, data, source, f"fix it in {CONFIG_FILE} or re-save the explainer.", unknown="ignore")

    def validate(self) -> None:
        """Every field of the right type and range (a config built or changed in Python)."""
        check_fields(self, "LoRAExplainerConfig", "pass values of the documented types and ranges.")


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
    #: every paraphrase of the prompt as (prompt ids, soft position), `prompt_ids` among them; training
    #: with `paraphrases="per_pass"` draws one per epoch. Empty: the task has one prompt.
    paraphrases: tuple[tuple[list[int], int | None], ...] = ()


def pick_markers(tokenizer) -> list[str]:
    vocab = tokenizer.get_vocab()
    for triple in MARKER_CANDIDATES:
        if all(t in vocab for t in triple):
            return list(triple)
    raise TemplateError("No begin/feature/end marker tokens found; pass LoRAExplainerConfig(markers=[begin, feature, end]) "
                        "naming three special tokens of this tokenizer.")


def stop_strings(model) -> tuple[str, ...]:
    """The reference's stop strings for an explainer: none for a Qwen3 one (it stops at its end of
    turn; `evaluator/base_evaluator.py` lines 94-95 test the architecture), STOP_STRINGS otherwise."""
    return () if getattr(model.config, "model_type", None) == "qwen3" else STOP_STRINGS


def cut_at_stop(text: str, stops: tuple[str, ...] = STOP_STRINGS) -> str:
    """The text up to and including the first stop string, as a generation that stops there reads
    (a batched generation runs on for rows that have already stopped)."""
    ends = [text.index(s) + len(s) for s in stops if s in text]
    return text[: min(ends)] if ends else text
