"""The three task families of the LoRA-tuned explainer, as examples and metrics.

- `feature_descriptions`: a `VectorLabelDataset` (topic vectors, SAE features with labels); scored
  like the adapters (recall@k by embedding retrieval over all labels, exact match), so the two can
  be compared on the same vectors.
- `activation_patching` / `input_ablation`: rows of `act_patch_task` / `input_ablation_task` (ours
  or the published Transluce ones); scored by exact match and changed/unchanged F1, next to the
  trivial baselines (always "unchanged", the majority answer, a rule per layer / hinted letter).
- `shuffled_vectors`: the control that tells reading the vector from reading the prompt.
"""

from __future__ import annotations

import random
import re
from collections import Counter

from selfinterp_plugins.errors import ArtifactError, OptionError

from . import act_patch_task, input_ablation_task
from .causal_targets import UNCHANGED, causal_metrics, parse_causal

TASKS = ("feature_descriptions", "activation_patching", "input_ablation")
#: the reference's published choices per task (Transluce's configs; docs/fidelity.md): feature
#: descriptions and input ablation are FULL fine-tunes, activation patching a LoRA (r 128); learning
#: rate, batch size and epochs as configured; prompts in the form its explainers got (chat for the
#: instruct explainer of features and hints, raw base-model strings for activation patching); the
#: evaluators' answer budgets (20 tokens for descriptions, 50 for exact match)
TASK_DEFAULTS = {
    "feature_descriptions": {"finetune": "full", "lr": 5e-5, "batch_size": 64, "epochs": 10, "prompt_format": "chat",
                             "max_new_tokens": 20},
    "activation_patching": {"finetune": "lora", "rank": 128, "lr": 5e-5, "batch_size": 32, "epochs": 20,
                            "prompt_format": "raw", "max_new_tokens": 50},
    "input_ablation": {"finetune": "full", "lr": 1e-5, "batch_size": 8, "epochs": 30, "prompt_format": "chat",
                       "max_new_tokens": 50},
}


def feature_examples(explainer, dataset, seed: int = 0):
    """One example per row; the layer from the record, else the dataset's metadata."""
    rng = random.Random(seed)
    layer = dataset.meta.get("layer")
    return [explainer.feature_example(v, r["label"], r.get("layer", layer if layer is not None else 0), rng, id=r["id"])
            for v, r in zip(dataset.vectors, dataset.records)]


def patching_examples(explainer, rows: list[dict], seed: int = 0):
    """One example per row, each with the five paraphrases (one drawn now, one per training epoch
    with `paraphrases="per_pass"`). A row whose continuation holds the explainer's EOS token is
    refused: the reference drops those rows (`act_patch_task.drop_eos_rows` first)."""
    rng = random.Random(seed)
    out = []
    ending = "\n" if explainer.config.prompt_format == "raw" else ""  # the reference's base-model strings end in a newline
    for n, row in enumerate(rows):
        if act_patch_task.holds_eos(row, explainer.tokenizer):
            raise ArtifactError(f"Activation-patching row {n} continues with the EOS token, which the reference drops; "
                                "pass the rows through act_patch_task.drop_eos_rows(rows, tokenizer) first.")
        prompts = tuple(p + ending for p in act_patch_task.explainer_prompts(row, "{feature}", explainer.tokenizer))
        layer = row["layer"] if not isinstance(row["layer"], (list, tuple)) else row["layer"][0]
        out.append(explainer.vector_example(rng.choice(prompts), row["patch_position"]["intervention_vector"],
                                            act_patch_task.target_text(row, explainer.tokenizer), layer, paraphrases=prompts))
    return out


def ablation_examples(explainer, rows: list[dict]):
    out = []
    for row in rows:
        system, user = (m["content"] for m in input_ablation_task.explainer_messages(row))
        out.append(explainer.text_example(user, input_ablation_task.target_text(row), system))
    return out


def _target(task: str, row: dict, tokenizer) -> str:
    if task == "activation_patching":
        return act_patch_task.target_text(row, tokenizer)
    return input_ablation_task.target_text(row)


def _unchanged_answer(task: str, row: dict, tokenizer) -> str:
    """"Unchanged", with the model's true original output (what a rule could at best say)."""
    if task == "activation_patching":  # the row with its patch undone
        return act_patch_task.target_text(dict(row, ablated_continuation=row["original_continuation"]), tokenizer)
    return UNCHANGED.format(token="Answer: " + str(row["random_hint_prediction"]).strip())


def rule_group(task: str, row: dict):
    """The covariate a rule can read off the explainer's prompt without any vector or model run:
    the patched layer (activation patching), the hinted letter (input ablation)."""
    if task == "activation_patching":
        return str(row["layer"])
    if row.get("hint"):
        return str(row["hint"])
    letters = re.findall(r"\(([A-Z])\)", row["hint_user_prompt"].rsplit("\n", 1)[-1])
    return letters[-1] if letters else None


def causal_baselines(examples, rows: list[dict], task: str, train_rows: list[dict] | None = None, tokenizer=None) -> dict:
    """What trivial answers score on held-out `examples` (built from `rows`), each fitted on
    `train_rows` (on the held-out rows themselves if none are given):
    - always "unchanged", with the true original output (its exact match is the unchanged fraction);
    - the most frequent training answer;
    - a rule per group (`rule_group`: layer / hinted letter): "changed" to the group's most frequent
      new output if most of the group's training rows change, else "unchanged" with the true
      original. When this rule matches the explainer, the explainer has not shown it reads more
      than the layer or the hint letter.
    `tokenizer`: the explainer's, which writes activation-patching continuations as text (required there)."""
    if task == "activation_patching" and tokenizer is None:
        raise OptionError("Activation-patching baselines need the explainer's tokenizer to write the continuations; "
                          "pass tokenizer=explainer.tokenizer.")
    if len(examples) != len(rows):
        raise ArtifactError(f"{len(examples)} examples for {len(rows)} rows; build the examples from these rows "
                            "(after act_patch_task.drop_eos_rows, if you dropped any).")
    targets = [ex.answer for ex in examples]
    train_rows = train_rows or rows
    train_targets = [_target(task, r, tokenizer) for r in train_rows]
    majority = Counter(train_targets).most_common(1)[0][0]
    groups: dict = {}
    for row, target in zip(train_rows, train_targets):
        groups.setdefault(rule_group(task, row), []).append(target)
    rule = []
    for row in rows:
        group = groups.get(rule_group(task, row), train_targets)
        changed = [t for t in group if parse_causal(t)[0]]
        rule.append(Counter(changed).most_common(1)[0][0] if 2 * len(changed) > len(group) else _unchanged_answer(task, row, tokenizer))
    return {"always_unchanged": causal_metrics([_unchanged_answer(task, r, tokenizer) for r in rows], targets),
            "majority_answer": causal_metrics([majority] * len(targets), targets), "majority_answer_text": majority,
            "rule_by_group": causal_metrics(rule, targets)}


def shuffled_vectors(examples, seed: int = 0):
    """The vector-ablation control: the same examples with each vector swapped for another
    example's vector of the same subject layer (a derangement within each layer wherever the layer
    has two or more distinct examples). What survives this swap is what the explainer gets from the
    prompt and the layer, not from the vector."""
    from dataclasses import replace

    rng = random.Random(seed)
    by_layer: dict = {}
    for i, ex in enumerate(examples):
        if ex.vector is not None:
            by_layer.setdefault(ex.subject_layer, []).append(i)
    out = list(examples)
    for indices in by_layer.values():
        if len(indices) < 2:
            continue
        shift = rng.randrange(1, len(indices))  # a rotation of a shuffled order moves every vector
        order = indices[:]
        rng.shuffle(order)
        for source, target in zip(order, order[shift:] + order[:shift]):
            out[target] = replace(examples[target], vector=examples[source].vector)
    return out


def metrics_by_layer(answers: list[str], examples) -> dict:
    """The causal metrics per subject layer: where the task is easy from the layer alone, it shows."""
    groups: dict = {}
    for answer, ex in zip(answers, examples):
        groups.setdefault(ex.subject_layer, ([], []))
        groups[ex.subject_layer][0].append(answer)
        groups[ex.subject_layer][1].append(ex.answer)
    return {str(layer): causal_metrics(*groups[layer]) for layer in sorted(groups, key=lambda x: (x is None, x))}


def feature_metrics(predictions: list[str], dataset, candidates: list[str] | None = None) -> dict:
    from selfinterp_plugins.evaluation.scoring import exact_match, recall_at_k

    records = [{"id": r["id"], "scale": 1.0, "label": p} for r, p in zip(dataset.records, predictions)]
    truth = {r["id"]: r["label"] for r in dataset.records}
    recall = recall_at_k(records, truth, candidates or sorted(set(truth.values())))[1.0]
    return {"recall@1": recall[1], "recall@5": recall[5], "exact_match": exact_match(records, truth)[1.0], "n": len(records)}


class LoRATask:
    """What `register_tasks` publishes for each family: a fresh explainer and the examples of a task."""

    def __init__(self, name: str):
        if name not in TASKS:
            raise ValueError(f"unknown task {name}")
        self.name = name

    def __repr__(self) -> str:
        return f"LoRATask({self.name!r})"

    def create(self, model, tokenizer, config=None):
        """A fresh explainer; with no config, the reference's settings for this task (`TASK_DEFAULTS`)."""
        from .config import LoRAExplainerConfig
        from .explainer import LoRAExplainer

        return LoRAExplainer.create(model, tokenizer, config or LoRAExplainerConfig(**TASK_DEFAULTS[self.name]))

    def examples(self, explainer, data, seed: int = 0):
        """`data`: a VectorLabelDataset (feature descriptions) or schema rows (the causal tasks)."""
        if self.name == "feature_descriptions":
            return feature_examples(explainer, data, seed)
        if self.name == "activation_patching":
            return patching_examples(explainer, data, seed)
        return ablation_examples(explainer, data)
