"""Which SAE latent a value names: one whole number inside the SAE, checked wherever a latent is
read (labelling, scoring, the Neuronpedia files, `prepare_vectors`). A module of its own, with no
import of the plugin's other modules, because each of them needs it."""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable

import torch

from selfinterp_plugins.errors import VectorError

from .sae_info import sae_info


def feature_index(value, d_sae: int | None, what: str = "Feature index") -> int:
    """`value` as a latent index of an SAE with `d_sae` latents: a whole number (an int, a numpy or
    0-d torch integer, or a string of digits) in 0..d_sae-1 (>= 0 when the width is not known).
    Anything else is refused, never converted: `int(2.7)` is latent 2 and W_dec[-1] the last row,
    each another latent's row."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point() \
            and value.dtype != torch.bool:
        value = int(value)
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value.strip())
    span = f"0..{d_sae - 1}" if d_sae is not None else "0, 1, 2, ..."
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise VectorError(f"{what} {value!r:.40} is not a latent number; give whole numbers {span}.")
    if int(value) < 0 or (d_sae is not None and int(value) >= d_sae):
        latents = f"this SAE's {d_sae} latents" if d_sae is not None else "the SAE's latents"
        raise VectorError(f"{what} {int(value)} is outside {latents}; use {span}.")
    return int(value)


def feature_indices(sae, features=None) -> list[int]:
    """`features` as a checked list of latent indices (None: every latent; `range`s are fine). An
    empty selection is refused: labelling or scoring nothing would end 'done' having done nothing."""
    d_sae = sae_info(sae).d_sae
    if features is None:
        return list(range(d_sae))
    if isinstance(features, (str, bytes)) or not isinstance(features, Iterable):
        raise VectorError(f"features= takes a list or range of latent indices, got {features!r:.40}.")
    indices = [feature_index(i, d_sae) for i in features]
    if not indices:
        raise VectorError(f"The feature selection is empty; give at least one latent of 0..{d_sae - 1} "
                          "(e.g. range(0, 100), or --features 0:100).")
    if len(set(indices)) != len(indices):
        raise VectorError("Feature indices repeat; give each feature once.")
    return indices


#: a label record's id names its latent: `17`, or `17.1` for a latent's second explanation
#: (`neuronpedia.labelled_dataset`)
_LATENT_ID = re.compile(r"(\d+)(?:\.\d+)?")


def feature_of(record: dict, dataset, d_sae: int | None, n: int = 0) -> int:
    """The latent a label record describes: its `feature`, else its dataset row's, else its id's
    number; each checked against the SAE's `d_sae` latents. An id that names no latent ('cat')
    used to be a ValueError traceback, and a feature past the SAE's width or negative another
    latent's row; both are now one line naming the record (its 1-based number `n`)."""
    where = f"Label record {n} (id {str(record.get('id'))!r:.40})" if n else f"Label record id {str(record.get('id'))!r:.40}"
    if "feature" in record:
        return feature_index(record["feature"], d_sae, f"{where}: feature")
    if dataset is not None:
        for r in dataset.records:
            if r["id"] == record["id"] and "feature" in r:
                return feature_index(r["feature"], d_sae, f"{where}: feature")
    match = _LATENT_ID.fullmatch(str(record.get("id", "")).strip())
    if match is None:
        raise VectorError(f"{where} names no SAE latent: it has no 'feature' and its id is not a latent number; "
                          "score the labels of `sae label` (or of explain over an SAE dataset), or add 'feature'.")
    return feature_index(match.group(1), d_sae, f"{where}: latent")
