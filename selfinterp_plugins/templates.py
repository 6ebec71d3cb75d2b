"""Prompt templates: where the soft token goes and how a label is written after it.

A template is a prompt string holding a placeholder token one or more times; the soft token
replaces the placeholder at every occurrence. The model's answer is the label followed by a
closing string (a quote, or a newline) and the chat's end-of-turn token; training targets are
written that way and generated text is parsed back the same way.

The placeholder must be ONE token that ordinary text never produces (a special or added
token), otherwise a label or prompt could contain it by accident and the injection would hit
the wrong position.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .errors import LabelError, TemplateError
from .storage.validation import Name, Text, check_fields, validate

# public: besides PromptTemplate, the chat-format helpers plugins build their own prompts and stop
# conditions with, so every prompt in a model's chat format is written the same way
__all__ = ["PromptTemplate", "end_of_turn", "end_of_turn_id", "user_turn"]

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
        """The placeholder's token id, after checking it is one rare token present in the prompt."""
        return placeholder_token_id(tokenizer, self.placeholder, self.prompt)

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


def placeholder_token_id(tokenizer, placeholder: str, prompt: str) -> int:
    """Check the placeholder is one special token that appears in the prompt; return its id."""
    if placeholder not in prompt:
        raise TemplateError(f"The prompt does not contain the placeholder {placeholder!r}; put it where the vector should go.")
    ids = tokenizer(placeholder, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise TemplateError(
            f"Placeholder {placeholder!r} is {len(ids)} tokens for this tokenizer; use one special token such as "
            f"{default_placeholder(tokenizer)!r}."
        )
    special_ids = set(getattr(tokenizer, "added_tokens_decoder", {}) or {}) | set(tokenizer.all_special_ids)
    if ids[0] not in special_ids:
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
