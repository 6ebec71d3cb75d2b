"""The backend contract: run a frozen model with soft tokens injected.

Four verbs, so that an adapter trained on one backend runs on every other with the same
outputs:
- `logits`: differentiable in the soft tokens, computed only at the positions asked for;
- `generate`: prefill-only injection, batched, greedy or sampled, stops rows as they finish;
- `capture`: read the residual stream at sites and positions;
- facts: `d_model`, `n_layers`, `tokenizer`, `embed_tokens`, `typical_embed_norm`, `fingerprint`.

Inputs are always right-padded: in a causal model padding after the real tokens never
influences them, so no attention mask (and no position-id bookkeeping) is needed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ..errors import BackendError
from ..sites import Site


@dataclass
class Sampling:
    """How to pick each next token. `temperature=0` is greedy; `top_k=0` keeps every token. The
    filters apply in transformers' order (temperature, top-k, top-p), so `Sampling(0.7, 0.9,
    top_k=50)` draws as the reference's `generate(temperature=0.7, top_p=0.9)` does, whose unset
    top_k is transformers' default 50."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 30
    seed: int = 0
    top_k: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def pick_next(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """Greedy argmax, or temperature + top-k + nucleus sampling with a seeded generator."""
    if sampling.greedy:
        return logits.argmax(-1)
    logits = logits.float() / sampling.temperature
    if 0 < sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < sampling.top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def decode(logits: torch.Tensor, sampling: Sampling, is_finished, advance) -> list[list[int]]:
    """The generation loop every backend shares: pick each row's next token, record it, drop rows
    whose label is complete. `logits` (B, V) come from the prefill; `advance(next_ids, keep)` runs
    the model one step for the surviving rows (`keep`: their indices among the previous step's
    rows, or None if all survive) and returns their next logits. `is_finished` is called for the
    alive rows in row order, each with that row's growing list of ids."""
    generator = None if sampling.greedy else torch.Generator(device="cpu").manual_seed(sampling.seed)
    outputs: list[list[int]] = [[] for _ in range(logits.shape[0])]
    alive = torch.arange(logits.shape[0])
    for step in range(sampling.max_new_tokens):
        next_ids = pick_next(logits.float().cpu(), sampling, generator)
        keep = []
        for j, row in enumerate(alive.tolist()):
            outputs[row].append(int(next_ids[j]))
            if not is_finished(outputs[row]):
                keep.append(j)
        if not keep or step == sampling.max_new_tokens - 1:
            break
        index = None
        if len(keep) < len(alive):
            index = torch.tensor(keep)
            alive, next_ids = alive[index], next_ids[index]
        logits = advance(next_ids, index)
    return outputs


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
        """The soft tokens, computed here (what every other backend receives)."""
        return self.adapter(self.vectors, scale=self.scales)


class Backend(ABC):
    """A frozen model that can take soft tokens. Subclass per ecosystem (hf, nnsight, TL)."""

    name: str = ""
    #: True if `logits`/`generate` accept an `AdapterInput` in place of soft tokens and the
    #: backend offers `loss(...)` (the cross-entropy computed next to the model, see nnsight)
    computes_adapter: bool = False
    model: object
    tokenizer: object

    @property
    @abstractmethod
    def d_model(self) -> int: ...

    @property
    @abstractmethod
    def n_layers(self) -> int: ...

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @abstractmethod
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings as the model's embedding module outputs them (scaling included)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A short hash of the embedding matrix: the identity of the model an adapter fits."""

    @abstractmethod
    def logits(
        self,
        input_ids: torch.Tensor,
        soft: torch.Tensor,
        inject_mask: torch.Tensor,
        site: Site,
        positions: torch.Tensor,
        prefix_len: int = 0,
    ) -> torch.Tensor:
        """Logits (B, K, V) at `positions` (B, K) of right-padded `input_ids` (B, T).

        `prefix_len` > 0 promises that the first `prefix_len` tokens are the same in every row
        and carry no injection, so the backend may compute them once and reuse them.
        """

    @abstractmethod
    def generate(
        self,
        input_ids: torch.Tensor,
        soft: torch.Tensor,
        inject_mask: torch.Tensor,
        site: Site,
        sampling: Sampling,
        is_finished,
        prefix_len: int = 0,
    ) -> list[list[int]]:
        """New token ids per row; injection happens during the prefill only.

        All rows share one prompt length (one template). `is_finished(ids) -> bool` tells when a
        row's label is complete; finished rows stop costing compute.
        """

    @abstractmethod
    def capture(self, input_ids: list[list[int]], sites: list[Site], positions: list[list[int]]) -> torch.Tensor:
        """Residual-stream values (N, n_sites, d) at one position per row (`positions[i]` as a list
        of one index per row, negative counts from the end of that row's real tokens)."""

    def capture_all(self, input_ids: torch.Tensor, site: Site) -> torch.Tensor:
        """Residual-stream values (B, T, d) at every position of right-padded `input_ids` (B, T):
        what SAE latents are computed from. This fallback reads one position per `capture` call;
        backends override it with one forward pass."""
        rows = [row.tolist() for row in input_ids]
        columns = [self.capture(rows, [site], [t] * len(rows))[:, 0] for t in range(input_ids.shape[1])]
        return torch.stack(columns, dim=1)

    @property
    def typical_embed_norm(self) -> float:
        """Median L2 norm of the input embedding rows: the natural scale of a soft token."""
        weight = self.embed_tokens(torch.arange(min(4096, len(self.tokenizer)), device=self.device))
        return float(weight.float().norm(dim=-1).median())
