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
from dataclasses import asdict, dataclass, fields

from .errors import ArtifactError

# public: plugins' vector sources describe their vectors with one (dataset meta -> VectorSpec.from_meta)
__all__ = ["VectorSpec"]

#: prompt forms: the prompt text as is, or wrapped by the tokenizer's chat template as one user turn
#: with the generation prompt (`prompt_text` builds either)
PROMPT_FORMATS = ("raw", "chat")
CENTRINGS = ("none", "mean")
#: the metadata key of the mean a centred dataset's vectors had subtracted
MEAN_KEY = "topic_mean"


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

    source: str
    site: str
    prompt: str | None = None
    prompt_format: str = "chat"
    position: str = "last"
    centring: str = "none"
    mean_key: str | None = None
    vector_norm: float | None = None

    def __post_init__(self):
        for name in ("source", "site", "position"):
            if not isinstance(getattr(self, name), str):
                raise ArtifactError(f"vector_spec.{name} must be a string; re-save the explainer.")
        for name in ("prompt", "mean_key"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ArtifactError(f"vector_spec.{name} must be a string or null; re-save the explainer.")
        norm = self.vector_norm
        if norm is not None and (isinstance(norm, bool) or not isinstance(norm, (int, float)) or not math.isfinite(norm)
                                 or norm <= 0):
            raise ArtifactError(f"vector_spec.vector_norm must be a positive number or null, got {norm!r}; "
                                "re-save the explainer.")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ArtifactError(f"vector_spec.prompt_format {self.prompt_format!r} is not one of {PROMPT_FORMATS}; "
                                "re-save the explainer.")
        if self.centring not in CENTRINGS:
            raise ArtifactError(f"vector_spec.centring {self.centring!r} is not one of {CENTRINGS}; re-save the explainer.")
        if self.centring == "mean" and not self.mean_key:
            raise ArtifactError("vector_spec.centring is 'mean' but names no mean_key; re-save the explainer.")

    @property
    def layer(self) -> int | None:
        from .sites import Site

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

    def to_dict(self) -> dict:
        out = asdict(self)
        out["layer"] = self.layer  # for readers of the JSON; derived from site on load
        return out

    @classmethod
    def from_dict(cls, data: dict, path="explainer_config.json") -> VectorSpec:
        if not isinstance(data, dict) or not isinstance(data.get("source"), str) or not isinstance(data.get("site"), str):
            raise ArtifactError(f"{path}: 'vector_spec' needs string fields 'source' and 'site'; re-save the explainer.")
        known = {f.name for f in fields(cls)}
        try:
            spec = cls(**{k: v for k, v in data.items() if k in known})
            spec.layer  # noqa: B018 - the site must parse
        except (TypeError, ValueError) as err:
            raise ArtifactError(f"{path}: malformed 'vector_spec' ({err}); re-save the explainer.") from None
        except ArtifactError:
            raise
        except Exception as err:  # a BackendError from an unreadable site
            raise ArtifactError(f"{path}: 'vector_spec' {err}") from None
        return spec

    def describe(self) -> str:
        """One line: what to feed the explainer."""
        where = f"{self.site} at the {self.position} token"
        if self.prompt:
            form = "chat-templated " if self.prompt_format == "chat" else ""
            where += f" of the {form}prompt {self.prompt!r}"
        centre = f", minus metadata[{self.mean_key!r}]" if self.centring == "mean" else ""
        return f"{self.source} vectors: {where}{centre}"
