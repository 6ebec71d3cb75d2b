"""Is this the model an explainer was trained for, whichever library holds it?

The exact `embedding_fingerprint` hashes embedding rows as stored, but the same weights are stored
differently across libraries: TransformerLens' HookedTransformer centres each embedding row when it
processes weights (`center_writing_weights`, LayerNorm models) and stores Gemma's embedding already
scaled by sqrt(d_model), where transformers scales it in the forward pass. So an artifact also
records an `embedding_signature`: a few embedding rows as the model looks them up (`embed_tokens`),
each centred and scaled to unit norm, at a few coordinates. Centring and rescaling a row leave it
unchanged, so every library's view of one checkpoint gives the same signature (up to float
rounding), and other weights give an unrelated one. A match of the exact fingerprint or of the
signature is a match; the model's name (`model_id`) only helps say what differed.
"""

from __future__ import annotations

import torch

from ..errors import ModelMismatchError

__all__ = ["SIGNATURE_TOLERANCE", "check_same_model", "embedding_signature", "model_id_of", "signature_distance"]

_ROWS, _COLS = 32, 16
#: largest coordinate difference of two signatures of the same weights: bfloat16 rounding of a
#: unit-norm row's coordinates (|x| < 0.5) moves them by < 2e-3; other weights differ by ~0.1 or more
SIGNATURE_TOLERANCE = 5e-3


def embedding_signature(backend) -> list[list[float]] | None:
    """Unit-norm, centred embedding rows (32 rows spread over the vocabulary, 16 coordinates
    each) as the model looks them up; None if the backend cannot read them."""
    n = len(backend.tokenizer)
    rows = torch.linspace(0, n - 1, steps=min(n, _ROWS)).round().long()
    try:
        with torch.no_grad():
            weight = backend.embed_tokens(rows.to(backend.device)).detach().float().cpu()
    except (IndexError, RuntimeError):  # a tokenizer longer than the embedding matrix
        return None
    weight = weight - weight.mean(-1, keepdim=True)
    weight = weight / weight.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cols = torch.linspace(0, weight.shape[1] - 1, steps=min(weight.shape[1], _COLS)).round().long()
    return [[round(float(v), 6) for v in row] for row in weight[:, cols]]


def signature_distance(a, b) -> float:
    """Largest coordinate difference of two signatures (inf if their shapes differ)."""
    try:
        a, b = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    except (TypeError, ValueError):  # a malformed saved signature matches nothing
        return float("inf")
    return float((a - b).abs().max()) if a.shape == b.shape and a.numel() else float("inf")


def model_id_of(backend) -> str | None:
    """The model's name as its library knows it: a transformers config's `_name_or_path` (hf,
    nnsight, a TransformerBridge's wrapped model), else the tokenizer's `name_or_path` or a
    HookedTransformer's `cfg.model_name` (TransformerLens' short names)."""
    model = getattr(backend, "model", None)
    for holder in (model, getattr(model, "original_model", None), getattr(model, "_model", None)):
        name = getattr(getattr(holder, "config", None), "_name_or_path", None)
        if isinstance(name, str) and name:
            return name
    name = getattr(backend.tokenizer, "name_or_path", None)
    if isinstance(name, str) and name:
        return name
    name = getattr(getattr(model, "cfg", None), "model_name", None)
    return name if isinstance(name, str) and name and name != "custom" else None


def check_same_model(config: dict, backend, where) -> None:
    """Refuse `backend` unless it holds the weights `config` (an artifact's) was saved for: the
    exact fingerprint, or the scale- and centring-free signature, must match."""
    expected = config.get("embedding_fingerprint")
    if not expected:
        return
    got = backend.fingerprint()
    if expected == got:
        return
    saved = config.get("embedding_signature")
    distance = None
    if saved:
        current = embedding_signature(backend)
        distance = signature_distance(saved, current) if current is not None else None
        if distance is not None and distance <= SIGNATURE_TOLERANCE:
            return
    trained_for = config.get("model_id") or "another model"
    given = model_id_of(backend) or f"this {type(backend.model).__name__}"
    why = f"embedding fingerprint {expected} != {got}"
    if distance is not None:
        why += f", and its embedding rows differ after undoing scaling and centring (by up to {distance:.3g})"
    elif not saved:
        why += f" ({where} predates signatures, which recognise the same weights across libraries)"
    given = f"also named {given}" if given == trained_for else given
    raise ModelMismatchError(
        f"{where}: this explainer was trained for {trained_for}; the model given ({given}) has other weights ({why}); "
        "load it onto that model, or pass check_model=False if you know they share weights."
    )
