"""Words-in-context vectors (`selfinterp_plugins.in_context`, used by scripts/in_context.py): each
vector is the residual at the word's own last token, held-out templates stay held out, and the
centring uses the training rows only."""

import pytest
import torch

from selfinterp_plugins.backends import HFBackend
from selfinterp_plugins.errors import ArtifactError
from selfinterp_plugins.in_context import TEMPLATES, assign_templates, in_context_vectors, word_prompt

TOPICS = [
    {"id": "t1", "title": "stained glass", "split": "train"},
    {"id": "t2", "title": "dog", "split": "train"},
    {"id": "t3", "title": "harbour", "split": "train"},
    {"id": "v1", "title": "cat", "split": "validation"},
    {"id": "x1", "title": "violin", "split": "test"},
]


def test_word_prompt_points_at_the_words_last_token(tokenizer):
    """By hand: SmolLM2's tokens of the first training template are 'The', ' stained', ' glass',
    ' was', ...: the word's last token is index 2."""
    prompt_format, template = TEMPLATES["train"][0]
    assert (prompt_format, template) == ("raw", "The {word} was the first thing she noticed when she walked in.")
    ids, position = word_prompt(tokenizer, template, prompt_format, "stained glass")
    assert position == 2
    assert [tokenizer.decode([i]) for i in ids[:4]] == ["The", " stained", " glass", " was"]


def test_word_prompt_in_a_chat_prompt_points_inside_the_user_turn(tokenizer):
    """A chat template puts the system turn first: the position is that of ' dog' after
    '<|im_start|>user\\nIs the', not of the last token (the generation prompt)."""
    ids, position = word_prompt(tokenizer, "Is the {word} common where you live?", "chat", "dog")
    user = tokenizer("Is the dog common where you live?", add_special_tokens=False)["input_ids"]
    start = next(i for i in range(len(ids)) if ids[i:i + len(user)] == user)
    assert position == start + 2  # 'Is', ' the', ' dog'
    assert tokenizer.decode([ids[position]]) == " dog"
    assert position < len(ids) - 5  # '<|im_end|>', '\n', '<|im_start|>', 'assistant', '\n' follow


def test_templates_are_split_and_each_holds_the_word_once():
    texts = [t for split in TEMPLATES.values() for _, t in split]
    assert len(texts) == len(set(texts)) == 36  # no template in two splits
    for text in texts:
        assert text.count("{word}") == 1
        assert text.split("{word}")[1][:1] in (" ", ".", ",", "?", "!"), text  # the word's last token ends with it
    for split in TEMPLATES.values():
        assert {f for f, _ in split} == {"raw", "chat"}


def test_assign_templates_draws_distinct_templates_of_the_words_own_split():
    pairs = assign_templates(TOPICS, {"train": 3, "validation": 1}, seed=0)
    per_topic = {}
    for topic, k in pairs:
        per_topic.setdefault(topic["id"], []).append(k)
    assert sorted(per_topic) == ["t1", "t2", "t3", "v1"]  # no test topic: its split was not asked for
    assert all(len(set(ks)) == len(ks) == 3 for tid, ks in per_topic.items() if tid.startswith("t"))
    assert len(per_topic["v1"]) == 1 and per_topic["v1"][0] < len(TEMPLATES["validation"])
    with pytest.raises(ArtifactError, match="ask for fewer"):
        assign_templates(TOPICS, {"test": 7})


def test_each_vector_is_the_residual_at_its_words_position(tiny_llama):
    """Checked against the model's own hidden states for each prompt run alone (hidden_states[1] is
    resid_post.0 of the 2-layer tiny llama), at the position found by hand from the tokens, and
    centred by the training rows' mean only."""
    model, tokenizer = tiny_llama
    data = in_context_vectors(HFBackend(model, tokenizer), TOPICS, 0, {"train": 2, "validation": 1, "test": 1},
                              batch_size=2)
    raw = []
    for record in data.records:
        prompt_format = record["prompt_format"]
        ids, _ = word_prompt(tokenizer, record["template"], prompt_format, record["label"])
        word_last = tokenizer(" " + record["label"], add_special_tokens=False)["input_ids"][-1]
        position = max(i for i, t in enumerate(ids) if t == word_last)  # by hand: the word's last token
        assert record["position"] == position
        with torch.no_grad():
            hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0]
        raw.append(hidden[position].float())
        assert not torch.allclose(hidden[position], hidden[-1])  # the last token would be another vector
    raw = torch.stack(raw)
    train = [i for i, r in enumerate(data.records) if r["split"] == "train"]
    assert len(train) == 6 and len(data) == 8
    mean = raw[train].mean(0)
    torch.testing.assert_close(torch.tensor(data.meta["mean"]), mean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(data.vectors, raw - mean, atol=1e-4, rtol=1e-4)
    assert data.meta["site"] == "resid_post.0" and data.meta["position"] == "word"
    assert len(set(data.ids)) == len(data)


def test_the_shipped_in_context_explainer_says_what_it_reads():
    """`smollm2-words-in-context` (scripts/in_context.py, docs/results.md) is found by name and records
    its vectors: resid_post.10 at the word's own token, centred by the training rows' mean."""
    import json

    from selfinterp_plugins.defaults import explainer_location, shipped_explainer_names

    assert "smollm2-words-in-context" in shipped_explainer_names()
    config = json.loads((explainer_location("smollm2-words-in-context") / "explainer_config.json").read_text())
    spec = config["vector_spec"]
    assert (spec["source"], spec["site"], spec["position"], spec["centring"]) == (
        "words_in_context", "resid_post.10", "word", "mean")
    assert len(config["metadata"][spec["mean_key"]]) == config["d_model"] == 576
