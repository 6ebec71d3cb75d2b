"""One batched, left-padded nnsight trace against one trace per prompt (what docs/nnsight.md said
to do before): the same vectors, and how much faster. docs/performance.md has the numbers.

    python benchmarks/batched_trace.py --n 96
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from selfinterp_plugins import Explainer
from selfinterp_plugins.models import load_model
from selfinterp_plugins.topics import load_topics

from _common import SHIPPED, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=96, help="held-out topics (prompts)")
    args = parser.parse_args()
    from nnsight import TransformersModel

    warnings.simplefilter("ignore")
    model, tokenizer = load_model("smollm2-135m-instruct")
    lm = TransformersModel(model, tokenizer=tokenizer)
    explainer = Explainer.from_pretrained(SHIPPED, model=lm)
    titles = [t["title"] for t in load_topics() if t["split"] == "test"][: args.n]
    prompts = [explainer.vector_prompt(title, tokenize=True) for title in titles]

    start = time.perf_counter()
    single = []
    for ids in prompts:
        with lm.trace(torch.tensor([ids])):
            hidden = lm.model.layers[10].output.save()
        single.append(explainer.prepare_vectors(hidden, site="resid_post.10"))
    single = torch.cat(single)
    t_single = time.perf_counter() - start

    start = time.perf_counter()
    batch = tokenizer.pad({"input_ids": prompts}, padding_side="left", return_tensors="pt")
    with lm.trace(dict(batch)):
        hidden = lm.model.layers[10].output.save()
    batched = explainer.prepare_vectors(hidden, site="resid_post.10", pos=-1, attention_mask=batch["attention_mask"])
    t_batched = time.perf_counter() - start

    lengths = sorted({len(p) for p in prompts})
    diff = float((single - batched).abs().max())
    labels_single = [r["label"] for r in explainer.explain(single, progress=False)]
    labels_batched = [r["label"] for r in explainer.explain(batched, progress=False)]
    same = sum(a == b for a, b in zip(labels_single, labels_batched))
    print(f"# {machine()}")
    print(f"{len(prompts)} prompts of {lengths[0]}-{lengths[-1]} tokens, resid_post.10 of SmolLM2-135M-Instruct, fp32")
    print(f"one trace per prompt: {t_single:.2f} s; one left-padded trace: {t_batched:.2f} s; "
          f"ratio {t_single / t_batched:.1f}x")
    print(f"largest difference between the vectors: {diff:.3g} (vector norms ~{float(single.norm(dim=-1).median()):.3g}); "
          f"greedy labels equal: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
