"""Bridge entities: does self-interpretation reveal what the model computes but never says?

A two-hop statement ("The capital of the country where the Eiffel Tower is located is") needs an
intermediate entity (France) that appears in neither the prompt nor the answer. If labels of the
model's own hidden states name it, the explainer reads a computation the output never shows
(ANCHORS.md §1, "bridge entities").

Built offline from `data/two_hop_facts.json` (hand-written common knowledge): each single hop is
first asked of the model on its own, and only statements whose two hops it answers right are kept
(a model cannot be expected to compute a bridge it does not know). Vectors are read after every
layer in `layers` at each position from the subject's last token to the end of the prompt; each is
labelled `samples` times (T = 0.7, ≤ 20 tokens); a statement is a hit at a layer if any label at
any of those positions names the bridge (word-boundary match of any alias).
"""

from __future__ import annotations

import json
import re
from importlib import resources

import torch

from .backends.base import Sampling
from .knowledge import generate_texts
from .sites import Site


def load_facts() -> dict:
    text = resources.files("selfinterp_plugins").joinpath("data/two_hop_facts.json").read_text(encoding="utf-8")
    return json.loads(text)


def mentions(text: str, aliases: list[str]) -> bool:
    """Word-boundary, case-insensitive match of any alias in `text`."""
    return any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", text, flags=re.IGNORECASE) for a in aliases)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def build_two_hop(backend, facts: dict | None = None, max_new_tokens: int = 8, progress: bool = False) -> dict:
    """Probe every single hop, keep the pairs the model answers right, compose them.

    Returns {"statements": [...], "first_hop_correct": n/N, "second_hop_correct": n/N, "n_two_hop_correct"}."""
    facts = facts or load_facts()
    tok = backend.tokenizer
    countries = facts["countries"]
    first = facts["first_hop"]
    first_prompts = [first["prompt"].format(subject=s[0].upper() + s[1:]) for s, _ in first["facts"]]
    first_out = generate_texts(backend, [_ids(tok, p) for p in first_prompts], max_new_tokens, progress=progress,
                               desc="first hops")
    first_ok = [mentions(out, countries[bridge]["aliases"]) for (_, bridge), out in zip(first["facts"], first_out)]

    second = facts["second_hop"]
    pairs = [(country, relation) for country in countries for relation in second]
    second_prompts = [second[r]["prompt"].format(bridge=c) for c, r in pairs]
    second_out = generate_texts(backend, [_ids(tok, p) for p in second_prompts], max_new_tokens, progress=progress,
                                desc="second hops")
    second_ok = {pair: mentions(out, countries[pair[0]][pair[1]]) for pair, out in zip(pairs, second_out)}

    statements = []
    for (subject, bridge), ok in zip(first["facts"], first_ok):
        if not ok:
            continue
        for relation, spec in second.items():
            if not second_ok[(bridge, relation)]:
                continue
            prompt = spec["compose"].format(subject=subject)
            statements.append({"subject": subject, "bridge": bridge, "relation": relation, "prompt": prompt,
                               "aliases": countries[bridge]["aliases"], "answers": countries[bridge][relation]})
    answers = generate_texts(backend, [_ids(tok, s["prompt"]) for s in statements], max_new_tokens, progress=progress,
                             desc="two-hop answers")
    for statement, out in zip(statements, answers):
        statement["model_answer"] = out
        statement["two_hop_correct"] = mentions(out, statement["answers"])
        statement["bridge_in_answer"] = mentions(out, statement["aliases"])
    return {"statements": statements,
            "first_hop_correct": sum(first_ok) / len(first_ok),
            "second_hop_correct": sum(second_ok.values()) / len(second_ok),
            "n_two_hop_correct": sum(s["two_hop_correct"] for s in statements)}


def positions_after_subject(tokenizer, statement: dict) -> list[int]:
    """Token positions from the subject's last token to the end of the prompt."""
    prompt = statement["prompt"]
    end = prompt.index(statement["subject"]) + len(statement["subject"])
    last_subject = len(_ids(tokenizer, prompt[:end])) - 1
    total = len(_ids(tokenizer, prompt))
    return list(range(last_subject, total))


def bridge_vectors(backend, statements: list[dict], layers: list[int]) -> tuple[torch.Tensor, list[dict]]:
    """Residual stream after each layer at each position past the subject, minus that layer's mean
    over all rows. Returns vectors (R, len(layers), d) and one {statement, position} per row."""
    tok = backend.tokenizer
    rows, ids, positions = [], [], []
    for index, statement in enumerate(statements):
        prompt_ids = _ids(tok, statement["prompt"])
        for position in positions_after_subject(tok, statement):
            rows.append({"statement": index, "position": position})
            ids.append(prompt_ids)
            positions.append(position)
    sites = [Site("resid_post", layer) for layer in layers]
    vectors = torch.cat([backend.capture(ids[k:k + 32], sites, positions[k:k + 32]) for k in range(0, len(ids), 32)])
    return vectors - vectors.mean(0, keepdim=True), rows


def bridge_hit_rates(explainer, statements, vectors, rows, layers, samples: int = 5, scale: float = 1.0,
                     seed: int = 0) -> dict:
    """Hit rate by layer: the fraction of statements with a label naming the bridge entity."""
    sampling = Sampling(temperature=0.7, top_p=0.9, max_new_tokens=20, seed=seed)
    by_layer, examples = {}, {}
    for j, layer in enumerate(layers):
        records = explainer.explain(vectors[:, j], scales=(scale,), sampling=sampling, samples=samples, progress=False)
        hits = set()
        for record in records:
            statement = statements[rows[int(record["id"])]["statement"]]
            if mentions(record["label"], statement["aliases"]):
                hits.add(rows[int(record["id"])]["statement"])
        by_layer[layer] = len(hits) / len(statements)
        examples[layer] = [r["label"] for r in records[:: samples * 3][:6]]
    return {"hit_rate": by_layer, "examples": examples}
