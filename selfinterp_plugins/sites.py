"""Sites: where in the model a soft token goes, and how it is combined with what is there.

A site is the input embedding (`embed`), or the residual stream entering (`resid_pre`) or
leaving (`resid_post`) decoder block k. The combination is `replace` (the paper's adapters,
SelfIE, Patchscopes) or `add_normmatched` (Activation Oracles: h + c·‖h‖·v̂).

A row carries one soft token, used at every marked position of its prompt (the paper's template
holds its placeholder twice), or K of them, the k-th at the k-th marked position (an Activation
Oracle reads K activations at K ` ?` tokens).

The arithmetic lives here so every backend (torch hooks, nnsight, TransformerLens) injects
the same way; each backend only decides *how to reach* the site. `combine` is plain torch so
that nnsight can ship it by value inside a remote request, where this package is not installed.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .errors import BackendError
from .storage.validation import NonNegativeInt, check_fields, validate

# public: backends and vector sources say where a vector lives with a Site; a backend that cannot run
# `inject` where the model is (nnsight on NDIF) ships `combine`, its arithmetic, by value
__all__ = ["Site", "check_slots", "combine"]

KINDS = ("embed", "resid_pre", "resid_post")
MODES = ("replace", "add_normmatched")

_SHORT = re.compile(r"^(resid_pre|resid_post)[.:](\d+)$")
_TL = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_post)$")
_TL_OTHER = re.compile(r"^blocks\.\d+\.(hook_resid_mid|hook_attn_out|hook_mlp_out|ln\d\.|attn\.|mlp\.)")
_SHORT_OTHER = re.compile(r"^(resid_mid|attn_out|mlp_out)[.:]\d+$")
_SITES_HINT = ("the sites are 'embed', 'resid_pre.K' and 'resid_post.K' (K = 0 .. n_layers-1), or TransformerLens' "
               "'hook_embed', 'blocks.K.hook_resid_pre' and 'blocks.K.hook_resid_post'.")


@dataclass(frozen=True)
class Site:
    """A place in the residual stream plus an injection mode."""

    kind: Literal["embed", "resid_pre", "resid_post"] = "embed"
    layer: NonNegativeInt | None = None
    mode: Literal["replace", "add_normmatched"] = "replace"
    coef: float = 1.0

    def __post_init__(self):
        check_fields(self, "Site", f"use a kind of {KINDS}, a layer >= 0, a mode of {MODES} and a finite coef.",
                     error=BackendError)
        if self.kind != "embed" and self.layer is None:
            raise BackendError(f"Site {self.kind} needs a layer index >= 0, e.g. '{self.kind}.10'.")
        if self.kind == "embed" and self.layer is not None:
            object.__setattr__(self, "layer", None)

    @classmethod
    def parse(cls, spec: str | Site, mode: str = "replace", coef: float = 1.0) -> Site:
        """Accept `embed`, `resid_pre.10`, `resid_post:10`, or TransformerLens names such as
        `hook_embed` and `blocks.10.hook_resid_pre`."""
        if isinstance(spec, Site):
            return spec
        if not isinstance(spec, str):
            raise BackendError(f"A site is a name such as 'embed' or 'resid_post.10' (or a Site), not {type(spec).__name__} "
                               f"{spec!r:.40}; pass one.")
        text = spec.strip()
        if text in ("embed", "hook_embed"):
            return cls("embed", None, mode, coef)
        match = _SHORT.match(text)
        if match:
            return cls(match.group(1), int(match.group(2)), mode, coef)
        match = _TL.match(text)
        if match:
            return cls(match.group(2), int(match.group(1)), mode, coef)
        hint = ""
        if _TL_OTHER.match(text) or _SHORT_OTHER.match(text):
            hint = " (a soft token or vector lives in the residual stream between blocks, not inside one)"
        raise BackendError(f"Cannot read site {spec!r}{hint}; {_SITES_HINT}")

    @property
    def hook_name(self) -> str:
        """The TransformerLens hook point of this site (`hook_embed`, `blocks.K.hook_resid_post`)."""
        return "hook_embed" if self.kind == "embed" else f"blocks.{self.layer}.hook_{self.kind}"

    @property
    def name(self) -> str:
        return "embed" if self.kind == "embed" else f"{self.kind}.{self.layer}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "Site config", prefix: str = "") -> Site:
        return validate(cls, data, source, "re-save the explainer.", prefix=prefix, unknown="ignore")


def inject(hidden: torch.Tensor, soft: torch.Tensor, mask: torch.Tensor, site: Site) -> torch.Tensor:
    """Combine soft tokens into `hidden` at the masked positions; differentiable in `soft`.

    hidden: (B, T, d); soft: (B, d), one soft token per row used at every masked position of that
    row, or (B, K, d), K per row, the k-th at the row's k-th masked position; mask: (B, T) bool."""
    check_slots(soft, mask)
    return combine(hidden, soft, mask, site.mode, float(site.coef))


def check_slots(soft: torch.Tensor, mask: torch.Tensor) -> None:
    """K soft tokens per row need exactly K marked positions in every row: with fewer the last ones
    would be dropped, with more one would be used twice, silently."""
    if soft.dim() == 3 and soft.shape[1] > 1:
        counts = torch.as_tensor(mask).sum(dim=1)
        if not bool((counts == soft.shape[1]).all()):
            raise BackendError(f"{soft.shape[1]} soft tokens per row but the prompt marks {sorted(set(counts.tolist()))} "
                               "positions; build the prompt with as many placeholders as vectors per row.")


def combine(hidden: torch.Tensor, soft: torch.Tensor, mask: torch.Tensor, mode: str, coef: float) -> torch.Tensor:
    """`inject`'s arithmetic, torch only.

    `replace` writes the soft token over the hidden state. `add_normmatched` is the Activation
    Oracles' steering hook (activation_oracles `nl_probes/utils/steering_hooks.py`, lines 155 and
    181-191): h + (normalize(v)·‖h‖·c) cast to h's dtype, where normalize is torch's (v / max(‖v‖,
    1e-12)) taken in v's own dtype, and ‖h‖ carries no gradient (the reference detaches the added
    term; here the soft token keeps its gradient, so an adapter can still be trained through it)."""
    if soft.dim() == 2:
        soft = soft[:, None, :]
    soft = soft.to(device=hidden.device)
    where = mask.to(hidden.device)
    # the k-th marked position of a row takes the row's k-th soft token (a single one: every position)
    slot = (torch.cumsum(where.long(), dim=1) - 1).clamp(min=0, max=soft.shape[1] - 1)
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
    placed = soft[rows, slot]
    if mode == "add_normmatched":
        norms = hidden.norm(dim=-1, keepdim=True).detach()
        placed = hidden + (F.normalize(placed, dim=-1) * norms * coef).to(hidden.dtype)
    else:
        placed = placed.to(hidden.dtype)
    return torch.where(where[:, :, None], placed, hidden)
