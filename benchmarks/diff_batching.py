"""Training many weight diffs at once: one forward + backward of a batch where row i carries its
own rank-1 diff on every linear of SmolLM2's decoder (selfinterp_peft.batched.per_row_diffs),
against the same n rows run one diff at a time. Prints the ratio.

    python benchmarks/diff_batching.py [--n 16] [--tokens 32] [--repeat 3]
"""

from __future__ import annotations

import argparse

import torch

from _common import machine, median_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from selfinterp_peft.batched import per_row_diffs
    from selfinterp_peft.weight_diff import ModuleDiff, WeightDiff, _linear_modules
    from selfinterp_plugins.models import load_model

    model, _ = load_model("smollm2-135m-instruct")
    linears = {n: m for n, m in _linear_modules(model).items() if ".layers." in n}
    g = torch.Generator().manual_seed(0)
    diffs = [WeightDiff({n: ModuleDiff(A=(0.01 * torch.randn(1, m.in_features, generator=g)).requires_grad_(),
                                       B=(0.01 * torch.randn(m.out_features, 1, generator=g)).requires_grad_())
                         for n, m in linears.items()}) for _ in range(args.n)]
    ids = torch.randint(100, 40000, (args.n, args.tokens), generator=g)

    def batched():
        with per_row_diffs(model, diffs):
            model(input_ids=ids).logits.float().logsumexp(-1).mean().backward()

    def one_at_a_time():
        for i, diff in enumerate(diffs):
            with per_row_diffs(model, [diff]):
                model(input_ids=ids[i : i + 1]).logits.float().logsumexp(-1).mean().backward()

    t_batched = median_time(batched, args.repeat)
    t_single = median_time(one_at_a_time, args.repeat)
    print(f"machine: {machine()}")
    print(f"{args.n} diffs (rank 1 on all {len(linears)} decoder linears), {args.tokens} tokens each, forward + backward")
    print(f"batched {t_batched:.2f} s, one diff at a time {t_single:.2f} s -> {t_single / t_batched:.2f}x faster batched")


if __name__ == "__main__":
    main()
