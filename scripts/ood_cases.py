"""What the shipped topic explainer says about vectors it was not trained on, and what
`prepare_vectors` warns: the table of docs/concepts.md ("What an explainer can read").

On SmolLM2-135M-Instruct with the shipped explainer (resid_post.10, last token of the chat prompt
`Tell me about {title}.`, minus the topic mean), for held-out topics, each case a researcher meets:
in distribution; the raw activation at another position of the same prompt (the topic word's own
token, and BOS); the last token of another prompt (the bare word); a vector centred twice (a
training vector passed to prepare_vectors again); a steering vector (a difference of means) passed
to prepare_vectors as if it were an activation, and passed as a direction; another layer's
activation. Per case: the statistics prepare_vectors looks at (the prepared vector's norm over the
training median norm, its cosine to the topic mean, the input's cosine to the topic mean), the
warning it gives, and the greedy labels.

    python scripts/ood_cases.py --n 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from selfinterp_plugins import Explainer, HFBackend, Sampling, shipped_explainer_dir  # noqa: E402
from selfinterp_plugins.models import load_model  # noqa: E402
from selfinterp_plugins.sites import Site  # noqa: E402
from selfinterp_plugins.topics import load_topics  # noqa: E402

from _common import machine  # noqa: E402


def stats(explainer, x, prepared):
    mean = torch.tensor(explainer.metadata["topic_mean"])
    norm = explainer.vector_spec.vector_norm
    cos = torch.nn.functional.cosine_similarity
    return {"norm_ratio": (prepared.norm(dim=-1) / norm).tolist(),
            "cos_prepared_mean": cos(prepared, mean[None]).tolist(),
            "cos_input_mean": cos(x, mean[None]).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="held-out topics per case")
    args = parser.parse_args()
    model, tok = load_model("smollm2-135m-instruct")
    backend = HFBackend(model, tok)
    explainer = Explainer.from_pretrained(shipped_explainer_dir(), model=backend)
    topics = [t for t in load_topics() if t["split"] == "test"]
    titles = [t["title"] for t in topics[: args.n]]
    site10, site5 = Site.parse("resid_post.10"), Site.parse("resid_post.5")
    ids = [explainer.vector_prompt(t, tokenize=True) for t in titles]
    # the topic word's last token: the prompt up to the title, tokenised the same way
    word_pos = []
    for title, row in zip(titles, ids):
        text = explainer.vector_prompt(title, tokenize=False)
        head = tok(text[: text.index(title) + len(title)], add_special_tokens=False)["input_ids"]
        assert row[: len(head)] == head, title  # the word ends on a token boundary
        word_pos.append(len(head) - 1)
    last = backend.capture(ids, [site10, site5])
    at_word = backend.capture(ids, [site10], positions=word_pos)[:, 0]
    at_bos = backend.capture(ids, [site10], positions=[-len(r) for r in ids])[:, 0]
    bare = backend.capture([tok(t, add_special_tokens=False)["input_ids"] for t in titles], [site10])[:, 0]
    mean = torch.tensor(explainer.metadata["topic_mean"])
    centred = last[:, 0] - mean
    animals = [t["title"] for t in topics if t["category"] == "noun.animal"][:16]
    artifacts = [t["title"] for t in topics if t["category"] == "noun.artifact"][:16]
    a = backend.capture([explainer.vector_prompt(t, tokenize=True) for t in animals], [site10])[:, 0]
    b = backend.capture([explainer.vector_prompt(t, tokenize=True) for t in artifacts], [site10])[:, 0]
    steer_topics = (a.mean(0) - b.mean(0))[None]
    love = backend.capture([tok(p, add_special_tokens=False)["input_ids"] for p in ["I love you", "Love"]], [site10])
    hate = backend.capture([tok(p, add_special_tokens=False)["input_ids"] for p in ["I hate you", "Hate"]], [site10])
    steer_love = (love[:, 0] - hate[:, 0])
    cases = [
        ("in distribution", last[:, 0], {}),
        ("raw, the topic word's position", at_word, {}),
        ("raw, the BOS position", at_bos, {}),
        ("raw, another prompt (the bare word)", bare, {}),
        ("centred twice", centred, {}),
        ("another layer (resid_post.5, no site=)", last[:, 1], {}),
        ("steering: animals - artifacts, as an activation", steer_topics, {}),
        ("steering: love - hate, as an activation", steer_love, {}),
        ("steering: animals - artifacts, as a direction", steer_topics, {"direction": True}),
        ("steering: love - hate, as a direction", steer_love, {"direction": True}),
    ]
    print(f"# {machine()}; {len(titles)} held-out topics: {', '.join(titles)}")
    sampling = Sampling(max_new_tokens=12)
    for name, x, options in cases:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prepared = explainer.prepare_vectors(x, **options)
        s = stats(explainer, x, prepared)
        labels = [r["label"] for r in explainer.explain(prepared, sampling=sampling, progress=False)]
        med = {k: statistics.median(v) for k, v in s.items()}
        rng = {k: (min(v), max(v)) for k, v in s.items()}
        print(f"\n## {name}")
        print("  " + "; ".join(f"{k} median {med[k]:.3g} [{rng[k][0]:.3g}, {rng[k][1]:.3g}]" for k in s))
        print(f"  warnings: {[str(w.message) for w in caught] or 'none'}")
        hits = sum(label.strip().lower() == t.lower() for label, t in zip(labels, titles)) if len(labels) == len(titles) else None
        print(f"  labels ({hits if hits is not None else '-'} = the topic): {labels}")


if __name__ == "__main__":
    main()
