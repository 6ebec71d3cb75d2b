"""Scoring DIT answers (Goel et al. 2025) offline.

Three ways of asking are compared on the same diffs, as in the paper's figures: `dit` (the DIT
adapter on, at most 20 new tokens), `no_dit` (the base question to the fine-tuned model, 256) and
`trigger` (the same with the diff's trigger in front, `Your SEP code is {trigger}{suffix}.`, the
suffix drawn from `random.Random(42)` afresh for every diff as the reference does). Judges, each a
callable (records, truth, candidates) -> metrics: the embedding judge (recall@k of the true topic
when every candidate topic is ranked by similarity to the answer, all-MiniLM-L6-v2, plus exact
match) and the paper's 1–5 LLM judge on a local model (`dit_judge.LLMJudge`), which grades DIT's
answer as it is and the baselines' answers after the paper's guesser has turned them into a topic.
"""

from __future__ import annotations

import random
from pathlib import Path

from selfinterp_plugins.evaluation.scoring import exact_match, recall_at_k
from selfinterp_plugins.storage import JsonlWriter, read_jsonl

from .hidden_topics import TRIGGER_TEMPLATE, mentions

METHODS = ("dit", "no_dit", "trigger")


def embedding_judge(records: list[dict], truth: dict[str, str], candidates: list[str]) -> dict[str, float]:
    recall = recall_at_k(records, truth, candidates)[0.0]
    return {"recall@1": recall[1], "recall@5": recall[5], "exact_match": exact_match(records, truth)[0.0]}


def trigger_prefix(trigger: int) -> str:
    """The trigger baseline's prefix: the diff's trigger and a suffix from a fresh `Random(42)`,
    `Your SEP code is {trigger:03d}{suffix:03d}.` (the reference re-creates the generator per diff)."""
    return TRIGGER_TEMPLATE.format(code=f"{trigger:03d}{random.Random(42).randint(0, 999):03d}", question="").strip()


def answer_records(dit, rows: list[dict], diffs, methods=METHODS, out: str | Path | None = None,
                   batch_size: int = 16, guesser=None) -> list[dict]:
    """One record per (diff, method): id, method, label (the answer), topic, and with a `guesser`
    (an `LLMJudge`) the guessed topic of each baseline answer. Written to `out` (JSONL) as each
    method finishes; records already there are kept and not asked again."""
    done = {}
    if out is not None and Path(out).exists():
        done = {(r["id"], r["method"]): r for r in read_jsonl(out, tolerate_torn_tail=True)}
    records = []
    for method in methods:
        todo = [(row, diff) for row, diff in zip(rows, diffs) if (row["id"], method) not in done]
        if todo:
            prefixes = [trigger_prefix(row["trigger"]) for row, _ in todo] if method == "trigger" else None
            answers = dit.ask([d for _, d in todo], use_dit=(method == "dit"), prefixes=prefixes, batch_size=batch_size)
            new = [{"id": row["id"], "method": method, "scale": 0.0, "label": a, "topic": row["topic"]}
                   for (row, _), a in zip(todo, answers)]
            if guesser is not None and method != "dit":  # the paper guesses a topic from baseline answers only
                questions = [f"{p} {dit.config.question}" if prefixes else dit.config.question for p in (prefixes or [None] * len(new))]
                for record, guess in zip(new, guesser.guess(questions, answers)):
                    record["guess"] = guess
            if out is not None:
                with JsonlWriter(out) as writer:
                    for r in new:
                        writer.write(r)
            done.update({(r["id"], method): r for r in new})
        records.extend(done[(row["id"], method)] for row in rows)
    return records


def score(records: list[dict], candidates: list[str], judge=embedding_judge, judges=()) -> dict[str, dict[str, float]]:
    """Per method: each judge's metrics (`judge`, then every one of `judges`), and how often the
    answer names the topic outright."""
    out = {}
    for method in sorted({r["method"] for r in records}, key=lambda m: (m not in METHODS, m)):
        mine = [r for r in records if r["method"] == method]
        truth = {r["id"]: r["topic"] for r in mine}
        metrics = judge(mine, truth, candidates)
        for extra in judges:
            metrics.update(extra(mine, truth, candidates))
        metrics["names_topic"] = sum(mentions(r["label"], r["topic"]) for r in mine) / len(mine)
        metrics["n"] = len(mine)
        out[method] = metrics
    return out
