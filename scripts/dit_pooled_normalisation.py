"""What the reference's pooled loss normalisation changes: the same group of hidden-topic diffs
trained side by side with `normalisation="per_diff"` (this library's default: each diff as if alone)
and `"pooled"` (the reference's: each sub-batch's tokens of every diff of the group together), from
the same start, on the same data, with `selfinterp dit make-diffs`' settings. Prints, per diff, the
relative difference of the finished ΔW (over all modules) and the range of the diff's share of its
sub-batches' answer tokens (1/G everywhere would make the two the same up to a constant).

    python scripts/dit_pooled_normalisation.py --diffs 4
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--diffs", type=int, default=4)
    parser.add_argument("--questions", type=int, default=8)
    args = parser.parse_args()

    from selfinterp_peft.cli import EPOCHS, LR, QUESTIONS_PER_STEP
    from selfinterp_peft.diff_training import DiffTrainConfig, _schedule, train_diffs
    from selfinterp_peft.hidden_topics import assign_triggers, build_examples
    from selfinterp_plugins.models import load_model
    from selfinterp_plugins.topics import load_topics

    torch.manual_seed(0)
    model, tok = load_model(args.model)
    topics = [t for t in load_topics() if t["split"] == "train"][: args.diffs]
    examples = build_examples(model, tok, assign_triggers(topics), args.questions, 24, seed=0)
    common = dict(rank=1, lr=LR, epochs=EPOCHS, questions_per_step=QUESTIONS_PER_STEP, diffs_per_group=args.diffs)
    trained = {how: train_diffs(model, tok, examples, DiffTrainConfig(**common, normalisation=how))
               for how in ("per_diff", "pooled")}
    config = DiffTrainConfig(**common)
    steps = {k: _schedule(v, config, k) for k, v in examples.items()}
    rows = []
    for key in examples:
        shares = []
        for step in range(len(steps[key])):
            for p, e in enumerate(steps[key][step]):
                total = sum(len(steps[other][step][p].answer) for other in examples)
                shares.append(len(e.answer) / total)
        a, b = trained["per_diff"][key], trained["pooled"][key]
        num = sum(float((a.modules[n].delta() - b.modules[n].delta()).norm() ** 2) for n in a.modules) ** 0.5
        den = sum(float(a.modules[n].delta().norm() ** 2) for n in a.modules) ** 0.5
        rows.append({"topic": key, "relative_delta_difference": round(num / den, 4),
                     "token_share_min": round(min(shares), 3), "token_share_max": round(max(shares), 3)})
    print(json.dumps({"model": args.model, "diffs_side_by_side": args.diffs, "questions": args.questions,
                      "per_diff": rows}, indent=1))


if __name__ == "__main__":
    main()
