"""Scorers `recall_at_k` (sentence-embedding retrieval) and `exact_match`."""

from ..hookspecs import hookimpl


def _truth(dataset):
    return {r["id"]: r["label"] for r in dataset.records}


def recall_scorer(records, dataset, candidates=None, ks=(1, 5), candidate_embeddings=None):
    from ..evaluation.scoring import recall_at_k

    candidates = candidates or sorted(set(dataset.labels))
    return {"recall_at_k": recall_at_k(records, _truth(dataset), candidates, ks,
                                       candidate_embeddings=candidate_embeddings)}


def exact_match_scorer(records, dataset, **_):
    from ..evaluation.scoring import exact_match

    return {"exact_match": exact_match(records, _truth(dataset))}


@hookimpl
def register_scorers(register):
    register("recall_at_k", recall_scorer)
    register("exact_match", exact_match_scorer)
