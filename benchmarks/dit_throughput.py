"""Throughput of DIT's two training jobs on SmolLM2-135M, batched vs one diff at a time:

- hidden-topic diffs: `train_diffs` with n diffs side by side (one row of each per step) against
  the same diffs trained one after another (diffs_per_group=1); same data, same steps per diff,
  so the same diffs come out (tests/integrations/peft/test_dit.py checks that equality);
- DIT training: steps whose batch mixes n diffs against n single-diff steps.
Prints diffs per hour and the ratios.

    python benchmarks/dit_throughput.py [--n 8] [--examples 4]
"""

from __future__ import annotations

import argparse
import time

from _common import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="diffs")
    parser.add_argument("--questions", type=int, default=2, help="questions per diff, each in its three forms")
    args = parser.parse_args()

    from selfinterp_peft.diff_training import DiffTrainConfig, train_diffs
    from selfinterp_peft.dit import DITAdapter, DITConfig
    from selfinterp_peft.hidden_topics import assign_triggers, build_examples
    from selfinterp_plugins.models import load_model
    from selfinterp_plugins.topics import load_topics

    model, tok = load_model("smollm2-135m-instruct")
    topics = [t for t in load_topics() if t["split"] == "train"][: args.n]
    examples = build_examples(model, tok, assign_triggers(topics), args.questions, 32)

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out

    together, diffs = timed(lambda: train_diffs(model, tok, examples, DiffTrainConfig(lr=4e-3, questions_per_step=1,
                                                                                      diffs_per_group=args.n)))
    alone, _ = timed(lambda: train_diffs(model, tok, examples, DiffTrainConfig(lr=4e-3, questions_per_step=1,
                                                                              diffs_per_group=1)))
    diffs = list(diffs.values())
    answers = [t["title"] for t in topics]
    mixed, _ = timed(lambda: DITAdapter.create(model, tok, DITConfig(batch_size=args.n)).train(diffs, answers))
    model = model.unload() if hasattr(model, "unload") else model
    single, _ = timed(lambda: DITAdapter.create(load_model("smollm2-135m-instruct")[0], tok,
                                                DITConfig(batch_size=1)).train(diffs, answers))

    print(f"machine: {machine()}")
    print(f"hidden-topic diffs ({args.n} diffs, {args.questions} questions x 3 forms each, rank 1 on every decoder linear):")
    print(f"  side by side {together:.1f} s ({3600 * args.n / together:.0f} diffs/hour), "
          f"one at a time {alone:.1f} s ({3600 * args.n / alone:.0f} diffs/hour) -> {alone / together:.2f}x")
    print(f"DIT training (one epoch over {args.n} diffs): batches mixing {args.n} diffs {mixed:.1f} s, "
          f"one diff per step {single:.1f} s -> {single / mixed:.2f}x")


if __name__ == "__main__":
    main()
