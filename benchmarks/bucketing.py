"""Length-bucketed training batches vs plain shuffled ones on SmolLM2 topic vectors (layer 10,
ridge-initialised full-rank, echo template): training wall time, and validation recall@1, so a
speed-up that costs quality would show.

    python benchmarks/bucketing.py [--train 1000] [--epochs 1] [--eval-n 200]

Topic vectors come from runs/topic_benchmark/vectors/layer10 when scripts/topic_benchmark.py
has been run, and are computed otherwise.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import machine

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--eval-n", type=int, default=200)
    parser.add_argument("--layer", type=int, default=10)
    args = parser.parse_args()

    from selfinterp_plugins import Explainer, TrainConfig, VectorLabelDataset
    from selfinterp_plugins.backends import HFBackend
    from selfinterp_plugins.evaluation import evaluate_explainer
    from selfinterp_plugins.evaluation.scoring import sentence_embedder
    from selfinterp_plugins.models import load_model
    from selfinterp_plugins.topics import load_topics, topic_vectors

    model, tokenizer = load_model("smollm2-135m-instruct")
    backend = HFBackend(model, tokenizer)
    topics = load_topics()
    cached = ROOT / "runs" / "topic_benchmark" / "vectors" / f"layer{args.layer}"
    if (cached / "dataset.json").exists():
        data = VectorLabelDataset.load(cached)
    else:
        data = topic_vectors(backend, topics, [args.layer], progress=False)[args.layer]
    train, validation = data.split("train").head(args.train), data.split("validation").head(args.eval_n)
    candidates = [t["title"] for t in topics]
    candidate_embeddings = sentence_embedder().encode(candidates)

    print(f"machine: {machine()}")
    print(f"{len(train)} training topics, {args.epochs} epoch(s), batch 32; recall@1 on {len(validation)} validation topics")
    for bucket in (False, True):
        explainer = Explainer.create(backend, adapter="full_rank", template="echo", site="embed")
        config = TrainConfig(epochs=args.epochs, init="ridge", bucket_by_length=bucket)
        start = time.perf_counter()
        explainer.train(train, config=config, progress=False)
        seconds = time.perf_counter() - start
        scores = evaluate_explainer(explainer, validation, candidates, (1.0,), candidate_embeddings=candidate_embeddings)
        print(f"bucket_by_length={bucket!s:<5}: training {seconds:6.1f} s, validation recall@1 {scores['recall@1']:.3f}")


if __name__ == "__main__":
    main()
