"""SAE latent activations of texts: the subject model run to the SAE's site, then `sae.encode`.

Every scorer asks the same question, "where does latent i fire in these tokens?", so this is the
one place that runs it: right-padded batches (a causal model never lets padding reach a real
token), the forward pass stopped at the SAE's layer (`Backend.capture_all`), and only the
requested latents kept, so memory grows with the latents asked for, not with `d_sae`.
"""

from __future__ import annotations

import torch

from selfinterp_plugins.backends import pad_token_id

from .sae_info import sae_site


def pad_batch(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and the mask of real tokens."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.bool)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = True
    return ids, mask


@torch.no_grad()
def latent_acts(backend, sae, sequences: list[list[int]], features: list[int] | None = None,
                batch_size: int = 16) -> list[torch.Tensor]:
    """Per sequence, a (len, n_features) tensor of latent activations (all latents if None; each
    index checked, since `acts[..., [-1]]` would be the last latent's)."""
    from .latent_ids import feature_indices

    features = None if features is None else feature_indices(sae, features)
    site = sae_site(sae)
    pad = pad_token_id(backend.tokenizer)
    dtype = sae.W_dec.dtype
    out: list[torch.Tensor] = [None] * len(sequences)  # type: ignore[list-item]
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths share a batch
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = pad_batch([sequences[i] for i in rows], pad)
        resid = backend.capture_all(ids, site)
        acts = sae.encode(resid.to(device=sae.W_dec.device, dtype=dtype))
        if features is not None:
            acts = acts[..., features]
        acts = acts.float().cpu()
        for j, i in enumerate(rows):
            out[i] = acts[j, : int(mask[j].sum())]
    return out


def max_acts(acts: list[torch.Tensor], skip_first: int = 1) -> torch.Tensor:
    """(N, n_features): each sequence's largest activation after its first `skip_first` tokens
    (the first token is BOS or the chat template's first marker, an attention sink whose outlier
    norm lights up unrelated latents; the reference counts hits after the first token)."""
    rows = []
    for a in acts:
        tail = a[skip_first:]
        rows.append(tail.max(0).values if len(tail) else torch.zeros(a.shape[-1]))
    return torch.stack(rows)
