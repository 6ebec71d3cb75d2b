"""Topic-benchmark evaluation: explain held-out vectors, score the labels, compare to a ceiling.

`evaluate_explainer` is what `selfinterp eval` and `scripts/topic_benchmark.py` run;
`ridge_probe_recall` is the linear-decoder ceiling the adapters are measured against: a ridge
map from the vector straight to the title's sentence embedding, scored by the same retrieval.
"""

from __future__ import annotations

import torch

from ..adapters import normalize
from ..backends.base import Sampling
from ..plugins import get_scorer
from .scoring import best_scale, sentence_embedder


def evaluate_explainer(explainer, dataset, candidates: list[str], scales=(1.0,), sampling: Sampling | None = None,
                       batch_size: int = 64, candidate_embeddings=None, output=None, progress: bool = False) -> dict:
    """Recall@1/5 and exact match of `explainer`'s labels for `dataset`, per scale and at the best scale."""
    records = explainer.explain(dataset.vectors, ids=dataset.ids, scales=scales, sampling=sampling or Sampling(max_new_tokens=16),
                                batch_size=batch_size, output=output, progress=progress)
    truth = {r["id"]: r["label"] for r in dataset.records}
    # the registered scorers (built-in, so no plugin can replace them): what `selfinterp eval` and the
    # report score with is what `get_scorer` hands out
    recall = get_scorer("recall_at_k")(records, dataset, candidates=candidates,
                                       candidate_embeddings=candidate_embeddings)["recall_at_k"]
    exact = get_scorer("exact_match")(records, dataset)["exact_match"]
    scale, best = best_scale(recall)
    return {
        "n": len(dataset),
        "per_scale": {str(s): {"recall@1": recall[s][1], "recall@5": recall[s][5], "exact_match": exact[s]} for s in recall},
        "best_scale": scale,
        "recall@1": best[1],
        "recall@5": best[5],
        "exact_match": exact[scale],
        "examples": [{"id": r["id"], "truth": truth[r["id"]], "label": r["label"]} for r in records if r["scale"] == scale][:20],
    }


def ridge_probe_recall(train, test, candidates: list[str], ridges=(0.1, 1.0, 10.0, 100.0), validation=None,
                       candidate_embeddings=None) -> dict:
    """Ceiling: ridge regression from normalised vectors to title embeddings, then retrieval.

    The ridge strength is chosen on `validation` (or `test` if none is given, which flatters it).
    """
    embedder = sentence_embedder()
    if candidate_embeddings is None:
        candidate_embeddings = embedder.encode(candidates)
    index = {c: i for i, c in enumerate(candidates)}

    x = normalize(train.vectors.double())
    y = embedder.encode(train.labels).double()
    xm, ym = x.mean(0), y.mean(0)

    def fit(ridge):
        gram = (x - xm).T @ (x - xm) + ridge * torch.eye(x.shape[1], dtype=x.dtype)
        w = torch.linalg.solve(gram, (x - xm).T @ (y - ym))
        return lambda v: (normalize(v.double()) - xm) @ w + ym

    def score(probe, data):
        pred = normalize(probe(data.vectors).float())
        sims = pred @ candidate_embeddings.T
        gold = torch.tensor([index[label] for label in data.labels])
        rank = (sims > sims[torch.arange(len(data)), gold][:, None]).sum(1)
        return {"recall@1": float((rank < 1).float().mean()), "recall@5": float((rank < 5).float().mean())}

    chooser = validation if validation is not None else test
    probes = {ridge: fit(ridge) for ridge in ridges}
    best = max(ridges, key=lambda r: score(probes[r], chooser)["recall@1"])
    return {"ridge": best, **score(probes[best], test), "n": len(test)}
