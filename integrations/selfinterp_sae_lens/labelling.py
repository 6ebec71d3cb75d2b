"""Label an SAE's features with an explainer: batched, streamed to JSONL, resumable.

The work is the explainer's own `explain` (one generate call per batch, every finished batch
flushed, a rerun skipping what is done); this adds the SAE side: which latents, their decoder
rows, ids that are latent indices, and a copy of the labels in Neuronpedia's explanation format.
"""

from __future__ import annotations

from pathlib import Path

from selfinterp_plugins.backends.base import Sampling
from selfinterp_plugins.errors import OptionError

from .latent_ids import feature_indices
from .neuronpedia import check_export_path, neuronpedia_ids, write_explanations
from .sae_info import sae_site


def label_features(explainer, sae, features=None, output=None, scales=(1.0,), sampling: Sampling | None = None,
                   batch_size: int = 64, neuronpedia_output=None, explanation_model: str | None = None,
                   progress: bool = True, neuronpedia_model_id: str | None = None,
                   neuronpedia_sae_id: str | None = None):
    """Labels for `features` (default: every latent) as explain records with `feature` set.

    With `output` (JSONL) the run resumes; with `neuronpedia_output` (.json / .jsonl) the labels
    are also written as Neuronpedia explanation rows once all are done, under the SAE's Neuronpedia
    ids (`neuronpedia_ids`) unless `neuronpedia_model_id` / `neuronpedia_sae_id` say otherwise (two
    SAEs at one hook get the same built ids: give one its own SAE id).
    """
    indices = feature_indices(sae, features)
    sae_site(sae)  # the SAE hooks every entry point reads (embed, resid_pre, resid_post); others refused alike
    if neuronpedia_output is not None:
        check_export_path(neuronpedia_output)  # before the labelling, not after it
    elif neuronpedia_model_id is not None or neuronpedia_sae_id is not None:
        raise OptionError("neuronpedia_model_id / neuronpedia_sae_id (--model-id, --np-sae-id) name the Neuronpedia "
                          "export; give neuronpedia_output (--neuronpedia FILE) too.")
    # the decoder rows, with a one-line warning when the SAE reads another site than the explainer was trained on
    vectors = explainer.prepare_vectors(sae, features=indices)
    records = explainer.explain(vectors, ids=[str(i) for i in indices], scales=scales,
                                sampling=sampling, batch_size=batch_size, output=output, progress=progress)
    for r in records:
        r["feature"] = int(r["id"])
    if neuronpedia_output is not None:
        model_id, sae_id = neuronpedia_ids(sae)
        write_explanations(records, Path(neuronpedia_output), neuronpedia_model_id or model_id,
                           neuronpedia_sae_id or sae_id, explanation_model or f"selfinterp:{explainer.model_id or 'explainer'}")
    return records
