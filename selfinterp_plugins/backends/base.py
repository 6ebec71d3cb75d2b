"""The backend contract: run a frozen model with soft tokens injected.

The verbs the rest of the library calls (`logits`, `loss`, `generate`, `capture`, `capture_all`)
are written once, here, over a few primitives that each backend supplies:

- facts: `d_model`, `n_layers`, `device`, `tokenizer`, `embed_tokens(ids)`, `fingerprint()` (and, with
  defaults, `dtype` and `text_ids(text)`);
- `run(input_ids, injection, past, keep_past)`: one forward pass over right-padded ids,
  continuing from `past`, injecting where `injection` says, returning the final hidden states;
- `head(hidden)`: the LM head (final norm if `run` did not apply it, unembedding, softcapping);
- `read(input_ids, sites, positions)`: the residual stream at sites, stopped after the deepest;
- `expand_past(past, batch)`, `select_past(past, rows)`: the key-value cache's batch dimension
  (defaults for a cache made of tensors whose first dimension is the batch);
- `patch_root()`: the torch module whose linear layers a `LowRankPatch` names (default: `model`
  when it is one), for `patched`, which turns an explainer's patch on for its calls.

So the choices that make a backend fast and correct are made once, for every backend: the shared
prefix of a template is run once and its cache reused (`prefix_len`); the LM head runs only at the
positions asked for; injection happens in the prefill only (a decoding step gets no injection);
finished rows leave the batch; sites are validated in one place (`check_site`).

Inputs are always right-padded: in a causal model padding after the real tokens never
influences them, so no attention mask (and no position-id bookkeeping) is needed.

Optional capabilities are declared here with defaults, not duck-typed: `computes_adapter` (the
backend wants `AdapterInput`s and runs the adapter where the model is), `supports_remote` with
`remote_mode` (run elsewhere), and `loss` (computed from `logits` unless a backend computes it
next to the model). See docs/plugins.md, "Writing a backend".
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod

import torch

from ..errors import BackendError
from ..sites import KINDS, Site
from .decoding import Sampling, decode, pick_next
from .inputs import AdapterInput, Injection, capture_batch, clamped_cross_entropy, pad_token_id, soft_tokens
from .patches import LowRankPatch

__all__ = ["AdapterInput", "Backend", "Injection", "LowRankPatch", "Sampling", "capture_batch", "clamped_cross_entropy",
           "decode", "pick_next"]


class Backend(ABC):
    """A frozen model that can take soft tokens. Subclass per ecosystem and supply the primitives."""

    name: str = ""
    #: True if the backend wants an `AdapterInput` (vectors + adapter) in place of soft tokens, to
    #: run the adapter where the model runs (nnsight on NDIF). The verbs here accept both.
    computes_adapter: bool = False
    #: True if `remote_mode` can switch the backend to run elsewhere (nnsight: NDIF)
    supports_remote: bool = False
    model: object
    tokenizer: object

    # ---- facts ----------------------------------------------------------------------------

    @property
    @abstractmethod
    def d_model(self) -> int: ...

    @property
    @abstractmethod
    def n_layers(self) -> int: ...

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where input ids and soft tokens go."""

    @abstractmethod
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """What the `embed` site holds for `ids`: the token embedding as the model's embedding
        module outputs it (scaling included, e.g. Gemma's √d), before position embeddings are
        added (GPT-2's learned positions)."""

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the frozen weights compute in (`--dtype`): a trained adapter and its labels
        depend on it, so run manifests record it. Default: what `embed_tokens` returns."""
        return self.embed_tokens(torch.zeros(1, dtype=torch.long, device=self.device)).dtype

    def text_ids(self, text: str) -> list[int]:
        """The token ids this backend's model runs for a string prompt, tokenised as its library
        tokenises a string passed to it (transformers and nnsight: `tokenizer(text)`, special tokens
        added; TransformerLens overrides this: `to_tokens`, which prepends BOS). `vector_prompt`
        uses it to give a text that runs as the prompt's ids, not with a second BOS."""
        return list(self.tokenizer(text)["input_ids"])

    @abstractmethod
    def fingerprint(self) -> str:
        """A short hash identifying the weights an adapter fits: the input embedding matrix
        (`models.embedding_fingerprint`, or `fingerprint_digest` of its rows at `fingerprint_rows`).
        Two backends over the same weights must agree, so an explainer saved through one loads
        onto the other; different weights must differ."""

    # ---- primitives -----------------------------------------------------------------------

    @abstractmethod
    def run(self, input_ids: torch.Tensor, injection: Injection | None = None, past=None,
            keep_past: bool = False) -> tuple[torch.Tensor, object]:
        """One forward pass over right-padded `input_ids` (B, T), continuing from `past`.

        - `injection`: when given, call `injection.apply(h)` on the (B, T, d) values at
          `injection.site` and go on with its result (differentiable: gradients flow to the soft
          tokens). `None` for decoding steps and the shared prefix: never inject then.
        - `past`: None (start at position 0) or a key-value cache this backend returned (possibly
          passed through `expand_past` / `select_past`); the new tokens come after its positions.
        - `keep_past`: return the cache holding `past` plus these tokens, to continue from.

        Returns `(hidden, past)`: `hidden` (B, T, ·) is what `head` turns into logits (with or
        without the final norm, as the backend chooses), `past` the cache (None unless
        `keep_past` or a `past` was given). Must not compute the LM head."""

    @abstractmethod
    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) from `run`'s hidden states (..., ·): the final norm if `run` left it
        out, the unembedding, and the model's final logit softcapping if it has one."""

    @abstractmethod
    def read(self, input_ids: torch.Tensor, sites: list[Site], positions: torch.Tensor | None = None
             ) -> list[torch.Tensor]:
        """The residual stream at each of `sites`, without injection, over right-padded ids (N, T).

        `positions` (N,) holds one absolute index per row: return (N, d) per site; None: every
        position, (N, T, d). One tensor per site, in the order of `sites` (any dtype or device).
        Should stop the forward pass once the deepest site is read."""

    def expand_past(self, past, batch: int):
        """A cache for `batch` rows from a one-row cache, leaving `past` itself untouched (it is
        the stored shared prefix). Default: tensors (in tuples, lists or dicts) with the batch
        in dimension 0."""
        return _map_tensors(past, lambda t: t.expand(batch, *t.shape[1:]))

    def select_past(self, past, rows: torch.Tensor):
        """The cache of `rows` only (the rows still generating). Default as `expand_past`."""
        return _map_tensors(past, lambda t: t[rows.to(t.device)])

    def reuses_prefix(self) -> bool:
        """Whether the shared-prefix cache may be used now (hf turns it off under checkpointing)."""
        return True

    # ---- a change to the model while an explainer runs ------------------------------------

    def patch_root(self):
        """The torch module whose submodules a `LowRankPatch` names (transformers naming), or None
        when this backend's model has none (override `patched` then)."""
        return self.model if isinstance(self.model, torch.nn.Module) else None

    @contextlib.contextmanager
    def patched(self, patch: LowRankPatch | None):
        """`patch` on the model's linear layers for the enclosed calls (nothing when None). The
        shared-prefix cache is dropped on the way in and out: a prefix run with the patch is not
        the model's, nor the other way round."""
        if patch is None:
            yield self
            return
        root = self.patch_root()
        if root is None:
            raise BackendError(f"The {self.name or type(self).__name__} backend cannot change its model's linear layers; "
                               "run this explainer on a transformers model (hf, nnsight or a TransformerBridge).")
        self._prefix_store = None
        try:
            with patch.hooked(root):
                yield self
        finally:
            self._prefix_store = None

    # ---- capabilities ---------------------------------------------------------------------

    @contextlib.contextmanager
    def remote_mode(self, remote):
        """Run the enclosed calls elsewhere (`remote`: True, "local", a host URL, or False).
        Backends with `supports_remote` override it; here it refuses."""
        raise BackendError(f"remote= needs an nnsight model; the {self.name or type(self).__name__} backend runs here "
                           "only. Wrap the model with nnsight.TransformersModel(...) and pass that.")
        yield  # pragma: no cover

    # ---- validation -----------------------------------------------------------------------

    def check_site(self, site: Site) -> Site:
        """The one place sites are checked: a known kind, and a layer this model has."""
        if not isinstance(site, Site) or site.kind not in KINDS:
            raise BackendError(f"Not a site: {site!r}; pass Site.parse('embed' | 'resid_pre.K' | 'resid_post.K').")
        if site.kind != "embed" and not 0 <= site.layer < self.n_layers:
            raise BackendError(f"Site {site.name} is past the last layer ({self.n_layers - 1}); pick a smaller layer.")
        return site

    # ---- verbs ----------------------------------------------------------------------------

    def logits(self, input_ids: torch.Tensor, soft, inject_mask: torch.Tensor, site: Site, positions: torch.Tensor,
               prefix_len: int = 0) -> torch.Tensor:
        """Logits (B, K, V) at `positions` (B, K) of right-padded `input_ids` (B, T), with `soft`
        (B, d) (or an AdapterInput) injected at `site` where `inject_mask` (B, T) is set;
        differentiable in the soft tokens.

        `prefix_len` > 0 says the first `prefix_len` tokens are the same in every row and carry no
        injection, so they are run once and their cache reused (checked: otherwise ignored)."""
        self.check_site(site)
        input_ids, positions = torch.as_tensor(input_ids), torch.as_tensor(positions)
        start, past = self._shared_prefix(input_ids, inject_mask, prefix_len)
        injection = Injection(site, soft_tokens(soft), inject_mask[:, start:])
        hidden, _ = self.run(input_ids[:, start:], injection, past, keep_past=False)
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        return self.head(hidden[rows, (positions - start).to(hidden.device)])

    def loss(self, input_ids, soft, inject_mask, site, positions, gold, clamp: float = 100.0,
             prefix_len: int = 0) -> torch.Tensor:
        """The explainer's training loss: `clamped_cross_entropy` of `logits` at `positions`
        against `gold` (B, K). A backend may compute it next to the model instead (nnsight on
        NDIF: only the loss and the adapter's gradients travel back)."""
        logits = self.logits(input_ids, soft, inject_mask, site, positions, prefix_len)
        return clamped_cross_entropy(logits, gold, clamp)

    @torch.no_grad()
    def generate(self, input_ids, soft, inject_mask, site: Site, sampling: Sampling, is_finished,
                 prefix_len: int = 0) -> list[list[int]]:
        """New token ids per row; injection happens during the prefill only.

        All rows share one prompt length (one template). `is_finished(ids) -> bool` tells when a
        row's label is complete (from its last token); finished rows leave the batch."""
        self.check_site(site)
        input_ids = torch.as_tensor(input_ids)
        start, past = self._shared_prefix(input_ids, inject_mask, prefix_len)
        injection = Injection(site, soft_tokens(soft), inject_mask[:, start:])
        hidden, past = self.run(input_ids[:, start:], injection, past, keep_past=True)
        state = {"past": past}

        def advance(next_ids, keep):
            if keep is not None:
                state["past"] = self.select_past(state["past"], keep)
            hidden, state["past"] = self.run(next_ids[:, None], None, state["past"], keep_past=True)
            return self.head(hidden[:, -1])

        return decode(self.head(hidden[:, -1]), sampling, is_finished, advance)

    @torch.no_grad()
    def capture(self, input_ids: list[list[int]], sites: list[Site], positions: list[int] | None = None) -> torch.Tensor:
        """Residual-stream values (N, n_sites, d), float32 on the CPU, at one position per row
        (`positions`: one index per row, negative counts from the end of that row's real tokens;
        default the last token)."""
        for site in sites:
            self.check_site(site)
        batch, index = capture_batch(input_ids, positions, pad_token_id(self.tokenizer))
        values = self.read(batch, list(sites), index)
        return torch.stack([value.float().cpu() for value in values], dim=1)

    @torch.no_grad()
    def capture_all(self, input_ids: torch.Tensor, site: Site) -> torch.Tensor:
        """Residual-stream values (B, T, d), float32 on the CPU, at every position of right-padded
        `input_ids` (B, T): what SAE latents are computed from."""
        self.check_site(site)
        return self.read(torch.as_tensor(input_ids, dtype=torch.long), [site], None)[0].float().cpu()

    # ---- derived facts --------------------------------------------------------------------

    @property
    def typical_embed_norm(self) -> float:
        """Median L2 norm of the input embedding rows: the natural scale of a soft token."""
        weight = self.embed_tokens(torch.arange(min(4096, len(self.tokenizer)), device=self.device))
        return float(weight.float().norm(dim=-1).median())

    # ---- the shared prefix ----------------------------------------------------------------

    _prefix_store: tuple | None = None

    def _shared_prefix(self, input_ids: torch.Tensor, inject_mask: torch.Tensor, prefix_len: int):
        """(start, past): where `run` starts and the cache of the tokens before it, or (0, None)
        when the prefix cannot be reused. The last prefix run is kept (one forward over the
        template's first tokens, under no_grad), keyed by its ids."""
        if prefix_len <= 0 or prefix_len >= input_ids.shape[1] or not self.reuses_prefix():
            return 0, None
        prefix = input_ids[:, :prefix_len]
        if not bool((prefix == prefix[:1]).all()) or bool(torch.as_tensor(inject_mask)[:, :prefix_len].any()):
            return 0, None
        key = tuple(prefix[0].tolist())
        if self._prefix_store is None or self._prefix_store[0] != key:
            with torch.no_grad():
                _, past = self.run(prefix[:1], None, None, keep_past=True)
            self._prefix_store = (key, past)
        return prefix_len, self.expand_past(self._prefix_store[1], input_ids.shape[0])


def _map_tensors(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    if value is None:
        return None
    raise BackendError(f"Cannot expand or select rows of a {type(value).__name__} cache; override "
                       "Backend.expand_past and Backend.select_past for it.")
