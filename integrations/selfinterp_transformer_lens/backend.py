"""The `transformer_lens` backend: HookedTransformer and TransformerBridge, soft tokens injected
through TransformerLens hook points (`hook_embed`, `blocks.{k}.hook_resid_pre`,
`blocks.{k}.hook_resid_post`), the names TL users already write.

Same semantics as the core `hf` backend (selfinterp_plugins/backends/hf.py), so an adapter
trained on one runs on the other with the same outputs:
- `logits` runs the blocks, then the final norm and unembedding only at the positions asked for
  (HookedTransformer); a TransformerBridge returns its logits and they are picked afterwards;
- `generate` injects during the prefill only and decodes with TL's key-value cache
  (HookedTransformer) or the wrapped transformers model's cache (TransformerBridge);
- `capture` reads hook points and stops after the deepest layer it needs.
On a HookedTransformer the template's shared prefix is computed once and its keys and values are
reused (TL's own key-value cache), the head runs only where needed, and finished rows leave the
batch, as in the hf backend; a TransformerBridge runs every prompt token and every position's
logits (its `stop_at_layer` does not return the residual stream its final norm expects).
TransformerLens would build an attention mask from the pad token on its own; the backend always
passes an all-ones mask instead (see `_ones`).
"""

from __future__ import annotations

import torch

from selfinterp_plugins.backends.base import Backend, Sampling, capture_batch, decode
from selfinterp_plugins.errors import BackendError
from selfinterp_plugins.sites import Site, inject


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
        self._prefix_key: tuple | None = None
        self._prefix_cache = None

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

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from selfinterp_plugins.models import embedding_fingerprint

            if self.bridge:
                self._fingerprint = embedding_fingerprint(self.model.original_model)
            else:
                self._fingerprint = embedding_fingerprint(_WithEmbedding(self.model.W_E))
        return self._fingerprint

    # ---- injection ------------------------------------------------------------------------

    def _check(self, site: Site) -> None:
        if site.kind != "embed" and site.layer >= self.n_layers:
            raise BackendError(f"Site {site.name} is past the last layer ({self.n_layers - 1}); pick a smaller layer.")

    def _injection_hook(self, soft: torch.Tensor, mask: torch.Tensor, site: Site):
        """A TL hook that injects once, into a call whose sequence length matches the mask."""
        state = {"armed": True}

        def hook(value, hook=None):
            if not state["armed"] or value.shape[1] != mask.shape[1]:
                return value
            state["armed"] = False
            return inject(value, soft, mask, site)

        return hook_name(site), hook

    def _final_logits(self, resid: torch.Tensor) -> torch.Tensor:
        return self.model.unembed(self.model.ln_final(resid))

    # ---- prefix cache (HookedTransformer) ----------------------------------------------------

    def _usable_prefix(self, input_ids: torch.Tensor, prefix_len: int) -> int:
        """`prefix_len` if every row shares it and the model is a HookedTransformer, else 0."""
        if self.bridge or not prefix_len:
            return 0
        return prefix_len if bool((input_ids[:, :prefix_len] == input_ids[:1, :prefix_len]).all()) else 0

    def _cache_for(self, prefix: torch.Tensor, batch: int):
        """A fresh TL key-value cache holding the prefix's keys and values for `batch` rows; the
        prefix runs once per distinct prefix (the last one is kept)."""
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        key = tuple(prefix.tolist())
        if self._prefix_key != key:
            cache = TransformerLensKeyValueCache.init_cache(self.model.cfg, self.device, 1)
            with torch.no_grad():
                ids = prefix[None].to(self.device)
                self.model(ids, past_kv_cache=cache, attention_mask=_ones(ids), stop_at_layer=self.n_layers)
            self._prefix_key, self._prefix_cache = key, cache
        stored = self._prefix_cache
        cache = TransformerLensKeyValueCache.init_cache(self.model.cfg, self.device, batch)
        for entry, kept in zip(cache.entries, stored.entries):
            entry.past_keys = kept.past_keys.expand(batch, -1, -1, -1)
            entry.past_values = kept.past_values.expand(batch, -1, -1, -1)
        cache.previous_attention_mask = stored.previous_attention_mask.expand(batch, -1)
        return cache

    # ---- verbs ----------------------------------------------------------------------------

    def logits(self, input_ids, soft, inject_mask, site, positions, prefix_len=0):
        self._check(site)
        ids = input_ids.to(self.device)
        rows = torch.arange(ids.shape[0], device=self.device)[:, None]
        if self.bridge:
            with self.model.hooks(fwd_hooks=[self._injection_hook(soft, inject_mask, site)]):
                return self.model(ids, return_type="logits", attention_mask=_ones(ids))[rows, positions.to(self.device)]
        start = self._usable_prefix(ids, prefix_len)
        cache = self._cache_for(ids[0, :start], ids.shape[0]) if start else None
        rest = ids[:, start:]
        with self.model.hooks(fwd_hooks=[self._injection_hook(soft, inject_mask[:, start:], site)]):
            resid = self.model(rest, stop_at_layer=self.n_layers, attention_mask=_ones(rest), past_kv_cache=cache)
        return self._final_logits(resid[rows, (positions - start).to(self.device)])

    @torch.no_grad()
    def generate(self, input_ids, soft, inject_mask, site, sampling: Sampling, is_finished, prefix_len=0):
        self._check(site)
        batch = input_ids.shape[0]
        ids = input_ids.to(self.device)
        if self.bridge:
            with self.model.hooks(fwd_hooks=[self._injection_hook(soft, inject_mask, site)]):
                logits, cache = self.model(ids, return_type="logits_and_cache", use_cache=True, attention_mask=_ones(ids))
            logits = logits[:, -1]
        else:
            from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

            start = self._usable_prefix(ids, prefix_len)
            cache = self._cache_for(ids[0, :start], batch) if start else \
                TransformerLensKeyValueCache.init_cache(self.model.cfg, self.device, batch)
            rest = ids[:, start:]
            with self.model.hooks(fwd_hooks=[self._injection_hook(soft, inject_mask[:, start:], site)]):
                resid = self.model(rest, past_kv_cache=cache, attention_mask=_ones(rest), stop_at_layer=self.n_layers)
            logits = self._final_logits(resid[:, -1])
        state = {"cache": cache, "length": ids.shape[1]}

        def advance(next_ids, keep):
            if keep is not None:
                state["cache"] = _select_rows(state["cache"], keep.to(self.device), self.bridge)
            step_ids = next_ids[:, None].to(self.device)
            state["length"] += 1
            if self.bridge:  # the wrapped transformers model's own key-value cache
                mask = torch.ones(len(step_ids), state["length"], dtype=torch.long, device=self.device)
                logits, state["cache"] = self.model(step_ids, return_type="logits_and_cache", use_cache=True,
                                                    past_key_values=state["cache"], attention_mask=mask)
                return logits[:, -1]
            resid = self.model(step_ids, past_kv_cache=state["cache"], attention_mask=_ones(step_ids),
                               stop_at_layer=self.n_layers)
            return self._final_logits(resid[:, -1])

        return decode(logits, sampling, is_finished, advance)

    @torch.no_grad()
    def capture(self, input_ids, sites, positions=None):
        for site in sites:
            self._check(site)
        batch, index = capture_batch(input_ids, positions, self.tokenizer.pad_token_id)
        names = [hook_name(site) for site in sites]
        deepest = max((s.layer + 1 for s in sites if s.kind != "embed"), default=0)
        ids = batch.to(self.device)
        _, cache = self.model.run_with_cache(ids, names_filter=lambda name: name in names, stop_at_layer=max(deepest, 1),
                                             attention_mask=_ones(ids))
        rows = torch.arange(len(input_ids))
        return torch.stack([cache[name][rows, index.to(cache[name].device)].float().cpu() for name in names], dim=1)

    def capture_all(self, input_ids, site):
        self._check(site)
        name = hook_name(site)
        ids = input_ids.to(self.device)
        _, cache = self.model.run_with_cache(ids, names_filter=lambda n: n == name,
                                             stop_at_layer=max(site.layer + 1 if site.kind != "embed" else 0, 1),
                                             attention_mask=_ones(ids))
        return cache[name].float().cpu()


def _select_rows(cache, index: torch.Tensor, bridge: bool):
    """Keep only the cache rows of unfinished generations."""
    if bridge:
        cache.batch_select_indices(index)
        return cache
    for entry in cache.entries:
        entry.past_keys, entry.past_values = entry.past_keys[index], entry.past_values[index]
    cache.previous_attention_mask = cache.previous_attention_mask[index]
    return cache


def _ones(ids: torch.Tensor) -> torch.Tensor:
    """An all-ones attention mask. Inputs are right-padded, so padding never reaches a real token
    in a causal model; left to itself TransformerLens would mask every token equal to the pad id,
    and SmolLM2's pad token is its end-of-turn token, which chat templates contain."""
    return torch.ones_like(ids)


class _WithEmbedding:
    """Adapts a bare embedding matrix to `embedding_fingerprint`'s model interface."""

    def __init__(self, weight: torch.Tensor):
        self._module = torch.nn.Embedding.from_pretrained(weight.detach(), freeze=True)

    def get_input_embeddings(self):
        return self._module
