"""What an SAE says about itself: the hook it reads, the residual-stream site that is, and the
metadata a dataset built from it records.

Its own module so that `source.py` (SAE features as datasets) and `neuronpedia.py` (explanations
matched to an SAE's latents) both use it without importing each other.
"""

from __future__ import annotations

from selfinterp_plugins.errors import ArtifactError, BackendError
from selfinterp_plugins.sites import Site


def hook_name(sae) -> str:
    """The TransformerLens hook name the SAE reads (`blocks.10.hook_resid_post`), from its config."""
    name = sae.cfg.metadata.hook_name
    if not name:
        raise ArtifactError("The SAE's config has no metadata.hook_name; set it to e.g. 'blocks.10.hook_resid_post'.")
    return name


def sae_site(sae) -> Site:
    """The residual-stream site an SAE reads, from its TransformerLens hook name."""
    name = hook_name(sae)
    try:
        return Site.parse(name)
    except BackendError:
        raise BackendError(f"SAE hook {name!r} is not a residual-stream site; this integration reads "
                           "hook_embed, blocks.K.hook_resid_pre and blocks.K.hook_resid_post SAEs.") from None


def sae_metadata(sae) -> dict:
    """What a dataset built from this SAE records about it."""
    meta = sae.cfg.metadata
    site = sae_site(sae)
    out = {"source": "sae_lens", "hook_name": hook_name(sae), "site": site.name, "layer": site.layer,
           "d_sae": int(sae.cfg.d_sae), "architecture": sae.cfg.architecture()}
    for key in ("model_name", "release", "sae_id", "neuronpedia_id"):
        if meta.get(key):
            out[key] = meta.get(key)
    return out
