"""The `transformer_lens` backend: HookedTransformer and TransformerBridge, soft tokens injected
through TransformerLens hook points (`hook_embed`, `blocks.{k}.hook_resid_pre`,
`blocks.{k}.hook_resid_post`), the names TL users already write.

It supplies the primitives of `Backend` (selfinterp_plugins/backends/base.py), which runs the
verbs, so both model kinds get what the hf backend has: the template's shared prefix computed once
and its keys and values reused, the LM head only at the positions asked for, injection in the
prefill only, finished rows leaving the batch, capture stopped after the deepest layer read.

- HookedTransformer: `run` is the model with `stop_at_layer=n_layers` (the residual stream before
  `ln_final`) and TL's own key-value cache; `head` is `ln_final`, `unembed` and TL's softcap.
- TransformerBridge: the bridge puts its components, hook points included, in place of the wrapped
  transformers model's modules, so `run` calls that model's body directly (hooks fire as in the
  bridge's own forward) with a transformers `DynamicCache`; `head` is its output embedding. (The
  bridge's `stop_at_layer` did not return the residual stream its final norm expects, and its
  forward computes logits at every position, which is why the body is called.)
TransformerLens would build an attention mask from the pad token on its own; the backend always
passes an all-ones mask instead (see `_ones`).

An explainer's `LowRankPatch` (an Activation Oracle's LoRA, named in transformers' modules) is
forward hooks on the bridge's wrapped model, as on `hf`; a HookedTransformer has no such modules,
so the patch is added to its own weights for the explainer's calls and taken off exactly after
(`_hooked_weights_patched`).
"""

from __future__ import annotations

import contextlib
import re

import torch

from selfinterp_plugins.backends import Backend
from selfinterp_plugins.backends.hf import expand_cache, select_cache_rows, softcapped
from selfinterp_plugins.errors import BackendError
from selfinterp_plugins.sites import Site


def hook_name(site: Site) -> str:
    """The TransformerLens hook point of a core site."""
    return "hook_embed" if site.kind == "embed" else f"blocks.{site.layer}.hook_{site.kind}"


def is_bridge(model) -> bool:
    return type(model).__name__ == "TransformerBridge"


class TransformerLensBackend(Backend):
    """Backend for `HookedTransformer` (TransformerLens 3.x; what SAE-Lens uses) and `TransformerBridge`."""

    name = "transformer_lens"

    def __init__(self, model, tokenizer=None):
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        if self.tokenizer is None:
            raise BackendError("This TransformerLens model has no tokenizer; pass tokenizer=... next to model=....")
        self.bridge = is_bridge(model)
        self._fingerprint: str | None = None

    # ---- facts ----------------------------------------------------------------------------

    @property
    def d_model(self) -> int:
        return int(self.model.cfg.d_model)

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    @property
    def device(self) -> torch.device:
        return self._embedding_weight().device

    def _embedding_weight(self) -> torch.Tensor:
        if self.bridge:
            return self.model.original_model.get_input_embeddings().weight
        return self.model.W_E

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """What `hook_embed` sees: the token embedding (with the model's own scaling, e.g. Gemma's)."""
        with torch.no_grad():
            if self.bridge:
                return self.model.original_model.get_input_embeddings()(ids.to(self.device))
            return self.model.embed(ids.to(self.device))

    def text_ids(self, text: str) -> list[int]:
        """What `model.run_with_cache(text)` runs: TransformerLens tokenises a string with
        `to_tokens`, which prepends BOS (unless the model's `default_prepend_bos` is off)."""
        return self.model.to_tokens(text, truncate=False)[0].tolist()

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from selfinterp_plugins.models import embedding_fingerprint, fingerprint_digest, fingerprint_rows

            if self.bridge:
                self._fingerprint = embedding_fingerprint(self.model.original_model)
            else:
                weight = self.model.W_E.detach()
                self._fingerprint = fingerprint_digest(tuple(weight.shape), weight[fingerprint_rows(weight.shape[0])])
        return self._fingerprint

    # ---- primitives -----------------------------------------------------------------------

    def _hooks(self, injection) -> list:
        if injection is None:
            return []
        return [(hook_name(injection.site), lambda value, hook=None: injection.apply(value))]

    def run(self, input_ids, injection=None, past=None, keep_past=False):
        ids = input_ids.to(self.device)
        if self.bridge:
            if past is None and keep_past:
                from transformers import DynamicCache

                past = DynamicCache(config=self.model.original_model.config)
            with self.model.hooks(fwd_hooks=self._hooks(injection)):
                out = self.model.original_model.base_model(input_ids=ids, past_key_values=past, use_cache=past is not None)
            return out.last_hidden_state, out.past_key_values if past is not None else None
        if past is None and keep_past:
            from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

            past = TransformerLensKeyValueCache.init_cache(self.model.cfg, self.device, ids.shape[0])
        with self.model.hooks(fwd_hooks=self._hooks(injection)):
            resid = self.model(ids, stop_at_layer=self.n_layers, attention_mask=_ones(ids), past_kv_cache=past)
        return resid, past

    def head(self, hidden):
        if self.bridge:
            config = self.model.original_model.config
            return softcapped(self.model.original_model.get_output_embeddings()(hidden),
                              getattr(config, "final_logit_softcapping", None))
        from transformer_lens.utilities.activation_functions import apply_softcap

        if self.model.cfg.normalization_type is not None:
            hidden = self.model.ln_final(hidden)
        return apply_softcap(self.model.unembed(hidden), self.model.cfg.output_logits_soft_cap)

    def read(self, input_ids, sites, positions=None):
        names = [hook_name(site) for site in sites]
        deepest = max((s.layer + 1 for s in sites if s.kind != "embed"), default=0)
        ids = input_ids.to(self.device)
        _, cache = self.model.run_with_cache(ids, names_filter=lambda name: name in names, stop_at_layer=max(deepest, 1),
                                             attention_mask=_ones(ids))
        if positions is None:
            return [cache[name] for name in names]
        rows = torch.arange(ids.shape[0])
        return [cache[name][rows.to(cache[name].device), positions.to(cache[name].device)] for name in names]

    def patch_root(self):
        return self.model.original_model if self.bridge else None

    @contextlib.contextmanager
    def patched(self, patch):
        if patch is None or self.bridge:
            with super().patched(patch):
                yield self
            return
        self._prefix_store = None
        try:
            with _hooked_weights_patched(self.model, patch):
                yield self
        finally:
            self._prefix_store = None

    def expand_past(self, past, batch):
        if self.bridge:
            return expand_cache(past, batch, self.model.original_model.config)
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        cache = TransformerLensKeyValueCache.init_cache(self.model.cfg, self.device, batch)
        for entry, kept in zip(cache.entries, past.entries):
            entry.past_keys = kept.past_keys.expand(batch, -1, -1, -1)
            entry.past_values = kept.past_values.expand(batch, -1, -1, -1)
        cache.previous_attention_mask = past.previous_attention_mask.expand(batch, -1)
        return cache

    def select_past(self, past, rows):
        if self.bridge:
            return select_cache_rows(past, rows, self.device)
        rows = rows.to(self.device)
        for entry in past.entries:
            entry.past_keys, entry.past_values = entry.past_keys[rows], entry.past_values[rows]
        past.previous_attention_mask = past.previous_attention_mask[rows]
        return past


def _ones(ids: torch.Tensor) -> torch.Tensor:
    """An all-ones attention mask. Inputs are right-padded, so padding never reaches a real token
    in a causal model; left to itself TransformerLens would mask every token equal to the pad id,
    and SmolLM2's pad token is its end-of-turn token, which chat templates contain."""
    return torch.ones_like(ids)


#: a decoder layer's transformers linears and where TransformerLens keeps each (its own conversion,
#: `convert_llama_weights`: W_Q = (n h) m -> n m h, W_O = m (n h) -> n h m, the MLP's transposed)
_LAYER_LINEAR = re.compile(r"^(?:.*\.)?layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)$")
_TL_WEIGHT = {"self_attn.q_proj": ("attn", "W_Q"), "self_attn.k_proj": ("attn", "W_K"), "self_attn.v_proj": ("attn", "W_V"),
              "self_attn.o_proj": ("attn", "W_O"), "mlp.gate_proj": ("mlp", "W_gate"), "mlp.up_proj": ("mlp", "W_in"),
              "mlp.down_proj": ("mlp", "W_out")}


def _tl_delta(delta: torch.Tensor, where: str, shape: tuple) -> torch.Tensor:
    """ΔW (out, in) in TransformerLens' layout for `where`."""
    if where in ("W_Q", "W_K", "W_V"):
        return delta.reshape(shape[0], shape[2], shape[1]).permute(0, 2, 1)
    if where == "W_O":
        return delta.T.reshape(shape)
    return delta.T


@contextlib.contextmanager
def _hooked_weights_patched(model, patch):
    """`patch` added to a HookedTransformer's weights (W + scale·B·A in its layout) for the block.
    Refused where the layout cannot take it: norms folded into the weights (from_pretrained's
    default fold_ln=True leaves no norm weight to put the change under), or a module that is not a
    decoder layer's attention or MLP linear of a Llama-style model."""
    if model.cfg.normalization_type in ("LNPre", "RMSPre"):
        raise BackendError("This HookedTransformer has its norms folded into its weights (fold_ln=True), so the LoRA "
                           "cannot be added to them; load it with HookedTransformer.from_pretrained(..., fold_ln=False), "
                           "or use a TransformerBridge.")
    changes = []
    for name, (a, b, scale) in patch.modules.items():
        match = _LAYER_LINEAR.match(name)
        if match is None or int(match.group(1)) >= model.cfg.n_layers:
            raise BackendError(f"A HookedTransformer has no place for a change to {name!r}; use a TransformerBridge (it "
                               "runs the transformers modules themselves).")
        part, where = _TL_WEIGHT[match.group(2)]
        block = getattr(model.blocks[int(match.group(1))], part)
        param = getattr(block, "_" + where, None) if where in ("W_K", "W_V") else None
        param = param if isinstance(param, torch.nn.Parameter) else getattr(block, where)
        delta = _tl_delta(scale * (b.float() @ a.float()), where, tuple(param.shape))
        if tuple(delta.shape) != tuple(param.shape):
            raise BackendError(f"{name} is {tuple(param.shape)} in this HookedTransformer but the change is "
                               f"{tuple(delta.shape)}; load the adapter onto the model it was trained for.")
        changes.append((param, delta))
    saved = []
    try:
        with torch.no_grad():
            for param, delta in changes:
                saved.append((param, param.detach().clone()))
                param.add_(delta.to(device=param.device, dtype=param.dtype))
        yield model
    finally:
        with torch.no_grad():
            for param, original in saved:
                param.copy_(original)
