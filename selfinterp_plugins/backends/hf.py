"""The `hf` backend: any transformers causal LM, soft tokens injected with torch hooks.

It supplies the primitives of `Backend` (base.py), which runs the verbs over them:
- `run` is the model's body (`model.base_model`, final norm included) with a hook at the site
  and a transformers `DynamicCache` as the key-value cache;
- `head` is the output embedding (plus Gemma-style final logit softcapping);
- `read` hooks the sites and stops the forward pass after the deepest one.

For models whose activations do not fit in memory during training, `checkpointing=True`
recomputes each block's activations in the backward pass instead of storing them (the
prefix cache is then off for `logits` with gradients: recomputing attention would append
the prefix's keys to the shared cache a second time).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..errors import BackendError
from ..sites import Site
from .base import Backend
from .inputs import Injection

# public: besides HFBackend, the pieces every backend that wraps a transformers model shares
# (nnsight's TransformersModel and TransformerLens's bridge both do): its blocks, its cache, its head
__all__ = ["HFBackend", "expand_cache", "find_blocks", "select_cache_rows", "softcapped"]


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks: the ModuleList as long as the config's layer count."""
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for module in model.base_model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise BackendError(f"Cannot find the decoder blocks of {type(model).__name__}; use a standard transformers causal LM.")


def expand_cache(cache, batch: int, config):
    """A fresh DynamicCache whose layers view `cache`'s (one row) expanded to `batch` rows.
    Decoding appends with torch.cat, so `cache` itself is never written to."""
    from transformers import DynamicCache

    data = [(layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1)) for layer in cache.layers]
    return DynamicCache(data, config=config)


def select_cache_rows(cache, rows: torch.Tensor, device):
    """Keep only `rows` of a DynamicCache (in place; returns it)."""
    cache.batch_select_indices(rows.to(device))
    return cache


def softcapped(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Gemma-style final logit softcapping (none when `softcap` is unset)."""
    return torch.tanh(logits / softcap) * softcap if softcap else logits


class _StopForward(Exception):
    """Raised from a hook once everything `read` needs has been read."""


def _hidden_of(output):
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class HFBackend(Backend):
    """Backend for `transformers` causal LMs (Llama, Qwen2, Gemma3, GPT-2, GPT-NeoX, ...)."""

    name = "hf"

    def __init__(self, model: nn.Module, tokenizer, checkpointing: bool = False):
        self.model = model
        self.checkpointing = checkpointing
        self.tokenizer = tokenizer
        self.blocks = find_blocks(model)
        self.body = model.base_model
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self._fingerprint: str | None = None

    # ---- facts ----------------------------------------------------------------------------

    @property
    def d_model(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.get_input_embeddings()(ids.to(self.device))

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from ..models import embedding_fingerprint

            self._fingerprint = embedding_fingerprint(self.model)
        return self._fingerprint

    # ---- hooks ----------------------------------------------------------------------------

    def _site_module(self, site: Site) -> nn.Module:
        """The module whose input (resid_pre) or output (embed, resid_post) is the site."""
        self.check_site(site)
        return self.model.get_input_embeddings() if site.kind == "embed" else self.blocks[site.layer]

    def _hook(self, site: Site, fn):
        """Register `fn(hidden) -> hidden | None` at the site; returns the handle. A value it
        returns replaces the site's value."""
        module = self._site_module(site)
        if site.kind == "resid_pre":

            def pre_hook(_module, args, kwargs):
                if args:
                    hidden = fn(args[0])
                    return None if hidden is None else ((hidden, *args[1:]), kwargs)
                hidden = fn(kwargs["hidden_states"])
                if hidden is not None:
                    kwargs["hidden_states"] = hidden
                return None if hidden is None else (args, kwargs)

            return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

        def post_hook(_module, _args, output):
            hidden = fn(_hidden_of(output))
            return None if hidden is None else _with_hidden(output, hidden)

        return module.register_forward_hook(post_hook)

    @contextlib.contextmanager
    def injecting(self, injection: Injection | None):
        """`injection` applied at its site during the forward calls inside the block."""
        handle = None if injection is None else self._hook(injection.site, injection.apply)
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()

    @contextlib.contextmanager
    def _checkpointed_blocks(self):
        """Every decoder block's forward wrapped in non-reentrant activation checkpointing."""
        from torch.utils.checkpoint import checkpoint

        def wrap(forward):
            return lambda *args, **kwargs: checkpoint(forward, *args, use_reentrant=False, **kwargs)

        originals = [block.forward for block in self.blocks]
        for block, forward in zip(self.blocks, originals):
            block.forward = wrap(forward)
        try:
            yield
        finally:
            for block in self.blocks:
                del block.forward  # back to the class's forward

    def _checkpoint_now(self) -> bool:
        return self.checkpointing and torch.is_grad_enabled()

    # ---- primitives -----------------------------------------------------------------------

    def run(self, input_ids, injection=None, past=None, keep_past=False):
        if past is None and keep_past:
            from transformers import DynamicCache

            past = DynamicCache(config=self.model.config)
        checkpointed = self._checkpointed_blocks() if self._checkpoint_now() else contextlib.nullcontext()
        with self.injecting(injection), checkpointed:
            out = self.body(input_ids=input_ids.to(self.device), past_key_values=past, use_cache=past is not None)
        return out.last_hidden_state, out.past_key_values if past is not None else None

    def head(self, hidden):
        return softcapped(self.model.get_output_embeddings()(hidden), self.softcap)

    def read(self, input_ids, sites, positions=None):
        found: dict[int, torch.Tensor] = {}
        rows = torch.arange(input_ids.shape[0])

        def reader(i):
            def read_one(hidden):
                found[i] = hidden if positions is None else hidden[rows.to(hidden.device), positions.to(hidden.device)]
                if len(found) == len(sites):
                    raise _StopForward
                return None

            return read_one

        handles = [self._hook(site, reader(i)) for i, site in enumerate(sites)]
        try:
            self.body(input_ids=input_ids.to(self.device), use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return [found[i] for i in range(len(sites))]

    def expand_past(self, past, batch):
        return expand_cache(past, batch, self.model.config)

    def select_past(self, past, rows):
        return select_cache_rows(past, rows, self.device)

    def reuses_prefix(self) -> bool:
        return not self._checkpoint_now()
