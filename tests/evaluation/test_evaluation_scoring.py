"""Scorers (evaluation/scoring.py): exact match and recall@k per scale, the best scale, against
values worked out by hand with a fake embedder whose vectors are written below."""

from __future__ import annotations

import pytest
import torch

from selfinterp_plugins.errors import ArtifactError
from selfinterp_plugins.evaluation.scoring import best_scale, exact_match, recall_at_k

CANDIDATES = ["dog", "cat", "sun"]
#: the fake embedding of every text the tests use: candidates on the axes, labels in between
VECTORS = {
    "dog": [1.0, 0.0, 0.0], "cat": [0.0, 1.0, 0.0], "sun": [0.0, 0.0, 1.0],
    "puppy": [0.9, 0.1, 0.0],    # nearest dog
    "kitten": [0.6, 0.8, 0.0],   # cat first, dog second
    "star": [0.5, 0.1, 0.4],     # dog 0.5, sun 0.4, cat 0.1: sun second
    "tie": [0.5, 0.5, 0.0],      # dog and cat equal
    "(empty)": [0.0, 0.0, 1.0],  # what an empty label is embedded as
}


class FakeEmbedder:
    def __init__(self):
        self.seen: list[list[str]] = []

    def encode(self, texts):
        self.seen.append(list(texts))
        return torch.tensor([VECTORS[t] for t in texts])


def rec(i, label, scale=1.0):
    return {"id": str(i), "label": label, "scale": scale}


TRUTH = {"0": "dog", "1": "cat", "2": "sun", "3": "cat", "4": "sun"}


def test_recall_at_k_per_scale_by_hand():
    records = [rec(0, "puppy"), rec(1, "kitten"), rec(2, "star"),     # scale 1: ranks 0, 0, 1
               rec(0, "kitten", 4.0), rec(3, "puppy", 4.0)]            # scale 4: ranks 1 (dog after cat), 1
    out = recall_at_k(records, TRUTH, CANDIDATES, ks=(1, 2, 3), embedder=FakeEmbedder())
    assert out == {1.0: {1: pytest.approx(2 / 3), 2: 1.0, 3: 1.0}, 4.0: {1: 0.0, 2: 1.0, 3: 1.0}}
    assert list(out) == [1.0, 4.0]


def test_recall_default_ks_are_1_and_5():
    out = recall_at_k([rec(2, "star")], TRUTH, CANDIDATES, embedder=FakeEmbedder())
    assert out == {1.0: {1: 0.0, 5: 1.0}}


def test_a_tie_with_the_true_title_counts_as_a_hit():
    """rank = how many candidates are strictly closer: a tie does not push the true title down."""
    out = recall_at_k([rec(1, "tie"), rec(0, "tie")], TRUTH, CANDIDATES, ks=(1,), embedder=FakeEmbedder())
    assert out == {1.0: {1: 1.0}}


def test_an_empty_label_is_embedded_as_the_empty_marker():
    embedder = FakeEmbedder()
    out = recall_at_k([rec(2, "  "), rec(4, "")], TRUTH, CANDIDATES, ks=(1,), embedder=embedder)
    assert out == {1.0: {1: 1.0}}  # "(empty)" sits on "sun"
    assert embedder.seen == [CANDIDATES, ["(empty)", "(empty)"]]


def test_given_candidate_embeddings_are_used_instead_of_encoding_the_candidates():
    embedder = FakeEmbedder()
    swapped = torch.tensor([VECTORS["cat"], VECTORS["dog"], VECTORS["sun"]])  # "dog" now embedded as cat
    out = recall_at_k([rec(0, "puppy")], TRUTH, CANDIDATES, ks=(1,), embedder=embedder, candidate_embeddings=swapped)
    assert out == {1.0: {1: 0.0}}
    assert embedder.seen == [["puppy"]]


def test_a_true_title_missing_from_the_candidates_is_refused():
    with pytest.raises(ArtifactError) as err:
        recall_at_k([rec(0, "puppy")], {"0": "wolf"}, CANDIDATES, embedder=FakeEmbedder())
    assert str(err.value) == ("True titles missing from the candidates, e.g. 'wolf'; include every true title in "
                              "`candidates`.")


def test_exact_match_per_scale_ignores_case_and_spacing():
    records = [rec(0, "  Dog "), rec(1, "the cat"), rec(2, "SUN", 2.0), rec(3, "c a t", 2.0), rec(4, "sun\tx", 2.0),
               rec(1, "CAT", 0.5)]
    assert exact_match(records, TRUTH) == {0.5: 1.0, 1.0: 0.5, 2.0: pytest.approx(1 / 3)}
    assert list(exact_match(records, TRUTH)) == [0.5, 1.0, 2.0]
    assert exact_match([rec(0, "hot  dog")], {"0": "hot dog"}) == {1.0: 1.0}


def test_best_scale_is_the_highest_recall_at_k():
    per_scale = {0.5: {1: 0.1, 5: 0.9}, 2.0: {1: 0.3, 5: 0.4}, 8.0: {1: 0.2, 5: 0.5}}
    assert best_scale(per_scale) == (2.0, {1: 0.3, 5: 0.4})
    assert best_scale(per_scale, k=5) == (0.5, {1: 0.1, 5: 0.9})
