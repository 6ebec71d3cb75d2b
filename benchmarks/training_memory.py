"""Peak memory of a training step on SmolLM2 relative to the model's weights: ours, ours with
activation checkpointing (which turns the prefix cache off, so ours without the
prefix cache is shown too), and the naive way (benchmarks/training_step.py). Each variant runs in
its own process; the peak is the resident-set high-water mark (VmHWM, reset through
/proc/self/clear_refs after loading) minus the resident set before the step.

    python benchmarks/training_memory.py [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(variant: str, batch: int) -> None:
    import torch

    from _common import shipped_setup
    from training_step import naive_loss

    _model, _tok, explainer, data = shipped_setup(batch, split="train")
    explainer.backend.checkpointing = variant == "checkpointing"
    if variant == "no prefix cache":  # what checkpointing must compute too: its fair comparison
        explainer.prefix_len = 0
    loss_fn = naive_loss if variant == "naive" else (lambda e, v, l: e.loss(v, l))
    vectors, labels = data.vectors, [r["label"] for r in data.records]
    loss_fn(explainer, vectors, labels).backward()  # warm-up: allocator pools, lazy inits
    explainer.adapter.zero_grad(set_to_none=True)
    weights = sum(p.numel() * p.element_size() for p in explainer.backend.model.parameters())
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    for _ in range(2):
        loss_fn(explainer, vectors, labels).backward()
        explainer.adapter.zero_grad(set_to_none=True)
    peak = _status("VmHWM") - before
    print(json.dumps({"variant": variant, "weights": weights, "peak_extra": peak,
                      "threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.batch)
    from _common import machine

    print(f"machine: {machine()}")
    rows = {}
    for variant in ("ours", "no prefix cache", "checkpointing", "naive"):
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--batch", str(args.batch)],
                             capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
        rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    weights = rows["ours"]["weights"]
    print(f"batch {args.batch}, weights {weights / 2**20:.0f} MiB (fp32)")
    for variant, row in rows.items():
        print(f"{variant:>16}: peak extra memory of a training step {row['peak_extra'] / 2**20:7.1f} MiB "
              f"= {row['peak_extra'] / weights:.2f}x the weights")


if __name__ == "__main__":
    main()
