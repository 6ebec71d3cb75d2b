"""Untrained self-interpretation baselines (SelfIE, Patchscopes, self-explaining SAE features, Activation Oracles) as explainers, each with its sweep.

Untrained methods are known to work only in a narrow band of injection scale and layer; a fair
comparison sweeps both and reports the best point (chosen on validation data), and the
sensitivity report shows the whole grid. Every baseline here is an ordinary `Explainer` with no
trained parameters, so it runs on every backend and through every scorer:

- `selfie`: the raw vector replaces the hidden state entering decoder layer k (default 1) at the
  five placeholders of SelfIE's prompt; no normalisation (`raw` adapter, scale 1 = SelfIE).
- `patchscopes`: the raw vector overwrites the output of target layer ℓ_t at the placeholder of
  the few-shot entity prompt.
- `self_explaining`: Kharlapenko et al.: the output of layer 2 at both "X" of `What is the meaning
  of the word "X"? … The meaning of the word "X" is "` := scale·v̂.
- `activation_oracle`: norm-matched addition h + c·‖h‖·v̂ after layer 1 at the placeholders, on
  the base model (the published oracle is LoRA-tuned; this is its untrained form); c is swept.
- `scale_only`: the paper's own untrained baseline, s·x̂ at the input embedding, chat template.

Plugins add their own through the `register_baselines` hook.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..adapters import AdapterConfig, make_adapter
from ..errors import UnknownNameError
from ..sites import Site
from ..templates import PromptTemplate

SELF_EXPLAINING_USER = 'What is the meaning of the word "{placeholder}"?'
SELF_EXPLAINING_ANSWER = 'The meaning of the word "{placeholder}" is "'


@dataclass(frozen=True)
class Baseline:
    """An untrained explainer recipe: prompt, injection site and kind, and the grid to sweep.

    `scales` multiply the vector (after normalisation for `scale_only`, raw for `raw`) or, for
    `add_normmatched`, are the coefficient c; `layers` are the injection layers swept (None for
    the input embedding)."""

    name: str
    template: str
    site_kind: str
    adapter: str
    default_layer: int | None
    scales: tuple[float, ...]
    mode: str = "replace"
    layers: tuple[int, ...] | None = None
    reference: str = ""
    extra: dict = field(default_factory=dict)

    def explainer(self, backend, layer: int | None = None, coef: float = 1.0):
        """The untrained explainer at `layer` (default: the method's own) on `backend`."""
        from ..explainer import Explainer

        layer = self.default_layer if layer is None else layer
        site = Site(self.site_kind, None if self.site_kind == "embed" else layer, self.mode, coef)
        template = template_for(self.template, backend.tokenizer)
        adapter = make_adapter(AdapterConfig(kind=self.adapter, d_model=backend.d_model, init_scale=1.0))
        for p in adapter.parameters():
            p.requires_grad_(False)
        explainer = Explainer(backend, adapter, template, site, metadata={"baseline": self.name, "layer": layer})
        return explainer

    def layer_grid(self, n_layers: int) -> list[int | None]:
        """Layers to sweep: the method's own list, or about eight spread over the model."""
        if self.site_kind == "embed":
            return [None]
        if self.layers is not None:
            return [layer for layer in self.layers if layer < n_layers]
        step = max(1, n_layers // 8)
        return sorted({*range(0, n_layers - 1, step), self.default_layer})


def template_for(name: str, tokenizer) -> PromptTemplate:
    if name == "self_explaining":
        return PromptTemplate.chat(tokenizer, user=SELF_EXPLAINING_USER, answer=SELF_EXPLAINING_ANSWER,
                                   name="self_explaining")
    return PromptTemplate.named(name, tokenizer)


UNTRAINED_SCALES = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # Pepper et al.'s untrained grid

BUILTIN_BASELINES = {
    b.name: b
    for b in (
        Baseline("selfie", "selfie", "resid_pre", "raw", 1, (0.25, 0.5, 1.0, 2.0, 4.0),
                 reference="Chen et al. 2024, SelfIE"),
        Baseline("patchscopes", "patchscopes", "resid_post", "raw", 2, (0.25, 0.5, 1.0, 2.0, 4.0),
                 reference="Ghandeharioun et al. 2024, Patchscopes"),
        Baseline("self_explaining", "self_explaining", "resid_post", "scale_only", 2, UNTRAINED_SCALES,
                 reference="Kharlapenko et al. 2024, self-explaining SAE features"),
        Baseline("activation_oracle", "chat", "resid_post", "scale_only", 1, (0.5, 1.0, 2.0, 4.0),
                 mode="add_normmatched", reference="Karvonen et al. 2025, Activation Oracles (untrained)"),
        Baseline("scale_only", "chat", "embed", "scale_only", None, UNTRAINED_SCALES,
                 reference="Pepper et al. 2026, untrained baseline"),
    )
}


def get_baseline(name: str) -> Baseline:
    from ..plugins import registry

    baselines = {n: b for n, (_p, b) in registry().baselines.items()}
    if name not in baselines:
        raise UnknownNameError(f"Unknown baseline {name!r}; choose one of: {', '.join(sorted(baselines))}.")
    return baselines[name]
