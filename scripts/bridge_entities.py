"""Bridge entities by layer: trained explainer vs untrained injection, the reference's protocol.

Builds the two-hop statements the model answers right from its own single hops (no bridge in its
answer), reads RAW hidden states after every `--every`-th layer at every position from the
statement's first token to the end of the chat prompt, reads each vector `--samples` times
(T 0.7, top-p 0.9, top-k 50, <= 20 tokens) and scores each (layer, position) cell by the fraction of
its samples naming the bridge. Trained: the explainer at scale 1; untrained: the unit vector x 10 in
the chat-template prompt, as the reference's untrained config. Writes results.json and
bridge_by_layer.png to --out.

    python scripts/bridge_entities.py --out runs/bridge-smollm2
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--explainer", default="shipped", help="trained explainer directory, or 'shipped' (SmolLM2)")
    parser.add_argument("--every", type=int, default=1, help="read every k-th layer (reference: every layer)")
    parser.add_argument("--layers", type=int, nargs="+", default=None,
                        help="read these layers instead of every --every-th (e.g. the explainer's own layer)")
    parser.add_argument("--samples", type=int, default=10, help="samples per vector (reference: 10)")
    args = parser.parse_args()

    from selfinterp_plugins import Explainer
    from selfinterp_plugins.backends import HFBackend
    from selfinterp_plugins.defaults import explainer_location
    from selfinterp_plugins.evaluation.bridge import UNTRAINED_SCALE, bridge_cell_scores, bridge_vectors, build_two_hop
    from selfinterp_plugins.models import load_model
    from selfinterp_plugins.storage import write_bytes_atomic, write_text_atomic

    started = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backend = HFBackend(*load_model(args.model))
    trained = Explainer.from_pretrained(explainer_location(args.explainer), model=backend)
    untrained = Explainer.create(backend, adapter="scale_only", template="tokenizer_chat", init_scale=1.0)

    built = build_two_hop(backend, progress=True)
    statements = [s for s in built["statements"] if s["two_hop_correct"] and not s["bridge_in_answer"]]
    layers = sorted(set(args.layers) if args.layers else {*range(0, backend.n_layers, args.every), backend.n_layers - 1})
    if not all(0 <= layer < backend.n_layers for layer in layers):
        parser.error(f"--layers: {args.model} has layers 0 to {backend.n_layers - 1}")
    vectors, rows = bridge_vectors(backend, statements, layers)
    results = {"first_hop_correct": built["first_hop_correct"], "second_hop_correct": built["second_hop_correct"],
               "n_composed": len(built["statements"]), "n_two_hop_correct": built["n_two_hop_correct"],
               "n_evaluated": len(statements), "n_vectors_per_layer": len(rows), "layers": layers,
               "samples": args.samples, "statements": statements}
    for name, explainer, scale in (("trained", trained, 1.0), ("untrained", untrained, UNTRAINED_SCALE)):
        results[name] = bridge_cell_scores(explainer, statements, vectors, rows, layers, samples=args.samples, scale=scale)
        print(name, "hit rate", {k: round(v, 3) for k, v in results[name]["hit_rate"].items()})
        print(name, "best cell", {k: round(v, 3) for k, v in results[name]["best_cell"].items()})
        write_text_atomic(out / "results.json", json.dumps(results, indent=2))
    results["seconds"] = round(time.time() - started)
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name in ("trained", "untrained"):
        ax.plot(layers, [results[name]["hit_rate"][layer] for layer in layers], marker="o", label=f"{name}: any hit")
        ax.plot(layers, [results[name]["best_cell"][layer] for layer in layers], marker=".", linestyle="--",
                label=f"{name}: best cell")
    ax.set_xlabel("layer the vector is read after")
    ax.set_ylabel("fraction of statements / of samples")
    ax.set_ylim(0, 1)
    ax.set_title(f"{args.model}: {len(statements)} two-hop statements, {args.samples} labels per vector", fontsize=9)
    ax.legend()
    fig.tight_layout()
    picture = io.BytesIO()  # rendered in memory, written atomically
    fig.savefig(picture, format="png", dpi=130)
    write_bytes_atomic(out / "bridge_by_layer.png", picture.getvalue())
    print(f"{len(statements)} statements; results in {out}")


if __name__ == "__main__":
    main()
