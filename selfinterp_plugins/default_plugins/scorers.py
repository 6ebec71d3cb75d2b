"""Scorers `recall_at_k` (sentence-embedding retrieval) and `exact_match`."""

from ..hookspecs import hookimpl


def recall_scorer(records, dataset, candidates=None, ks=(1, 5), candidate_embeddings=None, **_):
    from ..evaluation.scoring import recall_at_k, record_truth

    candidates = candidates or sorted(set(dataset.labels))
    return {"recall_at_k": recall_at_k(records, record_truth(records, dataset), candidates, ks,
                                       candidate_embeddings=candidate_embeddings)}


def exact_match_scorer(records, dataset, **_):
    from ..evaluation.scoring import exact_match, record_truth

    return {"exact_match": exact_match(records, record_truth(records, dataset))}


@hookimpl
def register_scorers(register):
    register("recall_at_k", recall_scorer)
    register("exact_match", exact_match_scorer)
