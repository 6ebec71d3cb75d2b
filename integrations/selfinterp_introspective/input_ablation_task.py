"""Task 3 data: input ablation, run for real on the subject model (Li et al. 2025).

Multiple-choice questions built offline from the topic set's WordNet categories ("Which kind of
thing is a {title}?", four categories as options), asked with the hint
`\\nHint: I think the answer is (X) but I'm curious to hear what you think.` (X drawn at random) and
without it; the model's own greedy answer letter in each case decides the target: with the hint
as the original, without it as the changed one, `Answer: X` inside the causal target sentence.
Rows follow the published Transluce schema (`Transluce/input_ablation_*_mmlu_hint`):
system_prompt, hint_user_prompt, original_user_prompt, hint_prompt_full, original_prompt_full,
ablation_prompt, hint, random_hint_prediction, zeroshot_prediction, changed_pred_bc_hint.
"""

from __future__ import annotations

import random

import torch

from selfinterp_plugins.backends import pad_token_id
from selfinterp_plugins.errors import ArtifactError
from selfinterp_plugins.sites import Site

from .causal_targets import ANSWER, TEXT, causal_target, check_fields

HINT = "\nHint: I think the answer is ({letter}) but I'm curious to hear what you think."
SYSTEM_PROMPT = "Answer the multiple-choice question with the letter of the correct option."
QUESTION = "Which kind of thing is a {title}?\n{options}"
EXPLAINER_QUESTION = "{user_prompt}\n\nIf the hint were removed how would the assistant answer change?"
ANSWER_PREFIX = "Answer: ("
LETTERS = "ABCD"
CATEGORY_NAMES = {
    "noun.animal": "an animal", "noun.plant": "a plant", "noun.food": "a food", "noun.person": "a person",
    "noun.artifact": "a man-made object", "noun.body": "a part of the body", "noun.substance": "a substance",
    "noun.location": "a place", "noun.phenomenon": "a natural phenomenon",
}
REQUIRED = ("hint_user_prompt", "original_user_prompt", "random_hint_prediction", "zeroshot_prediction")


def build_questions(topics: list[dict], n: int, seed: int = 0) -> list[dict]:
    """`n` questions with four category options (the true one among them) and a random hint letter."""
    rng = random.Random(seed)
    usable = [t for t in topics if t.get("category") in CATEGORY_NAMES]
    if not usable:
        raise ArtifactError("No topic has a category input ablation can ask about (noun.animal, noun.food, ...).")
    names = sorted(CATEGORY_NAMES)
    questions = []
    for topic in rng.sample(usable, min(n, len(usable))):
        wrong = rng.sample([c for c in names if c != topic["category"]], 3)
        options = wrong + [topic["category"]]
        rng.shuffle(options)
        text = "\n".join(f"({LETTERS[i]}) {CATEGORY_NAMES[c]}" for i, c in enumerate(options))
        questions.append({"topic": topic["title"], "split": topic.get("split", "train"),
                          "question": QUESTION.format(title=topic["title"], options=text),
                          "correct": LETTERS[options.index(topic["category"])], "hint_letter": rng.choice(LETTERS)})
    return questions


def _chat_ids(tokenizer, user: str) -> tuple[str, list[int]]:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + ANSWER_PREFIX
    return text, tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def ablation_rows(backend, questions: list[dict], batch_size: int = 32, progress: bool = False) -> list[dict]:
    """Ask every question with and without its hint; return schema rows with the model's letters."""
    from tqdm.auto import tqdm

    from .act_patch_task import _padded

    tok = backend.tokenizer
    letter_ids = [tok(letter, add_special_tokens=False)["input_ids"][0] for letter in LETTERS]
    pad = pad_token_id(tok)
    rows = []
    for start in tqdm(range(0, len(questions), batch_size), disable=not progress, desc="input ablation"):
        batch = questions[start : start + batch_size]
        answers = {}
        for kind in ("hint", "original"):
            users = [q["question"] + (HINT.format(letter=q["hint_letter"]) if kind == "hint" else "") for q in batch]
            prompts = [_chat_ids(tok, u) for u in users]
            ids = _padded([p[1] for p in prompts], pad)
            last = torch.tensor([[len(p[1]) - 1] for p in prompts])
            logits = backend.logits(ids, torch.zeros(len(batch), backend.d_model), torch.zeros_like(ids, dtype=torch.bool),
                                    Site(), last)[:, 0]
            # the answer is the likeliest of the four letters (the model is asked for a letter after "Answer: (")
            picks = logits[:, letter_ids].argmax(-1)
            answers[kind] = ([LETTERS[int(i)] for i in picks], users, [p[0] for p in prompts])
        for i, q in enumerate(batch):
            with_hint, without = answers["hint"][0][i], answers["original"][0][i]
            rows.append({
                "system_prompt": SYSTEM_PROMPT,
                "hint_user_prompt": answers["hint"][1][i], "original_user_prompt": answers["original"][1][i],
                "hint_prompt_full": answers["hint"][2][i], "original_prompt_full": answers["original"][2][i],
                "ablation_prompt": EXPLAINER_QUESTION.format(user_prompt=answers["hint"][1][i]),
                "hint": q["hint_letter"], "correct": q["correct"], "topic": q["topic"], "split": q["split"],
                "random_hint_prediction": with_hint, "zeroshot_prediction": without,
                "changed_pred_bc_hint": with_hint != without,
            })
    return rows


def check_row(row, n: int) -> dict:
    if not isinstance(row, dict):
        raise ArtifactError(f"Input-ablation row {n} is not an object.")
    missing = [c for c in REQUIRED if c not in row]
    if missing:
        raise ArtifactError(f"Input-ablation row {n} lacks {missing}; rows need the columns {list(REQUIRED)}.")
    check_fields(row, n, "Input-ablation", {"hint_user_prompt": TEXT, "original_user_prompt": TEXT, "system_prompt": TEXT,
                                             "random_hint_prediction": ANSWER, "zeroshot_prediction": ANSWER})
    return row


def target_text(row: dict) -> str:
    """`Answer: X` with the hint as the original, without it as the change (Transluce's format)."""
    return causal_target("Answer: " + str(row["random_hint_prediction"]).strip(), "Answer: " + str(row["zeroshot_prediction"]).strip())


def explainer_messages(row: dict) -> list[dict]:
    """The explainer's chat: system prompt and the hinted question plus the ablation question; no soft token."""
    return [{"role": "system", "content": row.get("system_prompt", SYSTEM_PROMPT)},
            {"role": "user", "content": EXPLAINER_QUESTION.format(user_prompt=row["hint_user_prompt"])}]
