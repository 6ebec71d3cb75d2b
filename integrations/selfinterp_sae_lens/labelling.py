"""Label an SAE's features with an explainer: batched, streamed to JSONL, resumable.

The work is the explainer's own `explain` (one generate call per batch, every finished batch
flushed, a rerun skipping what is done); this adds the SAE side: which latents, their decoder
rows, ids that are latent indices, and a copy of the labels in Neuronpedia's explanation format.
"""

from __future__ import annotations

from pathlib import Path

from selfinterp_plugins.backends.base import Sampling

from .neuronpedia import neuronpedia_ids, write_explanations
from .sae_info import sae_site
from .source import feature_indices


def label_features(explainer, sae, features=None, output=None, scales=(1.0,), sampling: Sampling | None = None,
                   batch_size: int = 64, neuronpedia_output=None, explanation_model: str | None = None,
                   progress: bool = True):
    """Labels for `features` (default: every latent) as explain records with `feature` set.

    With `output` (JSONL) the run resumes; with `neuronpedia_output` (.json / .jsonl) the labels
    are also written as Neuronpedia explanation rows once all are done.
    """
    indices = feature_indices(sae, features)
    sae_site(sae)  # the SAE hooks every entry point reads (embed, resid_pre, resid_post); others refused alike
    # the decoder rows, with a one-line warning when the SAE reads another site than the explainer was trained on
    vectors = explainer.prepare_vectors(sae, features=indices)
    records = explainer.explain(vectors, ids=[str(i) for i in indices], scales=scales,
                                sampling=sampling, batch_size=batch_size, output=output, progress=progress)
    for r in records:
        r["feature"] = int(r["id"])
    if neuronpedia_output is not None:
        model_id, sae_id = neuronpedia_ids(sae)
        write_explanations(records, Path(neuronpedia_output), model_id, sae_id,
                           explanation_model or f"selfinterp:{explainer.model_id or 'explainer'}")
    return records
