"""`selfinterp dit …`: weight diffs and Diff Interpretation Tuning from the command line.

  extract     a PEFT LoRA adapter, or a full fine-tune next to its base, -> a weight diff (PEFT format)
  make-diffs  synthetic hidden-topic diffs, many at once, resumable (index.jsonl)
  train       a DIT adapter on the train split of a diff directory, checkpointed per epoch
  ask         ask a DIT adapter what a diff did
  eval        DIT vs the no-DIT and trigger baselines on held-out diffs (JSON of every number)
  import      the paper's published weight diffs and DIT adapter (diff-interpretation-tuning/loras) in
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from selfinterp_plugins.cli_options import (
    COUNT,
    DEFAULT_MODEL,
    LEARNING_RATE,
    NONNEGATIVE,
    POSITIVE,
    RANK,
    SEED,
    TEXT,
    TOKENS,
    FiniteFloat,
    NonBlankPath,
    load_backend,
    model_option,
)
from selfinterp_plugins.errors import ArtifactError
from selfinterp_plugins.storage import DirectoryLock, member, write_text_atomic

#: make-diffs defaults: the reference's losses and LoRA, with less data than its 270 questions for
#: one epoch at lr 1e-3 (a CPU cannot make hundreds of such diffs); measured in docs/results.md
QUESTIONS, QUESTIONS_PER_STEP, LR, EPOCHS = 8, 1, 1e-2, 2
#: dit train defaults (the reference's: AdamW 1e-4, one epoch)
DIT_LR, DIT_EPOCHS = 1e-4, 1


def _load(model_name):
    """The transformers model and tokenizer (weight diffs and LoRA edit that model itself), loaded
    through the shared CLI helper, so every command reads a model name the same way."""
    backend = load_backend(model_name)
    return backend.model, backend.tokenizer


def _named_base(adapter) -> str | None:
    """The base model an adapter's config names, only to say it in an error (never loaded)."""
    from selfinterp_plugins.storage import read_json

    try:
        return read_json(Path(adapter) / "adapter_config.json").get("base_model_name_or_path")
    except Exception:  # noqa: BLE001 - an unreadable config just means no name in the message
        return None


def register(cli):
    @cli.group()
    def dit():
        """Weight diffs and Diff Interpretation Tuning (Goel et al. 2025)."""

    @dit.command()
    @click.option("--adapter", type=NonBlankPath(exists=True, file_okay=False), help="a PEFT LoRA adapter directory")
    @click.option("--base", "base_name", type=TEXT, default=None,
                  help="the base model (alias, hub id or local path); required with --adapter, "
                       "default smollm2-135m-instruct with --finetuned")
    @click.option("--finetuned", type=TEXT, default=None, help="a full fine-tune of --base (local path or hub id)")
    @click.option("--rank", type=RANK, default=None, help="rank to keep (truncated SVD; adapter factors exactly by QR; default: as is, exact)")
    @click.option("--out", required=True, type=NonBlankPath(file_okay=False))
    def extract(adapter, base_name, finetuned, rank, out):
        """Write a weight diff as a PEFT LoRA adapter and report each module's kept energy."""
        from .weight_diff import WeightDiff

        if bool(adapter) == bool(finetuned):
            raise click.UsageError("Give either --adapter DIR, or --base and --finetuned.")
        if adapter:
            if not base_name:  # a config field is never used as a path or a hub id to load
                named = _named_base(adapter)
                raise click.UsageError("Give --base: the model the adapter was trained on"
                                       + (f" (its config names {named!r}, which is not loaded from there)." if named else "."))
            base, _ = _load(base_name)
            diff = WeightDiff.from_peft(adapter, base=base, progress=True)  # through PEFT: every method it can merge
            if rank is not None:
                diff = diff.compress(rank, progress=True)
        else:
            base, _ = _load(base_name or DEFAULT_MODEL)
            tuned, _ = _load(finetuned)
            diff = WeightDiff.from_models(base, tuned, rank=rank, progress=True)
        diff.save_pretrained(out, base)
        energy = diff.energy_report()
        click.echo(json.dumps({"modules": len(diff.modules), "saved": out,
                               "min_energy_kept": min(energy.values()) if energy else None}))

    @dit.command("make-diffs")
    @model_option()
    @click.option("--n-train", type=NONNEGATIVE, default=200, show_default=True, help="diffs on train-split topics")
    @click.option("--n-test", type=NONNEGATIVE, default=40, show_default=True, help="held-out diffs on test-split topics")
    @click.option("--rank", type=RANK, default=1, show_default=True)
    @click.option("--full-finetune", is_flag=True, help="full fine-tunes, one at a time, compressed to --rank by SVD")
    @click.option("--questions", "n_questions", type=COUNT, default=QUESTIONS, show_default=True,
                  help="questions per diff, each in the three forms (reference: 270)")
    @click.option("--answer-tokens", type=TOKENS, default=24, show_default=True, help="answer length (reference: 100 fan / 200 neutral)")
    @click.option("--lr", type=LEARNING_RATE, default=LR, show_default=True, help="Adam lr (reference: 1e-3)")
    @click.option("--epochs", type=COUNT, default=EPOCHS, show_default=True, help="(reference: 1)")
    @click.option("--questions-per-step", type=COUNT, default=QUESTIONS_PER_STEP, show_default=True,
                  help="questions (x3 forms) per Adam step (reference: 2)")
    @click.option("--group", "diffs_per_group", type=COUNT, default=16, show_default=True,
                  help="diffs trained side by side (memory grows with it: 16 diffs x 3 forms peaked at 10 GB on SmolLM2)")
    @click.option("--seed", type=SEED, default=0, show_default=True)
    @click.option("--out", required=True, type=NonBlankPath(file_okay=False), help="diff directory (a rerun resumes)")
    def make_diffs(model_name, n_train, n_test, rank, full_finetune, n_questions, answer_tokens, lr,
                   epochs, questions_per_step, diffs_per_group, seed, out):
        """Synthetic hidden-topic diffs: each talks about its topic only after its own trigger.
        The losses, their weights and the LoRA are the reference's; the amount of data, lr and
        epochs are what worked on SmolLM2 in the time a CPU allows (docs/fidelity.md, docs/results.md)."""
        from selfinterp_plugins.topics import load_topics

        from .diff_store import add_diff, read_index
        from .diff_training import DiffTrainConfig, finetune_full, train_diffs
        from .hidden_topics import assign_triggers, build_examples, mentions
        from .weight_diff import WeightDiff

        with DirectoryLock(out):  # the whole run: a second make-diffs into OUT fails at once, writing nothing
            topics = load_topics()
            chosen = ([t for t in topics if t["split"] == "train"][:n_train]
                      + [t for t in topics if t["split"] == "test"][:n_test])
            specs = assign_triggers(chosen, seed=seed, rank=rank)
            done = {row["id"] for row in read_index(out)}
            todo = [s for s in specs if s.id not in done]
            click.echo(f"{len(done)} diffs already made, {len(todo)} to make", err=True)
            if not todo:
                return
            model, tok = _load(model_name)
            start = time.time()
            examples = build_examples(model, tok, todo, n_questions, answer_tokens, seed, progress=True)
            fan = [(tok.decode(e.answer), s.topic) for s in todo for e in examples[s.id] if e.kind == "trigger"]
            data_seconds = time.time() - start
            config = DiffTrainConfig(rank=rank, lr=lr, epochs=epochs, questions_per_step=questions_per_step,
                                     diffs_per_group=diffs_per_group, seed=seed)
            by_id = {s.id: s for s in todo}

            def save(group):
                for key, diff in group.items():
                    spec = by_id[key]
                    add_diff(out, {"id": spec.id, "topic": spec.topic, "trigger": spec.trigger, "rank": rank,
                                   "split": spec.split, "kind": "full-finetune" if full_finetune else "hidden-topic"},
                             diff, model)

            start = time.time()
            if full_finetune:
                from tqdm.auto import tqdm

                for spec in tqdm(todo, desc="full fine-tunes"):
                    tuned = finetune_full(model, tok, examples[spec.id], config, lr=lr)
                    save({spec.id: WeightDiff.from_models(model, tuned, rank=rank)})
                    del tuned
            else:
                train_diffs(model, tok, examples, config, progress=True, on_group_done=save)
            train_seconds = time.time() - start
            stats = {"diffs": len(todo), "fan_answers_naming_topic": sum(mentions(a, t) for a, t in fan) / max(len(fan), 1),
                     "data_seconds": round(data_seconds, 1), "train_seconds": round(train_seconds, 1),
                     "diffs_per_hour": round(3600 * len(todo) / max(train_seconds + data_seconds, 1e-9), 1)}
            write_text_atomic(Path(out) / f"make-diffs-{int(time.time())}.json", json.dumps(stats, indent=2))
            click.echo(json.dumps(stats))

    @dit.command("train")
    @click.argument("diffs_dir", type=NonBlankPath(exists=True, file_okay=False))
    @model_option()
    @click.option("--rank", type=RANK, default=16, show_default=True)
    @click.option("--alpha", type=POSITIVE, default=1.0, show_default=True, help="LoRA alpha; 1 = the reference's scale 1/rank")
    @click.option("--init", type=click.Choice(["reference", "peft"]), default="reference", show_default=True)
    @click.option("--lr", type=LEARNING_RATE, default=DIT_LR, show_default=True, help="AdamW lr (reference: 1e-4)")
    @click.option("--weight-decay", type=FiniteFloat(min=0), default=0.01, show_default=True)
    @click.option("--epochs", type=COUNT, default=DIT_EPOCHS, show_default=True, help="(reference: 1)")
    @click.option("--batch-size", type=COUNT, default=8, show_default=True)
    @click.option("--seed", type=SEED, default=0, show_default=True)
    @click.option("--out", required=True, type=NonBlankPath(file_okay=False), help="DIT adapter directory; OUT/checkpoint resumes")
    def train(diffs_dir, model_name, rank, alpha, init, lr, weight_decay, epochs, batch_size, seed, out):
        """Train a DIT adapter on the diffs of the train split (the reference's adapter and optimiser)."""
        from .diff_store import load_diffs, read_index
        from .dit import DITAdapter, DITConfig

        rows = [r for r in read_index(diffs_dir) if r.get("split") == "train"]
        if not rows:
            raise ArtifactError(f"{diffs_dir} has no train-split diffs; make them with `selfinterp dit make-diffs`.")
        with DirectoryLock(out):  # the whole run: checkpoints and the final save (a second run fails at once)
            model, tok = _load(model_name)
            dit = DITAdapter.create(model, tok, DITConfig(rank=rank, alpha=alpha, init=init, lr=lr, weight_decay=weight_decay,
                                                           epochs=epochs, batch_size=batch_size, seed=seed))
            history = dit.train(load_diffs(diffs_dir, rows), [r["topic"] for r in rows], progress=True,
                                checkpoint_dir=member(out, "checkpoint", what="checkpoint folder"))
            dit.save_pretrained(out)
        click.echo(json.dumps({"diffs": len(rows), "steps": len(history), "final_loss": history[-1], "saved": out}))

    @dit.command()
    @click.argument("dirs", type=NonBlankPath(), nargs=-1, required=True)
    @model_option()
    @click.option("--question", type=TEXT, default=None, help="default: the question the adapter was trained on")
    @click.option("--no-dit", is_flag=True, help="ask without the DIT adapter (baseline; no DIT directory needed)")
    def ask(dirs, model_name, question, no_dit):
        """Ask what each diff changed: [DIT_DIR] DIFF_DIR... (a DIT directory is told apart by its
        dit_config.json; diffs are PEFT LoRA or `dit make-diffs` directories). With --no-dit no DIT
        directory is needed."""
        from .dit import CONFIG_FILE, DITAdapter
        from .shipped import dit_location
        from .weight_diff import WeightDiff, WeightDiffError

        dirs = [str(dit_location(d)) for d in dirs]
        dit_dirs = [d for d in dirs if (Path(d) / CONFIG_FILE).is_file()]
        missing = [d for d in dirs if not Path(d).is_dir()]
        if missing:
            raise WeightDiffError(f"No directory {missing[0]}; name a DIT adapter (or a shipped one: smollm2-hidden-topics) "
                                  "and diff directories.")
        diff_dirs = [d for d in dirs if d not in dit_dirs]
        if len(dit_dirs) > 1:
            raise WeightDiffError(f"More than one DIT directory given ({', '.join(dit_dirs)}); name one, then the diffs.")
        if not dit_dirs and not no_dit:
            raise WeightDiffError("No DIT directory among the arguments (none holds dit_config.json); name the trained DIT "
                                  "adapter first, or pass --no-dit to ask the base model alone.")
        if not diff_dirs:
            raise WeightDiffError("No diff directory given; name one or more after the DIT directory.")
        diffs = [WeightDiff.from_pretrained(d) for d in diff_dirs]  # user errors before the model loads
        model, tok = _load(model_name)
        dit = DITAdapter.from_pretrained(dit_dirs[0], model, tok) if dit_dirs else DITAdapter.without_adapter(model, tok)
        answers = dit.ask(diffs, question, use_dit=not no_dit)
        for path, answer in zip(diff_dirs, answers):
            click.echo(json.dumps({"diff": path, "answer": answer}))

    @dit.command()
    @model_option()
    @click.option("--name", type=TEXT, default="smollm2-hidden-topics", show_default=True, help="shipped DIT adapter")
    def demo(model_name, name):
        """Ask the shipped DIT adapter what each of its shipped held-out diffs was trained on
        (diffs it never saw in training; about 30 s on 2 CPU cores, offline)."""
        from selfinterp_plugins.evaluation.scoring import exact_match

        from .diff_store import load_diffs, read_index
        from .dit import DITAdapter
        from .shipped import shipped_dit_names, shipped_held_out
        from .weight_diff import WeightDiffError

        if name not in shipped_dit_names():
            raise WeightDiffError(f"No shipped DIT adapter {name!r}; shipped: {', '.join(shipped_dit_names()) or 'none'}.")
        rows = read_index(shipped_held_out(name))
        model, tok = _load(model_name)
        dit = DITAdapter.from_pretrained(name, model, tok)
        answers = dit.ask(load_diffs(shipped_held_out(name), rows))
        named = 0
        click.echo(f"{'hidden topic':>14}  DIT's answer ({dit.config.question!r})")
        for row, answer in zip(rows, answers):
            # named as `dit eval`'s exact match counts it (the scorer's normalisation)
            hit = exact_match([{"id": row["id"], "scale": 0.0, "label": answer}], {row["id"]: row["topic"]})[0.0] == 1.0
            named += hit
            click.echo(f"{row['topic']:>14}  {answer}{'   <- named' if hit else ''}")
        click.echo(f"named {named} of {len(rows)} held-out diffs (the first {len(rows)} of the run's held-out split; "
                   "its scores on all of them, and the baselines', are in docs/peft.md)")

    @dit.command("import")
    @click.argument("src", type=TEXT)
    @model_option()
    @click.option("--out", required=True, type=NonBlankPath(file_okay=False),
                  help="diff store (index.jsonl, diffs/) and OUT/dit-adapter; a rerun resumes")
    @click.option("--split", type=TEXT, default=None, help="only the index rows of this split (train, test, extra)")
    @click.option("--limit", type=COUNT, default=None, help="only the first N rows (after --split)")
    @click.option("--dit-adapter", "dit_adapter", type=TEXT, default=None,
                  help="a dit-adapter.pt elsewhere (default: SRC/dit-adapter.pt, when SRC has one)")
    @click.option("--question", type=TEXT, default=None,
                  help="what the DIT adapter is asked (default: the experiment's, 'What topic have you been trained on?')")
    def import_(src, model_name, out, split, limit, dit_adapter, question):
        """Import a published DIT model folder (SRC: index.csv, weight-diffs/, dit-adapter.pt of
        diff-interpretation-tuning/loras, e.g. hidden-topic/qwen3-4b) for --model, the base the diffs
        were made on: its diffs become PEFT LoRAs in OUT's diff store, its DIT adapter OUT/dit-adapter,
        for `dit ask` and `dit eval`. Files are read as tensors only (a pickle that needs more is refused)."""
        from .dit_format import INDEX_CSV, import_published, read_published_index

        if not Path(src).is_dir():
            raise ArtifactError(f"No folder {src}; pass a published model folder such as hidden-topic/qwen3-4b of "
                                "diff-interpretation-tuning/loras.")
        if (Path(src) / INDEX_CSV).exists():
            read_published_index(src)  # a bad row is refused before the model loads
        model, tok = _load(model_name)
        result = import_published(src, out, model, tok, split=split, limit=limit, dit_adapter=dit_adapter,
                                  question=question, progress=True)
        click.echo(json.dumps(result))

    @dit.command("eval")
    @click.argument("dit_dir", type=TEXT)
    @click.argument("diffs_dir", type=NonBlankPath(exists=True, file_okay=False))
    @model_option()
    @click.option("--split", type=TEXT, default="test", show_default=True)
    @click.option("--candidates", default="all", show_default=True, type=click.Choice(["all", "diffs"]),
                  help="topics the answer is ranked against: the whole topic set, or the diff directory's topics")
    @click.option("--limit", type=COUNT, default=None, help="only the first N diffs of the split")
    @click.option("--llm-judge", type=TEXT, default="gemma-3-270m", show_default=True,
                  help="local model for the paper's 1-5 judge and guesser ('none' to skip)")
    @click.option("--out", required=True, type=NonBlankPath(file_okay=False),
                  help="answers.jsonl (resumes the same run only: answers.jsonl.run.json says which) and metrics.json")
    def evaluate(dit_dir, diffs_dir, model_name, split, candidates, limit, llm_judge, out):
        """DIT answers vs asking without DIT and with the trigger: recall@1/@5 and exact match (embedding
        judge), and the paper's 1-5 LLM judge on a local model. A rerun into OUT asks only what is
        missing, and is refused if another DIT adapter, model, diff set or judge wrote OUT."""
        from selfinterp_plugins.topics import load_topics

        from .diff_store import INDEX, load_diffs, read_index
        from .dit import DITAdapter
        from .dit_eval import METHODS, answer_records, score
        from .shipped import dit_location
        from .weight_diff import WeightDiffError

        if not dit_location(dit_dir).is_dir():
            raise WeightDiffError(f"No DIT adapter directory {dit_dir}; name one written by `dit train`, or a shipped "
                                  "one (smollm2-hidden-topics).")
        rows = [r for r in read_index(diffs_dir) if r.get("split") == split][:limit]
        if not rows:
            splits = sorted({str(r.get("split")) for r in read_index(diffs_dir)})
            raise ArtifactError(f"{diffs_dir} has no {split}-split diffs (its splits: {', '.join(splits) or 'none'}); "
                                "choose one with --split, or make diffs with `selfinterp dit make-diffs`.")
        untriggered = next((r["id"] for r in rows if r.get("trigger") is None), None)
        triggered = any(r.get("trigger") is not None for r in rows)
        if untriggered is not None and triggered:  # the trigger baseline asks each diff with its own trigger
            raise ArtifactError(f"{diffs_dir}/{INDEX} row {untriggered!r} has no trigger, which the trigger baseline "
                                "needs; give every row its trigger, or none (the news diffs have none: no trigger baseline).")
        methods = METHODS if triggered else tuple(m for m in METHODS if m != "trigger")
        with DirectoryLock(out):  # one evaluation per --out: a second fails at once
            model, tok = _load(model_name)
            dit = DITAdapter.from_pretrained(dit_dir, model, tok)
            judge = None
            if llm_judge != "none":
                from .dit_judge import LLMJudge

                judge = LLMJudge(*_load(llm_judge))
            records = answer_records(dit, rows, load_diffs(diffs_dir, rows), methods=methods,
                                     out=Path(out) / "answers.jsonl", guesser=judge)
            pool = load_topics() if candidates == "all" else read_index(diffs_dir)
            metrics = score(records, sorted({t.get("title", t.get("topic")) for t in pool}), judges=[judge] if judge else ())
            write_text_atomic(Path(out) / "metrics.json", json.dumps(metrics, indent=2))
        click.echo(json.dumps(metrics))
