"""Build the SAE and the SAE-feature explainer shipped with the SAE-Lens plugin from a
`scripts/sae_e2e.py` run: the SAE's weights in bfloat16 (half the bytes; its config keeps
float32, so SAE-Lens loads it as float32), the chosen explainer as saved, and the test-split
latents with their weak labels beside the explainer (`held_out.jsonl`). Refuses to write unless the
explainer's labels of the scored held-out latents through the bfloat16 SAE equal those through the
float32 one.

Which explainer ships: the one whose greedy labels of the validation-split latents (never trained
on, and not the test latents the docs report) most often equal their weak labels; both counts are
printed.

    python scripts/ship_sae.py --run runs/sae-e2e \
        --sae-out integrations/selfinterp_sae_lens/data/saes/smollm2-resid6-topk \
        --explainer-out integrations/selfinterp_sae_lens/data/explainers/smollm2-sae-features
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from selfinterp_plugins import Explainer, Sampling, VectorLabelDataset
from selfinterp_plugins.models import load_model
from selfinterp_sae_lens.source import load_sae


def labels(explainer, sae, features: list[int]) -> list[str]:
    vectors = explainer.prepare_vectors(sae, features=features)
    records = explainer.explain(vectors, ids=[str(f) for f in features], sampling=Sampling(max_new_tokens=16), progress=False)
    return [r["label"] for r in records]


def pick(model, tok, sae, data, root: Path) -> str:
    """The explainer whose labels of the validation latents most often equal their weak labels."""
    validation = data.split("validation")
    features = [int(r["feature"]) for r in validation.records]
    truth = [label.strip().lower() for label in validation.labels]
    hits = {}
    for directory in sorted(p for p in root.iterdir() if (p / "explainer_config.json").is_file()):
        explainer = Explainer.from_pretrained(directory, model=model, tokenizer=tok)
        said = labels(explainer, sae, features)
        hits[directory.name] = sum(a.strip().lower() == b for a, b in zip(said, truth))
    print(json.dumps({"validation_latents": len(features), "exact_matches": hits}))
    return max(hits, key=hits.get)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--explainer", default=None, help="an explainer under RUN/explainers (default: picked on validation)")
    parser.add_argument("--sae-out", type=Path, required=True)
    parser.add_argument("--explainer-out", type=Path, required=True)
    args = parser.parse_args()
    for out in (args.sae_out, args.explainer_out):
        if out.exists():  # never delete the shipped copy and then write: a kill between would leave none
            raise SystemExit(f"{out} exists; move it aside first (the script writes new directories only).")

    model, tok = load_model("smollm2-135m-instruct")
    full = load_sae(args.run / "sae")
    data = VectorLabelDataset.load(args.run / "weak-labels")
    name = args.explainer or pick(model, tok, full, data, args.run / "explainers")
    explainer = Explainer.from_pretrained(args.run / "explainers" / name, model=model, tokenizer=tok)
    test = sorted(({"feature": int(r["feature"]), "label": r["label"]} for r in data.split("test").records),
                  key=lambda r: r["feature"])
    scored = [json.loads(line) for line in (args.run / "labels" / f"{name}.jsonl").read_text().splitlines()]
    checked = sorted({int(r["id"]) for r in scored} | {r["feature"] for r in test[:12]})
    with tempfile.TemporaryDirectory() as tmp:
        sae_dir, explainer_dir = Path(tmp) / "sae", Path(tmp) / "explainer"
        full.save_model(str(sae_dir))
        for f in sae_dir.glob("*.safetensors"):
            save_file({k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(f)).items()}, str(f))
        half = load_sae(sae_dir)
        assert next(half.parameters()).dtype == torch.float32
        at_full = labels(explainer, full, checked)
        run_labels = {int(r["id"]): r["label"] for r in scored}
        as_run = sum(run_labels[f] == said for f, said in zip(checked, at_full) if f in run_labels)
        same = sum(a == b for a, b in zip(at_full, labels(explainer, half, checked)))
        diff = (half.W_dec - full.W_dec).abs().max().item()
        print(json.dumps({"explainer": name, "checked_latents": len(checked), "same_labels_as_float32": same,
                          "float32_labels_as_in_the_run": f"{as_run}/{len(run_labels)}", "max_abs_W_dec_change": diff}))
        if same != len(checked):
            raise SystemExit("labels through the bfloat16 SAE differ; ship float32 instead")
        explainer.save_pretrained(explainer_dir)
        (explainer_dir / "held_out.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
        for staged, out in ((sae_dir, args.sae_out), (explainer_dir, args.explainer_out)):
            partial = out.with_name(out.name + ".partial")  # each directory appears whole or not at all
            shutil.copytree(staged, partial)
            partial.rename(out)
    for out in (args.sae_out, args.explainer_out):
        print(f"wrote {out} ({sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
