"""Peak memory of a training step on SmolLM2 relative to the model's weights: ours, ours without
the prefix cache, ours with activation checkpointing (which turns the prefix cache off) and the
naive way (benchmarks/training_step.py).

The peak is read from PyTorch's memory profiler (every allocation of the step, categorised):
the largest total of everything that is not a model parameter, at any moment of forward +
backward. Unlike the process's resident set it does not depend on the allocator returning
memory to the OS. (It uses `torch.profiler._memory_profiler`, a private module of PyTorch.)

    python benchmarks/training_memory.py [--batch 32]
"""

from __future__ import annotations

import argparse

from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX, Category, MemoryProfileTimeline

from _common import machine, shipped_setup
from training_step import naive_loss


def peak_non_parameter_bytes(step) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    _times, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    parameter = _CATEGORY_TO_INDEX[Category.PARAMETER] + 1
    return max(sum(row) - row[parameter] for row in sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    _model, _tok, explainer, data = shipped_setup(args.batch, split="train")
    vectors, labels = data.vectors, [r["label"] for r in data.records]
    weights = sum(p.numel() * p.element_size() for p in explainer.backend.model.parameters())
    prefix_len = explainer.prefix_len

    def variant(name):
        explainer.backend.checkpointing = name == "checkpointing"
        explainer.prefix_len = 0 if name == "no prefix cache" else prefix_len
        loss_fn = naive_loss if name == "naive" else (lambda e, v, labels: e.loss(v, labels))

        def step():
            explainer.adapter.zero_grad(set_to_none=True)
            loss_fn(explainer, vectors, labels).backward()

        step()  # warm-up
        return peak_non_parameter_bytes(step)

    print(f"machine: {machine()}")
    print(f"batch {args.batch}, {explainer.adapter.config.kind} adapter, {explainer.template.name} template; "
          f"weights {weights / 2**20:.0f} MiB (fp32)")
    for name in ("ours", "no prefix cache", "checkpointing", "naive"):
        peak = variant(name)
        print(f"{name:>16}: peak memory of a training step beyond the weights {peak / 2**20:7.1f} MiB = {peak / weights:.3f}x the weights")


if __name__ == "__main__":
    main()
