"""Picking tokens and the decoding loop every backend shares (`Backend.generate` calls it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch

from ..errors import OptionError
from ..storage.validation import NonNegativeFloat, NonNegativeInt, PositiveInt, between, check_fields


@dataclass
class Sampling:
    """How to pick each next token. `temperature=0` is greedy; `top_k=0` keeps every token. The
    filters apply in transformers' order (temperature, top-k, top-p), so `Sampling(0.7, 0.9,
    top_k=50)` draws as the reference's `generate(temperature=0.7, top_p=0.9)` does, whose unset
    top_k is transformers' default 50."""

    temperature: NonNegativeFloat = 0.0
    top_p: Annotated[float, between(gt=0, le=1)] = 1.0
    max_new_tokens: PositiveInt = 30
    seed: NonNegativeInt = 0
    top_k: NonNegativeInt = 0

    def __post_init__(self):
        check_fields(self, "Sampling", "use a finite temperature >= 0, 0 < top_p <= 1, max_new_tokens >= 1, "
                     "seed and top_k >= 0.", error=OptionError)

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
