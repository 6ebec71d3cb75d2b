"""Scorers: how good a set of labels is.

- `recall_at_k`: embed each generated label, rank every candidate title by cosine similarity,
  hit if the true title is among the top k (the paper's topic retrieval; here with
  all-MiniLM-L6-v2 from a PyPI wheel instead of gte-large, so it runs offline).
- `exact_match`: the label equals the title, case- and space-insensitively.
Both take explain records (id, scale, label) and the candidate list, and report per scale so
an untrained baseline can be read at its best scale.
"""

from __future__ import annotations

from collections import defaultdict

import torch

# public: plugins' own evaluations (weight-diff and LoRA-task answers) score labels the way the core does
__all__ = ["best_scale", "exact_match", "recall_at_k", "record_truth", "sentence_embedder"]

_EMBEDDER = None


def sentence_embedder():
    """The offline sentence embedder, loaded once per process."""
    global _EMBEDDER
    if _EMBEDDER is None:
        from ..models import load_sentence_embedder

        _EMBEDDER = load_sentence_embedder()
    return _EMBEDDER


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def record_truth(records: list[dict], dataset) -> dict:
    """Each record's true label, keyed by the record's id as the record holds it, from the dataset
    the records came from (ids compared as text: a dataset's integer ids match explain's). A record
    whose id the dataset lacks (vectors explained without their ids, numbered '0', '1', ...) is
    refused here, naming the fix, where every scorer used to fail with KeyError: '0'."""
    truth = {str(r["id"]): r["label"] for r in dataset.records}
    stray = next((r["id"] for r in records if str(r["id"]) not in truth), None)
    if stray is not None:
        from ..errors import VectorError

        known = ", ".join(repr(i) for i in list(truth)[:3]) + (", ..." if len(truth) > 3 else "")
        raise VectorError(f"Record id {stray!r} is not an id of the dataset (its ids: {known}); explain the dataset "
                          "itself, explainer.explain(dataset), or pass ids=dataset.ids.")
    return {r["id"]: truth[str(r["id"])] for r in records}


def exact_match(records: list[dict], truth: dict[str, str]) -> dict[float, float]:
    """Fraction of labels equal to the true title, per scale."""
    by_scale = defaultdict(list)
    for r in records:
        by_scale[r["scale"]].append(_norm(r["label"]) == _norm(truth[r["id"]]))
    return {s: sum(v) / len(v) for s, v in sorted(by_scale.items())}


def recall_at_k(records: list[dict], truth: dict[str, str], candidates: list[str], ks=(1, 5),
                embedder=None, candidate_embeddings: torch.Tensor | None = None) -> dict[float, dict[int, float]]:
    """Recall@k of retrieving each record's true title from its label, per scale.

    `candidates` are all titles the label competes against (the whole topic set, not just the
    test split, as in the paper).
    """
    embedder = embedder or sentence_embedder()
    if candidate_embeddings is None:
        candidate_embeddings = embedder.encode(candidates)
    index = {c: i for i, c in enumerate(candidates)}
    missing = sorted({truth[r["id"]] for r in records} - set(index))
    if missing:
        from ..errors import ArtifactError

        raise ArtifactError(f"True titles missing from the candidates, e.g. {missing[0]!r}; include every true title in `candidates`.")
    labels = [r["label"] if r["label"].strip() else "(empty)" for r in records]
    sims = embedder.encode(labels) @ candidate_embeddings.T
    gold = torch.tensor([index[truth[r["id"]]] for r in records])
    gold_sim = sims[torch.arange(len(records)), gold]
    rank = (sims > gold_sim[:, None]).sum(1)  # 0 = best
    out: dict[float, dict[int, float]] = {}
    scales = torch.tensor([r["scale"] for r in records])
    for s in sorted(set(scales.tolist())):
        chosen = scales == s
        out[s] = {k: float((rank[chosen] < k).float().mean()) for k in ks}
    return out


def best_scale(per_scale: dict[float, dict[int, float]], k: int = 1) -> tuple[float, dict[int, float]]:
    """The scale with the highest recall@k: how the untrained baseline is reported."""
    scale = max(per_scale, key=lambda s: per_scale[s][k])
    return scale, per_scale[scale]
