"""Explainer = prompt template + adapter + site + backend.

The object a researcher holds: `Explainer.create(model, adapter="full_rank", template="echo")`,
`.train(dataset)`, `.explain(vectors)`, `.save_pretrained(dir)` and
`Explainer.from_pretrained(dir, model=...)`, where `model` is any model object an installed
backend recognises (a transformers model here; nnsight and TransformerLens through plugins).

The artifact is a directory with `explainer_config.json` and `adapter.safetensors`; the config
records the model's embedding fingerprint, so loading onto another model is refused.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from . import __version__
from .adapters import Adapter, AdapterConfig, make_adapter
from .backends.base import Backend, Sampling
from .errors import ArtifactError, ModelMismatchError, VectorError
from .serialization import load_safetensors, read_json, save_safetensors, write_json
from .sites import Site
from .templates import PromptTemplate

CONFIG_FILE = "explainer_config.json"
WEIGHTS_FILE = "adapter.safetensors"
IGNORE = -100


class Explainer:
    """A frozen model that reads vectors aloud through a trained adapter."""

    def __init__(self, backend: Backend, adapter: Adapter, template: PromptTemplate, site: Site, model_id: str | None = None,
                 metadata: dict | None = None):
        if adapter.d_model != backend.d_model:
            raise VectorError(
                f"Adapter width {adapter.d_model} differs from the model's d_model {backend.d_model}; "
                "create the adapter for this model."
            )
        self.backend = backend
        self.adapter = adapter.to(backend.device)
        self.template = template
        self.site = site
        self.model_id = model_id
        #: free-form facts saved with the explainer (vector source, layer, benchmark numbers)
        self.metadata = dict(metadata or {})
        tok = backend.tokenizer
        self.prompt_ids = template.prompt_ids(tok)
        self.inject_mask = self.prompt_ids == template.placeholder_id(tok)
        self.prefix_len = int(self.inject_mask.nonzero()[0])
        self._stop_ids = {i for i in (tok.eos_token_id, _single_id(tok, template.end)) if i is not None}

    # ---- construction ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        model,
        tokenizer=None,
        adapter: str | AdapterConfig = "scalar_affine",
        template: str | PromptTemplate = "chat",
        site: str | Site = "embed",
        model_id: str | None = None,
        backend_options: dict | None = None,
        **adapter_options,
    ) -> "Explainer":
        """A fresh explainer for `model`; `adapter_options` go to `AdapterConfig` (init_scale, rank)."""
        from .plugins import backend_for

        backend = backend_for(model, tokenizer=tokenizer, **(backend_options or {}))
        if isinstance(template, str):
            template = PromptTemplate.named(template, backend.tokenizer)
        if not isinstance(adapter, AdapterConfig):
            adapter = AdapterConfig(kind=adapter, d_model=backend.d_model, **adapter_options)
        model_id = model_id or getattr(getattr(backend.model, "config", None), "_name_or_path", None)
        return cls(backend, make_adapter(adapter), template, Site.parse(site), model_id)

    # ---- the two computations -------------------------------------------------------------

    def soft_tokens(self, vectors: torch.Tensor, scale=None) -> torch.Tensor:
        return self.adapter(torch.as_tensor(vectors).to(self.backend.device), scale=scale)

    def loss(self, vectors: torch.Tensor, labels: list[str], clamp: float = 100.0) -> torch.Tensor:
        """Cross-entropy of the labels' targets, per token clamped, mean over tokens then rows."""
        tok = self.backend.tokenizer
        vectors = torch.as_tensor(vectors)
        if vectors.dim() != 2 or vectors.shape[0] != len(labels) or not labels:
            raise VectorError(f"loss() takes vectors of shape (N, d_model) and N labels, got {tuple(vectors.shape)} and "
                              f"{len(labels)} labels; pass one label per vector row.")
        soft = self.soft_tokens(vectors)
        targets = [self.template.target_ids(tok, label) for label in labels]
        batch, prompt_len, width = len(labels), len(self.prompt_ids), max(map(len, targets))
        ids = torch.full((batch, prompt_len + width), _pad_id(tok), dtype=torch.long)
        ids[:, :prompt_len] = self.prompt_ids
        gold = torch.full((batch, width), IGNORE, dtype=torch.long)
        for i, target in enumerate(targets):
            ids[i, prompt_len : prompt_len + len(target)] = torch.tensor(target)
            gold[i, : len(target)] = torch.tensor(target)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[:, :prompt_len] = self.inject_mask
        positions = (prompt_len - 1 + torch.arange(width)).expand(batch, width)
        logits = self.backend.logits(ids, soft, mask, self.site, positions, self.prefix_len)
        gold = gold.to(logits.device)
        per_token = F.cross_entropy(logits.float().transpose(1, 2), gold, ignore_index=IGNORE, reduction="none")
        valid = (gold != IGNORE).float()
        per_row = (per_token.clamp(max=clamp) * valid).sum(1) / valid.sum(1)
        return per_row.mean()

    @torch.no_grad()
    def generate_labels(self, vectors: torch.Tensor, scales, sampling: Sampling) -> list[tuple[str, str]]:
        """(label, raw text) for each (vector, scale) row, one batched generate call."""
        tok = self.backend.tokenizer
        soft = self.soft_tokens(vectors, scale=scales)
        batch = soft.shape[0]
        ids = self.prompt_ids.expand(batch, -1)
        mask = self.inject_mask.expand(batch, -1)
        outputs = self.backend.generate(ids, soft, mask, self.site, sampling, self._is_finished, self.prefix_len)
        texts = [tok.decode(out, skip_special_tokens=False) for out in outputs]
        return [(self.template.parse_label(text), text) for text in texts]

    def _is_finished(self, ids: list[int]) -> bool:
        if ids[-1] in self._stop_ids:
            return True
        if self.template.end and not self.template.stop_at_closing:
            return False
        return self.template.is_finished(self.backend.tokenizer.decode(ids[-1:]))

    # ---- high-level verbs -----------------------------------------------------------------

    def train(self, train_data, validation=None, config=None, output_dir=None, progress: bool = True):
        """Train the adapter (frozen model); see `training.TrainConfig`. Returns the history."""
        from .training import TrainConfig, train

        return train(self, train_data, validation, config or TrainConfig(), output_dir, progress)

    def explain(self, vectors, ids=None, scales=(1.0,), sampling: Sampling | None = None, batch_size: int = 64,
                samples: int = 1, output=None, progress: bool = True) -> list[dict]:
        """Labels for vectors: one record per (vector, scale, sample); streamed to `output` JSONL if given."""
        from .explaining import explain

        return explain(self, vectors, ids, scales, sampling or Sampling(), batch_size, samples, output, progress)

    # ---- artifacts ------------------------------------------------------------------------

    def config_dict(self) -> dict:
        return {
            "library_version": __version__,
            "adapter": self.adapter.config.to_dict(),
            "template": self.template.to_dict(),
            "site": self.site.to_dict(),
            "model_id": self.model_id,
            "d_model": self.backend.d_model,
            "embedding_fingerprint": self.backend.fingerprint(),
            "metadata": self.metadata,
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_safetensors(dict(self.adapter.state_dict()), directory / WEIGHTS_FILE)
        write_json(self.config_dict(), directory / CONFIG_FILE)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, model, tokenizer=None, check_model: bool = True,
                        backend_options: dict | None = None) -> "Explainer":
        """Load a saved explainer onto `model`; refuses a model it was not trained for."""
        from .plugins import backend_for

        directory = Path(directory)
        if not directory.is_dir():
            raise ArtifactError(f"No explainer directory at {directory}; pass the folder written by save_pretrained().")
        config = _checked_config(read_json(directory / CONFIG_FILE), directory / CONFIG_FILE)
        backend = backend_for(model, tokenizer=tokenizer, **(backend_options or {}))
        expected = config.get("embedding_fingerprint")
        if check_model and expected and expected != backend.fingerprint():
            raise ModelMismatchError(
                f"This explainer was trained for {config.get('model_id') or 'another model'} and does not fit the model given; "
                "load it onto that model (or pass check_model=False if you know they share weights)."
            )
        if config.get("d_model") != backend.d_model:
            raise ModelMismatchError(
                f"Explainer d_model {config.get('d_model')} != model d_model {backend.d_model}; load it onto the model it was trained for."
            )
        adapter = make_adapter(AdapterConfig.from_dict(config.get("adapter", {})))
        state = load_safetensors(directory / WEIGHTS_FILE)
        try:
            adapter.load_state_dict(state)
        except RuntimeError as err:
            raise ArtifactError(f"{directory / WEIGHTS_FILE} does not match its config ({err}); re-save the explainer.") from None
        try:
            template = PromptTemplate.from_dict(config.get("template", {}))
            site = Site.from_dict(config.get("site", {}))
        except (TypeError, ValueError, KeyError) as err:
            raise ArtifactError(f"{directory / CONFIG_FILE} has a malformed template or site ({err}); re-save the explainer.") from None
        return cls(backend, adapter, template, site, config.get("model_id"), config.get("metadata"))


def _checked_config(config: dict, path) -> dict:
    """Refuse a config whose sections have the wrong JSON types, naming the field."""
    for key in ("adapter", "template", "site", "metadata"):
        if key in config and not isinstance(config[key], dict):
            raise ArtifactError(f"{path}: '{key}' must be a JSON object, got {type(config[key]).__name__}; re-save the explainer.")
    for key in ("model_id", "embedding_fingerprint"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise ArtifactError(f"{path}: '{key}' must be a string; re-save the explainer.")
    if isinstance(config.get("d_model"), bool) or not isinstance(config.get("d_model"), int):
        raise ArtifactError(f"{path}: 'd_model' must be an integer; re-save the explainer.")
    return config


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def _single_id(tokenizer, text: str) -> int | None:
    if not text:
        return None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


__all__ = ["Explainer"]
