"""Which base model a DIT adapter or a weight diff belongs to: recorded when saved, checked on use.

A DIT adapter answers for the model it was trained on, and a weight diff is a change of one
model's weights; on another model of the same shapes both run and answer nonsense without a word.
So each records its base's embedding fingerprint (`selfinterp_plugins.models.embedding_fingerprint`,
as an explainer does: bfloat16-rounded, so the same checkpoint in float32 or bfloat16 agrees) and
the base's name, and using it with another model is a one-line `ModelMismatchError` naming both.
Both are always transformers models wrapped by PEFT, so the exact fingerprint is the whole check
(an explainer's scale-free `embedding_signature` serves other libraries' views of one model). An
artifact saved before records none and is used as before; its shapes are still checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from selfinterp_plugins.errors import ModelMismatchError
from selfinterp_plugins.models import embedding_fingerprint

#: the keys an artifact's record holds about its base model (the explainer config's names)
IDENTITY_KEYS = ("model_id", "embedding_fingerprint")


@dataclass
class ModelRecord:
    """The fields of a record (dit_config.json, weight_diff.json) that name the base model."""

    model_id: str | None = None
    embedding_fingerprint: str | None = None


def model_name(model) -> str | None:
    """The model's name as transformers knows it (`config._name_or_path`), through a PEFT wrapper."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = getattr(getattr(inner, "config", None), "_name_or_path", None)
    return name if isinstance(name, str) and name else None


def model_record(model) -> dict:
    """What an artifact made on `model` records about it."""
    return {"model_id": model_name(model), "embedding_fingerprint": embedding_fingerprint(model)}


def check_model(record: dict, model, where, what: str) -> None:
    """Refuse `model` unless it has the weights `record` (an artifact's) was made on; a record
    without a fingerprint (saved before they were recorded) passes."""
    expected = record.get("embedding_fingerprint")
    if not expected:
        return
    got = embedding_fingerprint(model)
    if got == expected:
        return
    saved = record.get("model_id") or "another model"
    given = model_name(model) or f"this {type(model).__name__}"
    given = f"also named {given}" if given == saved else given
    raise ModelMismatchError(f"{where}: this {what} was made on {saved}; the model given ({given}) has other weights "
                             f"(embedding fingerprint {expected} != {got}); use it with the model it was made on "
                             "(--model).")
