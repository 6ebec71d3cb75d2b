"""Activation Oracles (Karvonen et al. 2025) as an explainer: the oracle's prompt, its injection,
its decoding; the oracle's LoRA comes from the PEFT plugin.

An oracle is the model itself, asked a question about K activations placed in its prompt: the
user turn is `Layer: {L}\\n ? ? … ? \\n{question}` (K ordinary ` ?` tokens), and after decoder
layer 1 each ` ?` position's residual h gains normalize(v)·‖h‖·c (c = 1), v its activation; the
answer is greedy. The published oracles are that model with a LoRA (`adamkarvonen/checkpoints_…`,
PEFT directories): `Explainer.from_pretrained(oracle_dir, model=..., layer=..., question=...)` with
the PEFT plugin installed loads one. Without a LoRA, `activation_oracle` is the method on the
model as it is (the untrained form), the same prompt and injection.

Settings, each read from the reference (adamkarvonen/activation_oracles; docs/fidelity.md):
injection after layer 1 (`hook_onto_layer = 1`, nl_probes/configs/sft_config.py line 15; the
forward hook on `model.layers[1]`, i.e. `resid_post.1` here); steering coefficient 1.0 (line 23);
greedy decoding, at most 50 new tokens (the demo notebook's `generation_kwargs`).
"""

from __future__ import annotations

from .backends.decoding import Sampling
from .sites import Site
from .templates import PromptTemplate

# public: the oracle explainer and the reference's settings, for the PEFT plugin and for users
__all__ = ["INJECTION_LAYER", "ORACLE_SAMPLING", "STEERING_COEFFICIENT", "activation_oracle", "oracle_layer",
           "oracle_site"]

#: decoder layer whose output takes the activations (the reference's hook_onto_layer)
INJECTION_LAYER = 1
#: c in h + c·‖h‖·v̂ (the reference's steering_coefficient)
STEERING_COEFFICIENT = 1.0
#: the demo notebook's generation settings: greedy, up to 50 new tokens
ORACLE_SAMPLING = Sampling(temperature=0.0, max_new_tokens=50)


def oracle_site(injection_layer: int = INJECTION_LAYER, coef: float = STEERING_COEFFICIENT) -> Site:
    """Norm-matched addition at the output of decoder layer `injection_layer`."""
    return Site("resid_post", injection_layer, "add_normmatched", coef)


def oracle_layer(n_layers: int, percent: int = 50) -> int:
    """The layer the reference reads activations at for a depth percentage: int(n_layers·p/100)
    (`layer_percent_to_layer`, nl_probes/utils/common.py lines 132-135; 50 in its examples)."""
    return int(n_layers * (percent / 100))


def activation_oracle(model, tokenizer=None, *, layer: int, question: str, positions: int = 1,
                      coef: float = STEERING_COEFFICIENT, injection_layer: int = INJECTION_LAYER,
                      backend_options: dict | None = None, model_id: str | None = None):
    """An Activation Oracle on `model` (any model object a backend runs): asks `question` about
    `positions` activations per prompt read at `layer` (`Explainer.explain` then takes (N, d_model)
    for one, (N, K, d_model) for K). The model as it is; the PEFT plugin's `load_oracle` adds a
    published oracle's LoRA (`explainer.model_patch`)."""
    from .adapters import AdapterConfig, make_adapter
    from .explainer import Explainer
    from .models.identity import model_id_of
    from .plugins import backend_for

    backend = backend_for(model, tokenizer=tokenizer, **(backend_options or {}))
    template = PromptTemplate.activation_oracle(backend.tokenizer, layer, question, positions)
    site = backend.check_site(oracle_site(injection_layer, coef))
    backend.check_site(Site("resid_post", layer))  # the layer the prompt names must be one this model has
    adapter = make_adapter(AdapterConfig(kind="raw", d_model=backend.d_model, init_scale=1.0))
    metadata = {"method": "activation_oracle", "layer": layer, "question": question, "positions": positions}
    explainer = Explainer(backend, adapter, template, site, model_id or model_id_of(backend), metadata)
    explainer.default_sampling = ORACLE_SAMPLING
    return explainer
