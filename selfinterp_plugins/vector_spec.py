"""What vectors an explainer reads: where its training vectors came from, saved with it.

An explainer trained on topic vectors (the residual stream after layer 10 at the last token of the
chat prompt `Tell me about {title}.`, minus the mean over topics) says nonsense about the residual
stream of a plain prompt, of another layer, or of an uncentred activation: nothing in the vector
tells them apart. So the artifact records the recipe (`VectorSpec`, in `explainer_config.json` as
`vector_spec`) and `Explainer.prepare_vectors` / `Explainer.vector_prompt` turn what a user holds
(an activation, a TransformerLens cache entry, an SAE) into exactly that input.
"""

from __future__ import annotations

import math
import string
from dataclasses import asdict, dataclass
from typing import Literal, get_args

from .errors import ArtifactError, BackendError
from .sites import Site
from .storage.validation import Name, PositiveFloat, Text, check_fields, validate

# public: plugins' vector sources describe their vectors with one (dataset meta -> VectorSpec.from_meta)
__all__ = ["VectorSpec"]

#: prompt forms: the prompt text as is, or wrapped by the tokenizer's chat template as one user turn
#: with the generation prompt (`prompt_text` builds either)
PromptFormat = Literal["raw", "chat"]
Centring = Literal["none", "mean"]
PROMPT_FORMATS, CENTRINGS = get_args(PromptFormat), get_args(Centring)
#: the metadata key of the mean a centred dataset's vectors had subtracted
MEAN_KEY = "topic_mean"
FIX = "re-save the explainer."
#: the fields `prompt_text` fills in a prompt (both with the title)
PROMPT_FIELDS = ("title", "topic")


class _SpecProblem(ArtifactError):
    """Fields that are each well-typed but do not fit together (`from_dict` adds the file's name)."""


def prompt_problem(prompt: str) -> str | None:
    """Why `prompt` cannot be filled in by `prompt_text`, or None. Checked when a spec is made or
    loaded: `str.format` raised KeyError for `{name}`, IndexError for `{0}` and ValueError for a
    lone brace at the first `vector_prompt`, and a prompt with no field gave every topic one prompt."""
    try:
        fields = [(name, spec, conversion) for _text, name, spec, conversion in string.Formatter().parse(prompt)
                  if name is not None]
    except ValueError as err:
        return f"is not a prompt template ({err}; write {{{{ and }}}} for literal braces)"
    if not fields:
        return "has no {title} field, so every topic would get the same prompt; put {title} where the topic goes"
    for name, spec, conversion in fields:
        if name not in PROMPT_FIELDS or spec or conversion:
            return (f"names the field {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}; "
                    "a prompt fills only {title} (or {topic}), as is; write {{ and }} for literal braces")
    return None


def prompt_text(tokenizer, prompt: str, title: str, prompt_format: str = "chat", tokenize: bool = False):
    """The prompt a vector is read from, for `title`: `prompt` filled in (`{title}` or `{topic}`),
    wrapped by the chat template as one user turn with the generation prompt when `prompt_format`
    is 'chat'; its token ids with `tokenize=True`, tokenised without special tokens (the chat
    markup holds any BOS already: a tokenizer adding one would put two). The one builder of these
    prompts, so `topic_vectors` and `Explainer.vector_prompt` cannot drift apart."""
    text = prompt.format(title=title, topic=title)
    if prompt_format == "chat":
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"] if tokenize else text


@dataclass(frozen=True)
class VectorSpec:
    """The recipe of an explainer's training vectors.

    - `source`: what made them (`topic_vectors`, `sae_lens`, or a plugin's source name);
    - `site`: where they were read, in this library's names (`resid_post.10`; `Site.parse` reads it);
    - `prompt`: the prompt text with its placeholder (`Tell me about {title}.`), None if not from prompts;
    - `prompt_format`: `chat` (the tokenizer's chat template, one user turn, generation prompt) or `raw`;
    - `position`: which token's activation (`last`);
    - `centring`: `mean` (a mean was subtracted: it is `mean_key` in the explainer's metadata) or `none`;
    - `vector_norm`: the median norm of the training vectors (how large a prepared vector should be).
    """

    source: Name
    site: Name
    prompt: Text | None = None
    prompt_format: PromptFormat = "chat"
    position: Name = "last"
    centring: Centring = "none"
    mean_key: Name | None = None
    vector_norm: PositiveFloat | None = None

    def __post_init__(self):
        check_fields(self, "VectorSpec", FIX)  # the same rules as a loaded explainer_config.json
        if self.centring == "mean" and not self.mean_key:
            raise _SpecProblem(f"field vector_spec.mean_key is missing (centring is 'mean'); {FIX}")
        if self.prompt is not None:
            problem = prompt_problem(self.prompt)
            if problem:
                raise _SpecProblem(f"field vector_spec.prompt {problem} (got {self.prompt!r:.60}); {FIX}")

    @property
    def layer(self) -> int | None:
        return Site.parse(self.site).layer

    @classmethod
    def from_meta(cls, meta: dict, vector_norm: float | None = None) -> VectorSpec | None:
        """The spec of a dataset's vectors from its `meta` (what `topic_vectors` and the vector
        sources write), or None when the meta does not say where they were read."""
        site = meta.get("site")
        if not isinstance(site, str):
            return None
        source = meta.get("source") or "unknown"
        centred = bool(meta.get("mean_subtracted")) and "mean" in meta
        prompt = meta.get("prompt") if isinstance(meta.get("prompt"), str) else None
        return cls(
            source="topic_vectors" if source == "topics" else str(source),
            site=site,
            prompt=prompt,
            prompt_format=meta.get("prompt_format", "chat" if source == "topics" else "raw"),
            position=meta.get("position", "last"),
            centring="mean" if centred else "none",
            mean_key=MEAN_KEY if centred else None,
            vector_norm=vector_norm,
        )

    def to_meta(self, mean=None) -> dict:
        """The dataset meta that `from_meta` reads back as this spec (its norm aside): for a
        dataset of vectors made to this recipe by hand (`Explainer.vector_meta`), so an explainer
        trained on them records the recipe too. `mean` is what a centred spec subtracted."""
        meta = {"source": "topics" if self.source == "topic_vectors" else self.source, "site": self.site,
                "layer": self.layer, "prompt_format": self.prompt_format, "position": self.position,
                "mean_subtracted": self.centring == "mean"}
        if self.prompt is not None:
            meta["prompt"] = self.prompt
        if self.centring == "mean":
            meta["mean"] = list(mean) if mean is not None else None
        return meta

    def to_dict(self) -> dict:
        out = asdict(self)
        out["layer"] = self.layer  # for readers of the JSON; derived from site on load
        return out

    @classmethod
    def from_dict(cls, data: dict, path="explainer_config.json") -> VectorSpec:
        """The spec saved as `vector_spec` in `path`, checked by the validation layer (`layer` is
        derived from `site`, so it is not read back; fields of a newer version are ignored)."""
        try:
            spec = validate(cls, data, str(path), FIX, prefix="vector_spec", unknown="ignore")
        except _SpecProblem as err:
            raise ArtifactError(f"{path}: {err}") from None
        try:
            spec.layer  # noqa: B018 - the site must parse
        except BackendError:
            raise ArtifactError(f"{path}: field vector_spec.site should be a site name such as 'resid_post.10' (got "
                                f"{spec.site!r:.60}); {FIX}") from None
        return spec

    def describe(self) -> str:
        """One line: what to feed the explainer."""
        where = f"{self.site} at the {self.position} token"
        if self.prompt:
            form = "chat-templated " if self.prompt_format == "chat" else ""
            where += f" of the {form}prompt {self.prompt!r}"
        centre = f", minus metadata[{self.mean_key!r}]" if self.centring == "mean" else ""
        return f"{self.source} vectors: {where}{centre}"



def mean_problem(mean, where: str, d_model: int | None = None) -> str | None:
    """Why `mean`, the recorded mean a centred spec subtracts (`where` names it), cannot be
    subtracted: missing, not a list of finite numbers (a string, a scalar, a nested list) or not
    `d_model` wide; None if it can. Loading and training check it before any model is needed, so
    that `prepare_vectors` never meets it as torch's TypeError or a silent broadcast."""
    if mean is None:
        return f"{where} is missing (vector_spec.centring is 'mean')"
    numbers = isinstance(mean, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in mean)
    if not numbers or not mean:
        return f"{where} should be a list of numbers, the mean the vectors were centred with (got {mean!r:.40})"
    if not all(math.isfinite(v) for v in mean):
        return f"{where} holds NaN or infinite values"
    if d_model is not None and len(mean) != d_model:
        return f"{where} has {len(mean)} values, but the model's width is {d_model}"
    return None
