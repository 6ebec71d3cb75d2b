"""Task 2 data: activation patching, run for real on the subject model (Li et al. 2025).

A prompt about one topic (`A {title} is a kind of`) and a counterfactual about a topic of another
WordNet category; the residual after layer L at the original subject's last token is replaced by
the counterfactual's residual after layer L at its subject's last token; the greedy next token with
and without the patch decides the target (`causal_targets`). Rows follow the published Transluce
schema (`Transluce/act_patch_*_counterfact`): layer, input_tokens, original_continuation,
ablated_continuation, is_different, patch_position{orig_pos, counterfact_pos, orig_text_token,
counterfact_text_token, intervention_vector}, counterfactual_text, gt_original_target,
gt_counterfactual_target; so one loader reads ours and theirs.
"""

from __future__ import annotations

import random

import torch

from selfinterp_plugins.backends import pad_token_id
from selfinterp_plugins.errors import ArtifactError
from selfinterp_plugins.sites import Site

from .causal_targets import BOOL, INT_OR_INTS, TEXT_OR_TOKENS, TOKENS, VECTOR, causal_target, check_fields

PATCH_PROMPT = "A {title} is a kind of"
#: the explainer's question, one paraphrase per example at random (Transluce's act-patch prompts)
EXPLAINER_PROMPTS = (
    "If feature {feature} at layer {layer} is added to tokens {tokens} when processing the text <<<{input}>>>, how would the output change?",
    "When feature {feature} at layer {layer} is added at tokens {tokens} in the input <<<{input}>>>, what happens to the model's output?",
    "Consider the input text: <<<{input}>>>. If we steer layer {layer} towards feature {feature} at tokens {tokens}, "
    "how does this affect the generated continuation?",
    "Given the text <<<{input}>>>, what would be the effect on the output if feature {feature} at layer {layer} is added to tokens {tokens}?",
    "If we steer towards feature {feature} at layer {layer} and tokens {tokens} when processing <<<{input}>>>, "
    "how would the model's response differ?",
)
REQUIRED = ("layer", "input_tokens", "original_continuation", "ablated_continuation", "is_different", "patch_position")


def counterfactual_pairs(topics: list[dict], n: int, seed: int = 0) -> list[tuple[dict, dict]]:
    """`n` (topic, counterfactual topic) pairs of different categories, seeded."""
    rng = random.Random(seed)
    by_category: dict[str, list[dict]] = {}
    for t in topics:
        by_category.setdefault(t.get("category", ""), []).append(t)
    if len(by_category) < 2:
        raise ArtifactError("Counterfactual pairs need topics of at least two categories.")
    pairs = []
    for _ in range(n):
        first = rng.choice(topics)
        others = [c for c in by_category if c != first.get("category", "")]
        pairs.append((first, rng.choice(by_category[rng.choice(others)])))
    return pairs


def _subject_end(tokenizer, title: str) -> tuple[list[int], int]:
    """Prompt ids and the index of the subject's last token."""
    prefix, _, _ = PATCH_PROMPT.partition("{title}")
    ids = tokenizer(PATCH_PROMPT.format(title=title), add_special_tokens=False)["input_ids"]
    upto = tokenizer(prefix + title, add_special_tokens=False)["input_ids"]
    if ids[: len(upto)] != upto:
        raise ArtifactError(f"The subject {title!r} does not tokenise the same inside the prompt; choose another topic.")
    return ids, len(upto) - 1


@torch.no_grad()
def patching_rows(backend, pairs, layers: list[int], batch_size: int = 32, seed: int = 0, progress: bool = False) -> list[dict]:
    """Run every patch (one layer per pair, drawn from `layers`) and return schema rows."""
    from tqdm.auto import tqdm

    tok = backend.tokenizer
    rng = random.Random(seed)
    jobs = []
    for first, other in pairs:
        ids, pos = _subject_end(tok, first["title"])
        cf_ids, cf_pos = _subject_end(tok, other["title"])
        jobs.append({"ids": ids, "pos": pos, "cf_ids": cf_ids, "cf_pos": cf_pos, "layer": rng.choice(layers),
                     "topic": first, "counterfactual": other})
    rows: dict[int, dict] = {}
    pad = pad_token_id(tok)
    for start in tqdm(range(0, len(jobs), batch_size), disable=not progress, desc="activation patching"):
        batch = list(enumerate(jobs[start : start + batch_size], start))
        for layer in sorted({j["layer"] for _, j in batch}):
            numbered = [(n, j) for n, j in batch if j["layer"] == layer]
            group = [j for _, j in numbered]
            site = Site("resid_post", layer)
            vectors = backend.capture([j["cf_ids"] for j in group], [site], [j["cf_pos"] for j in group])[:, 0]
            input_ids = _padded([j["ids"] for j in group], pad)
            mask = torch.zeros_like(input_ids, dtype=torch.bool)
            for i, j in enumerate(group):
                mask[i, j["pos"]] = True
            last = torch.tensor([[len(j["ids"]) - 1] for j in group])
            clean = backend.logits(input_ids, vectors, torch.zeros_like(mask), site, last)[:, 0].argmax(-1)
            patched = backend.logits(input_ids, vectors, mask, site, last)[:, 0].argmax(-1)
            cf_ids = _padded([j["cf_ids"] for j in group], pad)
            cf_last = torch.tensor([[len(j["cf_ids"]) - 1] for j in group])
            cf_next = backend.logits(cf_ids, vectors, torch.zeros_like(cf_ids, dtype=torch.bool), site, cf_last)[:, 0].argmax(-1)
            for i, (n, j) in enumerate(numbered):
                original, ablated = token_text(tok, clean[i]), token_text(tok, patched[i])
                rows[n] = {
                    "layer": layer,
                    "input_tokens": tok.convert_ids_to_tokens(j["ids"]),
                    "original_continuation": [original],
                    "ablated_continuation": [ablated],
                    "is_different": original != ablated,
                    "patch_position": {"orig_pos": j["pos"], "counterfact_pos": j["cf_pos"],
                                       "orig_text_token": tok.convert_ids_to_tokens([j["ids"][j["pos"]]])[0],
                                       "counterfact_text_token": tok.convert_ids_to_tokens([j["cf_ids"][j["cf_pos"]]])[0],
                                       "intervention_vector": vectors[i].tolist()},
                    "counterfactual_text": PATCH_PROMPT.format(title=j["counterfactual"]["title"]),
                    "gt_original_target": original,
                    "gt_counterfactual_target": token_text(tok, cf_next[i]),
                    "topic": j["topic"]["title"], "counterfactual_topic": j["counterfactual"]["title"],
                    "split": j["topic"].get("split", "train"),
                }
    return [rows[n] for n in range(len(jobs))]


def _padded(sequences: list[list[int]], pad: int) -> torch.Tensor:
    ids = torch.full((len(sequences), max(len(x) for x in sequences)), pad, dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq)
    return ids


def check_row(row, n: int) -> dict:
    """A schema row checked, with a clear error naming what is missing."""
    if not isinstance(row, dict):
        raise ArtifactError(f"Activation-patching row {n} is not an object.")
    missing = [c for c in REQUIRED if c not in row]
    if missing:
        raise ArtifactError(f"Activation-patching row {n} lacks {missing}; rows need the columns {list(REQUIRED)}.")
    patch = row["patch_position"]
    if not isinstance(patch, dict) or "intervention_vector" not in patch or "orig_pos" not in patch:
        raise ArtifactError(f"Activation-patching row {n}: patch_position needs orig_pos and intervention_vector.")
    check_fields(row, n, "Activation-patching", {
        "layer": INT_OR_INTS, "input_tokens": TOKENS, "original_continuation": TEXT_OR_TOKENS,
        "ablated_continuation": TEXT_OR_TOKENS, "is_different": BOOL, "patch_position.orig_pos": INT_OR_INTS,
        "patch_position.intervention_vector": VECTOR,
        "patch_position.orig_text_token": (lambda v: isinstance(v, str), "a token string")})
    return row


def continuation_text(value, tokenizer) -> str:
    """A continuation as the reference's `_format_causal_change` writes it (`dataloaders/act_patch.py`
    lines 75-88): a string as it is, a list through the explainer tokenizer's
    `convert_tokens_to_string`, so raw tokens (`ĠParis`) become text (` Paris`), text stays text
    and several tokens join."""
    return value if isinstance(value, str) else tokenizer.convert_tokens_to_string(list(value))


def target_text(row: dict, tokenizer) -> str:
    """The answer for a schema row, its continuations written as `continuation_text`."""
    return causal_target(continuation_text(row["original_continuation"], tokenizer),
                         continuation_text(row["ablated_continuation"], tokenizer))


def explainer_prompts(row: dict, feature_text: str, tokenizer) -> list[str]:
    """Every paraphrase of the question for one row, with the input text, layer and patched token
    written as text (`convert_tokens_to_string`, as the reference writes them: ` cat`, not `Ġcat`)."""
    text = tokenizer.convert_tokens_to_string(list(row["input_tokens"]))
    patched = row["patch_position"].get("orig_text_token", "")
    patched = tokenizer.convert_tokens_to_string([patched]) if patched else ""
    layer = row["layer"] if not isinstance(row["layer"], (list, tuple)) else ", ".join(str(x) for x in row["layer"])
    return [p.format(feature=feature_text, layer=layer, tokens=f"<{patched}>", input=text) for p in EXPLAINER_PROMPTS]


def holds_eos(row: dict, tokenizer) -> bool:
    """Whether the row's original or patched continuation holds the explainer's EOS token: the
    reference drops such rows from training and evaluation (`dataloaders/act_patch.py` lines 99-103,
    the same membership test)."""
    eos = tokenizer.eos_token
    return eos is not None and (eos in row["original_continuation"] or eos in row["ablated_continuation"])


def drop_eos_rows(rows: list[dict], tokenizer) -> list[dict]:
    """The rows the reference keeps (`holds_eos` false)."""
    return [r for r in rows if not holds_eos(r, tokenizer)]


def token_text(tokenizer, token_id: int) -> str:
    """One token as the reference writes a continuation: `convert_tokens_to_string` of the token
    (` Paris`), not `decode`, whose clean-up rules vary with the tokenizer and its version."""
    return tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens([int(token_id)]))
