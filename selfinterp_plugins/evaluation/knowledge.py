"""Knowledge control: does the model already know the topic? (Pepper et al. 2026, the "taboo" baseline)

Self-interpretation can only be credited with what goes beyond the model simply knowing a topic.
The control asks the model, in plain text, to describe each topic without naming it (greedy, up to
150 new tokens), redacts the topic's name where it slipped in, and scores the description exactly
as labels are scored (recall@k of the true title among all titles), as the reference does. A
trained adapter that beats this is reading something out of the vector, not reciting.
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch

from ..backends.base import Sampling
from ..sites import Site
from ..templates import end_of_turn_id

# public: `generate_texts` is plain generation (nothing injected) on any backend, for plugins' scorers
__all__ = ["DESCRIBE_PROMPT", "DESCRIPTION_TOKENS", "generate_texts", "prompted_descriptions", "redact"]

DESCRIBE_PROMPT = ('Describe {title} without using the word "{title}", any part of it, or obvious synonyms. '
                   "Be specific enough that someone could guess what you're describing.")


#: the reference's budget for a description (`taboo_generator.py`: max_tokens 150)
DESCRIPTION_TOKENS = 150


def prompted_descriptions(backend, titles: list[str], ids: list[str] | None = None,
                          max_new_tokens: int = DESCRIPTION_TOKENS, batch_size: int = 32, progress: bool = False,
                          tokenizer=None) -> list[dict]:
    """One record per title (id, scale 0.0, label = the description), greedy, in the model's chat
    format as the reference's chat-completions call applies it (no system message of our own).
    `backend`: a Backend or any model object `Explainer.create` takes (`tokenizer=` as there: a
    plain transformers model needs it; nnsight and TransformerLens models carry their own)."""
    from ..plugins import backend_for

    backend = backend_for(backend, tokenizer=tokenizer)
    ids = ids if ids is not None else [str(i) for i in range(len(titles))]
    prompts = [_prompt_ids(backend.tokenizer, title) for title in titles]
    texts = generate_texts(backend, prompts, max_new_tokens, batch_size, progress, desc="prompted descriptions")
    return [{"id": i, "scale": 0.0, "label": redact(text, title), "text": text} for i, title, text in zip(ids, titles, texts)]


def redact(description: str, topic: str) -> str:
    """Every case-insensitive occurrence of the topic replaced by `[REDACTED]`, as the reference
    filters descriptions before scoring them (`filter_obvious_mentions`): a description that names
    its topic gets no credit for the name."""
    if not description or not topic:
        return description
    return re.sub(re.escape(topic), "[REDACTED]", description, flags=re.IGNORECASE)


def generate_texts(backend, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 32,
                   progress: bool = False, desc: str = "generate", sampling: Sampling | None = None) -> list[str]:
    """Continuations of token-id prompts with nothing injected (stops at end of turn or EOS);
    prompts of equal length share a batch, on any backend. Greedy unless `sampling` says otherwise
    (batch k draws with seed `sampling.seed + k`, so a rerun draws the same texts)."""
    from tqdm.auto import tqdm

    from ..plugins import backend_for

    backend = backend_for(backend)  # a Backend, or a model object carrying its tokenizer (nnsight, TransformerLens)
    tok = backend.tokenizer
    stop = {i for i in (tok.eos_token_id, end_of_turn_id(tok)) if i is not None}

    def is_finished(out):
        return out[-1] in stop

    groups: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(len(prompt), []).append(i)
    batches = [rows[k:k + batch_size] for rows in groups.values() for k in range(0, len(rows), batch_size)]
    texts: dict[int, str] = {}
    base = sampling or Sampling()
    for k, rows in enumerate(tqdm(batches, disable=not progress, desc=desc)):
        sampling = replace(base, max_new_tokens=max_new_tokens, seed=base.seed + k)
        input_ids = torch.tensor([prompts[i] for i in rows])
        soft = torch.zeros(len(rows), backend.d_model)
        mask = torch.zeros_like(input_ids, dtype=torch.bool)  # nothing injected
        outputs = backend.generate(input_ids, soft, mask, Site(), sampling, is_finished)
        for i, out in zip(rows, outputs):
            texts[i] = tok.decode([t for t in out if t not in stop], skip_special_tokens=True).strip()
    return [texts[i] for i in range(len(prompts))]


def _prompt_ids(tokenizer, title: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": DESCRIBE_PROMPT.format(title=title)}],
                                         tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
