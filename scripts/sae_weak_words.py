"""Keep only the weak labels that are lower-case words of 3+ letters (drops speaker-name fragments
such as 'OR', 'RO', 'ie' that Shakespeare's capitalised stage names leave): does label noise explain
the adapter's weak result on SAE features? (docs/results.md, "SAE features on SmolLM2")

    python scripts/sae_weak_words.py runs/sae-e2e/weak-labels runs/sae-e2e/weak-words
    selfinterp train runs/sae-e2e/weak-words --adapter full_rank --template echo --init ridge --out runs/sae-e2e/explainers/words
    selfinterp eval runs/sae-e2e/explainers/words --vectors runs/sae-e2e/weak-words
"""

import sys

from selfinterp_plugins import VectorLabelDataset

source, target = sys.argv[1], sys.argv[2]
data = VectorLabelDataset.load(source)
keep = [i for i, r in enumerate(data.records) if r["label"].isalpha() and r["label"].islower() and len(r["label"]) >= 3]
words = data.select(keep)
words.meta["filter"] = "lower-case alphabetic labels of 3+ letters"
words.save(target)
counts = {s: sum(r.get("split") == s for r in words.records) for s in ("train", "validation", "test")}
print(f"kept {len(words)} of {len(data)} weak labels: {counts}")
