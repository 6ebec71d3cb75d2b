"""Bridge entities: does self-interpretation reveal what the model computes but never says?

A two-hop statement ("The capital of the country where the Eiffel Tower is located is") needs an
intermediate entity (France) that appears in neither the prompt nor the answer. If labels of the
model's own hidden states name it, the explainer reads a computation the output never shows.

The protocol is the reference's (Pepper et al. 2026, `run_selfie_bridge_extraction.py`; rows of
docs/fidelity.md): the prompt `Complete the statement: {statement}` in the model's chat template;
RAW hidden states (not centred) after every layer in `layers`, at every position from the
statement's first token to the end of the prompt (generation prompt included); each vector is read
by the explainer at scale 1 (the trained adapter with its own normalisation), `samples` times
(T = 0.7, top-p 0.9, top-k 50, <= 20 new tokens, the whole generation kept, not cut at a closing
quote); a sample hits if a word-boundary match of any alias of the bridge appears (the reference's
regex), and a (layer, position) cell scores the fraction of its samples that hit.

The statements are built offline from `data/two_hop_facts.json` (hand-written common knowledge,
not the reference's TwoHopFact): each single hop and each composed statement is asked of the model
in the same chat prompt, and only statements whose hops and answer it gets right, and whose answer
does not name the bridge, are kept.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from importlib import resources

import torch

from ..backends.base import Sampling
from ..sites import Site
from .knowledge import generate_texts

INSTRUCTION = "Complete the statement: "
#: the reference's sampling: generate(temperature=0.7, max_new_tokens=20) with the rest from
#: Llama-3.1's generation config (top-p 0.9) and transformers' defaults (top-k 50)
BRIDGE_SAMPLING = Sampling(temperature=0.7, top_p=0.9, max_new_tokens=20, seed=42, top_k=50)
#: the reference's untrained baseline: the unit vector times 10, in the chat-template prompt
UNTRAINED_SCALE = 10.0


def load_facts() -> dict:
    text = resources.files("selfinterp_plugins").joinpath("data/two_hop_facts.json").read_text(encoding="utf-8")
    return json.loads(text)


def alias_pattern(alias: str) -> str:
    """The reference's pattern for an alias (`check_entity_match`): escaped, every period
    followed by an optional space (`J.D.` matches `J. D.`), between word boundaries."""
    return r"\b" + re.escape(alias).replace(r"\.", r"\.\ ?") + r"\b"


def mentions(text: str, aliases: list[str]) -> bool:
    """Whether `text` names any alias (the reference's regex, case-insensitive)."""
    return any(re.search(alias_pattern(a), text, flags=re.IGNORECASE) for a in aliases)


def prompt_text(tokenizer, statement: str) -> str:
    """`statement` (which starts with the instruction) as the user's turn of the model's chat,
    generation prompt included, as the reference wraps it; raw text for a model without a chat template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": statement}], tokenize=False,
                                             add_generation_prompt=True)
    return (tokenizer.bos_token or "") + statement


def _ids(tokenizer, statement: str) -> list[int]:
    return tokenizer(prompt_text(tokenizer, statement), add_special_tokens=False)["input_ids"]


def build_two_hop(backend, facts: dict | None = None, max_new_tokens: int = 16, progress: bool = False,
                  tokenizer=None) -> dict:
    """Probe every single hop, keep the pairs the model answers right, compose them. `backend`: a
    Backend or any model object `Explainer.create` takes (`tokenizer=` as there).

    Returns {"statements": [...], "first_hop_correct": n/N, "second_hop_correct": n/N, "n_two_hop_correct"}."""
    from ..plugins import backend_for

    backend = backend_for(backend, tokenizer=tokenizer)
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


def statement_positions(tokenizer, statement: dict) -> list[int]:
    """Token positions from the statement's first token (after the instruction) to the end of the
    chat prompt: the reference reads from there (its hard-coded position 34 on Llama-3.1) through
    the generation prompt."""
    text = prompt_text(tokenizer, statement["prompt"])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    start_char = text.index(statement["prompt"]) + (len(INSTRUCTION) if statement["prompt"].startswith(INSTRUCTION) else 0)
    prefix = tokenizer(text[:start_char].rstrip(" "), add_special_tokens=False)["input_ids"]
    if ids[: len(prefix)] != prefix:
        raise ValueError(f"Cannot locate the statement's first token in {text!r}; the tokenizer merges across it.")
    return list(range(len(prefix), len(ids)))


def bridge_vectors(backend, statements: list[dict], layers: list[int], center: bool = False,
                   tokenizer=None) -> tuple[torch.Tensor, list[dict]]:
    """Raw residual stream after each layer at each position of `statement_positions`. Returns
    vectors (R, len(layers), d) and one {statement, position} per row. `center=True` subtracts each
    layer's mean over all rows (this project's protocol before 2026-12-01; the reference reads raw states).
    `backend`: a Backend or any model object `Explainer.create` takes (`tokenizer=` as there)."""
    from ..plugins import backend_for

    backend = backend_for(backend, tokenizer=tokenizer)
    tok = backend.tokenizer
    rows, ids, positions = [], [], []
    for index, statement in enumerate(statements):
        prompt_ids = _ids(tok, statement["prompt"])
        for position in statement_positions(tok, statement):
            rows.append({"statement": index, "position": position})
            ids.append(prompt_ids)
            positions.append(position)
    sites = [Site("resid_post", layer) for layer in layers]
    vectors = torch.cat([backend.capture(ids[k:k + 32], sites, positions[k:k + 32]) for k in range(0, len(ids), 32)])
    return (vectors - vectors.mean(0, keepdim=True) if center else vectors), rows


def whole_generation(explainer):
    """The explainer with generation running to the end of turn (or the token budget) instead of
    stopping at the label's closing quote, and the whole text kept as the label: the reference
    matches aliases anywhere in the 20 generated tokens."""
    from ..explainer import Explainer

    template = replace(explainer.template, closing="", stop_at_closing=False)
    return Explainer(explainer.backend, explainer.adapter, template, explainer.site, explainer.model_id, explainer.metadata)


def bridge_cell_scores(explainer, statements, vectors, rows, layers, samples: int = 10, scale: float = 1.0,
                       sampling: Sampling = BRIDGE_SAMPLING) -> dict:
    """Per layer: every cell's score (the fraction of its samples naming the bridge), and three
    summaries the reference leaves to the reader: `hit_rate` (statements with any hit), `best_cell`
    (mean over statements of their best position's score) and `mean_cell` (mean over all cells)."""
    reader = whole_generation(explainer)
    by_layer, examples = {}, {}
    for j, layer in enumerate(layers):
        records = reader.explain(vectors[:, j], scales=(scale,), sampling=sampling, samples=samples, progress=False)
        hits: dict[int, list[bool]] = {}
        for record in records:
            row = int(record["id"])
            text = reader.backend.tokenizer.decode(reader.backend.tokenizer(record["text"], add_special_tokens=False)["input_ids"],
                                                   skip_special_tokens=True).strip()
            hits.setdefault(row, []).append(mentions(text, statements[rows[row]["statement"]]["aliases"]))
        cells = {row: sum(h) / len(h) for row, h in hits.items()}
        best: dict[int, float] = {}
        for row, score in cells.items():
            index = rows[row]["statement"]
            best[index] = max(best.get(index, 0.0), score)
        by_layer[layer] = {"hit_rate": sum(v > 0 for v in best.values()) / len(statements),
                           "best_cell": sum(best.values()) / len(statements),
                           "mean_cell": sum(cells.values()) / len(cells),
                           "cells": [cells[row] for row in range(len(rows))]}
        examples[layer] = [r["label"] for r in records[:: samples * 3][:6]]
    return {"by_layer": by_layer, "hit_rate": {layer: v["hit_rate"] for layer, v in by_layer.items()},
            "best_cell": {layer: v["best_cell"] for layer, v in by_layer.items()}, "examples": examples}
