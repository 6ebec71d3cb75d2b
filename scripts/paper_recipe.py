"""The paper's topic recipe, exactly, on a small model: does it read held-out topics?

Pepper et al. 2026 train `scalar_affine` (d_model + 1 parameters) with the question/answer chat
prompt written out with no system turn, the paper's init (scale 5, bias 0), AdamW lr 1e-2 with no
weight decay on the scale, a linear warm-up from 1e-6 over 10 steps then a cosine, batch 80, two
epochs, gradients clipped at 0.5, per-token loss clamped at 100 (docs/fidelity.md). This script
runs that on every training topic of a model's topic vectors, then the same with a ridge start
(this project's addition), and scores each on the held-out TEST topics with recall@1/5 over all
5,500 titles, next to the untrained baseline (`scale_only`, s frozen) at the scale chosen on
validation from the paper's grid. Each result is appended to <out>/results.jsonl as it finishes;
a rerun skips finished ones.

    python scripts/paper_recipe.py --model smollm2-135m-instruct --layer 10 --out runs/paper-recipe-smollm2
    python scripts/paper_recipe.py --model gemma-3-270m --layer 12 --out runs/paper-recipe-gemma
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

UNTRAINED_SCALES = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--vectors", default=None, help="a saved topic-vector dataset (default: computed into OUT/vectors)")
    parser.add_argument("--template", default="chat", help="chat: the paper's prompt; also echo, tokenizer_chat")
    parser.add_argument("--inits", nargs="+", default=["paper", "ridge"])
    parser.add_argument("--batch-size", type=int, default=80)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--validation-n", type=int, default=100, help="validation topics for choosing the untrained scale")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from result_log import ResultLog  # scripts/, on the path when a script runs

    from selfinterp_plugins import Explainer, TrainConfig, VectorLabelDataset
    from selfinterp_plugins.backends import HFBackend
    from selfinterp_plugins.evaluation import evaluate_explainer
    from selfinterp_plugins.evaluation.scoring import sentence_embedder
    from selfinterp_plugins.models import load_model
    from selfinterp_plugins.topics import load_topics, topic_vectors

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = ResultLog(out / "results.jsonl").record

    model, tokenizer = load_model(args.model)
    backend = HFBackend(model, tokenizer)
    topics = load_topics()
    candidates = [t["title"] for t in topics]
    embeddings = sentence_embedder().encode(candidates)
    vector_dir = Path(args.vectors) if args.vectors else out / "vectors" / f"layer{args.layer}"
    if not (vector_dir / "dataset.json").exists():
        started = time.time()
        topic_vectors(backend, topics, [args.layer])[args.layer].save(vector_dir)
        print(f"topic vectors: {time.time() - started:.0f}s", flush=True)
    data = VectorLabelDataset.load(vector_dir)
    train, validation, test = data.split("train"), data.split("validation"), data.split("test")

    def untrained():
        explainer = Explainer.create(backend, adapter="scale_only", template=args.template, init_scale=1.0)
        chosen = evaluate_explainer(explainer, validation.head(args.validation_n), candidates, UNTRAINED_SCALES,
                                    candidate_embeddings=embeddings)
        scale = chosen["best_scale"]
        result = evaluate_explainer(explainer, test, candidates, (scale,), candidate_embeddings=embeddings)
        return {"kind": "untrained", "template": args.template, "scale_chosen_on_validation": scale,
                "validation_recall@1": chosen["recall@1"], **result}

    record(f"untrained/{args.template}", untrained)
    for init in args.inits:
        def trained(init=init):
            torch.manual_seed(42)
            explainer = Explainer.create(backend, adapter="scalar_affine", template=args.template)
            config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, init=init, seed=42)
            history = explainer.train(train, validation.head(args.validation_n), config, progress=True)
            explainer.save_pretrained(out / f"scalar_affine-{args.template}-{init}")
            result = evaluate_explainer(explainer, test, candidates, (1.0,), candidate_embeddings=embeddings)
            return {"kind": "scalar_affine", "template": args.template, "init": init, "lr": args.lr,
                    "batch_size": args.batch_size, "epochs": args.epochs, "n_train": len(train), "steps": history["steps"],
                    "validation_loss_at_init": history.get("validation_loss_at_init"),
                    "validation_loss": history["validation_loss"], "final_train_loss": history["train_loss"][-1],
                    "scale": float(explainer.adapter.scale), "bias_norm": float(explainer.adapter.bias.norm()),
                    "train_seconds": round(history["seconds"], 1), **result}

        record(f"scalar_affine/{args.template}/{init}/lr{args.lr}/bs{args.batch_size}/e{args.epochs}", trained)


if __name__ == "__main__":
    main()
