"""`selfinterp lora-explainer …`: explainers fine-tuned on their own computations (Li et al. 2025).

  make-data  activation-patching or input-ablation rows run on the subject model (train / test by
             topic split), in the published Transluce schema, resumable per split file
  train      an explainer (LoRA or full fine-tune, the reference's choice per task) on one task's
             train rows (or a VectorLabelDataset's train split), checkpointed per epoch, resumable
  eval       answers on held-out rows, the task's metrics next to its trivial baselines (JSON)
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from selfinterp_plugins.cli_options import (
    COUNT,
    LEARNING_RATE,
    MODEL_HELP,
    NONNEGATIVE,
    RANK,
    SEED,
    TEXT,
    TOKENS,
    LayerRange,
    NonBlankPath,
    check_layers,
    load_backend,
    model_option,
)
from selfinterp_plugins.storage import DirectoryLock, member, output_errors, write_text_atomic

from .tasks import TASK_DEFAULTS, TASKS


def _load(model_name):
    """The transformers model and tokenizer (weight diffs and LoRA edit that model itself), loaded
    through the shared CLI helper, so every command reads a model name the same way."""
    backend = load_backend(model_name)
    return backend.model, backend.tokenizer


def _rows(task: str, path):
    from . import act_patch_task, input_ablation_task
    from .causal_targets import read_task_rows

    check = act_patch_task.check_row if task == "activation_patching" else input_ablation_task.check_row
    return read_task_rows(path, check)


def _data(task: str, path, split: str, tokenizer=None):
    """Task data of one split: a VectorLabelDataset split, or the rows of `<path>/<split>.jsonl`
    (or of a single file holding every split); activation-patching rows whose continuation holds
    `tokenizer`'s EOS token dropped, as the reference drops them, and counted on stderr."""
    rows = _split_rows(task, path, split)
    if task == "activation_patching" and tokenizer is not None:
        from .act_patch_task import drop_eos_rows

        kept = drop_eos_rows(rows, tokenizer)
        if len(kept) < len(rows):
            click.echo(f"{split}: dropped {len(rows) - len(kept)} of {len(rows)} rows whose continuation holds the EOS token "
                       "(as the reference does)", err=True)
        rows = kept
    return rows


def _split_rows(task: str, path, split: str):
    if task == "feature_descriptions":
        from selfinterp_plugins.datasets import VectorLabelDataset

        return VectorLabelDataset.load(path).split(split)
    path = Path(path)
    if path.is_dir():
        return _rows(task, path / f"{split}.jsonl")
    rows = _rows(task, path)
    chosen = [r for r in rows if r.get("split", split) == split]
    if not chosen:
        from selfinterp_plugins.errors import ArtifactError

        raise ArtifactError(f"No rows of split {split!r} in {path}; its rows need a 'split' field.")
    return chosen


#: make-data's manifest keys -> the option that sets each, for the one-line refusal
MAKE_DATA_FLAGS = {"task": "--task", "n_train": "--n-train", "n_test": "--n-test", "layers": "--layers", "seed": "--seed"}


def _make_data(task, model_name, n_train, n_test, layers: range, seed, out):
    """The rows of each split not yet written. `--layers` is checked against the model's depth
    from its config first (no weights read), then on the loaded model where no config was at hand.
    A split's rows are all computed before its file is written, whole and atomically, so a kill
    leaves the file complete or absent (an earlier version's leftover `<split>.partial` was
    appended to, doubling its rows, and is discarded). A split file beside its
    `<split>.jsonl.run.json` is kept only for the same task, model, dtype, row count, layers and
    seed; other settings are refused in one line."""
    from selfinterp_plugins.models import layer_count
    from selfinterp_plugins.storage import check_output_run, model_dtype
    from selfinterp_plugins.topics import load_topics

    from . import act_patch_task, input_ablation_task

    patching = task == "activation_patching"
    chosen = list(layers) if patching else None
    if patching:
        check_layers(layers, layer_count(model_name))
    backend = load_backend(model_name)
    if patching:
        check_layers(layers, backend.n_layers)
    for split, n in (("train", n_train), ("test", n_test)):
        path = out / f"{split}.jsonl"
        run = {"task": task, "model_fingerprint": backend.fingerprint(), "model_dtype": model_dtype(backend),
               f"n_{split}": n, "layers": chosen, "seed": seed}
        check_output_run(path, run, path.exists(), MAKE_DATA_FLAGS)
        if path.exists():
            click.echo(f"{path} exists (the same settings); skipped", err=True)
            continue
        with output_errors(path):
            path.with_suffix(".partial").unlink(missing_ok=True)
        topics = [t for t in load_topics() if t["split"] == split]
        if patching:
            pairs = act_patch_task.counterfactual_pairs(topics, n, seed=seed)
            rows = act_patch_task.patching_rows(backend, pairs, chosen, seed=seed, progress=True)
        else:
            rows = input_ablation_task.ablation_rows(backend, input_ablation_task.build_questions(topics, n, seed), progress=True)
        write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        changed = sum(bool(r.get("is_different", r.get("changed_pred_bc_hint"))) for r in rows)
        click.echo(json.dumps({"split": split, "rows": len(rows), "changed": changed, "file": str(path)}))


def register(cli):
    @cli.group("lora-explainer")
    def lora_explainer():
        """LoRA-tuned explainers: feature descriptions, activation patching, input ablation."""

    @lora_explainer.command("make-data")
    @click.option("--task", type=click.Choice(["activation_patching", "input_ablation"]), required=True)
    @model_option(f"the subject model: {MODEL_HELP}")
    @click.option("--n-train", type=NONNEGATIVE, default=600, show_default=True)
    @click.option("--n-test", type=NONNEGATIVE, default=150, show_default=True)
    @click.option("--layers", type=LayerRange(), default="0:30:3", show_default=True,
                  help="patched layers, start:stop:step (activation patching)")
    @click.option("--seed", type=SEED, default=0, show_default=True)
    @click.option("--out", required=True, type=NonBlankPath(file_okay=False), help="writes train.jsonl and test.jsonl")
    def make_data(task, model_name, n_train, n_test, layers, seed, out):
        """Run the real patches / hinted questions on the subject model; targets are what it does."""
        out = Path(out)
        with DirectoryLock(out):  # one writer: a second make-data into the same --out fails at once
            _make_data(task, model_name, n_train, n_test, layers, seed, out)

    @lora_explainer.command()
    @click.option("--task", type=click.Choice(TASKS), required=True)
    @click.option("--data", required=True, type=NonBlankPath(exists=True), help="make-data directory, rows file, or dataset")
    @model_option(f"the explainer model: {MODEL_HELP}")
    @click.option("--finetune", type=click.Choice(["lora", "full"]), default=None,
                  help="default: the reference's for the task (full: features, input ablation; lora: activation patching)")
    @click.option("--rank", type=RANK, default=None, help="LoRA rank (reference: 128)")
    @click.option("--lr", type=LEARNING_RATE, default=None, help="default: the reference's for the task (5e-5; 1e-5 input ablation)")
    @click.option("--epochs", type=NONNEGATIVE, default=None,
                  help="default: the reference's (10 / 20 / 30); 0 saves the start (with --projection ridge: the ridge start alone)")
    @click.option("--batch-size", type=COUNT, default=None, help="default: the reference's (64 / 32 / 8)")
    @click.option("--prompt-format", type=click.Choice(["chat", "raw"]), default=None,
                  help="default: the reference's (raw base-model strings for activation patching, chat otherwise)")
    @click.option("--loss-reduction", type=click.Choice(["padded", "token"]), default="padded", show_default=True,
                  help="padded: the reference's (Σ answer CE / padded length); token: mean per answer token")
    @click.option("--shuffle/--no-shuffle", default=False, show_default=True, help="the reference keeps data order")
    @click.option("--chat-prompt", type=click.Choice(["template", "user_turn"]), default="template", show_default=True,
                  help="template: the reference's (the chat template's own rendering: system header, Qwen3's empty think "
                       "block); user_turn: one written-out user turn")
    @click.option("--paraphrases", type=click.Choice(["per_pass", "per_example"]), default="per_pass", show_default=True,
                  help="per_pass: the reference's (a question paraphrase drawn anew each epoch); per_example: drawn once")
    @click.option("--limit", type=COUNT, default=None, help="first N training examples only")
    @click.option("--projection", type=click.Choice(["auto", "ridge"]), default="auto", show_default=True,
                  help="auto: the vector as is (Transluce); ridge: a ridge-initialised projection per layer, trained too")
    @click.option("--seed", type=SEED, default=0, show_default=True)
    @click.option("--out", required=True, type=NonBlankPath(file_okay=False), help="explainer directory; OUT/checkpoint resumes")
    def train(task, data, model_name, finetune, rank, lr, epochs, batch_size, prompt_format, loss_reduction, shuffle,
              chat_prompt, paraphrases, limit, projection, seed, out):
        """Fine-tune an explainer on one task's training data; unset options take the reference's
        value for the task."""
        from selfinterp_plugins.plugins import get_task

        from .config import LoRAExplainerConfig

        with DirectoryLock(out):  # the whole run: checkpoints and the final save (a second run fails at once)
            model, tok = _load(model_name)
            family = get_task(task)
            given = {"finetune": finetune, "rank": rank, "lr": lr, "epochs": epochs, "batch_size": batch_size,
                     "prompt_format": prompt_format}
            settings = {**TASK_DEFAULTS[task], **{k: v for k, v in given.items() if v is not None}}
            config = LoRAExplainerConfig(**settings, seed=seed, projection=projection, loss_reduction=loss_reduction,
                                         shuffle=shuffle, chat_prompt=chat_prompt, paraphrases=paraphrases)
            explainer = family.create(model, tok, config)
            examples = family.examples(explainer, _data(task, data, "train", tok), seed)[:limit]
            history = explainer.train(examples, progress=True, checkpoint_dir=member(out, "checkpoint", what="checkpoint folder"))
            explainer.save_pretrained(out)
        click.echo(json.dumps({"examples": len(examples), "steps": len(history), "first_loss": history[0] if history else None,
                               "last_loss": history[-1] if history else None, "finetune": config.finetune, "saved": out}))

    @lora_explainer.command("eval")
    @click.argument("explainer_dir", type=NonBlankPath(exists=True, file_okay=False))
    @click.option("--task", type=click.Choice(TASKS), required=True)
    @click.option("--data", required=True, type=NonBlankPath(exists=True))
    @click.option("--split", type=TEXT, default="test", show_default=True)
    @model_option()
    @click.option("--limit", type=COUNT, default=None)
    @click.option("--max-new-tokens", type=TOKENS, default=None, help="answer length limit (default: the explainer's)")
    @click.option("--control", type=click.Choice(["none", "shuffled-vectors"]), default="none", show_default=True,
                  help="shuffled-vectors: each vector swapped for another held-out example's of the same layer")
    @click.option("--published", type=TEXT, default=None, metavar="HUB_ID",
                  help="EXPLAINER_DIR is this Transluce explainer as downloaded (e.g. Transluce/act_patch_qwen3_8b_qwen3_8b); "
                       "--model is its base")
    @click.option("--out", required=True, type=NonBlankPath(dir_okay=False), help="results JSON (answers in OUT.answers.jsonl)")
    def evaluate(explainer_dir, task, data, split, model_name, limit, max_new_tokens, control, published, out):
        """Held-out answers and metrics, next to the task's trivial baselines."""
        from selfinterp_plugins.plugins import get_task

        from .explainer import LoRAExplainer
        from .tasks import causal_baselines, feature_metrics, metrics_by_layer, shuffled_vectors

        if published:
            from .transluce import published as published_spec

            if published_spec(published).task != task:
                raise click.UsageError(f"{published} explains {published_spec(published).task}; pass --task "
                                       f"{published_spec(published).task}.")
        model, tok = _load(model_name)
        if published:
            from .transluce import load_transluce

            explainer = load_transluce(explainer_dir, model, tok, published)
        else:
            explainer = LoRAExplainer.from_pretrained(explainer_dir, model, tok)
        held_out = _data(task, data, split, tok)
        if task == "feature_descriptions":
            held_out = held_out.head(limit)
            candidates = sorted(set(__import__("selfinterp_plugins").VectorLabelDataset.load(data).labels))
        else:
            held_out = held_out[:limit]
        examples = get_task(task).examples(explainer, held_out)
        if control == "shuffled-vectors":
            if task == "input_ablation":
                raise click.UsageError("input_ablation examples hold no vector; --control shuffled-vectors does not apply.")
            examples = shuffled_vectors(examples)
        answers = explainer.generate(examples, max_new_tokens=max_new_tokens)
        with output_errors(Path(out).parent):
            Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(f"{out}.answers.jsonl", "".join(json.dumps({"target": ex.answer, "answer": a}) + "\n"
                                                          for ex, a in zip(examples, answers)))
        if task == "feature_descriptions":
            result = {"lora_explainer": feature_metrics(answers, held_out, candidates)}
        else:
            from .causal_targets import causal_metrics

            result = {"lora_explainer": causal_metrics(answers, [ex.answer for ex in examples]),
                      **causal_baselines(examples, held_out, task, _data(task, data, "train", tok), tok)}
            if task == "activation_patching":
                result["lora_explainer_by_layer"] = metrics_by_layer(answers, examples)
        result["control"] = control
        write_text_atomic(out, json.dumps(result, indent=2) + "\n")
        click.echo(json.dumps(result, indent=2))
