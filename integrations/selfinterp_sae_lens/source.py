"""SAE features as vectors: the decoder rows `W_dec[i]` of an SAE-Lens `SAE`.

An SAE arrives as an object, a directory written by `SAE.save_model` (or
`save_inference_model`), or a `(release, sae_id)` pair from SAE-Lens's registry on a machine with
hub access. Its hook name (`blocks.10.hook_resid_post`) decides the site its features live at,
recorded in the dataset metadata so an explainer trained on them knows where they came from.
"""

from __future__ import annotations

from pathlib import Path

import torch

from selfinterp_plugins.datasets import VectorLabelDataset
from selfinterp_plugins.errors import ArtifactError
from selfinterp_plugins.storage import check_artifact_dir

from .latent_ids import feature_index, feature_indices
from .sae_info import hook_name, sae_metadata, sae_site

__all__ = ["build_sae_dataset", "feature_index", "feature_indices", "feature_vectors", "hook_name", "load_sae", "pretrained_sae",
           "sae_dataset", "sae_metadata", "sae_site"]


def load_sae(sae=None, release: str | None = None, sae_id: str | None = None, device: str = "cpu"):
    """An SAE-Lens `SAE` from an object, a saved directory (or a shipped SAE's name,
    `smollm2-resid6-topk`), or `release` + `sae_id`."""
    if sae is not None and (release or sae_id):
        raise ArtifactError("Give an SAE directory (--sae) or an SAE-Lens release and SAE id (--release, --sae-id), "
                            "not both: the one left over would be ignored.")
    if sae is not None and not isinstance(sae, (str, Path)):
        return sae
    if sae is not None:
        from .sae_training import TRAIN_FILE, load_saved_sae
        from .shipped import sae_location

        path = sae_location(sae)  # a directory, or a shipped SAE's name
        if not (path / "cfg.json").is_file() and not (path / TRAIN_FILE).is_file():
            raise ArtifactError(f"No SAE at {path} (no cfg.json); save one with `sae.save_model(path)`.")
        check_artifact_dir(path)
        return load_saved_sae(path, device)  # the files its last save committed
    if release and sae_id:
        return pretrained_sae(release, sae_id, device)
    raise ArtifactError("Give an SAE object, a directory saved with `sae.save_model`, or both release and sae_id.")


def pretrained_sae(release: str, sae_id: str, device: str = "cpu"):
    """`SAE.from_pretrained(release, sae_id)`, as every SAE-Lens user loads one (from the local
    Hugging Face cache when offline), with its failures as one line: an unknown release or id
    names the registry; a file missing offline says how to get it there."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from .shipped import shipped_sae_names

    if release in shipped_sae_names():
        raise ArtifactError(f"{release!r} is an SAE shipped with selfinterp-sae-lens, not an SAE-Lens release, so "
                            f"SAE.from_pretrained cannot find it; load it by name: load_sae({release!r}) (--sae {release}), "
                            f"or with SAE-Lens: SAE.load_from_disk(shipped_sae_dir({release!r})).")
    releases = get_pretrained_saes_directory()
    if release not in releases:
        close = sorted(r for r in releases if release.split("-")[0] in r)[:5]
        raise ArtifactError(f"SAE-Lens has no release {release!r}" + (f" (similar: {', '.join(close)})" if close else "")
                            + "; list them with sae_lens.loading.pretrained_saes_directory.get_pretrained_saes_directory().")
    ids = list(releases[release].saes_map)
    if sae_id not in ids:
        raise ArtifactError(f"Release {release!r} has no SAE {sae_id!r}; it has {', '.join(ids[:6])}"
                            + (f" and {len(ids) - 6} more." if len(ids) > 6 else "."))
    try:
        sae = SAE.from_pretrained(release, sae_id, device=device)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, OSError) as err:
        raise ArtifactError(
            f"SAE {release}/{sae_id} is not in the local Hugging Face cache and the hub cannot be reached "
            f"({type(err).__name__}); load it once online (SAE.from_pretrained({release!r}, {sae_id!r})), or pass "
            "--sae DIR of one saved with sae.save_model(DIR)."
        ) from None
    # the registry's Neuronpedia id, which exports are keyed by (a cached config may not carry it)
    known = (releases[release].neuronpedia_id or {}).get(sae_id)
    if known and not sae.cfg.metadata.get("neuronpedia_id"):
        sae.cfg.metadata.neuronpedia_id = known
    return sae


def feature_vectors(sae, features=None) -> torch.Tensor:
    """Decoder rows (N, d_in) of the chosen features, float32, detached."""
    indices = feature_indices(sae, features)
    return sae.W_dec.detach()[indices].float().cpu()


def sae_dataset(sae, labels: dict[int, str], splits: dict[int, str] | None = None, extra: dict[int, dict] | None = None) -> VectorLabelDataset:
    """A `VectorLabelDataset` of the labelled features: id = feature index, label = its text.

    `labels` maps feature index -> label; `splits` optionally feature index -> split name.
    """
    indices = feature_indices(sae, sorted(labels))
    records = []
    for i in indices:
        record = {"id": str(i), "feature": i, "label": labels[i]}
        if splits and i in splits:
            record["split"] = splits[i]
        if extra and i in extra:
            record.update(extra[i])
        records.append(record)
    return VectorLabelDataset(feature_vectors(sae, indices), records, sae_metadata(sae))


def build_sae_dataset(sae=None, release=None, sae_id=None, labels=None, explanations=None, **options):
    """Vector source `sae`: features of an SAE with labels from a dict or a Neuronpedia export file."""
    sae = load_sae(sae, release, sae_id)
    if explanations is not None:
        from .neuronpedia import labelled_dataset, read_explanations

        return labelled_dataset(sae, read_explanations(explanations), **options)
    if not labels:
        raise ArtifactError("The `sae` vector source needs labels: a {feature: label} dict or a Neuronpedia export file.")
    return sae_dataset(sae, {int(k): v for k, v in labels.items()})
