"""Weak labels for SAE latents from their top-activating tokens.

Without an LLM explainer pipeline, the cheapest honest label for a latent is the token it fires
hardest on: stream a corpus through the model and the SAE, keep each latent's top activations
and the tokens they sit on, and label a latent with its dominant token when that token makes up
at least `min_share` of its top activations. Latents without a dominant token get no weak label
(counted, not hidden). These labels are what the adapter is trained on and what it is compared to.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from .latents import latent_acts
from .sae_info import sae_info


@dataclass
class TopActivations:
    """Per latent: its `k` largest activations, the token each sat on, and how often it fires."""

    values: torch.Tensor  # (d_sae, k), descending; 0 where fewer than k activations were seen
    tokens: torch.Tensor  # (d_sae, k) token ids, -1 where empty
    frequency: torch.Tensor  # (d_sae,) fraction of tokens with activation > 0
    n_tokens: int


@torch.no_grad()
def top_activations(backend, sae, windows: list[list[int]], k: int = 20, batch_size: int = 32, skip_first: int = 1,
                    progress: bool = True) -> TopActivations:
    """Stream `windows` through model + SAE keeping only each latent's top `k` (memory O(d_sae·k))."""
    from tqdm.auto import tqdm

    d_sae = sae_info(sae).d_sae
    values = torch.zeros(d_sae, k)
    tokens = torch.full((d_sae, k), -1, dtype=torch.long)
    fires = torch.zeros(d_sae)
    n_tokens = 0
    for start in tqdm(range(0, len(windows), batch_size), disable=not progress, desc="top activations"):
        chunk = windows[start : start + batch_size]
        acts = latent_acts(backend, sae, chunk, None, batch_size)
        flat = torch.cat([a[skip_first:] for a in acts])  # (n, d_sae)
        ids = torch.cat([torch.tensor(w[skip_first:], dtype=torch.long) for w in chunk])
        n_tokens += len(ids)
        fires += (flat > 0).sum(0)
        both_v = torch.cat([values, flat.T], dim=1)
        both_t = torch.cat([tokens, ids[None].expand(d_sae, -1)], dim=1)
        top = both_v.topk(k, dim=1)
        values, tokens = top.values, both_t.gather(1, top.indices)
    tokens = torch.where(values > 0, tokens, torch.full_like(tokens, -1))
    return TopActivations(values, tokens, fires / max(1, n_tokens), n_tokens)


def weak_labels(top: TopActivations, tokenizer, min_share: float = 0.5, min_count: int = 10) -> tuple[dict[int, str], dict]:
    """{latent: label} for latents whose top activations are dominated by one word, and a report.

    Tokens are compared after decoding, stripping and lower-casing (" Love" and "love" count as one
    word); a latent needs at least `min_count` activations and a word with `min_share` of them.
    The label is the word as it most often appears.
    """
    labels: dict[int, str] = {}
    reasons = Counter()
    for latent in range(top.tokens.shape[0]):
        ids = [int(t) for t in top.tokens[latent] if t >= 0]
        if len(ids) < min_count:
            reasons["too_few_activations"] += 1
            continue
        words = [tokenizer.decode([t]).strip() for t in ids]
        keyed = Counter(w.lower() for w in words if any(c.isalnum() for c in w))
        if not keyed:
            reasons["no_word"] += 1
            continue
        word, count = keyed.most_common(1)[0]
        if count / len(ids) < min_share:
            reasons["no_dominant_word"] += 1
            continue
        labels[latent] = Counter(w for w in words if w.lower() == word).most_common(1)[0][0]
    report = {"latents": int(top.tokens.shape[0]), "labelled": len(labels), "unlabelled": dict(reasons),
              "min_share": min_share, "min_count": min_count, "tokens_seen": top.n_tokens}
    return labels, report
