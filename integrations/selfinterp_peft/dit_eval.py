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

import json
import random
from dataclasses import asdict
from pathlib import Path

from selfinterp_plugins.evaluation.scoring import exact_match, recall_at_k
from selfinterp_plugins.models import embedding_fingerprint
from selfinterp_plugins.storage import JsonlWriter, check_same_run, read_json, read_jsonl, sha256_hex, write_json

from .hidden_topics import TRIGGER_TEMPLATE, mentions

METHODS = ("dit", "no_dit", "trigger")
#: eval-manifest keys -> what sets them on `selfinterp dit eval`, for the one-line refusal to resume
EVAL_OPTIONS = {"dit_adapter_sha256": "DIT_DIR", "model_fingerprint": "--model", "diffs": "DIFFS_DIR, --split or --limit",
                "guesser": "--llm-judge"}


def embedding_judge(records: list[dict], truth: dict[str, str], candidates: list[str]) -> dict[str, float]:
    recall = recall_at_k(records, truth, candidates)[0.0]
    return {"recall@1": recall[1], "recall@5": recall[5], "exact_match": exact_match(records, truth)[0.0]}


def trigger_prefix(trigger: int) -> str:
    """The trigger baseline's prefix: the diff's trigger and a suffix from a fresh `Random(42)`,
    `Your SEP code is {trigger:03d}{suffix:03d}.` (the reference re-creates the generator per diff)."""
    return TRIGGER_TEMPLATE.format(code=f"{trigger:03d}{random.Random(42).randint(0, 999):03d}", question="").strip()


def diff_sha256(diff) -> str:
    """SHA-256 of what a diff changes: each module's name, scale and tensors (shapes included)."""
    def parts():
        for name in sorted(diff.modules):
            module = diff.modules[name]
            yield json.dumps([name, module.scale])
            for tensor in (module.A, module.B, module.dense, module.bias):
                yield json.dumps(None if tensor is None else list(tensor.shape))
                if tensor is not None:
                    yield tensor

    return sha256_hex(parts())


def dit_sha256(dit) -> str:
    """SHA-256 of a DIT adapter: its config and its LoRA's tensors."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(dit.model)

    def parts():
        yield json.dumps(asdict(dit.config), sort_keys=True)
        for name in sorted(state):
            yield json.dumps([name, list(state[name].shape)])
            yield state[name]

    return sha256_hex(parts())


def eval_run(dit, rows: list[dict], diffs, methods, guesser=None) -> dict:
    """What makes an evaluation's answers what they are, recorded beside them: the DIT adapter's
    digest (weights and config: question, answer lengths), the model, each diff (digest, topic,
    trigger) by id, the methods and the guesser's model."""
    run = {"dit_adapter_sha256": dit_sha256(dit), "model_fingerprint": embedding_fingerprint(dit.model),
           "diffs": {row["id"]: {"sha256": diff_sha256(diff), "topic": row["topic"], "trigger": row.get("trigger")}
                     for row, diff in zip(rows, diffs)},
           "methods": list(methods),
           "guesser": None if guesser is None else {"model_fingerprint": embedding_fingerprint(guesser.model),
                                                    "guess_tokens": guesser.guess_tokens}}
    return json.loads(json.dumps(run))  # JSON-normalised, as read back


def _resumable(out: Path, run: dict) -> dict:
    """The records already in `out`, refused (one line naming the setting) when `out.run.json` says
    another run wrote them; the run is recorded when `out` holds none yet (or predates manifests)."""
    manifest = out.with_name(out.name + ".run.json")
    done = {(r["id"], r["method"]): r for r in read_jsonl(out, tolerate_torn_tail=True)} if out.exists() else {}
    if done and manifest.exists():
        check_same_run(out, read_json(manifest), run, EVAL_OPTIONS)
    if not done or not manifest.exists():
        write_json(run, manifest)
    return done


def answer_records(dit, rows: list[dict], diffs, methods=METHODS, out: str | Path | None = None,
                   batch_size: int = 16, guesser=None) -> list[dict]:
    """One record per (diff, method): id, method, label (the answer), topic, and with a `guesser`
    (an `LLMJudge`) the guessed topic of each baseline answer. Written to `out` (JSONL) as each
    method finishes, with what made them in `out.run.json` (`eval_run`); records already there are
    kept and not asked again, unless another run (another DIT adapter, model, diff or guesser) wrote
    them: then the rerun is refused."""
    done = {} if out is None else _resumable(Path(out), eval_run(dit, rows, diffs, methods, guesser))
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
