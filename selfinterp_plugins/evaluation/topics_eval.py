"""Topic-benchmark evaluation: explain held-out vectors, score the labels, compare to a ceiling.

`evaluate_explainer` is what `selfinterp eval` and `scripts/topic_benchmark.py` run;
`ridge_probe_recall` is the linear-decoder ceiling the adapters are measured against: a ridge
map from the vector straight to the title's sentence embedding, scored by the same retrieval.
"""

from __future__ import annotations

import inspect
from typing import TypedDict

import torch

from ..adapters import normalize
from ..backends.base import Sampling
from ..errors import OptionError
from ..plugins import get_scorer
from .scoring import best_scale, record_truth, sentence_embedder

#: the scorers `evaluate_explainer` runs when none are named: what its headline keys come from
DEFAULT_SCORERS = ("recall_at_k", "exact_match")

#: one scale's scores (keys hold "@", hence the functional form)
ScaleMetrics = TypedDict("ScaleMetrics", {"recall@1": float, "recall@5": float, "exact_match": float}, total=False)


class EvalExample(TypedDict):
    """One labelled vector of the best scale: its id, the dataset's label and the explainer's."""

    id: str
    truth: str
    label: str


#: what `evaluate_explainer` and `selfinterp eval` return. `n`, `examples` and `scores` are always
#: there; `recall@1`, `recall@5` when recall_at_k ran, `exact_match` when exact_match ran, each at
#: `best_scale` (the best by recall@1, or by exact match without recall) and in `per_scale`; `scores`
#: holds every other scorer's metrics by scorer name, as it returned them
EvalMetrics = TypedDict("EvalMetrics", {
    "n": int, "per_scale": dict[str, ScaleMetrics], "best_scale": float, "recall@1": float, "recall@5": float,
    "exact_match": float, "examples": list[EvalExample], "scores": dict[str, dict],
}, total=False)


def check_scorers(names) -> list[str]:
    """The scorers named, each registered and callable as `scorer(records, dataset, candidates=...)`
    (what evaluation gives): refused before any label is generated, not after minutes of it. A scorer
    that needs options evaluation cannot give (the SAE-Lens scorers' `sae`, `backend`) is refused
    naming them."""
    names = list(dict.fromkeys(names))
    if not names:
        raise OptionError("Give at least one scorer (e.g. --scorer recall_at_k); `selfinterp plugins` lists them.")
    for name in names:
        scorer = get_scorer(name)  # UnknownNameError listing the installed scorers
        try:
            inspect.signature(scorer).bind([], None, candidates=[], candidate_embeddings=None)
        except TypeError as err:
            raise OptionError(f"Scorer {name!r} cannot run in an evaluation ({err}): it needs options evaluation does "
                              "not give; run it through its plugin's own command.") from None
        except ValueError:  # no signature to read (a builtin): let the call say
            pass
    return names


def evaluate_explainer(explainer, dataset, candidates: list[str], scales=(1.0,), sampling: Sampling | None = None,
                       batch_size: int = 64, candidate_embeddings=None, output=None, progress: bool = False,
                       scorers=DEFAULT_SCORERS) -> EvalMetrics:
    """Label `dataset`'s vectors and score the labels with `scorers` (registered names, a plugin's
    included): recall@1/5 and exact match per scale and at the best scale from the built-in two,
    every other scorer's metrics under `scores`. Each scorer is called as
    `scorer(records, dataset, candidates=candidates, candidate_embeddings=...)`."""
    names = check_scorers(scorers)
    records = explainer.explain(dataset, scales=scales, sampling=sampling or Sampling(max_new_tokens=16),
                                batch_size=batch_size, output=output, progress=progress)
    truth = record_truth(records, dataset)
    options = {"candidates": candidates, "candidate_embeddings": candidate_embeddings}
    # the registered scorers (the built-in names cannot be taken by a plugin): what `selfinterp eval` and
    # the report score with is what `get_scorer` hands out
    outputs = {name: get_scorer(name)(records, dataset, **options) for name in names}
    result: EvalMetrics = {"n": len(dataset)}
    recall = outputs["recall_at_k"]["recall_at_k"] if "recall_at_k" in outputs else None
    exact = outputs["exact_match"]["exact_match"] if "exact_match" in outputs else None
    scale = float(records[0]["scale"])
    if recall is not None:
        scale, best = best_scale(recall)
        result.update({"best_scale": scale, "recall@1": best[1], "recall@5": best[5]})
    elif exact is not None:
        scale = max(exact, key=exact.get)
        result["best_scale"] = scale
    if recall is not None or exact is not None:
        result["per_scale"] = {str(s): {**({"recall@1": recall[s][1], "recall@5": recall[s][5]} if recall else {}),
                                        **({"exact_match": exact[s]} if exact else {})} for s in (recall or exact)}
    if exact is not None:
        result["exact_match"] = exact[scale]
    result["examples"] = [{"id": r["id"], "truth": truth[r["id"]], "label": r["label"]}
                          for r in records if r["scale"] == scale][:20]
    result["scores"] = {name: out for name, out in outputs.items() if name not in DEFAULT_SCORERS}
    return result


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
