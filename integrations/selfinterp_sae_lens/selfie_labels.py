"""The selfie-adapters repository's SAE label files as a dataset: the paper's SAE training set.

Pepper et al. trained their SAE adapter on `data/goodfire_8b_sae_labels.json.gz` of
agencyenterprise/selfie-adapters: 45,418 labels of the latents of Goodfire's
Llama-3.1-8B-Instruct layer-19 SAE (SAE-Lens release `goodfire-llama-3.1-8b-instruct`, id
`layer_19`), each with the train/val split the paper used (40,877 / 4,541). The file is the
reference's training format (`data/README.md`): `[{"metadata": {dataset_name, layer, ...},
"vectors": [{"index", "labels", "split"}, ...]}]`. The reference turns it into training data with
`data_prep/prepare_sae_training_data.py`: the first section, each latent's first label (lines
233-248), the split kept (`create_train_val_split` with `existing_splits`, lines 325-357: a latent
without one goes to train), the vector = the SAE's decoder row `W_dec[index]` (line 492). This does
the same into a `VectorLabelDataset` (split names train / validation: `val` is `validation` here).
"""

from __future__ import annotations

from pathlib import Path

from selfinterp_plugins.datasets import VectorLabelDataset
from selfinterp_plugins.errors import ArtifactError, LabelError
from selfinterp_plugins.storage import parse_json, read_bytes
from selfinterp_plugins.storage.validation import MAX_INFLATED_BYTES

from .sae_info import sae_info, sae_metadata, sae_site

__all__ = ["read_selfie_labels", "selfie_labels_dataset"]

#: the reference's split names -> this library's
SPLITS = {"train": "train", "val": "validation"}
#: the file itself is 1.2 MB gzipped, 6 MB inflated; a label file 10x that is still accepted
MAX_LABEL_FILE_BYTES = 64 << 20


def read_selfie_labels(path) -> tuple[dict, dict[int, str], dict[int, str]]:
    """(the section's metadata, latent -> label, latent -> split) of a reference label file (.json
    or .json.gz), as `load_goodfire_labels_json` reads it; every malformed entry one LabelError."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"No label file at {path}; download data/goodfire_8b_sae_labels.json.gz from the "
                            "agencyenterprise/selfie-adapters repository and pass its path.")
    raw = read_bytes(path, MAX_LABEL_FILE_BYTES, MAX_INFLATED_BYTES)
    try:
        data = parse_json(raw.decode("utf-8"), path)
    except UnicodeDecodeError:
        raise ArtifactError(f"{path} is not UTF-8 JSON; re-download it.") from None
    section = data[0] if isinstance(data, list) and data else None
    if not isinstance(section, dict) or not isinstance(section.get("vectors"), list):
        raise ArtifactError(f"{path} is not a selfie-adapters label file (a list whose first section has 'metadata' and "
                            "'vectors', data/README.md of the reference); re-download it.")
    metadata = section.get("metadata") if isinstance(section.get("metadata"), dict) else {}
    labels, splits = {}, {}
    for n, item in enumerate(section["vectors"]):
        where = f"{path}: vectors[{n}]"
        if not isinstance(item, dict) or isinstance(item.get("index"), bool) or not isinstance(item.get("index"), int):
            raise LabelError(f"{where} has no integer 'index'; fix or delete that entry.")
        index, texts = item["index"], item.get("labels")
        if index < 0 or index in labels:
            raise LabelError(f"{where}: index {index} is negative or repeated; fix or delete that entry.")
        if texts in (None, []):
            continue  # no label: the reference leaves the latent out
        if not isinstance(texts, list) or not isinstance(texts[0], str) or not texts[0].strip():
            raise LabelError(f"{where} (latent {index}): 'labels' should be a list of non-empty strings; fix that entry.")
        split = item.get("split", "train")
        if split not in SPLITS:
            raise LabelError(f"{where} (latent {index}): split {split!r} is neither 'train' nor 'val'; fix that entry.")
        labels[index], splits[index] = texts[0], SPLITS[split]
    if not labels:
        raise ArtifactError(f"{path} labels no latent; is it the right file?")
    return metadata, labels, splits


def selfie_labels_dataset(sae, path) -> VectorLabelDataset:
    """The labelled latents of `sae` with the file's labels and split: id = latent index, vector =
    its decoder row. Refused when the file cannot be this SAE's: a latent past its width, or a
    layer other than the one the SAE reads."""
    metadata, labels, splits = read_selfie_labels(path)
    d_sae = sae_info(sae).d_sae
    outside = [i for i in labels if i >= d_sae]
    if outside:
        raise LabelError(f"{path} labels latent {max(outside)}, but this SAE has {d_sae} latents ({len(outside)} such "
                         "entries); pass the SAE the labels were written for (Goodfire's: "
                         "SAE.from_pretrained('goodfire-llama-3.1-8b-instruct', 'layer_19')).")
    layer = metadata.get("layer")
    site = sae_site(sae)
    if isinstance(layer, int) and site.layer is not None and layer != site.layer:
        raise ArtifactError(f"{path} labels the latents of a layer-{layer} SAE; this SAE reads {site.name}. Pass the SAE "
                            "the labels were written for.")
    indices = sorted(labels)
    records = [{"id": str(i), "feature": i, "label": labels[i], "split": splits[i]} for i in indices]
    meta = dict(sae_metadata(sae), labels_file=Path(path).name, labels_dataset=metadata.get("dataset_name"),
                split_from="the label file (the paper's split)")
    return VectorLabelDataset(sae.W_dec.detach()[indices].float().cpu(), records, meta)
