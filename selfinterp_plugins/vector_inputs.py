"""Turn what a user holds into an explainer's input, the way its training vectors were made.

Users arrive with an activation tensor from their own nnsight trace, a TransformerLens cache entry
(or the whole `ActivationCache`), or an SAE-Lens SAE. `prepare_vectors` gives (N, d_model) rows: the
last position of a (N, T, d) activation, the recorded mean subtracted (`VectorSpec.centring`), and a
one-line warning when the site given differs from the spec's or the result does not look like a
training vector (still uncentred, or centred twice): the silent failure this exists to end is an
explainer fluently naming the wrong thing.
"""

from __future__ import annotations

import numbers
import warnings

import torch

from .errors import VectorError
from .sites import Site
from .vector_checks import check_rows
from .vector_spec import VectorSpec, mean_problem

__all__ = ["prepare_vectors"]

def prepare_vectors(spec: VectorSpec | None, metadata: dict, x, site=None, features=None, pos=None,
                    attention_mask=None, direction: bool = False) -> torch.Tensor:
    """(N, d) float32 rows for `Explainer.explain`; see `Explainer.prepare_vectors`."""
    given_site = Site.parse(site) if site is not None else None
    if hasattr(x, "W_dec"):  # an SAE-Lens SAE (duck-typed: the core never imports sae_lens)
        _no_positions(pos, attention_mask, "an SAE's decoder rows")
        rows = torch.as_tensor(x.W_dec).detach().float().cpu()
        if features is not None:
            rows = rows[torch.tensor(_latent_indices(features, len(rows)), dtype=torch.long)]
        _check_site(spec, given_site or _sae_site(x))
        # decoder rows are directions (differences of activations), not activations: no mean to remove
        return rows
    if features is not None:
        raise VectorError("features= selects an SAE's latents; for activations index the tensor yourself.")
    if hasattr(x, "cache_dict"):  # a TransformerLens ActivationCache: read site= or else the spec's site
        if given_site is None and spec is None:
            raise VectorError("This explainer records no site to read from a whole cache; pass site= (e.g. "
                              "site='blocks.10.hook_resid_post') or the cache entry itself.")
        key = (given_site or Site.parse(spec.site)).hook_name
        if key not in x.cache_dict:
            raise VectorError(f"The cache holds no {key!r}; run the model with that hook cached (names_filter).")
        x, given_site = x[key], given_site or Site.parse(spec.site)
    if direction:
        _no_positions(pos, attention_mask, "directions")
        rows = _rows(x)
        _check_site(spec, given_site)
        # the paper's evaluation convention: v/‖v‖, then explain's scales; no mean (a direction has none)
        return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    rows = _rows(x, pos, attention_mask)
    _check_site(spec, given_site)
    mean = None
    if spec is not None and spec.centring == "mean":
        problem = mean_problem(metadata.get(spec.mean_key), f"metadata[{spec.mean_key!r}]")
        if problem:
            raise VectorError(f"The explainer's vector_spec subtracts its mean, but {problem}; re-save the explainer "
                              "with its mean.")
        mean = torch.tensor(metadata[spec.mean_key], dtype=torch.float32)
        if mean.shape[-1] != rows.shape[-1]:
            raise VectorError(f"Vectors have width {rows.shape[-1]} but the explainer's mean {mean.shape[-1]}; "
                              "read them from the model the explainer was trained on.")
    prepared = rows - mean if mean is not None else rows
    # rows of a (T, d) input may be one prompt's positions (_rows has read x, so it converts)
    check_rows(spec, mean, rows, prepared, as_rows=torch.as_tensor(x).dim() == 2)
    return prepared


def _latent_indices(features, n: int) -> list[int]:
    """`features` as whole numbers in 0..n-1, at least one: a cast to long took 2.7 as latent 2, and
    indexing took -1 as the last latent, each another latent's decoder row without a word."""
    fix = f"features= takes latent indices 0..{n - 1} (a list or range, at least one), got {features!r:.60}."
    try:
        values = list(features)
    except TypeError:
        raise VectorError(fix) from None
    indices = []
    for value in values:
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point() \
                and value.dtype != torch.bool:
            value = int(value)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not 0 <= int(value) < n:
            raise VectorError(fix)
        indices.append(int(value))
    if not indices or isinstance(features, (str, bytes)):
        raise VectorError(fix)
    return indices


def _rows(x, pos=None, attention_mask=None) -> torch.Tensor:
    """(N, d) from a vector (d), rows (N, d) or activations (N, T, d) read at `pos` (default the
    last position; counted among each row's real tokens when `attention_mask` is given)."""
    try:
        x = torch.as_tensor(x).detach()
    except (TypeError, ValueError, RuntimeError) as err:
        raise VectorError(f"Cannot read a {type(x).__name__} as vectors ({str(err).splitlines()[0]:.80}); pass a tensor (d), (N, d) or "
                          "(N, T, d), a TransformerLens cache entry, or an SAE-Lens SAE.") from None
    if x.dim() not in (1, 2, 3) or not x.is_floating_point():
        raise VectorError(f"Vectors must be float (d), (N, d) or (N, T, d), got {x.dtype} of shape "
                          f"{tuple(x.shape)}; pass the residual stream you captured.")
    if 0 in x.shape:  # an empty trace: (N, 0, d) has no last position, and no rows would explain nothing
        raise VectorError(f"Got empty vectors of shape {tuple(x.shape)}; pass at least one vector of the model's width "
                          "(activations with at least one position).")
    if x.dim() < 3:
        _no_positions(pos, attention_mask, f"vectors of shape {tuple(x.shape)}")
        return (x[None] if x.dim() == 1 else x).float().cpu()
    x = x.float().cpu()
    return x[torch.arange(len(x)), positions(pos, attention_mask, tuple(x.shape[:2]))]


def positions(pos, attention_mask, shape: tuple[int, int]) -> torch.Tensor:
    """One absolute position per row of (N, T, d) activations from `pos` (TransformerLens's
    convention: an int, negative from the end, or one per row) counted among each row's real tokens
    of `attention_mask` (N, T), padding on either side; out of range is refused, never wrapped."""
    n, t = shape
    if attention_mask is None:
        mask = torch.ones(n, t, dtype=torch.bool)
    else:
        try:
            mask = torch.as_tensor(attention_mask).detach().cpu()
        except (TypeError, ValueError, RuntimeError):
            mask = None
        if mask is None or tuple(mask.shape) != (n, t) or mask.is_floating_point() and not bool(((mask == 0) | (mask == 1)).all()):
            raise VectorError(f"attention_mask= should be the (N, T) = {(n, t)} mask of 0s and 1s the batch ran with "
                              f"(got {type(attention_mask).__name__} {tuple(getattr(mask, 'shape', ()))}); pass "
                              "batch['attention_mask'].")
        mask = mask.bool()
    lengths = mask.sum(1)
    if bool((lengths == 0).any()):
        raise VectorError("attention_mask= has a row with no real token; pass the mask the batch ran with.")
    want = -1 if pos is None else pos
    try:
        index = torch.as_tensor(want)
    except (TypeError, ValueError, RuntimeError):
        index = torch.tensor(0.5)
    if index.is_floating_point() or index.dtype == torch.bool or index.dim() > 1 or \
            (index.dim() == 1 and len(index) != n) or isinstance(want, bool):
        raise VectorError(f"pos= is one position (an int, negative from the end) or one per row ({n} ints), got "
                          f"{want!r:.60}; e.g. pos=-1 for the last token.")
    index = index.long().expand(n).clone()
    index = torch.where(index < 0, lengths + index, index)
    if bool(((index < 0) | (index >= lengths)).any()):
        row = int(((index < 0) | (index >= lengths)).nonzero()[0])
        raise VectorError(f"pos= {want!r:.40} lies outside row {row}'s {int(lengths[row])} real tokens; pass a position "
                          "within each prompt (negative counts from its end).")
    # the k-th real token of each row: real tokens numbered 0.. in order, whichever side the padding is
    rank = mask.long().cumsum(1) - 1
    return ((rank == index[:, None]) & mask).float().argmax(1)


def _no_positions(pos, attention_mask, what: str) -> None:
    if pos is not None or attention_mask is not None:
        raise VectorError(f"pos= and attention_mask= select positions of (N, T, d) activations, not of {what}; "
                          "index the tensor yourself, or pass the (N, T, d) activation.")


def _sae_site(sae) -> Site | None:
    cfg = getattr(sae, "cfg", None)
    name = getattr(getattr(cfg, "metadata", None), "hook_name", None) or getattr(cfg, "hook_name", None)
    try:
        return Site.parse(name) if isinstance(name, str) else None
    except Exception:  # a hook that is not a site (hook_resid_mid, attention): nothing to compare
        return None


def _check_site(spec: VectorSpec | None, site: Site | None) -> None:
    if spec is None or site is None:
        return
    want = Site.parse(spec.site)
    if (site.kind, site.layer) != (want.kind, want.layer):
        warnings.warn(f"Vectors from {site.name} but this explainer was trained on {want.name} ({spec.describe()}); "
                      "its labels for them may be meaningless.", stacklevel=3)
