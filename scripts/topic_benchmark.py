"""The topic benchmark on SmolLM2-135M-Instruct: the paper's topic experiment at small scale.

Stages (each result is appended to `<out>/results.jsonl` as it finishes; a rerun skips what is
there, so a crash loses at most the stage in progress):
 1. topic vectors at several layers (one forward pass per batch, cached under <out>/vectors);
 2. the ridge-probe ceiling per layer;
 3. the untrained baseline (scale_only, s frozen) over the paper's scale grid, both templates;
 4. the shipped configuration (--final-*: echo template, ridge-initialised full-rank, layer 10, the
    best in the measurements that preceded this library) trained on the full train split and
    evaluated on the held-out TEST split, next to the untrained baseline (template and scale
    chosen on validation) and the ceiling on the same rows; saved as the shipped explainer;
 5. every adapter kind (paper init) plus ridge-initialised full-rank, x both templates, at one layer,
    each at the library's default lr, on a small budget (640 training topics, 1 epoch): does the
    grid agree with the choice in (4)?
 6. the best of (5) at every layer;
 7. the best of (6) at several training-set sizes;
 8. the grid of (5) again at the other learning rate.
Stages 3, 5-8 are scored on the validation split, so no choice is made on the test split.

    python scripts/topic_benchmark.py --out runs/topic_benchmark
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from selfinterp_plugins import Explainer, TrainConfig, VectorLabelDataset
from selfinterp_plugins.backends import HFBackend
from selfinterp_plugins.evaluation import evaluate_explainer, ridge_probe_recall
from selfinterp_plugins.evaluation.scoring import sentence_embedder
from selfinterp_plugins.models import load_model
from selfinterp_plugins.storage import write_text_atomic
from selfinterp_plugins.topics import load_topics, topic_vectors

UNTRAINED_SCALES = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
def kind_lr(kind: str) -> float:
    """The library's default learning rate for an adapter kind (training.default_lr)."""
    return 1e-2 if kind in ("scale_only", "bias_only", "scalar_affine") else 1e-3


KINDS = ("scale_only", "bias_only", "scalar_affine", "low_rank", "scalar_affine_plus_low_rank", "full_rank")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/topic_benchmark")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--layers", type=int, nargs="+", default=[5, 10, 15])
    parser.add_argument("--grid-layer", type=int, default=10)
    parser.add_argument("--grid-train", type=int, default=640, help="training topics for the grid stages")
    parser.add_argument("--grid-epochs", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--eval-n", type=int, default=100, help="validation topics scored per grid entry")
    parser.add_argument("--final-epochs", type=int, default=2)
    parser.add_argument("--ship", default="selfinterp_plugins/data/explainers/smollm2-topics")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--final-layer", type=int, default=10)
    parser.add_argument("--final-template", default="echo")
    parser.add_argument("--final-kind", default="full_rank")
    parser.add_argument("--final-init", default="ridge")
    parser.add_argument("--final-lr", type=float, default=1e-3)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    done = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                done[record["name"]] = record

    def record(name, fn):
        if name in done:
            return done[name]
        started = time.time()
        result = fn()
        result = {"name": name, **result, "seconds": round(time.time() - started, 1)}
        done[name] = result
        # rewritten whole and atomically: an append torn by a kill would stop the next run reading the file
        write_text_atomic(results_path, "".join(json.dumps(r) + "\n" for r in done.values()))
        print(json.dumps({k: v for k, v in result.items() if k not in ("examples", "per_scale")}), flush=True)
        return result

    model, tokenizer = load_model(args.model)
    backend = HFBackend(model, tokenizer)
    topics = load_topics()
    candidates = [t["title"] for t in topics]
    candidate_embeddings = sentence_embedder().encode(candidates)

    # 1. vectors
    vector_dir = out / "vectors"
    datasets: dict[int, VectorLabelDataset] = {}
    missing = [layer for layer in args.layers if not (vector_dir / f"layer{layer}" / "dataset.json").exists()]
    if missing:
        started = time.time()
        for layer, data in topic_vectors(backend, topics, missing).items():
            data.save(vector_dir / f"layer{layer}")
        print(f"topic vectors for layers {missing}: {time.time() - started:.0f}s for {len(topics)} topics", flush=True)
    for layer in args.layers:
        datasets[layer] = VectorLabelDataset.load(vector_dir / f"layer{layer}")

    def splits(layer, n_train=None):
        data = datasets[layer]
        return data.split("train").head(n_train), data.split("validation"), data.split("test")

    def evaluate(explainer, data, scales=(1.0,), n=None):
        return evaluate_explainer(explainer, data.head(n), candidates, scales, candidate_embeddings=candidate_embeddings)

    # 2. ceiling
    for layer in args.layers:
        train, val, test = splits(layer)
        record(f"ceiling/layer{layer}/validation", lambda: ridge_probe_recall(
            train, val.head(args.eval_n), candidates, validation=val, candidate_embeddings=candidate_embeddings))

    # 3. untrained baseline
    for layer in args.layers:
        _, val, _ = splits(layer)
        for template in ("chat", "echo"):
            def untrained():
                explainer = Explainer.create(model, tokenizer, adapter="scale_only", template=template, init_scale=1.0)
                return {"layer": layer, "template": template, "kind": "untrained",
                        **evaluate(explainer, val, UNTRAINED_SCALES, args.eval_n)}
            record(f"untrained/layer{layer}/{template}", untrained)

    def run(layer, kind, template, init, n_train, epochs, lr, n_eval=args.eval_n, test=False, save=None, metadata=None):
        train, val, test_data = splits(layer, n_train)
        explainer = Explainer.create(model, tokenizer, adapter=kind, template=template)
        config = TrainConfig(epochs=epochs, init=init, seed=args.seed, lr=lr)
        history = explainer.train(train, val.head(args.eval_n), config, progress=False)
        result = {"layer": layer, "kind": kind, "template": template, "init": init, "lr": lr, "n_train": len(train),
                  "epochs": epochs, "validation_loss": history["validation_loss"],
                  "validation_loss_at_init": history.get("validation_loss_at_init"),
                  "train_seconds": round(history["seconds"], 1),
                  **evaluate(explainer, test_data if test else val, (1.0,), n_eval)}
        if save:
            explainer.metadata = dict(metadata or {}, result={k: result[k] for k in ("recall@1", "recall@5", "exact_match", "n")})
            explainer.save_pretrained(save)
        return result

    # 4. the shipped configuration: full train split, held-out TEST split, with the untrained baseline
    #    (template and scale chosen on validation) and the ceiling on the same rows
    layer, template, kind, init, lr = args.final_layer, args.final_template, args.final_kind, args.final_init, args.final_lr
    train, val, test = splits(layer)
    base = max((done[f"untrained/layer{layer}/{t}"] for t in ("chat", "echo")), key=lambda r: r["recall@1"])
    record(f"final/untrained/layer{layer}/{base['template']}", lambda: {
        "layer": layer, "template": base["template"], "kind": "untrained", "scale_chosen_on_validation": base["best_scale"],
        **evaluate(Explainer.create(model, tokenizer, adapter="scale_only", template=base["template"], init_scale=1.0),
                   test, (base["best_scale"],))})
    record(f"final/ceiling/layer{layer}", lambda: ridge_probe_recall(train, test, candidates, validation=val,
                                                                      candidate_embeddings=candidate_embeddings))
    record(f"final/trained/layer{layer}/{template}/{kind}/{init}/lr{lr}/full",
           lambda: run(layer, kind, template, init, None, args.final_epochs, lr, n_eval=None, test=True, save=args.ship,
                       metadata={"source": "topics", "layer": layer, "topic_mean": datasets[layer].meta["mean"],
                                 "untrained": {"template": base["template"], "scale": base["best_scale"]},
                                 "command": "python scripts/topic_benchmark.py " + " ".join(sys.argv[1:])}))

    # 5. adapter kinds x templates at the grid layer, each kind at the library's default lr
    configs = [(kind, "paper") for kind in KINDS] + [("full_rank", "ridge")]

    def grid_entry(template, kind, init, lr):
        name = f"grid/layer{args.grid_layer}/{template}/{kind}/{init}/lr{lr}/n{args.grid_train}"
        return record(name, lambda: run(args.grid_layer, kind, template, init, args.grid_train, args.grid_epochs, lr))

    grid = [grid_entry(template, kind, init, kind_lr(kind)) for template in ("echo", "chat") for kind, init in configs]
    best = max(grid, key=lambda r: r["recall@1"])
    kind, template, init, lr = best["kind"], best["template"], best["init"], best["lr"]

    # 6. layers
    by_layer = [best] + [
        record(f"layers/layer{layer}/{template}/{kind}/{init}/lr{lr}/n{args.grid_train}",
               lambda: run(layer, kind, template, init, args.grid_train, args.grid_epochs, lr))
        for layer in args.layers if layer != args.grid_layer
    ]
    layer = max(by_layer, key=lambda r: r["recall@1"])["layer"]

    # 7. training-set size
    for size in args.sizes:
        record(f"sizes/layer{layer}/{template}/{kind}/{init}/lr{lr}/n{size}",
               lambda: run(layer, kind, template, init, size, args.final_epochs, lr))

    # 8. the other learning rate for every grid entry (1e-3 for scalar adapters, 1e-2 for matrix ones)
    for template in ("echo", "chat"):
        for kind, init in configs:
            grid_entry(template, kind, init, 1e-3 if kind_lr(kind) == 1e-2 else 1e-2)


if __name__ == "__main__":
    main()
