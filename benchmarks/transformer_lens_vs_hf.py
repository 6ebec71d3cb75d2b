"""The transformer_lens backend (SmolLM2 through TransformerBridge) against the hf backend on the
same weights: explaining 64 held-out topic vectors with the shipped explainer (greedy, <= 30
tokens) and one training step (batch 32). Prints TL time / hf time.

    python benchmarks/transformer_lens_vs_hf.py [--n 64] [--repeat 3]
"""

from __future__ import annotations

import argparse

from _common import SHIPPED, machine, median_time, shipped_setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from transformer_lens.model_bridge import TransformerBridge

    from selfinterp_plugins import Explainer, Sampling
    from selfinterp_plugins.models import default_cache_root

    model, tokenizer, hf, data = shipped_setup(args.n)
    bridge = TransformerBridge.boot_transformers(str(default_cache_root() / "smollm2-135m-instruct"), hf_model=model,
                                                 tokenizer=tokenizer)
    tl = Explainer.from_pretrained(SHIPPED, model=bridge, tokenizer=tokenizer)
    sampling = Sampling(max_new_tokens=30)
    vectors, labels = data.vectors, data.labels

    def explain(explainer):
        return lambda: explainer.explain(vectors, sampling=sampling, batch_size=64, progress=False)

    def step(explainer):
        def run():
            explainer.adapter.zero_grad(set_to_none=True)
            explainer.loss(vectors[:32], labels[:32]).backward()
        return run

    same = sum(a["label"] == b["label"] for a, b in zip(explain(tl)(), explain(hf)()))
    print(f"machine: {machine()}")
    print(f"{args.n} vectors; identical greedy labels through both backends: {same}/{args.n}")
    for name, make in (("explain", explain), ("training step", step)):
        t_hf = median_time(make(hf), args.repeat)
        t_tl = median_time(make(tl), args.repeat)
        print(f"{name:>14}: hf {t_hf:6.2f} s, transformer_lens {t_tl:6.2f} s -> TL/hf = {t_tl / t_hf:.2f}x")


if __name__ == "__main__":
    main()
