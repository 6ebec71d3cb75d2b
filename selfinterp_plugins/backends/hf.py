"""The `hf` backend: any transformers causal LM, soft tokens injected with torch hooks.

Three habits keep it close to the cost of the bare model:
- the template's prefix before the first placeholder is the same in every row, so its keys and
  values are computed once and reused (`prefix_len`);
- the LM head runs only at the positions whose logits are needed;
- `capture` stops the forward pass after the deepest layer it reads.

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
from ..sites import Site, inject
from .base import Backend, Sampling, capture_batch, decode


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks: the ModuleList as long as the config's layer count."""
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for module in model.base_model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise BackendError(f"Cannot find the decoder blocks of {type(model).__name__}; use a standard transformers causal LM.")


class _StopForward(Exception):
    """Raised from a hook once everything `capture` needs has been read."""


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
        self.head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self._prefix_kv: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
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

    # ---- injection ------------------------------------------------------------------------

    def _site_module(self, site: Site) -> nn.Module:
        if site.kind == "embed":
            return self.model.get_input_embeddings()
        if site.layer >= self.n_layers:
            raise BackendError(f"Site {site.name} is past the last layer ({self.n_layers - 1}); pick a smaller layer.")
        return self.blocks[site.layer]

    @contextlib.contextmanager
    def injecting(self, soft: torch.Tensor, mask: torch.Tensor, site: Site):
        """Inject `soft` at `mask` during the next forward call only (the prefill)."""
        state = {"armed": True}

        def apply(hidden):
            if not state["armed"] or hidden.shape[1] != mask.shape[1]:
                return hidden
            state["armed"] = False
            return inject(hidden, soft, mask, site)

        module = self._site_module(site)
        if site.kind == "resid_pre":

            def pre_hook(_module, args, kwargs):
                if args:
                    return (apply(args[0]), *args[1:]), kwargs
                kwargs["hidden_states"] = apply(kwargs["hidden_states"])
                return args, kwargs

            handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
        else:

            def post_hook(_module, _args, output):
                return _with_hidden(output, apply(_hidden_of(output)))

            handle = module.register_forward_hook(post_hook)
        try:
            yield
        finally:
            handle.remove()

    # ---- prefix cache ---------------------------------------------------------------------

    def _cache_for(self, prefix: torch.Tensor, batch: int):
        """A fresh DynamicCache holding the prefix's keys/values, expanded to `batch` rows."""
        from transformers import DynamicCache

        key = tuple(prefix.tolist())
        if key not in self._prefix_kv:
            with torch.no_grad():
                out = self.body(input_ids=prefix[None].to(self.device), use_cache=True)
            self._prefix_kv = {key: [(layer.keys, layer.values) for layer in out.past_key_values.layers]}
        data = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in self._prefix_kv[key]]
        return DynamicCache(data, config=self.model.config)

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

    def _run(self, input_ids, soft, mask, site, prefix_len, cache=None):
        """Forward the body over input_ids[:, prefix_len:], prefix from cache; returns hidden states and cache."""
        if prefix_len > 0:
            cache = self._cache_for(input_ids[0, :prefix_len], input_ids.shape[0])
        rest = input_ids[:, prefix_len:].to(self.device)
        checkpointed = self._checkpointed_blocks() if self._checkpoint_now() else contextlib.nullcontext()
        with self.injecting(soft, mask[:, prefix_len:], site), checkpointed:
            out = self.body(input_ids=rest, past_key_values=cache, use_cache=cache is not None)
        return out.last_hidden_state, out.past_key_values

    def _checkpoint_now(self) -> bool:
        return self.checkpointing and torch.is_grad_enabled()

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    # ---- verbs ----------------------------------------------------------------------------

    def logits(self, input_ids, soft, inject_mask, site, positions, prefix_len=0):
        if prefix_len and not bool((input_ids[:, :prefix_len] == input_ids[:1, :prefix_len]).all()):
            prefix_len = 0
        if self._checkpoint_now():
            prefix_len = 0
        hidden, _ = self._run(input_ids, soft, inject_mask, site, prefix_len)
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        picked = hidden[rows, (positions - prefix_len).to(hidden.device)]
        return self._head(picked)

    @torch.no_grad()
    def generate(self, input_ids, soft, inject_mask, site, sampling: Sampling, is_finished, prefix_len=0):
        from transformers import DynamicCache

        cache = None if prefix_len else DynamicCache(config=self.model.config)
        hidden, cache = self._run(input_ids, soft, inject_mask, site, prefix_len, cache)

        def advance(next_ids, keep):
            nonlocal cache
            if keep is not None:
                cache.batch_select_indices(keep.to(self.device))
            out = self.body(input_ids=next_ids[:, None].to(self.device), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            return self._head(out.last_hidden_state[:, -1])

        return decode(self._head(hidden[:, -1]), sampling, is_finished, advance)

    @torch.no_grad()
    def capture(self, input_ids, sites, positions=None):
        batch, index = capture_batch(input_ids, positions, self.tokenizer.pad_token_id)

        found: dict[int, torch.Tensor] = {}
        handles = []
        rows = torch.arange(len(input_ids))

        def reader(i, pre):
            def hook(_module, args, kwargs_or_output, *rest):
                if pre:
                    hidden = args[0] if args else kwargs_or_output["hidden_states"]
                else:
                    hidden = _hidden_of(kwargs_or_output if not rest else rest[0])
                found[i] = hidden[rows, index.to(hidden.device)].float().cpu()
                if len(found) == len(sites):
                    raise _StopForward

            return hook

        for i, site in enumerate(sites):
            module = self._site_module(site)
            if site.kind == "resid_pre":
                handles.append(module.register_forward_pre_hook(reader(i, True), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(reader(i, False)))
        try:
            self.body(input_ids=batch.to(self.device), use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return torch.stack([found[i] for i in range(len(sites))], dim=1)

    def capture_all(self, input_ids, site):
        """One forward pass, stopped right after `site`: (B, T, d) in float32 on the CPU."""
        found = []

        def hook(_module, args, kwargs_or_output, *rest):
            if site.kind == "resid_pre":
                hidden = args[0] if args else kwargs_or_output["hidden_states"]
            else:
                hidden = _hidden_of(kwargs_or_output if not rest else rest[0])
            found.append(hidden.float().cpu())
            raise _StopForward

        module = self._site_module(site)
        if site.kind == "resid_pre":
            handle = module.register_forward_pre_hook(hook, with_kwargs=True)
        else:
            handle = module.register_forward_hook(hook)
        try:
            self.body(input_ids=input_ids.to(self.device), use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return found[0]
