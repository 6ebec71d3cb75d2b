"""Markdown tables of a topic-benchmark run (results.jsonl), for docs/results.md.

    python scripts/results_table.py runs/topic_benchmark/results.jsonl
"""

from __future__ import annotations

import json
import sys

KIND_ORDER = ("scale_only", "bias_only", "scalar_affine", "low_rank", "scalar_affine_plus_low_rank", "full_rank")


def pct(x):
    return "—" if x is None else f"{x:.3f}"


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    by = {r["name"]: r for r in rows}

    print("### Held-out test split (final)\n")
    print("| explainer | recall@1 | recall@5 | exact match | n |")
    print("|---|---|---|---|---|")
    for r in rows:
        if r["name"].startswith("final/"):
            if "ceiling" in r["name"]:
                what = f"ridge-probe ceiling (vector → title embedding), layer {r['name'].split('layer')[-1]}"
                print(f"| {what} | {pct(r['recall@1'])} | {pct(r['recall@5'])} | — | {r['n']} |")
            elif "untrained" in r["name"]:
                what = f"untrained, {r['template']} template, scale {r['scale_chosen_on_validation']} (best on validation), layer {r['layer']}"
                print(f"| {what} | {pct(r['recall@1'])} | {pct(r['recall@5'])} | {pct(r['exact_match'])} | {r['n']} |")
            else:
                what = f"trained {r['kind']} ({r['init']} init), {r['template']} template, layer {r['layer']}, {r['n_train']} topics"
                print(f"| {what} | {pct(r['recall@1'])} | {pct(r['recall@5'])} | {pct(r['exact_match'])} | {r['n']} |")

    print("\n### Validation split: ceiling and best untrained configuration per layer\n")
    print("| layer | ridge-probe ceiling r@1 | untrained chat r@1 (best scale) | untrained echo r@1 (best scale) |")
    print("|---|---|---|---|")
    layers = sorted({int(r["name"].split("layer")[1].split("/")[0]) for r in rows if r["name"].startswith("ceiling/")})
    for layer in layers:
        c = by.get(f"ceiling/layer{layer}/validation", {})
        u = {t: by.get(f"untrained/layer{layer}/{t}") for t in ("chat", "echo")}
        cells = [f"{pct(u[t]['recall@1'])} (s={u[t]['best_scale']})" if u[t] else "—" for t in ("chat", "echo")]
        print(f"| {layer} | {pct(c.get('recall@1'))} | {cells[0]} | {cells[1]} |")

    for stage, title in (("grid/", "Adapter kinds × templates"), ("layers/", "Layers (best grid configuration)"),
                         ("sizes/", "Training-set size (best layer)")):
        chosen = [r for r in rows if r["name"].startswith(stage)]
        if stage == "grid/":
            chosen.sort(key=lambda r: (r["template"] != "echo", list(KIND_ORDER).index(r["kind"]), r["init"], r.get("lr", 0)))
        if stage == "layers/":
            chosen = [r for r in rows if r["name"].startswith("grid/") and r["recall@1"] == max(
                x["recall@1"] for x in rows if x["name"].startswith("grid/"))][:1] + chosen
        if not chosen:
            continue
        print(f"\n### {title} (validation split)\n")
        print("| layer | template | adapter | init | lr | train topics | epochs | val loss at init → end | recall@1 | recall@5 | exact | train s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in chosen:
            losses = r.get("validation_loss") or []
            start = r.get("validation_loss_at_init")
            loss = (f"{start:.2f} → " if start else "") + (f"{losses[-1]:.2f}" if losses else "—")
            print(f"| {r['layer']} | {r['template']} | {r['kind']} | {r['init']} | {r.get('lr', '—')} | {r['n_train']} | {r['epochs']} | {loss} | "
                  f"{pct(r['recall@1'])} | {pct(r['recall@5'])} | {pct(r['exact_match'])} | {r.get('train_seconds', '—')} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/topic_benchmark/results.jsonl")
