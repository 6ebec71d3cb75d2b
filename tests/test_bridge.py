"""The two-hop builder: statements are composed only from single hops the model answers right,
the answer's correctness and a leaked bridge are recorded, positions start at the subject's last
token, and hit rates count a statement once per layer."""

from __future__ import annotations

import pytest
import torch

import selfinterp_plugins.bridge as bridge
from selfinterp_plugins.backends import HFBackend

FACTS = {
    "first_hop": {"prompt": "Complete the statement: {subject} is located in the country of",
                  "facts": [["the Eiffel Tower", "France"], ["the Colosseum", "Italy"], ["Big Ben", "United Kingdom"]]},
    "second_hop": {"capital": {"prompt": "Complete the statement: The capital of {bridge} is",
                               "compose": "Complete the statement: The capital of the country where {subject} is located is"},
                   "language": {"prompt": "Complete the statement: The official language of {bridge} is",
                                "compose": "Complete the statement: The language of the country where {subject} is located is"}},
    "countries": {"France": {"aliases": ["France"], "capital": ["Paris"], "language": ["French"]},
                  "Italy": {"aliases": ["Italy"], "capital": ["Rome"], "language": ["Italian"]},
                  "United Kingdom": {"aliases": ["United Kingdom", "UK"], "capital": ["London"], "language": ["English"]}},
}

ANSWERS = {  # what the planted "model" answers
    "The Eiffel Tower is located in the country of": "France.",
    "The Colosseum is located in the country of": "Italy, in Rome.",
    "Big Ben is located in the country of": "Germany.",  # wrong: Big Ben is dropped
    "The capital of France is": "Paris.",
    "The capital of Italy is": "Milan.",  # wrong: no capital statement for Italy
    "The capital of United Kingdom is": "London.",
    "The official language of France is": "French.",
    "The official language of Italy is": "Italian.",
    "The official language of United Kingdom is": "English.",
    "The capital of the country where the Eiffel Tower is located is": "Paris, the capital of France.",
    "The language of the country where the Eiffel Tower is located is": "German.",
    "The language of the country where the Colosseum is located is": "Italian.",
}


@pytest.fixture
def planted(monkeypatch, tiny):
    backend = HFBackend(*tiny("llama"))
    tok = backend.tokenizer

    def fake_generate(_backend, prompts, max_new_tokens, batch_size=32, progress=False, desc=""):
        texts = [tok.decode(p, skip_special_tokens=True).replace("Complete the statement: ", "") for p in prompts]
        return [ANSWERS[t] for t in texts]

    monkeypatch.setattr(bridge, "generate_texts", fake_generate)
    return backend


def test_statements_come_only_from_hops_the_model_gets_right(planted):
    built = bridge.build_two_hop(planted, FACTS)
    assert built["first_hop_correct"] == pytest.approx(2 / 3)
    assert built["second_hop_correct"] == pytest.approx(5 / 6)
    found = {(s["subject"], s["relation"]): s for s in built["statements"]}
    assert set(found) == {("the Eiffel Tower", "capital"), ("the Eiffel Tower", "language"), ("the Colosseum", "language")}
    assert found[("the Eiffel Tower", "capital")]["two_hop_correct"] and found[("the Eiffel Tower", "capital")]["bridge_in_answer"]
    assert not found[("the Eiffel Tower", "language")]["two_hop_correct"]
    assert found[("the Colosseum", "language")]["two_hop_correct"] and not found[("the Colosseum", "language")]["bridge_in_answer"]
    assert built["n_two_hop_correct"] == 2


def test_positions_start_at_the_subjects_last_token(tokenizer):
    statement = {"prompt": "Complete the statement: The capital of the country where the Eiffel Tower is located is",
                 "subject": "the Eiffel Tower"}
    positions = bridge.positions_after_subject(tokenizer, statement)
    ids = tokenizer(statement["prompt"])["input_ids"]
    assert positions[-1] == len(ids) - 1
    assert tokenizer.decode(ids[: positions[0] + 1]).endswith("Eiffel Tower")
    assert tokenizer.decode(ids[positions[0] + 1:]).strip() == "is located is"


def test_alias_matching_respects_word_boundaries():
    assert bridge.mentions("It is in the UK.", ["United Kingdom", "UK"])
    assert not bridge.mentions("a Ukrainian city", ["UK"])
    assert bridge.mentions("FRANCE!", ["France"])


def test_hit_rate_counts_each_statement_once_per_layer(planted):
    statements = [{"prompt": "a", "subject": "x", "aliases": ["France"]}, {"prompt": "b", "subject": "y", "aliases": ["Italy"]}]
    rows = [{"statement": 0, "position": 1}, {"statement": 0, "position": 2}, {"statement": 1, "position": 1}]

    class Labeller:
        def explain(self, vectors, scales, sampling, samples, progress):
            labels = ["France", "France again", "Spain"] if vectors[0, 0] > 0 else ["no", "no", "no"]
            return [{"id": str(i), "label": labels[i], "sample": k} for i in range(len(vectors)) for k in range(samples)]

    vectors = torch.stack([torch.ones(3, 4), -torch.ones(3, 4)], dim=1)  # layer 3 positive, layer 7 negative
    result = bridge.bridge_hit_rates(Labeller(), statements, vectors, rows, [3, 7], samples=2)
    assert result["hit_rate"] == {3: 0.5, 7: 0.0}
