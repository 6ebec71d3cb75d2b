"""Why prepared vectors do not look like an explainer's training vectors, said with its fix.

An explainer names whatever it is given, fluently: a raw activation of another position, prompt or
layer, a vector centred twice and a steering vector passed as an activation all get labels
(`'mr'`, `'1135'`, `'mercury'` on SmolLM2; docs/concepts.md, "What an explainer can read", has the
measured table). One statistic per row tells the cases apart, each measured on the shipped
explainer (`scripts/ood_cases.py`):

- `ratio`, the prepared vector's norm over the training vectors' median norm (`vector_spec.vector_norm`):
  0.75-1.5 in distribution, 16-49 in every other case;
- `cos_in`, the given vector's cosine to the recorded mean, and its norm: 0.999 for an activation
  of the spec's own site, prompt and position; a vector centred already or a difference of
  activations (a steering vector, a difference of means) holds no mean (cosine -0.2 to 0.3, norm
  well under the mean's), so centring it again leaves mostly minus the mean (28×).

A centred spec's raw activations are mostly the mean (norm 126 against 4.4 on SmolLM2), which is
why one mean's worth more or less is what each case shows.
"""

from __future__ import annotations

import warnings

import torch

from .vector_spec import VectorSpec

#: a row whose prepared norm lies outside [1/OOD_RATIO, OOD_RATIO] times the training vectors'
#: median norm is not a training vector (in distribution: 0.75-1.5; every other case measured: >= 16)
OOD_RATIO = 2.5
#: below this cosine to the mean (in absolute value) a vector holds no mean: a difference of
#: activations (measured: 0.03 for a difference of topic means, -0.28 for love - hate)
NO_MEAN_COSINE = 0.5
#: a difference holds less than this share of the mean's norm (a raw activation: about 1 or more;
#: a difference of activations that are each attention sinks, `'Love' - 'Hate'`, does not: it reads as
#: an activation from elsewhere, which it is)
DIFFERENCE_SHARE = 0.5


def check_rows(spec: VectorSpec | None, mean: torch.Tensor | None, given: torch.Tensor, rows: torch.Tensor,
               as_rows: bool = False, stacklevel: int = 4) -> None:
    """Warn, one line per cause, about the rows of `rows` (prepared from `given`, given as (N, d)
    rows when `as_rows`) that do not look like training vectors: centred twice, a direction given
    as an activation, an activation read elsewhere, or the positions of one prompt given as rows."""
    if spec is None or not spec.vector_norm:
        return
    norm = spec.vector_norm
    ratio = rows.norm(dim=-1) / norm
    bad = (ratio > OOD_RATIO) | (ratio < 1 / OOD_RATIO)
    if not bool(bad.any()):
        return
    n = len(rows)
    where = f"{spec.site} at the {spec.position} token" + (" of explainer.vector_prompt(topic)" if spec.prompt else "")
    if mean is None:  # nothing subtracted: only the size can be judged
        warnings.warn(f"{_who(bad, n)} not read where the training vectors were ({float(ratio[bad].median()):.3g}× the "
                      "norm of one); "
                      f"pass raw activations of {where} ({spec.describe()}).",
                      stacklevel=stacklevel)
        return
    ratio_in = given.norm(dim=-1) / norm
    cos_in = torch.nn.functional.cosine_similarity(given, mean[None].expand_as(given), dim=-1)
    small = given.norm(dim=-1) < DIFFERENCE_SHARE * float(mean.norm())
    no_mean = bad & small & (cos_in.abs() < NO_MEAN_COSINE)
    elsewhere = bad & ~no_mean
    if n > 1 and as_rows and not bool(bad[-1]) and int(elsewhere[:-1].sum()) >= (n - 1) / 2:
        warnings.warn(f"These {n} rows look like the positions of one prompt (T, d): only the last reads like a "
                      "training vector. A tensor of one prompt's trace has lost its batch dimension (nnsight's "
                      "`output[0]`, TransformerLens's `cache[hook][0]`): pass the (1, T, d) activation, or (N, T, d) "
                      "of a batch with pos= and attention_mask=.", stacklevel=stacklevel)
        return
    if bool(no_mean.any()):
        warnings.warn(f"{_who(no_mean, n)} centred twice: they hold no mean activation (cosine "
                      f"{float(cos_in[no_mean].median()):.2f} to it, norm {float(ratio_in[no_mean].median()):.3g}× a "
                      "training vector's), so subtracting it left mostly minus the mean "
                      f"({float(ratio[no_mean].median()):.3g}×). Vectors centred already: pass them to explain() as they "
                      "are; a steering vector or difference of means: prepare_vectors(x, direction=True).",
                      stacklevel=stacklevel)
    if bool(elsewhere.any()):
        warnings.warn(f"{_who(elsewhere, n)} not read where the training vectors were: centred, their norm is "
                      f"{float(ratio[elsewhere].median()):.3g}× a training vector's (another position, prompt or "
                      f"layer, or padding). Read {where} (pos=-1, and attention_mask= for a padded batch).",
                      stacklevel=stacklevel)


def _who(mask: torch.Tensor, n: int) -> str:
    return "This vector:" if n == 1 else f"{int(mask.sum())} of {n} vectors:"
