"""Scoring DIT answers (ANCHORS.md §4) offline.

The paper judges each answer 1–5 against the true topic with a strong LLM. Offline, answers are
scored as the topic benchmark scores labels: recall@k of the true topic when every candidate topic
is ranked by embedding similarity to the answer (all-MiniLM-L6-v2), plus exact match. Any scorer
registered under the `register_scorers` hook with the (records, truth, candidates) signature can
take its place (`judge=`). Three ways of asking are compared on the same diffs:
`dit` (the DIT adapter on), `no_dit` (the base question to the fine-tuned model), and `trigger`
(the fine-tuned model asked with its own trigger in front, no DIT).
"""

from __future__ import annotations

import random
from pathlib import Path

from selfinterp_plugins.scoring import exact_match, recall_at_k
from selfinterp_plugins.serialization import JsonlWriter, read_jsonl

from .hidden_topics import TRIGGER_TEMPLATE, mentions, trigger_code

METHODS = ("dit", "no_dit", "trigger")


def embedding_judge(records: list[dict], truth: dict[str, str], candidates: list[str]) -> dict[str, float]:
    recall = recall_at_k(records, truth, candidates)[0.0]
    return {"recall@1": recall[1], "recall@5": recall[5], "exact_match": exact_match(records, truth)[0.0]}


def answer_records(dit, rows: list[dict], diffs, methods=METHODS, out: str | Path | None = None,
                   batch_size: int = 16, seed: int = 0) -> list[dict]:
    """One record per (diff, method): id, method, label (the answer), topic. Written to `out`
    (JSONL) as each method finishes; records already there are kept and not asked again."""
    done = {}
    if out is not None and Path(out).exists():
        done = {(r["id"], r["method"]): r for r in read_jsonl(out, tolerate_torn_tail=True)}
    rng = random.Random(seed)
    records = []
    for method in methods:
        todo = [(row, diff) for row, diff in zip(rows, diffs) if (row["id"], method) not in done]
        if todo:
            prefixes = None
            if method == "trigger":
                prefixes = [TRIGGER_TEMPLATE.format(code=trigger_code(row["trigger"], rng), question="").strip()
                            for row, _ in todo]
            answers = dit.ask([d for _, d in todo], use_dit=(method == "dit"), prefixes=prefixes, batch_size=batch_size)
            new = [{"id": row["id"], "method": method, "scale": 0.0, "label": a, "topic": row["topic"]}
                   for (row, _), a in zip(todo, answers)]
            if out is not None:
                with JsonlWriter(out) as writer:
                    for r in new:
                        writer.write(r)
            done.update({(r["id"], method): r for r in new})
        records.extend(done[(row["id"], method)] for row in rows)
    return records


def score(records: list[dict], candidates: list[str], judge=embedding_judge) -> dict[str, dict[str, float]]:
    """Per method: the judge's metrics, and how often the answer names the topic outright."""
    out = {}
    for method in sorted({r["method"] for r in records}, key=lambda m: (m not in METHODS, m)):
        mine = [r for r in records if r["method"] == method]
        truth = {r["id"]: r["topic"] for r in mine}
        metrics = judge(mine, truth, candidates)
        metrics["names_topic"] = sum(mentions(r["label"], r["topic"]) for r in mine) / len(mine)
        metrics["n"] = len(mine)
        out[method] = metrics
    return out
