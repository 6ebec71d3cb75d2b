"""Which weights a model has, cheaply: the fingerprint of its input embedding matrix.

An artifact trained for one model records it, and loading refuses a mismatch.
"""

from __future__ import annotations

import hashlib

import torch

_FINGERPRINT_ROWS = 64


def embedding_fingerprint(model: torch.nn.Module) -> str:
    """Short stable id of a model: sha256 (first 16 hex chars) of its input embeddings.

    Why: an explainer trained on one model's vectors is meaningless on another, so saved
    artifacts record this and loading refuses a mismatch. Hashing the whole matrix would
    be slow for big vocabularies, so we hash the shape plus 64 evenly spaced rows. The
    rows are rounded to bfloat16 before hashing (then stored as float32 bytes) so that
    the same checkpoint loaded in float32 or bfloat16 gets the same fingerprint; any
    genuinely different model differs far more than that rounding.
    """
    weight = model.get_input_embeddings().weight.detach()
    index = fingerprint_rows(weight.shape[0])
    return fingerprint_digest(tuple(weight.shape), weight[index.to(weight.device)])


def fingerprint_rows(vocab_size: int) -> torch.Tensor:
    """The embedding rows the fingerprint hashes (a backend whose weights are remote reads these)."""
    return torch.linspace(0, vocab_size - 1, steps=min(vocab_size, _FINGERPRINT_ROWS)).round().long()


def fingerprint_digest(shape: tuple[int, int], sample: torch.Tensor) -> str:
    """The fingerprint of an embedding matrix of `shape` from its rows at `fingerprint_rows`."""
    sample = sample.detach().to(torch.bfloat16).to(torch.float32).cpu().contiguous()
    digest = hashlib.sha256()
    digest.update(f"{shape[0]}x{shape[1]}".encode())
    digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]
