"""What an SAE says about itself: the hook it reads, the residual-stream site that is, and the
metadata a dataset built from it records.

Its own module so that `source.py` (SAE features as datasets) and `neuronpedia.py` (explanations
matched to an SAE's latents) both use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from selfinterp_plugins.errors import BackendError
from selfinterp_plugins.sites import Site
from selfinterp_plugins.storage.validation import Name, PositiveInt, validate

FIX = "fix the SAE's cfg.json (metadata.hook_name such as 'blocks.10.hook_resid_post', d_sae a positive integer) or re-save it."
#: what this integration reads of an SAE's metadata (the rest is SAE-Lens's business)
METADATA_KEYS = ("hook_name", "model_name", "release", "sae_id", "neuronpedia_id")


@dataclass
class SAEInfo:
    """The fields of an SAE's config (its `cfg.json`: `d_sae` and `metadata.*`) this integration reads."""

    hook_name: Name
    d_sae: PositiveInt
    model_name: str | None = None
    release: str | None = None
    sae_id: str | None = None
    neuronpedia_id: str | None = None


def sae_info(sae) -> SAEInfo:
    """The SAE's config fields this integration uses, checked (a cfg.json from anywhere may hold
    a number where a hook name belongs)."""
    meta = sae.cfg.metadata
    fields = {key: meta.get(key) for key in METADATA_KEYS if meta.get(key) is not None}
    return validate(SAEInfo, {**fields, "d_sae": sae.cfg.d_sae}, "The SAE's config", FIX)


def hook_name(sae) -> str:
    """The TransformerLens hook name the SAE reads (`blocks.10.hook_resid_post`), from its config."""
    return sae_info(sae).hook_name


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
    info = sae_info(sae)
    site = sae_site(sae)
    out = {"source": "sae_lens", "hook_name": info.hook_name, "site": site.name, "layer": site.layer,
           "d_sae": info.d_sae, "architecture": sae.cfg.architecture()}
    for key in METADATA_KEYS[1:]:
        if getattr(info, key):
            out[key] = getattr(info, key)
    return out
