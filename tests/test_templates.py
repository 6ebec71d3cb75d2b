"""Prompt templates: the paper's chat template, echo, placeholder checks, label writing/parsing."""

from __future__ import annotations

import json

import pytest

from selfinterp_plugins.errors import LabelError, TemplateError
from selfinterp_plugins.templates import PromptTemplate, default_placeholder, end_of_turn


@pytest.fixture
def tok(tokenizer):
    """The tokenizer tiny models share. It is the real SmolLM2's, file for file (its vocabulary,
    merges, special tokens and chat template: tests/models/test_models.py::
    test_the_tiny_models_share_the_real_smollm2s_tokenizer), so these checks hold for the real model
    too without loading it."""
    return tokenizer


LABELS = [
    "dog",
    "  padded label  ",
    "golden retriever",
    "café au lait",
    "日本語のラベル",
    "naïve résumé 🙂",
    'the word "quoted" inside',
    'ends with a quote"',
    "multi\nline",
]


def test_default_placeholder_is_a_rare_special_token(tok):
    ph = default_placeholder(tok)
    assert ph == "<empty_output>"
    assert len(tok(ph, add_special_tokens=False)["input_ids"]) == 1


def test_chat_template_has_two_placeholders_and_the_paper_wording(tok):
    t = PromptTemplate.chat(tok)
    ph = t.placeholder
    assert t.prompt.count(ph) == 2
    assert t.prompt.endswith(f'The meaning of "{ph}" is "')
    assert f'What is the meaning of "{ph}"?' in t.prompt
    assert t.end == "<|im_end|>"
    assert t.closing == '"'
    assert t.label_prefix == ""
    # the user turn comes from the tokenizer's own chat markup
    assert "<|im_start|>user" in t.prompt and t.prompt.rstrip().count("<|im_start|>assistant") == 1
    ids = t.prompt_ids(tok)
    assert int((ids == t.placeholder_id(tok)).sum()) == 2
    # the prompt tokenises to exactly the prompt text (no BOS added to chat markup)
    assert tok.decode(ids.tolist()) == t.prompt


def test_end_of_turn_reads_the_chat_template(tok):
    assert end_of_turn(tok) == "<|im_end|>"


def test_echo_template(tok):
    t = PromptTemplate.echo(tok)
    ph = t.placeholder
    assert t.prompt.count(ph) == 1
    assert t.prompt.endswith(f"{ph} ->")
    assert t.prompt.startswith("cat -> cat\n")
    assert (t.closing, t.end, t.label_prefix) == ("\n", "", " ")
    assert t.target_text("dog") == " dog\n"
    assert t.parse_label(" dog\nhello -> hello") == "dog"
    assert int((t.prompt_ids(tok) == t.placeholder_id(tok)).sum()) == 1
    assert t.is_finished(" dog\n") and not t.is_finished(" do")


def test_selfie_and_patchscopes_templates(tok):
    selfie = PromptTemplate.selfie(tok)
    assert selfie.prompt.count(selfie.placeholder) == 5
    assert int((selfie.prompt_ids(tok) == selfie.placeholder_id(tok)).sum()) == 5
    patch = PromptTemplate.patchscopes(tok)
    assert patch.prompt.endswith(f"{patch.placeholder}:")
    assert patch.parse_label(" a city in France, Paris: capital") == "a city in France"


def test_named_templates(tok):
    for name in ("chat", "echo", "patchscopes", "selfie"):
        assert PromptTemplate.named(name, tok).name == name
    with pytest.raises(TemplateError, match="chat"):
        PromptTemplate.named("nonsense", tok)


# ---- placeholder checks ------------------------------------------------------------------


def test_template_without_placeholder(tok):
    t = PromptTemplate(prompt="What does this mean?", placeholder="<empty_output>")
    with pytest.raises(TemplateError, match="does not contain the placeholder"):
        t.placeholder_id(tok)
    with pytest.raises(TemplateError):
        t.prompt_ids(tok)


def test_multi_token_placeholder_is_refused(tok):
    t = PromptTemplate(prompt="Meaning of XYZ_PLACE is", placeholder="XYZ_PLACE")
    with pytest.raises(TemplateError) as info:
        t.placeholder_id(tok)
    message = str(info.value)
    assert "tokens" in message
    assert "<empty_output>" in message  # the fix names a usable special token


def test_ordinary_single_token_placeholder_is_refused(tok):
    assert len(tok("cat", add_special_tokens=False)["input_ids"]) == 1
    t = PromptTemplate(prompt="The meaning of cat is", placeholder="cat")
    with pytest.raises(TemplateError, match="ordinary token"):
        t.placeholder_id(tok)


def test_chat_with_an_explicit_bad_placeholder_fails_at_use(tok):
    t = PromptTemplate.chat(tok, placeholder="cat")
    with pytest.raises(TemplateError):
        t.prompt_ids(tok)


def test_tokenizer_without_chat_template():
    class NoChat:
        chat_template = None

        def get_vocab(self):
            return {"<|endoftext|>": 0}

    with pytest.raises(TemplateError, match="echo"):
        PromptTemplate.chat(NoChat())


def test_tokenizer_without_any_candidate_placeholder():
    class Plain:
        def get_vocab(self):
            return {"a": 0}

    with pytest.raises(TemplateError, match="placeholder"):
        default_placeholder(Plain())


# ---- labels --------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["", "   ", "\n\t", None, 3])
def test_empty_or_non_string_label(tok, label):
    t = PromptTemplate.chat(tok)
    with pytest.raises(LabelError):
        t.target_text(label)
    with pytest.raises(LabelError):
        t.target_ids(tok, label)


def test_target_text_layout(tok):
    t = PromptTemplate.chat(tok)
    assert t.target_text("dog") == 'dog"<|im_end|>'
    assert t.target_text("  dog ") == 'dog"<|im_end|>'  # labels are stripped
    assert tok.decode(t.target_ids(tok, "dog")) == 'dog"<|im_end|>'
    assert t.target_ids(tok, "dog")[-1] == tok.convert_tokens_to_ids("<|im_end|>")


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("name", ["chat", "echo", "patchscopes", "selfie"])
def test_target_text_parse_label_round_trip(tok, name, label):
    t = PromptTemplate.named(name, tok)
    if name != "chat" and "\n" in label and t.closing == "\n":
        pytest.skip("a newline-closed template cannot carry a newline inside a label")
    if name == "patchscopes" and "," in label:
        pytest.skip("a comma-closed template cannot carry a comma inside a label")
    if name == "selfie" and "." in label:
        pytest.skip("a period-closed template cannot carry a period inside a label")
    text = t.target_text(label)
    assert t.parse_label(text) == label.strip()
    # and through the tokenizer, as generated text comes back
    assert t.parse_label(tok.decode(t.target_ids(tok, label))) == label.strip()
    assert t.is_finished(text)


def test_parse_label_uses_the_last_closing_quote():
    """Pepper et al. 2026: the label is the text before the LAST `"` (after cutting at end-of-turn).

    So a label holding double quotes survives the round trip, and text generated past the
    closing quote inside the same turn is kept up to the last quote.
    """
    t = PromptTemplate(prompt="<PH>", placeholder="<PH>", closing='"', end="<|im_end|>")
    assert t.parse_label('say "hi" now"<|im_end|>') == 'say "hi" now'
    assert t.parse_label('dog" and "cat"<|im_end|>junk"') == 'dog" and "cat'
    # no end-of-turn yet (generation cut at max_new_tokens): still cut at the last quote
    assert t.parse_label('a "b" c') == 'a "b'
    # no closing at all: the whole text, stripped
    assert t.parse_label("  unfinished label ") == "unfinished label"
    # end-of-turn with no closing quote before it
    assert t.parse_label("dog<|im_end|>") == "dog"


def test_is_finished_stops_at_closing_or_end_of_turn(tok):
    t = PromptTemplate.chat(tok)
    assert t.stop_at_closing  # default: the label is complete at its closing quote
    assert not t.is_finished("dog")
    assert t.is_finished('dog"')
    assert t.is_finished('dog"<|im_end|>')
    assert t.is_finished("dog<|im_end|>")
    strict = PromptTemplate.from_dict(dict(t.to_dict(), stop_at_closing=False))
    assert not strict.stop_at_closing
    assert not strict.is_finished('dog"')
    assert strict.is_finished('dog"<|im_end|>')
    # without an end-of-turn the closing string is the only way to finish
    echo = PromptTemplate.from_dict(dict(PromptTemplate.echo(tok).to_dict(), stop_at_closing=False))
    assert echo.is_finished(" dog\n") and not echo.is_finished(" dog")


# ---- serialisation -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["chat", "echo", "patchscopes", "selfie"])
def test_to_dict_from_dict_round_trip(tok, name):
    t = PromptTemplate.named(name, tok)
    data = t.to_dict()
    assert {"prompt", "placeholder", "closing", "end", "label_prefix", "name"} <= set(data)
    assert json.loads(json.dumps(data)) == data  # plain JSON
    again = PromptTemplate.from_dict(data)
    assert again == t
    assert again.prompt_ids(tok).tolist() == t.prompt_ids(tok).tolist()


def test_from_dict_incomplete():
    with pytest.raises(TemplateError, match="field placeholder is missing"):
        PromptTemplate.from_dict({"prompt": "x <PH>"})


# ---- an ordinary-token placeholder (Activation Oracles) -------------------------------------


def test_an_oracle_template_marks_its_first_k_placeholders(tokenizer):
    from selfinterp_plugins.templates import oracle_text

    assert oracle_text(7, 3, "Why?") == "Layer: 7\n ? ? ? \nWhy?"
    template = PromptTemplate.activation_oracle(tokenizer, layer=7, question="What is it ? Really ?", positions=3)
    ids = template.prompt_ids(tokenizer)
    q = tokenizer.encode(" ?", add_special_tokens=False)[0]
    first = (ids == q).nonzero().flatten()[:3]
    assert template.injection_mask(ids, tokenizer).nonzero().flatten().tolist() == first.tolist()
    assert int((ids == q).sum()) == 5  # the question's own two stay text
    assert (template.closing, template.end, template.ordinary_placeholder, template.slots) == ("", "<|im_end|>", True, 3)
    assert PromptTemplate.from_dict(template.to_dict()) == template


def test_an_ordinary_placeholder_is_refused_without_slots(tokenizer):
    template = PromptTemplate(prompt="a ? b", placeholder=" ?", ordinary_placeholder=True)
    with pytest.raises(TemplateError, match="set slots=K"):
        template.prompt_ids(tokenizer)
    with pytest.raises(TemplateError, match="ordinary token"):
        PromptTemplate(prompt="a ? b", placeholder=" ?", slots=1).prompt_ids(tokenizer)


def test_slots_must_be_consecutive_and_present(tokenizer):
    apart = PromptTemplate(prompt="x ? y ? z", placeholder=" ?", ordinary_placeholder=True, slots=2)
    with pytest.raises(TemplateError, match="not consecutive"):
        apart.injection_mask(apart.prompt_ids(tokenizer), tokenizer)
    short = PromptTemplate(prompt="x ? ? z", placeholder=" ?", ordinary_placeholder=True, slots=3)
    with pytest.raises(TemplateError, match="2 times but takes 3 vectors"):
        short.injection_mask(short.prompt_ids(tokenizer), tokenizer)
    special = PromptTemplate(prompt="a <empty_output> b <empty_output>", placeholder="<empty_output>", slots=1)
    with pytest.raises(TemplateError, match="2 times but takes 1 vectors"):
        special.injection_mask(special.prompt_ids(tokenizer), tokenizer)


@pytest.mark.parametrize("field, value, match", [("layer", -1, "layer must be a whole number >= 0"),
                                                 ("layer", 1.5, "layer must be"), ("positions", 0, "positions must be"),
                                                 ("question", "  ", "needs a question")])
def test_oracle_template_fields_are_refused_in_one_line(tokenizer, field, value, match):
    fields = {"layer": 1, "question": "What?", "positions": 1, field: value}
    with pytest.raises(TemplateError, match=match):
        PromptTemplate.activation_oracle(tokenizer, **fields)
