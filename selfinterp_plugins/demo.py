"""`selfinterp demo`: the shipped explainer against untrained injection on held-out topics.

Offline, on SmolLM2-135M-Instruct, in about a minute on 2 CPU cores once the model is
converted: topic vectors for held-out test topics (never seen in training), labels from the
best untrained configuration (its scale chosen on validation topics) and from the shipped
trained adapter, then recall@1 for both over every title of the topic set.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch


def run_demo(explainer_dir: Path, n_topics: int = 200, show: int = 15, echo=print, backend=None) -> dict:
    """`backend`: SmolLM2's, if the caller has it (the CLI loads it with `cli_options.load_backend`)."""
    from . import Explainer, Sampling
    from .backends import HFBackend
    from .defaults import SMOLLM2_ALIAS
    from .errors import ArtifactError
    from .evaluation.scoring import exact_match, recall_at_k, sentence_embedder
    from .models import load_model
    from .topics import load_topics, topic_vectors

    started = time.time()
    if backend is None:
        echo("Loading SmolLM2-135M-Instruct (offline; the first run converts the GGUF once, ~30 s) ...")
        backend = HFBackend(*load_model(SMOLLM2_ALIAS))  # the shipped explainer fits SmolLM2 only
    trained = Explainer.from_pretrained(explainer_dir, model=backend)
    meta = trained.metadata
    if "layer" not in meta or "topic_mean" not in meta:
        raise ArtifactError(f"{explainer_dir} was not trained on topic vectors; pass an explainer made by scripts/topic_benchmark.py.")
    layer = meta["layer"]
    untrained_cfg = meta.get("untrained", {"template": "chat", "scale": 4.0})
    untrained = Explainer.create(backend, adapter="scale_only", template=untrained_cfg["template"], init_scale=1.0)

    topics = load_topics()
    test = [t for t in topics if t["split"] == "test"][:n_topics]
    echo(f"Topic vectors for {len(test)} held-out topics (resid_post.{layer} of 'Tell me about {{title}}.') ...")
    data = topic_vectors(backend, test, [layer], progress=False, means={layer: torch.tensor(meta["topic_mean"])})[layer]

    sampling = Sampling(max_new_tokens=16)
    echo("Labelling them with untrained injection and with the trained adapter ...")
    before = untrained.explain(data.vectors, ids=data.ids, scales=(untrained_cfg["scale"],), sampling=sampling, progress=False)
    after = trained.explain(data.vectors, ids=data.ids, sampling=sampling, progress=False)

    candidates = [t["title"] for t in topics]
    candidate_embeddings = sentence_embedder().encode(candidates)
    truth = {r["id"]: r["label"] for r in data.records}
    scores = {}
    for name, records in (("untrained", before), ("trained", after)):
        recall = next(iter(recall_at_k(records, truth, candidates, candidate_embeddings=candidate_embeddings).values()))
        scores[name] = {"recall@1": recall[1], "recall@5": recall[5], "exact_match": next(iter(exact_match(records, truth).values()))}

    width = 22
    echo("")
    echo(f"{'held-out topic':<{width}} {'untrained label':<{width}} trained label")
    echo("-" * (3 * width + 2))
    for topic, b, a in list(zip(data.records, before, after))[:show]:
        echo(f"{topic['label'][:width]:<{width}} {b['label'][:width]:<{width}} {a['label'][:width * 2]}")
    echo("")
    echo(f"recall@1 over all {len(candidates)} topic titles, {len(test)} held-out topics:")
    echo(f"  untrained ({untrained_cfg['template']} template, scale {untrained_cfg['scale']}): "
         f"{scores['untrained']['recall@1']:.3f}   (recall@5 {scores['untrained']['recall@5']:.3f})")
    echo(f"  trained   ({trained.adapter.config.kind}, {trained.template.name} template):      "
         f"{scores['trained']['recall@1']:.3f}   (recall@5 {scores['trained']['recall@5']:.3f})")
    echo(f"done in {time.time() - started:.0f} s")
    return scores
