"""An explainer for words in context (issue 27 §1): train, choose on validation, report on test.

Vectors (`selfinterp_plugins.in_context`): resid_post at a word's own last token in sentence
templates and chat prompts, minus the training rows' mean, labelled with the word (a topic title).
Words are split as the topic benchmark splits topics and templates are split too, so a test vector
is a held-out word in a held-out sentence. Stages, each appended to `<out>/results.jsonl` as it
finishes (a rerun skips what is there; vectors are cached under `<out>/vectors/<split>`):
 1. vectors per split (--train-words words x --train-templates templates each; one validation / test
    template per word);
 2. each setting (--settings) trained on every training row, scored on --eval-n validation rows, saved
    under <out>/explainers;
 3. the shipped topic explainer and the ridge probe on the same validation rows (the ship decision);
 4. the setting best on validation, then on the TEST rows (touched once): it, the ridge probe (ridge
    chosen on validation), the shipped topic explainer on the same vectors and on the raw vectors
    minus its own topic mean;
 5. --ship DIR: save the chosen explainer there only if it beat both on validation.

    python scripts/in_context.py --out runs/in-context
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from result_log import ResultLog  # scripts/, on the path when a script runs

from selfinterp_plugins import Explainer, TrainConfig, VectorLabelDataset
from selfinterp_plugins.backends import HFBackend
from selfinterp_plugins.evaluation import evaluate_explainer, ridge_probe_recall
from selfinterp_plugins.evaluation.scoring import sentence_embedder
from selfinterp_plugins.in_context import in_context_vectors
from selfinterp_plugins.models import load_model
from selfinterp_plugins.topics import load_topics

#: (name, adapter kind, TrainConfig options) tried on the small training set
SETTINGS = {
    "full_rank/ridge/lr1e-3": ("full_rank", {"init": "ridge", "lr": 1e-3, "epochs": 1}),
    "full_rank/ridge/lr3e-4": ("full_rank", {"init": "ridge", "lr": 3e-4, "epochs": 1}),
    "scalar_affine/ridge/lr1e-2": ("scalar_affine", {"init": "ridge", "lr": 1e-2, "epochs": 1}),
    "full_rank/ridge-only": ("full_rank", {"init": "ridge", "lr": 1e-3, "epochs": 0}),
}

DEFAULT_SETTINGS = ["full_rank/ridge-only", "full_rank/ridge/lr1e-3", "scalar_affine/ridge/lr1e-2"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/in-context")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--layer", type=int, default=10, help="the shipped topic explainer's layer")
    parser.add_argument("--train-words", type=int, default=800)
    parser.add_argument("--train-templates", type=int, default=2, help="training templates per training word")
    parser.add_argument("--validation-words", type=int, default=200)
    parser.add_argument("--test-words", type=int, default=150)
    parser.add_argument("--eval-n", type=int, default=100, help="validation rows scored per setting")
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, choices=list(SETTINGS))
    parser.add_argument("--ship", default=None, help="package-data directory to ship the explainer to if it wins")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = ResultLog(out / "results.jsonl", quiet=("examples", "per_scale")).record

    backend = HFBackend(*load_model(args.model))
    topics = load_topics({"train": args.train_words, "validation": args.validation_words,
                          "test": args.test_words})
    all_titles = [t["title"] for t in load_topics()]  # retrieval among all 5,500 titles, as the topic benchmark
    candidate_embeddings = sentence_embedder().encode(all_titles)

    # 1. vectors: the training rows first, whose mean centres every split
    data = {}
    for split, count in (("train", args.train_templates), ("validation", 1), ("test", 1)):
        directory = out / "vectors" / split
        if not (directory / "dataset.json").exists():
            started = time.time()
            mean = torch.tensor(data["train"].meta["mean"]) if split != "train" else None
            chosen = [t for t in topics if t["split"] == split]
            in_context_vectors(backend, chosen, args.layer, {split: count}, seed=args.seed, mean=mean,
                               progress=True).save(directory)
            print(f"{split}: {len(chosen) * count} vectors in {time.time() - started:.0f}s", flush=True)
        data[split] = VectorLabelDataset.load(directory)
    train, val, test = data["train"], data["validation"], data["test"]
    val_eval = val.head(args.eval_n)

    def evaluate(explainer, rows):
        return evaluate_explainer(explainer, rows, all_titles, (1.0,), candidate_embeddings=candidate_embeddings)

    def trained(kind, options, rows):
        explainer = Explainer.create(backend, adapter=kind, template="echo")
        history = explainer.train(rows, val.head(100), TrainConfig(seed=args.seed, **options), progress=False)
        return explainer, {"kind": kind, **options, "n_train": len(rows), "train_seconds": round(history["seconds"], 1),
                           "validation_loss_at_init": history.get("validation_loss_at_init"),
                           "validation_loss": history["validation_loss"]}

    # 2. each setting on the training rows, scored on the validation rows, saved
    grid = {}
    for name in args.settings:
        kind, options = SETTINGS[name]
        saved = out / "explainers" / name.replace("/", "_")

        def run_setting(kind=kind, options=options, saved=saved, name=name):
            explainer, info = trained(kind, options, train)
            result = {"setting": name, **info, **evaluate(explainer, val_eval)}
            explainer.metadata.update(
                templates="selfinterp_plugins.in_context.TEMPLATES", setting=name,
                command="python scripts/in_context.py " + " ".join(sys.argv[1:]),
                result={k: result[k] for k in ("recall@1", "recall@5", "exact_match", "n")}, result_split="validation")
            explainer.save_pretrained(saved)
            return result
        grid[name] = record(f"setting/{name}/validation", run_setting)
    best_name = max(grid, key=lambda n: grid[n]["recall@1"])
    final_val = grid[best_name]

    # 3. what it must beat, on the same validation rows
    shipped = Explainer.from_pretrained("smollm2-topics", model=backend)
    shipped_val = record("shipped-topic-explainer/validation", lambda: evaluate(shipped, val_eval))
    probe_val = record("ridge-probe/validation", lambda: ridge_probe_recall(
        train, val_eval, all_titles, validation=val, candidate_embeddings=candidate_embeddings))

    # 4. the held-out test rows, once, for the chosen setting and what it is compared with
    final = Explainer.from_pretrained(out / "explainers" / best_name.replace("/", "_"), model=backend)
    record("test/in-context-explainer", lambda: {"setting": best_name, **evaluate(final, test)})
    record("test/ridge-probe", lambda: ridge_probe_recall(
        train, test, all_titles, validation=val, candidate_embeddings=candidate_embeddings))
    record("test/shipped-topic-explainer", lambda: evaluate(shipped, test))
    raw = torch.tensor(test.meta["mean"]) + test.vectors  # the raw activations, for the shipped explainer's own centring
    record("test/shipped-topic-explainer-own-mean", lambda: evaluate(
        shipped, VectorLabelDataset(shipped.prepare_vectors(raw, site=f"resid_post.{args.layer}"), test.records, test.meta)))

    # 5. ship only a winner on validation
    wins = final_val["recall@1"] > max(shipped_val["recall@1"], probe_val["recall@1"])
    print(f"validation recall@1: in-context {final_val['recall@1']:.3f}, shipped {shipped_val['recall@1']:.3f}, "
          f"probe {probe_val['recall@1']:.3f}: {'wins' if wins else 'does not win'}", flush=True)
    if args.ship and wins:
        final.save_pretrained(args.ship)  # the storage layer's atomic writers
        print(f"shipped to {args.ship}")


if __name__ == "__main__":
    main()
