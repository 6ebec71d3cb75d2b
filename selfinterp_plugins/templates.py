"""Prompt templates: where the soft token goes and how a label is written after it.

A template is a prompt string holding a placeholder token one or more times; the soft token
replaces the placeholder at every occurrence. The model's answer is the label followed by a
closing string (a quote, or a newline) and the chat's end-of-turn token; training targets are
written that way and generated text is parsed back the same way.

The placeholder must be ONE token that ordinary text never produces (a special or added
token), otherwise a label or prompt could contain it by accident and the injection would hit
the wrong position. The one exception is a method whose published prompt uses an ordinary
token (Activation Oracles: ` ?`): such a template says so (`ordinary_placeholder`) and how
many vectors it takes (`slots`), and the vectors go at the first `slots` occurrences, which
must be consecutive, as the reference finds them; a later ` ?` in the question is left alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .errors import LabelError, TemplateError
from .storage.validation import Name, PositiveInt, Text, check_fields, validate

# public: besides PromptTemplate, the chat-format helpers plugins build their own prompts and stop
# conditions with, so every prompt in a model's chat format is written the same way
__all__ = ["ORACLE_PLACEHOLDER", "PromptTemplate", "end_of_turn", "end_of_turn_id", "oracle_text", "user_turn"]

#: special tokens that chat models rarely see, tried in order for the default placeholder
PLACEHOLDER_CANDIDATES = (
    "<|reserved_special_token_0|>",  # Llama 3
    "<|fim_pad|>",  # Qwen 2 / 2.5 / 3
    "<unused0>",  # Gemma 3
    "<empty_output>",  # SmolLM2 (StarCoder tokenizer)
    "<|endoftext|>",
)

#: the default question/answer wording of Pepper et al. 2026
DEFAULT_USER = 'What is the meaning of "{placeholder}"?'
DEFAULT_ANSWER = 'The meaning of "{placeholder}" is "'

#: Patchscopes-style identity prompt: the model echoes what it reads after "->"
ECHO_PROMPT = "cat -> cat\n1135 -> 1135\nhello -> hello\n{placeholder} ->"

#: Patchscopes' few-shot entity-description prompt, placeholder as the last entity
PATCHSCOPES_PROMPT = (
    "Syria: Country in the Middle East, Leonardo DiCaprio: American actor, Samsung: South Korean multinational "
    "major appliance and consumer electronics corporation, {placeholder}:"
)

#: SelfIE's interpretation prompt: five placeholders, then "Sure, I'll summarize your message:"
SELFIE_USER = "{placeholder}" * 5
SELFIE_ANSWER = "Sure, I'll summarize your message:"

#: the Activation Oracles' placeholder, an ordinary token (activation_oracles
#: `nl_probes/utils/dataset_utils.py`, line 10: SPECIAL_TOKEN = " ?")
ORACLE_PLACEHOLDER = " ?"


def oracle_text(layer: int, positions: int, question: str) -> str:
    """The user turn of an Activation Oracle: `Layer: {L}\n`, the placeholder once per vector, ` \n`,
    then the question (the reference's `get_introspection_prefix` + prompt, dataset_utils.py
    lines 13-17 and 304-306)."""
    return f"Layer: {layer}\n" + ORACLE_PLACEHOLDER * positions + " \n" + question


@dataclass
class PromptTemplate:
    """A prompt with placeholder(s), plus how a label is written after it.

    `prompt` is the full text fed to the model (chat markup included); the target for a label
    is `label_prefix + label + closing + end`. Build one with `PromptTemplate.chat(tokenizer)`
    (the paper's wording in the model's own chat format), `PromptTemplate.echo(tokenizer)` or
    `PromptTemplate(prompt=..., placeholder=...)` for your own string.
    """

    prompt: Text
    placeholder: Name
    closing: Text = '"'
    end: Text = ""
    label_prefix: Text = ""
    name: Text = "custom"
    #: stop generating a row at the first closing string, not only at the end-of-turn: the label is
    #: complete there, and an untrained model rarely ends its turn within the token budget
    stop_at_closing: bool = True
    #: the placeholder is an ordinary token (the Activation Oracles' ` ?`), not a special one: then
    #: `slots` says how many of its first occurrences take a vector
    ordinary_placeholder: bool = False
    #: vectors per prompt: None, one vector at every occurrence of the placeholder; K, K vectors, the
    #: k-th at the k-th occurrence (an Activation Oracle reads K activations)
    slots: PositiveInt | None = None

    def __post_init__(self):
        check_fields(self, "Prompt template", "pass strings (prompt at most MAX_TEXT_CHARS characters).",
                     error=TemplateError)

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def chat(
        cls,
        tokenizer,
        user: str = DEFAULT_USER,
        answer: str = DEFAULT_ANSWER,
        placeholder: str | None = None,
        closing: str = '"',
        name: str = "chat",
    ) -> PromptTemplate:
        """The paper's question/answer prompt (Pepper et al. 2026), written out for the model's chat
        family with NO system turn, as the reference writes it by hand per family: a tokenizer's
        chat template may add a default system prompt (SmolLM2's and Qwen2.5's do), which is not
        the paper's prompt (`tokenizer_chat` is that variant)."""
        placeholder = placeholder or default_placeholder(tokenizer)
        head = user_turn(tokenizer, user.format(placeholder=placeholder))
        return cls(
            prompt=head + answer.format(placeholder=placeholder),
            placeholder=placeholder,
            closing=closing,
            end=end_of_turn(tokenizer),
            name=name,
        )

    @classmethod
    def tokenizer_chat(cls, tokenizer, placeholder: str | None = None) -> PromptTemplate:
        """The same question/answer built with the tokenizer's own chat template, so with whatever
        system prompt it adds by default: NOT the paper's prompt for such models (SmolLM2's template
        adds "You are a helpful AI assistant named SmolLM…"). Kept as a named variant: the results
        labelled `tokenizer_chat` in docs/results.md used it."""
        placeholder = placeholder or default_placeholder(tokenizer)
        _require_chat_template(tokenizer)
        head = tokenizer.apply_chat_template(
            [{"role": "user", "content": DEFAULT_USER.format(placeholder=placeholder)}],
            tokenize=False,
            add_generation_prompt=True,
        )
        return cls(prompt=head + DEFAULT_ANSWER.format(placeholder=placeholder), placeholder=placeholder, closing='"',
                   end=end_of_turn(tokenizer), name="tokenizer_chat")

    @classmethod
    def echo(cls, tokenizer, placeholder: str | None = None) -> PromptTemplate:
        """Patchscopes-style identity prompt with no chat markup: `... <PH> -> label\\n`."""
        placeholder = placeholder or default_placeholder(tokenizer)
        return cls(
            prompt=ECHO_PROMPT.format(placeholder=placeholder),
            placeholder=placeholder,
            closing="\n",
            end="",
            label_prefix=" ",
            name="echo",
        )

    @classmethod
    def patchscopes(cls, tokenizer, placeholder: str | None = None) -> PromptTemplate:
        """Patchscopes' entity-description prompt; the label is the description up to the next comma."""
        placeholder = placeholder or default_placeholder(tokenizer)
        return cls(prompt=PATCHSCOPES_PROMPT.format(placeholder=placeholder), placeholder=placeholder,
                   closing=",", end="", label_prefix=" ", name="patchscopes")

    @classmethod
    def selfie(cls, tokenizer, placeholder: str | None = None) -> PromptTemplate:
        """SelfIE's summarisation prompt in the model's chat format (five placeholders)."""
        return cls.chat(tokenizer, user=SELFIE_USER, answer=SELFIE_ANSWER, placeholder=placeholder, closing=".",
                        name="selfie")

    @classmethod
    def activation_oracle(cls, tokenizer, layer: int, question: str, positions: int = 1) -> PromptTemplate:
        """An Activation Oracle's prompt (Karvonen et al. 2025): `oracle_text` as the only user turn,
        rendered by the tokenizer's own chat template with the generation prompt and
        `enable_thinking=False`, as the reference renders it (dataset_utils.py lines 307-316: so a
        template's default system prompt, SmolLM2's or Llama 3's dated one, is part of it). `layer`
        is the layer the vectors were read at, `positions` how many vectors a prompt takes; the
        answer is the assistant's text up to its end of turn."""
        _check_oracle_fields(layer, question, positions)
        _require_chat_template(tokenizer)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": oracle_text(layer, positions, question)}],
                                               tokenize=False, add_generation_prompt=True, enable_thinking=False)
        return cls(prompt=prompt, placeholder=ORACLE_PLACEHOLDER, closing="", end=end_of_turn(tokenizer),
                   name="activation_oracle", ordinary_placeholder=True, slots=positions)

    @classmethod
    def named(cls, name: str, tokenizer) -> PromptTemplate:
        """Look a built-in template up by name (`chat`, `tokenizer_chat`, `echo`, `patchscopes`, `selfie`)."""
        builders = {"chat": cls.chat, "tokenizer_chat": cls.tokenizer_chat, "echo": cls.echo,
                    "patchscopes": cls.patchscopes, "selfie": cls.selfie}
        if name not in builders:
            raise TemplateError(f"Unknown template {name!r}; use one of {sorted(builders)} or a PromptTemplate object.")
        return builders[name](tokenizer)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "Template config", prefix: str = "") -> PromptTemplate:
        """A saved template; every text field must be present (a missing `end` would change where
        labels stop), `stop_at_closing` defaults to true (files written before it existed)."""
        return validate(cls, data, source, "re-save the explainer.", prefix=prefix, unknown="ignore",
                        required=("prompt", "placeholder", "closing", "end", "label_prefix", "name"), error=TemplateError)

    # ---- tokenisation -------------------------------------------------------------------

    def placeholder_id(self, tokenizer) -> int:
        """The placeholder's token id, after checking it is one rare token present in the prompt (one
        token of any kind for an `ordinary_placeholder`)."""
        if self.ordinary_placeholder and self.slots is None:
            raise TemplateError("A template with an ordinary-token placeholder must say how many of its occurrences "
                                "take a vector; set slots=K (PromptTemplate.activation_oracle does).")
        return placeholder_token_id(tokenizer, self.placeholder, self.prompt, ordinary=self.ordinary_placeholder)

    def injection_mask(self, prompt_ids: torch.Tensor, tokenizer) -> torch.Tensor:
        """Where the vectors go in `prompt_ids` (1-D): every occurrence of the placeholder, or with
        `slots` = K the first K, which must be consecutive for an ordinary token (the reference's
        `find_pattern_in_tokens`, dataset_utils.py lines 261-285) and all of them for a special one."""
        hits = torch.as_tensor(prompt_ids) == self.placeholder_id(tokenizer)
        if self.slots is None:
            return hits
        found = hits.nonzero().flatten()
        if len(found) < self.slots or (not self.ordinary_placeholder and len(found) != self.slots):
            raise TemplateError(f"The prompt holds the placeholder {self.placeholder!r} {len(found)} times but takes "
                                f"{self.slots} vectors; put it once per vector.")
        first = found[: self.slots]
        if int(first[-1] - first[0]) != self.slots - 1:
            raise TemplateError(f"The first {self.slots} occurrences of {self.placeholder!r} are not consecutive tokens "
                                f"(positions {first.tolist()}); write the placeholders side by side before any other.")
        mask = torch.zeros_like(hits)
        mask[first] = True
        return mask

    def prompt_ids(self, tokenizer) -> torch.Tensor:
        """Token ids of the prompt (1-D), tokenised with its markup and no extra BOS."""
        self.placeholder_id(tokenizer)
        bos = self._needs_bos(tokenizer)
        ids = _without_forced_bos(tokenizer, tokenizer(self.prompt, add_special_tokens=bos)["input_ids"], self.prompt, bos)
        return torch.tensor(ids, dtype=torch.long)

    def _needs_bos(self, tokenizer) -> bool:
        """Chat prompts carry their own begin markup; raw prompts get the tokenizer's BOS, if any."""
        bos = getattr(tokenizer, "bos_token", None)
        return self.end == "" and bos is not None and not self.prompt.startswith(bos)

    def target_text(self, label: str) -> str:
        """What the model should write after the prompt for `label`."""
        if not isinstance(label, str) or not label.strip():
            raise LabelError("A label is empty; remove that example or give it a non-empty label.")
        return f"{self.label_prefix}{label.strip()}{self.closing}{self.end}"

    def target_ids(self, tokenizer, label: str) -> list[int]:
        text = self.target_text(label)
        return _without_forced_bos(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"], text, False)

    def parse_label(self, generated: str) -> str:
        """The label inside generated text: before the end-of-turn, then before the last closing."""
        text = generated
        if self.end and self.end in text:
            text = text.split(self.end, 1)[0]
        if self.closing.strip() and self.closing in text:
            text = text.rsplit(self.closing, 1)[0]
        elif self.closing and self.closing in text:
            text = text.split(self.closing, 1)[0]
        return text.strip()

    def is_finished(self, generated: str) -> bool:
        """True once generated text holds a complete label, so generation of that row can stop."""
        if self.end and self.end in generated:
            return True
        return (self.stop_at_closing or not self.end) and bool(self.closing) and self.closing in generated


def _without_forced_bos(tokenizer, ids: list[int], text: str, wanted: bool) -> list[int]:
    """Drop a BOS the tokenizer added though it was not asked to. Some wrappers do (TransformerLens
    sets its tokenizers to always prepend BOS), and the same explainer must see the same prompt
    whichever library's tokenizer it is given."""
    bos_id, bos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "bos_token", None)
    if not wanted and ids and bos_id is not None and ids[0] == bos_id and not (bos and text.startswith(bos)):
        return ids[1:]
    return ids


def default_placeholder(tokenizer) -> str:
    """First special token from `PLACEHOLDER_CANDIDATES` that this tokenizer has."""
    vocab = tokenizer.get_vocab()
    for candidate in PLACEHOLDER_CANDIDATES:
        if candidate in vocab:
            return candidate
    raise TemplateError(
        "No rare special token found for the placeholder; pass placeholder='<token>' naming a special token of this tokenizer."
    )


def _check_oracle_fields(layer, question, positions) -> None:
    for name, value, low in (("layer", layer, 0), ("positions", positions, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise TemplateError(f"An Activation Oracle's {name} must be a whole number >= {low}, got {value!r}.")
    if not isinstance(question, str) or not question.strip():
        raise TemplateError("An Activation Oracle needs a question about the activations, e.g. "
                            "question='Can you describe what is happening in this text?'.")


def placeholder_token_id(tokenizer, placeholder: str, prompt: str, ordinary: bool = False) -> int:
    """Check the placeholder is one special token (one token of any kind if `ordinary`) that appears
    in the prompt; return its id."""
    if placeholder not in prompt:
        raise TemplateError(f"The prompt does not contain the placeholder {placeholder!r}; put it where the vector should go.")
    ids = tokenizer(placeholder, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 and ordinary:
        raise TemplateError(f"Placeholder {placeholder!r} is {len(ids)} tokens for this tokenizer, and the prompt needs it "
                            "as one (the Activation Oracles' reference asserts so); use a tokenizer of the oracle's model.")
    if len(ids) != 1:
        raise TemplateError(
            f"Placeholder {placeholder!r} is {len(ids)} tokens for this tokenizer; use one special token such as "
            f"{default_placeholder(tokenizer)!r}."
        )
    special_ids = set(getattr(tokenizer, "added_tokens_decoder", {}) or {}) | set(tokenizer.all_special_ids)
    if not ordinary and ids[0] not in special_ids:
        raise TemplateError(
            f"Placeholder {placeholder!r} is an ordinary token that normal text can contain; use a special token such as "
            f"{default_placeholder(tokenizer)!r}."
        )
    return ids[0]


def _require_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(
            "This tokenizer has no chat template; use PromptTemplate.echo(tokenizer) or pass your own prompt string."
        )


#: a user turn and the start of the assistant's, per chat family, with no system turn, as the
#: reference writes its prompts out by hand (its Llama-3 and Qwen strings; Gemma's has no default
#: system prompt to leave out). Detected by the markup in the tokenizer's chat template.
CHAT_FAMILIES = (
    ("<|start_header_id|>", "{bos}<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>"
                            "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("<|im_start|>", "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"),
    ("<start_of_turn>", "{bos}<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n"),
)


def user_turn(tokenizer, user: str) -> str:
    """`user` as the only turn of a chat, followed by the assistant's header: written out for the
    known chat families (Llama 3, ChatML: Qwen / SmolLM2, Gemma) with no system turn; for any other
    template, the template's own rendering, refused if it adds a system turn of its own."""
    _require_chat_template(tokenizer)
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else str(tokenizer.chat_template)
    for marker, text in CHAT_FAMILIES:
        if marker in template:
            return text.format(bos=tokenizer.bos_token or "", user=user)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    if "system" in rendered.split(user, 1)[0].lower():
        raise TemplateError(
            "This tokenizer's chat template adds a system turn, which the paper's prompt does not have; write the prompt "
            "out: PromptTemplate(prompt='<your chat markup with {placeholder}>', placeholder=...)."
        )
    return rendered


def end_of_turn(tokenizer) -> str:
    """The chat format's end-of-turn marker, read off the chat template itself."""
    marker = "XQZJ"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "u"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    after = text.split(marker, 1)[1]
    end = after.strip().split()[0] if after.strip() else ""
    if not end and tokenizer.eos_token:
        end = tokenizer.eos_token
    return end


def end_of_turn_id(tokenizer) -> int | None:
    """The chat template's end-of-turn token id (`<|im_end|>`, `<end_of_turn>`), where generation
    stops; None when the marker is not one token."""
    end = end_of_turn(tokenizer)
    ids = tokenizer(end, add_special_tokens=False)["input_ids"] if end else []
    return ids[0] if len(ids) == 1 else None
