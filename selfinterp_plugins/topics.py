"""The topic benchmark's data: WordNet topics and their topic vectors.

A topic vector is Pepper et al. 2026's: the residual stream after layer ℓ at the last
prompt token of the chat prompt `Tell me about {title}.`, minus the mean over all topics.
Topics ship as package data (`data/topics.jsonl`, built from WordNet 3.0 by
`scripts/build_topics.py`; licence in `data/LICENSE-WordNet.txt`) with a fixed split.
"""

from __future__ import annotations

import json
from importlib import resources

import torch

from .datasets import VectorLabelDataset
from .errors import ArtifactError, BackendError
from .sites import Site
from .vector_spec import prompt_text

# public: the shipped topic benchmark, for plugins' commands (hidden topics) and the examples
__all__ = ["TOPIC_PROMPT", "load_topics", "topic_prompt_ids", "topic_vectors"]

TOPIC_PROMPT = "Tell me about {title}."


def load_topics(limit_per_split: dict | None = None) -> list[dict]:
    """The shipped topic set: records with id, title, description, category, split."""
    text = resources.files("selfinterp_plugins").joinpath("data/topics.jsonl").read_text(encoding="utf-8")
    topics = [json.loads(line) for line in text.splitlines() if line.strip()]
    if limit_per_split:
        counts: dict[str, int] = {}
        kept = []
        for topic in topics:
            split = topic["split"]
            if counts.get(split, 0) < limit_per_split.get(split, len(topics)):
                counts[split] = counts.get(split, 0) + 1
                kept.append(topic)
        topics = kept
    return topics


def topic_prompt_ids(tokenizer, title: str) -> list[int]:
    """Token ids of the chat prompt asking about `title`, generation prompt included."""
    return prompt_text(tokenizer, TOPIC_PROMPT, title, "chat", tokenize=True)


def topic_vectors(
    model,
    topics: list[dict],
    layers: list,
    batch_size: int = 32,
    progress: bool = True,
    subtract_mean: bool = True,
    means: dict | None = None,
    tokenizer=None,
) -> dict:
    """One VectorLabelDataset per layer, label = title, keyed by the layer as given.

    `model` is any model object `Explainer.create` takes (transformers, nnsight, TransformerLens;
    `tokenizer=` as there) or a Backend. A layer is an int K (resid_post.K), a site name
    ('resid_post.10', 'resid_pre.3') or a TransformerLens hook name ('blocks.10.hook_resid_post').
    All layers come from one forward pass per batch, stopped after the deepest layer read.
    The mean is over the topics given, unless `means` (per layer as given, or per int layer, e.g.
    saved with an explainer trained on the full set) is passed so a few topics can be turned into
    vectors consistently.
    """
    from tqdm.auto import tqdm

    from .plugins import backend_for

    if not topics:
        raise ArtifactError("No topics given; pass records with a 'title' field.")
    backend = backend_for(model, tokenizer=tokenizer)
    sites = [_site(layer) for layer in layers]
    for site in sites:
        backend.check_site(site)
    prompts = [topic_prompt_ids(backend.tokenizer, t["title"]) for t in topics]
    # sort by length so batches hold similar lengths (less padding), then restore the order
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = torch.empty(len(prompts), len(layers), backend.d_model)
    for start in tqdm(range(0, len(order), batch_size), disable=not progress, desc="topic vectors"):
        chunk = order[start : start + batch_size]
        out[chunk] = backend.capture([prompts[i] for i in chunk], sites)
    result = {}
    for j, (layer, site) in enumerate(zip(layers, sites)):
        vectors = out[:, j]
        mean = _given_mean(means, layer, site) if means is not None else vectors.mean(0)
        if subtract_mean:
            vectors = vectors - mean
        records = [
            {"id": t["id"], "label": t["title"], "description": t.get("description", ""),
             "category": t.get("category", ""), "split": t.get("split", "train")}
            for t in topics
        ]
        meta = {"source": "topics", "site": site.name, "layer": site.layer, "prompt": TOPIC_PROMPT,
                "prompt_format": "chat", "position": "last", "mean_subtracted": subtract_mean, "mean": mean.tolist(),
                "model_fingerprint": backend.fingerprint()}
        result[layer] = VectorLabelDataset(vectors.contiguous(), records, meta)
    return result


def _site(layer) -> Site:
    """resid_post.K for an int K; a site or TransformerLens hook name otherwise."""
    if isinstance(layer, bool):
        raise BackendError(f"A layer is an int or a site name, got {layer!r}; pass e.g. 10 or 'blocks.10.hook_resid_post'.")
    if isinstance(layer, int):
        return Site("resid_post", layer)
    if isinstance(layer, (str, Site)):
        return Site.parse(layer)
    raise BackendError(f"A layer is an int or a site name, got {type(layer).__name__} {layer!r}; pass e.g. 10, "
                       "'resid_post.10' or 'blocks.10.hook_resid_post'.")


def _given_mean(means: dict, layer, site: Site) -> torch.Tensor:
    for key in (layer, site.layer, site.name):
        if key in means:
            return torch.as_tensor(means[key]).float()
    raise ArtifactError(f"means= has no entry for layer {layer!r}; key it by the layers you pass.")
