"""A toy selfinterp backend: a GPT-2 given as a dict of weights and plain torch functions.

What a backend supplies (docs/plugins.md, "Writing a backend"): facts, `run`, `head` and `read`;
`selfinterp_plugins.Backend` runs the verbs over them (prefix cache, LM head at the positions
needed, prefill-only injection, decoding). Its key-value cache is a list of (keys, values) tensors
with the batch first, which the base class's `expand_past` / `select_past` handle as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfinterp_plugins import Backend, BackendError, UnsupportedModelError, hookimpl
from selfinterp_plugins.models import fingerprint_digest, fingerprint_rows


class ToyModel:
    """A GPT-2 decoder as data: `weights` maps GPT-2's parameter names (without `transformer.`) to
    tensors; `n_heads` and `eps` are the rest of its config. Not a torch module."""

    def __init__(self, weights: dict, n_heads: int, tokenizer, eps: float = 1e-5):
        self.weights, self.n_heads, self.tokenizer, self.eps = weights, n_heads, tokenizer, eps
        self.n_layers = sum(name.endswith(".ln_1.weight") for name in weights)

    @classmethod
    def from_gpt2(cls, model, tokenizer):
        """The weights of a transformers `GPT2LMHeadModel` (tied embeddings), copied."""
        weights = {k.removeprefix("transformer."): v.detach().clone() for k, v in model.state_dict().items()
                   if k.startswith("transformer.")}
        return cls(weights, model.config.n_head, tokenizer, model.config.layer_norm_epsilon)


def attention(w, p, x, n_heads, past):
    """Causal self-attention of the block whose weights start with `p`; `past`: its (keys, values)."""
    b, t, d = x.shape
    q, k, v = (x @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]).split(d, dim=-1)
    q, k, v = (y.view(b, t, n_heads, d // n_heads).transpose(1, 2) for y in (q, k, v))
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    allowed = torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device).tril(k.shape[2] - t)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed).transpose(1, 2).reshape(b, t, d)
    return out @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"], (k, v)


def forward(model: ToyModel, ids, visit, past=None, layers=None):
    """Run the first `layers` blocks (None: all, then the final norm) over `ids` (B, T), after the
    positions held in `past`. `visit(kind, layer, x)` sees the residual stream at each site and
    returns what flows on. Returns (x, the new past)."""
    w, eps = model.weights, model.eps
    start = 0 if past is None else past[0][0].shape[2]
    x = visit("embed", None, w["wte.weight"][ids]) + w["wpe.weight"][start : start + ids.shape[1]]
    cache = []
    for i in range(model.n_layers if layers is None else layers):
        p = f"h.{i}."
        x = visit("resid_pre", i, x)
        a, kv = attention(w, p, F.layer_norm(x, x.shape[-1:], w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps),
                          model.n_heads, None if past is None else past[i])
        x = x + a
        h = F.layer_norm(x, x.shape[-1:], w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        h = F.gelu(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"], approximate="tanh")
        x = visit("resid_post", i, x + h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"])
        cache.append(kv)
    if layers is None:
        x = F.layer_norm(x, x.shape[-1:], w["ln_f.weight"], w["ln_f.bias"], eps)
    return x, cache


class ToyBackend(Backend):
    name = "toy"

    def __init__(self, model: ToyModel, tokenizer=None):
        self.model, self.tokenizer = model, tokenizer if tokenizer is not None else model.tokenizer

    # facts
    d_model = property(lambda self: self.model.weights["wte.weight"].shape[1])
    n_layers = property(lambda self: self.model.n_layers)
    device = property(lambda self: self.model.weights["wte.weight"].device)

    def embed_tokens(self, ids):
        return self.model.weights["wte.weight"][ids.to(self.device)]  # before the positions are added

    def fingerprint(self):  # the same as any backend's over these embeddings (hf on the GPT-2 itself)
        weight = self.model.weights["wte.weight"]
        return fingerprint_digest(tuple(weight.shape), weight[fingerprint_rows(weight.shape[0])])

    # primitives
    def run(self, input_ids, injection=None, past=None, keep_past=False):
        def visit(kind, layer, x):
            hit = injection is not None and (injection.site.kind, injection.site.layer) == (kind, layer)
            return injection.apply(x) if hit else x

        hidden, cache = forward(self.model, input_ids.to(self.device), visit, past)
        return hidden, cache if keep_past or past is not None else None

    def head(self, hidden):
        return hidden @ self.model.weights["wte.weight"].T  # tied; the final norm is in `run`

    def read(self, input_ids, sites, positions=None):
        wanted, found = {(s.kind, s.layer) for s in sites}, {}

        def visit(kind, layer, x):
            if (kind, layer) in wanted:
                found[kind, layer] = x if positions is None else x[torch.arange(len(x)), positions.to(x.device)]
            return x

        deepest = max((s.layer + 1 for s in sites if s.kind != "embed"), default=0)
        forward(self.model, input_ids.to(self.device), visit, layers=deepest)  # stop after the deepest site
        return [found[s.kind, s.layer] for s in sites]


@hookimpl
def register_backends(register):
    def make(model, tokenizer=None, **options):
        if not isinstance(model, ToyModel):  # the declared refusal: the CLI hands every backend a transformers model
            raise UnsupportedModelError(f"The toy backend runs a ToyModel, got a {type(model).__name__}; build one in "
                                        "Python with ToyModel.from_gpt2(model, tokenizer), or use --backend hf.")
        if options:
            raise BackendError(f"The toy backend takes no options, got {sorted(options)}.")
        return ToyBackend(model, tokenizer)

    register("toy", make)


@hookimpl
def backend_for_model(model, options):
    return "toy" if isinstance(model, ToyModel) else None
