"""Bridge entities by layer: trained explainer vs untrained injection (ANCHORS.md §1).

Builds the two-hop statements the model answers right from its own single hops (no bridge in its
answer), reads vectors after every `--every`-th layer past the subject, labels each 5 times
(T = 0.7, <= 20 tokens) and reports the fraction of statements whose labels name the bridge, per
layer, for the shipped explainer and for untrained scale_only injection at the shipped scale.
Writes results.json and bridge_by_layer.png to --out.

    python scripts/bridge_entities.py --out runs/bridge-smollm2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--explainer", default="shipped", help="trained explainer directory, or 'shipped' (SmolLM2)")
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()

    from selfinterp_plugins import Explainer
    from selfinterp_plugins.backends import HFBackend
    from selfinterp_plugins.bridge import bridge_hit_rates, bridge_vectors, build_two_hop
    from selfinterp_plugins.cli import _explainer_dir
    from selfinterp_plugins.models import load_model

    started = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backend = HFBackend(*load_model(args.model))
    trained = Explainer.from_pretrained(_explainer_dir(args.explainer), model=backend)
    untrained_cfg = trained.metadata.get("untrained", {"template": "chat", "scale": 4.0})  # the paper's grid middle if unknown
    untrained = Explainer.create(backend, adapter="scale_only", template=untrained_cfg["template"], init_scale=1.0)

    built = build_two_hop(backend, progress=True)
    statements = [s for s in built["statements"] if s["two_hop_correct"] and not s["bridge_in_answer"]]
    layers = sorted({*range(0, backend.n_layers, args.every), backend.n_layers - 1})
    vectors, rows = bridge_vectors(backend, statements, layers)
    results = {"first_hop_correct": built["first_hop_correct"], "second_hop_correct": built["second_hop_correct"],
               "n_composed": len(built["statements"]), "n_two_hop_correct": built["n_two_hop_correct"],
               "n_evaluated": len(statements), "n_vectors_per_layer": len(rows), "layers": layers,
               "samples": args.samples, "statements": statements}
    for name, explainer, scale in (("trained", trained, 1.0), ("untrained", untrained, untrained_cfg["scale"])):
        results[name] = bridge_hit_rates(explainer, statements, vectors, rows, layers, samples=args.samples, scale=scale)
        print(name, {k: round(v, 3) for k, v in results[name]["hit_rate"].items()})
    results["seconds"] = round(time.time() - started)
    (out / "results.json").write_text(json.dumps(results, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name in ("trained", "untrained"):
        ax.plot(layers, [results[name]["hit_rate"][layer] for layer in layers], marker="o", label=name)
    ax.set_xlabel("layer the vector is read after")
    ax.set_ylabel("bridge-entity hit rate")
    ax.set_ylim(0, 1)
    ax.set_title(f"{args.model}: {len(statements)} two-hop statements, {args.samples} labels per vector", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "bridge_by_layer.png", dpi=130)
    print(f"{len(statements)} statements; results in {out}")


if __name__ == "__main__":
    main()
