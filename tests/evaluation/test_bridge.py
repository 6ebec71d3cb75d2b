"""The two-hop builder and the reference's protocol: statements are composed only from single hops
the model answers right, the answer's correctness and a leaked bridge are recorded, prompts are in
the chat template, positions run from the statement's first token to the end of the prompt,
vectors are raw, aliases match with the reference's regex, and a cell scores the fraction of its
samples that name the bridge."""

from __future__ import annotations

import pytest
import torch

import selfinterp_plugins.evaluation.bridge as bridge
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
        texts = [tok.decode(p, skip_special_tokens=True) for p in prompts]
        assert all("user\nComplete the statement: " in t for t in texts)  # the chat template wraps it
        return [ANSWERS[t.split("Complete the statement: ", 1)[1].split("\n", 1)[0]] for t in texts]

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


def test_positions_run_from_the_statements_first_token_to_the_end_of_the_chat_prompt(tokenizer):
    statement = {"prompt": "Complete the statement: The capital of the country where the Eiffel Tower is located is",
                 "subject": "the Eiffel Tower"}
    positions = bridge.statement_positions(tokenizer, statement)
    ids = tokenizer(bridge.prompt_text(tokenizer, statement["prompt"]), add_special_tokens=False)["input_ids"]
    assert positions == list(range(positions[0], len(ids)))  # through the generation prompt
    assert tokenizer.decode(ids[: positions[0]]).endswith("Complete the statement:")
    assert tokenizer.decode(ids[positions[0]:]).strip().startswith("The capital of the country")


def test_alias_matching_is_the_references_regex():
    assert bridge.mentions("It is in the UK.", ["United Kingdom", "UK"])
    assert not bridge.mentions("a Ukrainian city", ["UK"])
    assert bridge.mentions("FRANCE!", ["France"])
    assert bridge.mentions("written by J. D. Salinger", ["J.D. Salinger"])  # a period may take a space after it
    assert not bridge.mentions("the U.S.", ["U.S."])  # the reference's trailing \b after a period misses this


def test_cell_scores_are_the_fraction_of_samples_naming_the_bridge(planted):
    statements = [{"prompt": "a", "subject": "x", "aliases": ["France"]}, {"prompt": "b", "subject": "y", "aliases": ["Italy"]}]
    rows = [{"statement": 0, "position": 1}, {"statement": 0, "position": 2}, {"statement": 1, "position": 1}]
    calls = []

    class Reader:
        backend = planted

        def explain(self, vectors, scales, sampling, samples, progress):
            calls.append((scales, sampling))
            positive = vectors[0, 0] > 0
            texts = {0: ["France", "no"], 1: ["France again", "Paris, France"], 2: ["Spain", "Italy"]}
            return [{"id": str(i), "label": "", "text": texts[i][k] if positive else "nothing", "sample": k}
                    for i in range(len(vectors)) for k in range(samples)]

    vectors = torch.stack([torch.ones(3, 4), -torch.ones(3, 4)], dim=1)  # layer 3 positive, layer 7 negative
    monkeypatched = bridge.whole_generation
    bridge.whole_generation = lambda explainer: explainer
    try:
        result = bridge.bridge_cell_scores(Reader(), statements, vectors, rows, [3, 7], samples=2)
    finally:
        bridge.whole_generation = monkeypatched
    assert result["by_layer"][3]["cells"] == [0.5, 1.0, 0.5]
    assert result["hit_rate"] == {3: 1.0, 7: 0.0}
    assert result["best_cell"] == {3: 0.75, 7: 0.0}  # statement 0's best position 1.0, statement 1's 0.5
    assert calls[0][0] == (1.0,) and calls[0][1] == bridge.BRIDGE_SAMPLING


def test_whole_generation_keeps_reading_past_the_closing_quote(tiny):
    from selfinterp_plugins import Explainer

    explainer = Explainer.create(HFBackend(*tiny("llama")), adapter="scale_only", template="chat")
    reader = bridge.whole_generation(explainer)
    assert reader.adapter is explainer.adapter and reader.template.closing == "" and not reader.template.stop_at_closing
    assert reader.template.parse_label('France" is the answer') == 'France" is the answer'


def test_vectors_are_raw_hidden_states(planted):
    statements = [{"prompt": "Complete the statement: The capital of the country where the Eiffel Tower is located is",
                   "subject": "the Eiffel Tower"}]
    raw, rows = bridge.bridge_vectors(planted, statements, [0, 1])
    centred, _ = bridge.bridge_vectors(planted, statements, [0, 1], center=True)
    ids = bridge._ids(planted.tokenizer, statements[0]["prompt"])
    direct = planted.capture([ids], [bridge.Site("resid_post", 1)], [rows[0]["position"]])[0, 0]
    torch.testing.assert_close(raw[0, 1], direct)
    torch.testing.assert_close(centred, raw - raw.mean(0, keepdim=True))


def test_the_protocol_takes_a_plain_model_and_its_tokenizer(planted):
    """Like `topic_vectors` and `Explainer.create`, the knowledge and bridge functions take a model
    object with `tokenizer=` (they took only a Backend or a model carrying its tokenizer)."""
    from selfinterp_plugins.evaluation.knowledge import prompted_descriptions

    model, tok = planted.model, planted.tokenizer
    assert bridge.build_two_hop(model, FACTS, tokenizer=tok) == bridge.build_two_hop(planted, FACTS)
    statements = bridge.build_two_hop(planted, FACTS)["statements"]
    torch.testing.assert_close(bridge.bridge_vectors(model, statements, [0, 1], tokenizer=tok)[0],
                               bridge.bridge_vectors(planted, statements, [0, 1])[0])
    assert prompted_descriptions(model, ["volcano"], max_new_tokens=3, tokenizer=tok) == \
        prompted_descriptions(planted, ["volcano"], max_new_tokens=3)
