"""The nnsight backend (SmolLM2 wrapped in nnsight's LanguageModel) against the hf backend on the
same weights: explaining 64 held-out topic vectors with the shipped explainer (greedy, <= 30
tokens) and one training step (batch 32), run here; then the same through nnsight's remote path
rehearsed offline (`remote="local"`: the request is serialised exactly as for NDIF, deserialised
and run here), and the size of that serialised request for a scalar-affine and a full-rank adapter.

    python benchmarks/nnsight_vs_hf.py [--n 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import warnings

from _common import SHIPPED, machine, median_time, shipped_setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    from nnsight import LanguageModel

    from selfinterp_nnsight.requests import request_sizes
    from selfinterp_plugins import Explainer, Sampling

    model, tokenizer, hf, data = shipped_setup(args.n)
    nn = Explainer.from_pretrained(SHIPPED, model=LanguageModel(model, tokenizer=tokenizer))
    sampling = Sampling(max_new_tokens=30)
    vectors, labels = data.vectors, data.labels

    def explain(explainer, remote=None):
        return lambda: explainer.explain(vectors, sampling=sampling, batch_size=64, progress=False, remote=remote)

    def step(explainer, remote=None):
        def run():
            explainer.adapter.zero_grad(set_to_none=True)
            with explainer._remote(remote):
                explainer.loss(vectors[:32], labels[:32]).backward()
        return run

    same = sum(a["label"] == b["label"] for a, b in zip(explain(nn)(), explain(hf)()))
    print(f"machine: {machine()}")
    print(f"{args.n} vectors; identical greedy labels through both backends: {same}/{args.n}")
    for name, make in (("explain", explain), ("training step", step)):
        t_hf = median_time(make(hf), args.repeat)
        t_nn = median_time(make(nn), args.repeat)
        t_local = median_time(make(nn, "local"), args.repeat)
        print(f"{name:>14}: hf {t_hf:6.2f} s, nnsight {t_nn:6.2f} s -> nnsight/hf = {t_nn / t_hf:.2f}x; "
              f"remote='local' {t_local:6.2f} s -> {t_local / t_hf:.2f}x")
    for kind, sizes in request_sizes(model, tokenizer, vectors[:32], labels[:32]).items():
        print(f"serialised request, {kind:>13} ({sizes['adapter_floats']:>7} floats): "
              + ", ".join(f"{verb} {size:,} bytes" for verb, size in sizes["bytes"].items()))


if __name__ == "__main__":
    main()
