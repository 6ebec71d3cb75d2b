"""What the verbs hand a backend's primitives: an `Injection` (soft tokens, where, at which
positions), an `AdapterInput` (vectors plus the adapter, for a backend that runs the adapter
itself), right-padded capture batches, and the clamped cross-entropy of the training loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import BackendError
from ..sites import Site, inject

#: gold label of a position that carries no target
IGNORE = -100


def pad_token_id(tokenizer) -> int:
    """The id every batch is padded with: the tokenizer's pad token, else its EOS token (what
    transformers' `generate` falls back to), else 0. Padding sits after a causal model's real tokens
    or under an attention mask, so its value never reaches a result; it only has to be a valid id.
    Public (`selfinterp_plugins.backends.pad_token_id`): plugins pad their own batches with it."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return value
    return 0


@dataclass
class Injection:
    """Soft tokens to write into one forward call (the prefill, never a decoding step).

    `soft` (B, d) holds one soft token per row, `mask` (B, T) marks the positions of this call's
    tokens that take it, `site` says where. A backend calls `apply(hidden)` on the (B, T, d)
    values at the site and runs the model on with what it returns; the arithmetic (replace or
    add_normmatched, dtype and device casts) is `sites.inject`, the same for every backend."""

    site: Site
    soft: torch.Tensor
    mask: torch.Tensor

    def apply(self, hidden: torch.Tensor) -> torch.Tensor:
        return inject(hidden, self.soft, self.mask, self.site)


@dataclass
class AdapterInput:
    """Vectors and the adapter that maps them to soft tokens, handed to a backend that runs the
    adapter itself (`Backend.computes_adapter`). Such a backend calls the kind's own function,
    `type(adapter).math(adapter.tensors(), vectors, scales)` (what `Adapter.forward` calls), where
    the model runs: nnsight does so inside the intervention, so that a remote request carries the
    adapter's few tensors, not soft tokens computed here. No backend knows any adapter kind."""

    vectors: torch.Tensor
    adapter: object
    scales: torch.Tensor | None = None

    def soft(self) -> torch.Tensor:
        """The soft tokens, computed here (what a backend running the model here injects)."""
        device = next((t.device for t in self.adapter.tensors().values()), self.vectors.device)
        scales = None if self.scales is None else self.scales.to(device)
        return self.adapter(self.vectors.to(device), scale=scales)


def soft_tokens(soft) -> torch.Tensor:
    """Soft tokens from what a verb was given: soft tokens as they are, an AdapterInput computed."""
    return soft.soft() if isinstance(soft, AdapterInput) else soft


def capture_batch(input_ids: list[list[int]], positions: list[int] | None, pad_id: int | None):
    """Right-padded ids (N, T) and one absolute position per row for `capture`: negative
    positions count from the end of each row's real tokens; a position outside its row is refused."""
    positions = positions if positions is not None else [-1] * len(input_ids)
    lengths = torch.tensor([len(ids) for ids in input_ids])
    index = torch.tensor(positions)
    index = torch.where(index < 0, lengths + index, index)
    if ((index < 0) | (index >= lengths)).any():
        raise BackendError("A capture position lies outside its prompt; use an index within each prompt's tokens.")
    batch = torch.full((len(input_ids), int(lengths.max())), pad_id if pad_id is not None else 0, dtype=torch.long)
    for i, ids in enumerate(input_ids):
        batch[i, : len(ids)] = torch.tensor(ids)
    return batch, index


def clamped_cross_entropy(logits: torch.Tensor, gold: torch.Tensor, clamp: float = 100.0) -> torch.Tensor:
    """The explainer's training loss from logits (B, K, V) and gold ids (B, K) (IGNORE where no
    target): per-token cross-entropy clamped at `clamp`, mean over each row's targets, then over rows."""
    gold = gold.to(logits.device)
    per_token = F.cross_entropy(logits.float().transpose(1, 2), gold, ignore_index=IGNORE, reduction="none")
    valid = (gold != IGNORE).float()
    return ((per_token.clamp(max=clamp) * valid).sum(1) / valid.sum(1)).mean()
