"""Words in context: a word's residual stream at its own position in varied sentences and prompts.

The shipped topic explainer reads one vector per topic: the last token of `Tell me about {title}.`
(issue 27 §1). A researcher's vectors mostly come from elsewhere: the position of a word inside
their own text. These vectors are that: each topic's title put into sentence templates (plain text,
and chat prompts wrapped by the model's chat template), read at the title's last token, labelled
with the title. Templates are split like the topics are (train / validation / test), so a test
vector is a held-out word in a held-out sentence. `scripts/in_context.py` trains and compares
explainers on them (docs/results.md).
"""

from __future__ import annotations

import random

import torch

from .datasets import VectorLabelDataset
from .errors import ArtifactError
from .sites import Site

SOURCE = "words_in_context"
POSITION = "word"  # the vector spec's `position`: the word's last token, wherever it is

#: (prompt format, template); `{word}` is the topic's title, always followed by a space or punctuation
#: so that its last token ends where the word ends. Split by template, so held-out sentences are held out.
TEMPLATES: dict[str, list[tuple[str, str]]] = {
    "train": [
        ("raw", "The {word} was the first thing she noticed when she walked in."),
        ("raw", "He wrote the word {word} on the blackboard and waited."),
        ("raw", "Nobody in the village had ever talked about the {word} before."),
        ("raw", "After lunch we spent an hour reading about the {word} in the library."),
        ("raw", "My grandmother always kept a picture of the {word} near the window."),
        ("raw", "In the story, the {word} appears only once, near the end."),
        ("raw", "The museum opened a new room devoted to the {word} last spring."),
        ("raw", "I could not stop thinking about the {word}, even at night."),
        ("raw", "Our teacher asked us to draw the {word} from memory."),
        ("raw", "The report mentions the {word} twice in its first chapter."),
        ("raw", "They argued for hours about whether the {word} mattered at all."),
        ("raw", "On the last page of the notebook was a single word: {word}."),
        ("chat", "Can you explain what the {word} is used for?"),
        ("chat", "Write a short poem about the {word}."),
        ("chat", "What is the history of the {word}?"),
        ("chat", "My teacher mentioned the {word} today. What did she mean?"),
        ("chat", "Give me three facts about the {word}, please."),
        ("chat", "Is the {word} common where you live?"),
        ("chat", "I keep hearing about the {word}. Why is it important?"),
        ("chat", "Describe the {word} to a child in two sentences."),
        ("chat", "How would you translate the word {word} into French?"),
        ("chat", "List some things people usually associate with the {word}."),
        ("chat", "Tell me a joke that involves the {word}."),
        ("chat", "Compare the {word} with something similar."),
    ],
    "validation": [
        ("raw", "She pointed at the {word} and laughed quietly."),
        ("raw", "The old book had a whole chapter about the {word}, with drawings."),
        ("raw", "We finally found the {word} behind the house."),
        ("chat", "What do you know about the {word}?"),
        ("chat", "Summarise everything important about the {word} in one paragraph."),
        ("chat", "Why would someone be interested in the {word}?"),
    ],
    "test": [
        ("raw", "The children were told a long story about the {word} before bed."),
        ("raw", "Everyone in the room turned to look at the {word}."),
        ("raw", "Years later, he still remembered the {word} from that summer."),
        ("chat", "Could you write a riddle whose answer is the {word}?"),
        ("chat", "Where can I learn more about the {word}?"),
        ("chat", "Explain the {word} as if I were an expert."),
    ],
}


def word_prompt(tokenizer, template: str, prompt_format: str, word: str) -> tuple[list[int], int]:
    """Token ids of `template` filled with `word` (chat-wrapped as one user turn with the generation
    prompt for 'chat', as `vector_spec.prompt_text` does) and the index of the word's last token: the
    last token that starts before the word's last character ends, found from the tokenizer's offsets."""
    before, after = template.split("{word}")
    content = before + word + after
    text = content
    if prompt_format == "chat":
        text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
    start = text.rindex(content)  # the chat markup holds the user's text verbatim
    word_end = start + len(before) + len(word)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    inside = [i for i, (s, e) in enumerate(offsets) if s < word_end and e > start + len(before)]
    if not inside:
        raise ArtifactError(f"No token of {text!r} covers the word {word!r}; use a fast tokenizer (offsets).")
    return ids, inside[-1]


def assign_templates(topics: list[dict], per_split: dict[str, int], seed: int = 0) -> list[tuple[dict, int]]:
    """(topic, template index within its split) pairs: each topic gets `per_split[split]` distinct
    templates of its own split, drawn with `seed` (a topic of a split not in `per_split` gets none)."""
    rng = random.Random(seed)
    pairs = []
    for topic in topics:
        split = topic.get("split", "train")
        count = per_split.get(split, 0)
        if count > len(TEMPLATES[split]):
            raise ArtifactError(f"{count} templates per {split} word asked, but the {split} split has "
                                f"{len(TEMPLATES[split])}; ask for fewer.")
        pairs += [(topic, k) for k in sorted(rng.sample(range(len(TEMPLATES[split])), count))]
    return pairs


def in_context_vectors(backend, topics: list[dict], layer: int, per_split: dict[str, int], seed: int = 0,
                       batch_size: int = 32, mean: torch.Tensor | None = None, progress: bool = False
                       ) -> VectorLabelDataset:
    """resid_post.`layer` at each word's own last token in its assigned templates, minus `mean`
    (default: the mean of the training rows, so nothing held out shapes the centring), label = title.
    Records carry the template and the position read, so a row can be checked by hand."""
    from tqdm.auto import tqdm

    site = Site("resid_post", layer)
    backend.check_site(site)
    pairs = assign_templates(topics, per_split, seed)
    if not pairs:
        raise ArtifactError("No (word, template) pairs: give topics of the splits in per_split.")
    prompts = []
    for topic, k in pairs:
        prompt_format, template = TEMPLATES[topic["split"]][k]
        prompts.append(word_prompt(backend.tokenizer, template, prompt_format, topic["title"]))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i][0]))  # similar lengths batched together
    raw = torch.empty(len(prompts), backend.d_model)
    for start in tqdm(range(0, len(order), batch_size), disable=not progress, desc="words in context"):
        chunk = order[start : start + batch_size]
        raw[chunk] = backend.capture([prompts[i][0] for i in chunk], [site], [prompts[i][1] for i in chunk])[:, 0]
    records = [{"id": f"{topic['id']}@{topic['split']}{k}", "label": topic["title"], "split": topic["split"],
                "topic_id": topic["id"], "template": TEMPLATES[topic["split"]][k][1],
                "prompt_format": TEMPLATES[topic["split"]][k][0], "position": prompts[i][1]}
               for i, (topic, k) in enumerate(pairs)]
    if mean is None:
        train = [i for i, r in enumerate(records) if r["split"] == "train"]
        mean = raw[train].mean(0) if train else raw.mean(0)
    meta = {"source": SOURCE, "site": site.name, "layer": layer, "position": POSITION, "prompt_format": "raw",
            "mean_subtracted": True, "mean": mean.tolist(), "per_split": dict(per_split), "seed": seed,
            "model_fingerprint": backend.fingerprint()}
    return VectorLabelDataset((raw - mean).contiguous(), records, meta)
