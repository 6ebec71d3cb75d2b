"""Markdown tables for docs/results.md from `selfinterp report` and `scripts/bridge_entities.py` outputs.

    python scripts/evaluation_tables.py --report runs/report-smollm2 --report runs/report-gemma \
        --bridge runs/bridge-smollm2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def headline(results: dict) -> str:
    lines = [f"**{results['config']['model']}** (vectors after layer {results['vector_layer']}; "
             f"{results['n_validation']} validation topics for the sweeps, {results['n_test']} test topics scored, "
             f"{results['n_candidates']} candidate titles)", "",
             "| method | read at (layer, scale) | validation recall@1 there | test recall@1 | test recall@5 |",
             "|---|---|---|---|---|"]
    for row in results["headline"]:
        where = "—" if row["scale"] is None else f"{'embed' if row['layer'] is None else row['layer']}, {row['scale']:g}"
        val = "—" if row["validation_recall@1"] is None else f"{row['validation_recall@1']:.3f}"
        named = f" (the description names the topic in {row['title_named']:.0%})" if "title_named" in row else ""
        lines.append(f"| {row['method']}{named} | {where} | {val} | {row['recall@1']:.3f} | {row['recall@5']:.3f} |")
    return "\n".join(lines)


def sweep_summary(results: dict) -> str:
    by_method: dict = {}
    for row in results["sweep"]:
        by_method.setdefault(row["method"], []).append(row)
    lines = ["| method | grid points | points with recall@1 > 0 | best validation recall@1 | median over the grid |",
             "|---|---|---|---|---|"]
    for method, rows in by_method.items():
        values = sorted(r["recall@1"] for r in rows)
        lines.append(f"| {method} | {len(rows)} | {sum(v > 0 for v in values)} | {values[-1]:.3f} | "
                     f"{values[len(values) // 2]:.3f} |")
    return "\n".join(lines)


def bridge(results: dict) -> str:
    lines = [f"First hops known: {results['first_hop_correct']:.2f}; second hops known: {results['second_hop_correct']:.2f}; "
             f"statements composed: {results['n_composed']}; answered right: {results['n_two_hop_correct']}; "
             f"evaluated (right, bridge not in the answer): {results['n_evaluated']} "
             f"({results['n_vectors_per_layer']} vectors per layer, {results['samples']} labels each).", "",
             "| layer | " + " | ".join(str(layer) for layer in results["layers"]) + " |",
             "|---|" + "---|" * len(results["layers"])]
    for name in ("trained", "untrained"):
        rates = results[name]["hit_rate"]
        lines.append(f"| {name} | " + " | ".join(f"{rates[str(layer)] if str(layer) in rates else rates[layer]:.2f}"
                                                  for layer in results["layers"]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", action="append", default=[])
    parser.add_argument("--bridge", action="append", default=[])
    args = parser.parse_args()
    for directory in args.report:
        results = json.loads((Path(directory) / "results.json").read_text())
        print(headline(results), "\n")
        print(sweep_summary(results), "\n")
    for directory in args.bridge:
        print(bridge(json.loads((Path(directory) / "results.json").read_text())), "\n")


if __name__ == "__main__":
    main()
