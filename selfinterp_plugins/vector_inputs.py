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
from .vector_spec import VectorSpec, mean_problem

__all__ = ["prepare_vectors"]

#: a prepared vector's norm (the rows' mean, for several) above this many times the training
#: vectors' median norm looks uncentred: a raw activation holds the mean, often several times larger
UNCENTRED_RATIO = 2.5


def prepare_vectors(spec: VectorSpec | None, metadata: dict, x, site=None, features=None) -> torch.Tensor:
    """(N, d) float32 rows for `Explainer.explain`; see `Explainer.prepare_vectors`."""
    given_site = Site.parse(site) if site is not None else None
    if hasattr(x, "W_dec"):  # an SAE-Lens SAE (duck-typed: the core never imports sae_lens)
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
    rows = _rows(x)
    _check_site(spec, given_site)
    if spec is not None and spec.centring == "mean":
        problem = mean_problem(metadata.get(spec.mean_key), f"metadata[{spec.mean_key!r}]")
        if problem:
            raise VectorError(f"The explainer's vector_spec subtracts its mean, but {problem}; re-save the explainer "
                              "with its mean.")
        mean = torch.tensor(metadata[spec.mean_key], dtype=torch.float32)
        if mean.shape[-1] != rows.shape[-1]:
            raise VectorError(f"Vectors have width {rows.shape[-1]} but the explainer's mean {mean.shape[-1]}; "
                              "read them from the model the explainer was trained on.")
        rows = rows - mean
    _check_scale(spec, metadata, rows)
    return rows


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


def _rows(x) -> torch.Tensor:
    """(N, d) from a vector (d), rows (N, d) or activations (N, T, d) whose last position is taken."""
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
    if x.dim() == 1:
        x = x[None]
    elif x.dim() == 3:
        x = x[:, -1]  # the last position: where topic vectors are read (right padding would break it)
    return x.float().cpu()


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


def _check_scale(spec: VectorSpec | None, metadata: dict, rows: torch.Tensor) -> None:
    """Warn when the rows' mean is far larger than a training vector: still uncentred, centred
    twice, or read from another site or prompt form."""
    if spec is None or not spec.vector_norm:
        return
    size = float(rows.mean(0).norm())
    if size > UNCENTRED_RATIO * spec.vector_norm:
        how = "minus the mean it subtracts" if spec.centring == "mean" else "as is"
        warnings.warn(f"These vectors look uncentred: their mean has norm {size:.3g}, training vectors {spec.vector_norm:.3g} "
                      f"(pass raw activations of {spec.site}, {how}; see explainer.vector_spec).", stacklevel=3)
