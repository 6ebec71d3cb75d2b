"""Prompt templates: the paper's chat template, echo, placeholder checks, label writing/parsing."""

from __future__ import annotations

import json

import pytest
import torch

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


# ---- chat markup of each family, and of a template of no known family (fake tokenizers) ----------


class _ChatTokenizer:
    """What user_turn and end_of_turn read of a tokenizer: its chat template (a marker for the
    family) and its rendering, here a made-up format with '[/turn]' closing each turn."""

    def __init__(self, chat_template, bos_token="<s>", eos_token="</s>", system=False, closing="[/turn]"):
        self.chat_template, self.bos_token, self.eos_token = chat_template, bos_token, eos_token
        self.system, self.closing = system, closing

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        head = "[turn system]be brief[/turn]" if self.system else ""
        body = "".join(f"[turn {m['role']}]{m['content']}{self.closing}" for m in messages)
        return head + body + ("[turn assistant]" if add_generation_prompt else "")


@pytest.mark.parametrize("marker, expected", [
    ("<|start_header_id|>", "<s><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                            "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("<|im_start|>", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
    ("<start_of_turn>", "<s><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"),
])
def test_user_turn_writes_each_known_family_out_with_no_system_turn(marker, expected):
    from selfinterp_plugins.templates import user_turn

    assert user_turn(_ChatTokenizer(f"... {marker} ...", system=True), "hi") == expected
    assert user_turn(_ChatTokenizer(f"{marker}", bos_token=None), "hi") == expected.replace("<s>", "")


def test_user_turn_of_another_family_is_its_own_rendering_and_a_system_turn_is_refused():
    from selfinterp_plugins.errors import TemplateError
    from selfinterp_plugins.templates import user_turn

    assert user_turn(_ChatTokenizer("{% custom %}"), "hi") == "[turn user]hi[/turn][turn assistant]"
    with pytest.raises(TemplateError) as err:
        user_turn(_ChatTokenizer("{% custom %}", system=True), "hi")
    assert str(err.value) == ("This tokenizer's chat template adds a system turn, which the paper's prompt does not have; "
                              "write the prompt out: PromptTemplate(prompt='<your chat markup with {placeholder}>', "
                              "placeholder=...).")
    with pytest.raises(TemplateError) as err:
        user_turn(_ChatTokenizer(None), "hi")
    assert str(err.value) == ("This tokenizer has no chat template; use PromptTemplate.echo(tokenizer) or pass your own "
                              "prompt string.")


def test_end_of_turn_is_the_first_word_after_the_assistants_text_or_else_eos():
    assert end_of_turn(_ChatTokenizer("{% custom %}")) == "[/turn]"
    assert end_of_turn(_ChatTokenizer("{% custom %}", closing="  <eot> more\n")) == "<eot>"
    assert end_of_turn(_ChatTokenizer("{% custom %}", closing="")) == "</s>"
    assert end_of_turn(_ChatTokenizer("{% custom %}", closing="", eos_token=None)) == ""


# ---- BOS handling, refusals word for word, each builder's fields (mutation survivors) ----------

BOS = "<|im_start|>"  # the shared tokenizer's BOS token, id 1


class _BosTokenizer:
    """The shared tokenizer adding its BOS (id 1) when asked, as Llama 3's does, or always
    (`forced`), as TransformerLens sets its tokenizers to; everything else delegated."""

    def __init__(self, tok, forced=False):
        self.tok, self.forced = tok, forced

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def __call__(self, text, add_special_tokens=True):
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return {"input_ids": ([1] if add_special_tokens or self.forced else []) + ids}


def _plain_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_a_raw_prompt_gets_one_bos_and_a_chat_prompt_or_a_label_none(tokenizer):
    """A prompt with no chat markup (echo) starts with exactly one BOS; a chat prompt (its own markup,
    beginning with the BOS text) and a prompt written with its BOS are tokenised as written; a
    target never has a BOS, even from a tokenizer that forces one."""
    tok = _BosTokenizer(tokenizer)
    echo, chat = PromptTemplate.echo(tokenizer), PromptTemplate.chat(tokenizer)
    assert chat.prompt.startswith(BOS) and not echo.prompt.startswith(BOS)
    assert echo.prompt_ids(tok).tolist() == [1] + _plain_ids(tokenizer, echo.prompt)
    assert echo.prompt_ids(tok).dtype == torch.long
    assert chat.prompt_ids(tok).tolist() == _plain_ids(tokenizer, chat.prompt)
    custom = PromptTemplate(prompt=BOS + "say <empty_output> ->", placeholder="<empty_output>", closing="\n")
    assert custom.prompt_ids(tok).tolist() == _plain_ids(tokenizer, custom.prompt)
    assert chat.placeholder_id(tok) == tokenizer.convert_tokens_to_ids("<empty_output>")
    for tok in (_BosTokenizer(tokenizer), _BosTokenizer(tokenizer, forced=True)):
        assert chat.target_ids(tok, "dog") == _plain_ids(tokenizer, 'dog"<|im_end|>')
        assert echo.target_ids(tok, "dog") == _plain_ids(tokenizer, " dog\n")


def test_without_forced_bos_on_tokenizers_lacking_bos_attributes():
    """A tokenizer-like object with no BOS attributes at all, or only one of them."""
    from types import SimpleNamespace

    from selfinterp_plugins.templates import _without_forced_bos

    assert _without_forced_bos(SimpleNamespace(), [1, 5], "hi", False) == [1, 5]
    assert _without_forced_bos(SimpleNamespace(bos_token_id=1), [1, 5], "hi", False) == [5]
    assert _without_forced_bos(SimpleNamespace(bos_token="<s>"), [1, 5], "hi", False) == [1, 5]
    assert _without_forced_bos(SimpleNamespace(bos_token_id=1, bos_token="<s>"), [1, 5], "<s>hi", False) == [1, 5]
    assert _without_forced_bos(SimpleNamespace(bos_token_id=1, bos_token="<s>"), [1, 5], "hi", True) == [1, 5]
    assert _without_forced_bos(SimpleNamespace(bos_token_id=1, bos_token="<s>"), [5, 1], "hi", False) == [5, 1]


def test_a_tokenizer_without_a_bos_token_attribute_gets_no_bos(tokenizer):
    """`_needs_bos` on a tokenizer-like object with no bos_token attribute: no BOS, no crash."""

    class NoBos(_BosTokenizer):
        def __getattr__(self, name):
            if name in ("bos_token", "bos_token_id"):
                raise AttributeError(name)
            return getattr(self.tok, name)

    echo = PromptTemplate.echo(tokenizer)
    assert echo.prompt_ids(NoBos(tokenizer)).tolist() == _plain_ids(tokenizer, echo.prompt)


def test_refusals_word_for_word():
    with pytest.raises(TemplateError) as err:
        PromptTemplate(prompt=3, placeholder="<ph>")
    assert str(err.value) == ("Prompt template: field prompt should be a valid string (got 3); pass strings "
                              "(prompt at most MAX_TEXT_CHARS characters).")
    with pytest.raises(LabelError) as err:
        PromptTemplate(prompt="<ph>", placeholder="<ph>").target_text(" ")
    assert str(err.value) == "A label is empty; remove that example or give it a non-empty label."

    class Plain:
        def get_vocab(self):
            return {"a": 0}

    with pytest.raises(TemplateError) as err:
        default_placeholder(Plain())
    assert str(err.value) == ("No rare special token found for the placeholder; pass placeholder='<token>' naming a "
                              "special token of this tokenizer.")


def test_from_dict_requires_every_text_field_and_ignores_unknown_keys(tokenizer):
    data = PromptTemplate.echo(tokenizer).to_dict()
    assert PromptTemplate.from_dict({**data, "written_by": "v9"}) == PromptTemplate.echo(tokenizer)
    without_end = {k: v for k, v in data.items() if k != "end"}
    with pytest.raises(TemplateError) as err:
        PromptTemplate.from_dict(without_end)
    assert str(err.value) == "Template config: field end is missing; re-save the explainer."
    with pytest.raises(TemplateError) as err:
        PromptTemplate.from_dict(without_end, source="explainer.json", prefix="template")
    assert str(err.value) == "explainer.json: field template.end is missing; re-save the explainer."


def test_each_builders_fields(tokenizer):
    """closing / end / label_prefix / name / placeholder of each built-in, as each docstring says."""
    ph = "<|endoftext|>"
    selfie = PromptTemplate.selfie(tokenizer, placeholder=ph)
    assert (selfie.placeholder, selfie.closing, selfie.end, selfie.name) == (ph, ".", "<|im_end|>", "selfie")
    assert selfie.prompt.count(ph) == 5
    patch = PromptTemplate.patchscopes(tokenizer, placeholder=ph)
    assert (patch.closing, patch.end, patch.label_prefix, patch.name) == (",", "", " ", "patchscopes")
    assert patch.target_text("a city") == " a city,"
    assert PromptTemplate.named("tokenizer_chat", tokenizer).name == "tokenizer_chat"


def test_tokenizer_chat_is_the_templates_own_rendering():
    """Built with the tokenizer's chat template (its system turn kept), the paper's answer after it."""
    tok = _ChatTokenizer("{% custom %}", system=True)
    t = PromptTemplate.tokenizer_chat(tok, placeholder="<ph>")
    assert t.prompt == ('[turn system]be brief[/turn][turn user]What is the meaning of "<ph>"?[/turn]'
                        '[turn assistant]The meaning of "<ph>" is "')
    assert (t.placeholder, t.closing, t.end, t.label_prefix, t.name) == ("<ph>", '"', "[/turn]", "", "tokenizer_chat")


def test_tokenizer_chat_of_the_shared_tokenizer_keeps_smollm2s_system_turn(tokenizer):
    """SmolLM2's template (tokenizer_config.json) writes its default system turn before the user's."""
    t = PromptTemplate.tokenizer_chat(tokenizer)
    assert t.prompt == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                        '<|im_end|>\n<|im_start|>user\nWhat is the meaning of "<empty_output>"?<|im_end|>\n'
                        '<|im_start|>assistant\nThe meaning of "<empty_output>" is "')


def test_parse_label_cuts_at_the_first_end_and_the_first_whitespace_closing():
    chat = PromptTemplate(prompt="<ph>", placeholder="<ph>", closing='"', end="<eot>")
    assert chat.parse_label('dog"<eot>cat"<eot>') == "dog"
    echo = PromptTemplate(prompt="<ph>", placeholder="<ph>", closing="\n", label_prefix=" ")
    assert echo.parse_label(" dog\ncat\n") == "dog"
    assert PromptTemplate(prompt="<ph>", placeholder="<ph>", closing="").parse_label(" dog ") == "dog"


def test_user_turn_reads_a_family_off_named_chat_templates():
    """transformers keeps several named templates as a dict; the family markup is looked for in it."""
    from selfinterp_plugins.templates import user_turn

    tok = _ChatTokenizer({"default": "{{ '<|im_start|>' }}", "tool_use": "..."}, system=True)
    assert user_turn(tok, "hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
