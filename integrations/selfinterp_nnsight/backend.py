"""The `nnsight` backend: explainers on nnsight models, here or on NDIF (`remote=True`).

Run here, it supplies the primitives of `Backend` and the base class runs the verbs, so it reuses
the template's shared prefix, computes the LM head only where needed and drops finished rows
exactly as the hf backend does: `run` is an nnsight trace that injects through the site's envoy
and stops once the model's body has run (decoding steps, which inject nothing, call the wrapped
model directly); `read` is one trace that reads the sites and stops.

Remote, a verb is one request: `remote_verbs.RemoteVerbs` overrides `logits`, `loss` and
`generate` (`capture` and `capture_all` are one `read` request either way); `_request` below is the
intervention every request runs, the adapter's own `math` inside it.

`remote` is False (run here), True (NDIF; needs an API key), "local" (nnsight serialises the
request exactly as for NDIF, deserialises it with this package hidden, and runs it here: the
offline rehearsal) or a host URL. Remote failures that a retry can cure are retried with back-off
(`remote.RetryPolicy`).
"""

from __future__ import annotations

import contextlib

import torch

from selfinterp_plugins.backends import Backend, LowRankPatch
from selfinterp_plugins.backends.hf import expand_cache, find_blocks, select_cache_rows, softcapped
from selfinterp_plugins.errors import BackendError
from selfinterp_plugins.sites import check_slots, combine

from .remote import RetryPolicy, check_api_key, check_remote_value, check_servable, code_by_value, with_retries
from .remote_verbs import RemoteVerbs


class NNsightBackend(RemoteVerbs, Backend):
    """Backend for nnsight's `LanguageModel` / `TransformersModel` (nnsight 0.8) over a causal LM."""

    name = "nnsight"
    computes_adapter = True
    supports_remote = True

    def __init__(self, model, tokenizer=None, remote=False, retry: RetryPolicy | None = None):
        self.model = model
        self.hf = model._module
        self.tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        if self.tokenizer is None:
            raise BackendError("This nnsight model has no tokenizer; pass tokenizer=... next to model=....")
        check_remote_value(remote)
        self.remote = remote
        self.retry = retry or RetryPolicy()
        self.blocks_path = _path_of(self.hf, find_blocks(self.hf))
        self.embed_path = _path_of(self.hf, self.hf.get_input_embeddings())
        self.body_path = _path_of(self.hf, self.hf.base_model)
        self.softcap = getattr(self.hf.config, "final_logit_softcapping", None)
        self._fingerprint: str | None = None
        #: the explainer's patch while a remote call runs: it travels inside each request
        self._remote_patch: LowRankPatch | None = None

    # ---- remote switch --------------------------------------------------------------------

    @contextlib.contextmanager
    def remote_mode(self, remote):
        """Run the enclosed calls with `remote` (True, "local", a host URL, or False)."""
        check_remote_value(remote)
        previous, self.remote = self.remote, remote
        try:
            yield self
        finally:
            self.remote = previous

    def patch_root(self):
        return self.hf

    @contextlib.contextmanager
    def patched(self, patch):
        """Here, the patch is forward hooks on the wrapped model (the base class's). Remote, the
        server has the base weights only, so the patch's factors travel inside every request and
        its term is added to each patched module's output there (`_request`); no hook is set here,
        where `remote="local"` runs the request, so the term is added once either way."""
        if patch is None or self._here():
            with super().patched(patch):
                yield self
            return
        patch.targets(self.hf)  # a module the model lacks is refused before anything is sent
        previous, self._remote_patch = self._remote_patch, patch
        try:
            yield self
        finally:
            self._remote_patch = previous

    def _patch_steps(self) -> list | None:
        """(envoy, A, B, scale) per patched module in the order the forward pass reaches them (the
        model's own module order: nnsight's interventions must follow it), or None."""
        patch = self._remote_patch
        if patch is None or self._here():
            return None
        order = {name: i for i, (name, _m) in enumerate(self.hf.named_modules())}
        names = sorted(patch.modules, key=lambda name: order.get(name, len(order)))
        return [(self._envoy(name), a.detach().cpu(), b.detach().cpu(), float(scale))
                for name in names for a, b, scale in [patch.modules[name]]]

    def _here(self) -> bool:
        """True when the verbs run here through the primitives; False: one request per verb."""
        return not self.remote and self.is_local

    def _call(self, what: str, request):
        """One request: here directly, remote with the API key checked and transient failures retried.
        The one trace check of every entry sending a request (`run`, local only, checks itself)."""
        refuse_inside_trace()
        if not self.remote:
            return request()
        if self.remote != "local":  # NDIF, at its configured host or at a URL: both need a key and a hub model
            check_api_key()
            check_servable(self.model, self.remote)
        return with_retries(request, self.retry, what, host=self._host())

    def _host(self) -> str:
        if isinstance(self.remote, str) and self.remote != "local":
            return self.remote
        from nnsight import CONFIG

        return str(getattr(CONFIG.API, "HOST", "") or "NDIF")

    # ---- facts ----------------------------------------------------------------------------

    @property
    def d_model(self) -> int:
        return int(self.hf.get_input_embeddings().weight.shape[1])

    @property
    def n_layers(self) -> int:
        return len(find_blocks(self.hf))

    @property
    def is_local(self) -> bool:
        """False for a model whose weights live only on NDIF (loaded without dispatch: meta tensors)."""
        return not self.hf.get_input_embeddings().weight.is_meta

    @property
    def device(self) -> torch.device:
        weight = self.hf.get_input_embeddings().weight
        return torch.device("cpu") if weight.is_meta else weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf.get_input_embeddings().weight.dtype

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(ids)
        if self.is_local:
            with torch.no_grad():
                return self.hf.get_input_embeddings()(ids.to(self.device))
        flat = ids.reshape(-1, 1)
        embed = self._envoy(self.embed_path)

        def request():
            with self.model.trace(flat, remote=self.remote) as tracer:
                rows = embed.output[:, 0].detach().cpu().save()
                tracer.stop()
            return rows

        return self._call("embedding read", request).reshape(*ids.shape, -1)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from selfinterp_plugins.models import embedding_fingerprint, fingerprint_digest, fingerprint_rows

            if self.is_local:
                self._fingerprint = embedding_fingerprint(self.hf)
            else:
                shape = tuple(self.hf.get_input_embeddings().weight.shape)
                self._fingerprint = fingerprint_digest(shape, self.embedding_rows(fingerprint_rows(shape[0])))
        return self._fingerprint

    def embedding_rows(self, index: torch.Tensor) -> torch.Tensor:
        """Rows of the input embedding matrix, read on the server for a remote-only model."""
        embed = self._envoy(self.embed_path)

        one_token = torch.zeros(1, 1, dtype=torch.long)

        def request():
            # a trace (stopped at once) rather than a bare session: it makes nnsight load weights it
            # has only as meta tensors, as the server has them loaded
            with self.model.trace(one_token, remote=self.remote) as tracer:
                rows = embed.weight[index].detach().float().cpu().save()
                tracer.stop()
            return rows

        return self._call("embedding read", request)

    # ---- sites ----------------------------------------------------------------------------

    def _envoy(self, path: str):
        envoy = self.model
        for part in path.split(".") if path else []:
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
        return envoy

    def _site_envoy(self, site):
        self.check_site(site)
        return self._envoy(self.embed_path if site.kind == "embed" else f"{self.blocks_path}.{site.layer}")

    def _request(self, want: str, input_ids, tensors, mask, site, extra: dict):
        """One nnsight request injecting at `site`, returning what `want` asks for: "hidden" (the
        body's last hidden states and cache; the trace stops before the LM head), "logits", "loss"
        (loss, gradients) or "generate" (token ids). Everything inside the `with` block runs where
        the model is, so it is plain torch and calls nothing of this package. Its callers have
        refused to run inside a user's trace (`_call`, `run`)."""
        lm = self.model
        envoy = self._site_envoy(site)
        body = self._envoy(self.body_path)
        kind, mode, coef = site.kind, site.mode, float(site.coef)
        mask = mask.cpu()
        grad_names = extra.pop("grad_names", [])
        gather = extra.pop("gather", None)
        gold = extra.pop("gold", None)
        clamp = float(extra.pop("clamp", 100.0))
        remote = self.remote
        adapter_math = tensors.get("math")
        params = tensors.get("params", {})
        if adapter_math is None:
            check_slots(tensors["soft"], mask)
        patch_steps = self._patch_steps()  # remote with a patch: its factors travel in the request
        delta, every_step = LowRankPatch.delta, want == "generate"
        # remote: nnsight ships the kind's math, the injection's arithmetic and the patch's term by
        # value, with the helpers they call (see remote.py)
        shipping = (code_by_value(*[fn for fn in (adapter_math, combine, delta) if fn is not None]) if remote
                    else contextlib.nullcontext())
        # with a patch, the inputs go to an invoke of their own, beside the patch's (see below); without
        # one they stay the tracer's own (an explicit invoke does not continue a prefix cache the same way)
        inputs = () if patch_steps is not None else (input_ids,)
        # nnsight finds the block from the line that opens the tracer, so everything opens there. With a
        # patch, the patch is a second invoke over the whole batch, so that a generation's open loop over
        # its steps (the patch is on at every step, the injection at the prefill only) leaves the first
        # free to save its result (nnsight runs nothing after such a loop). The block holds one line per
        # statement and no comment lines: nnsight re-parses it to find the invokes, and the rehearsal
        # (remote="local") looks them up in this file by line number.
        with shipping, (lm.generate if want == "generate" else lm.trace)(*inputs, remote=remote, **extra) as tracer:
            with (tracer.invoke(input_ids) if patch_steps is not None else contextlib.nullcontext()):
                if adapter_math is None:
                    soft = tensors["soft"]
                else:  # the kind's own function, the one Adapter.forward calls
                    soft = adapter_math(params, tensors["vectors"], tensors["scales"])
                if kind == "resid_pre":
                    hidden = envoy.input
                else:
                    out = envoy.output
                    hidden = out[0] if isinstance(out, tuple) else out
                hidden = combine(hidden, soft, mask, mode, coef)  # the injection every backend runs (sites.py)
                if kind == "resid_pre":
                    envoy.input = hidden
                elif isinstance(out, tuple):
                    envoy.output = (hidden,) + tuple(out[1:])
                else:
                    envoy.output = hidden
                if want == "generate":
                    result = tracer.result.detach().cpu().save()
                elif want == "hidden":
                    state = body.output
                    result = (state[0], state.past_key_values).save()
                    tracer.stop()  # the LM head is not run: `head` runs it at the positions needed
                else:
                    logits = lm.output.logits
                    if gather is not None:
                        logits = logits[gather[0].to(logits.device), gather[1].to(logits.device)]
                    if want == "logits":
                        result = logits.save()
                    else:
                        gold = gold.to(logits.device)
                        flat = logits.float().transpose(1, 2)
                        per_token = torch.nn.functional.cross_entropy(flat, gold, ignore_index=-100, reduction="none")
                        valid = (gold != -100).float()
                        loss = ((per_token.clamp(max=clamp) * valid).sum(1) / valid.sum(1)).mean()
                        wrt = [tensors["soft"]] if adapter_math is None else [params[n] for n in grad_names]
                        grads = torch.autograd.grad(loss, wrt) if grad_names else ()
                        result = (loss.detach().cpu(), [g.detach().cpu() for g in grads]).save()
            with (tracer.invoke() if patch_steps is not None else contextlib.nullcontext()):
                for _step in (tracer.all() if patch_steps is not None and every_step else [0]):
                    for module, a, b, scale in patch_steps or ():
                        x = module.input
                        module.output = delta(x, module.output, a.to(x.device), b.to(x.device), scale)
        return result

    # ---- primitives (used when running here) ----------------------------------------------

    def run(self, input_ids, injection=None, past=None, keep_past=False):
        refuse_inside_trace()
        use_cache = past is not None or keep_past
        ids = input_ids.to(self.device)
        if injection is None:  # nothing to intervene on (decoding steps, the shared prefix): the model itself
            out = self.hf.base_model(input_ids=ids, past_key_values=past, use_cache=use_cache)
            return out.last_hidden_state, out.past_key_values if use_cache else None
        extra = {"use_cache": use_cache}
        if past is not None:
            extra["past_key_values"] = past
        hidden, cache = self._request("hidden", ids, {"soft": injection.soft}, injection.mask, injection.site, extra)
        return hidden, cache if use_cache else None

    def head(self, hidden):
        return softcapped(self.hf.get_output_embeddings()(hidden), self.softcap)

    def read(self, input_ids, sites, positions=None):
        """One traced pass (here or remote) reading the sites in the order the model reaches them."""
        order = sorted(range(len(sites)), key=lambda i: _execution_order(sites[i]))
        reads = [(self._site_envoy(sites[i]), sites[i].kind) for i in order]
        rows = torch.arange(input_ids.shape[0])
        ids = input_ids.to(self.device)
        lm = self.model

        def request():
            with lm.trace(ids, remote=self.remote) as tracer:
                found = list().save()
                for envoy, kind in reads:
                    if kind == "resid_pre":
                        value = envoy.input
                    else:
                        value = envoy.output
                        value = value[0] if isinstance(value, tuple) else value
                    if positions is not None:
                        value = value[rows.to(value.device), positions.to(value.device)]
                    found.append(value.detach().float().cpu())
                tracer.stop()
            return found

        found = self._call("capture", request)
        by_site = {i: found[k] for k, i in enumerate(order)}
        return [by_site[i] for i in range(len(sites))]

    def expand_past(self, past, batch):
        return expand_cache(past, batch, self.hf.config)

    def select_past(self, past, rows):
        return select_cache_rows(past, rows, self.device)

def refuse_inside_trace() -> None:
    """An explainer runs traces of its own on the model; started from inside a user's `trace`
    block, nnsight runs that code in the block's worker greenlet, and a second trace there fails
    deep in greenlet (`cyclic parent chain`). The block's worker carries a `mediator`: refuse
    there, saying how to do it."""
    from greenlet import getcurrent

    if getattr(getcurrent(), "mediator", None) is not None:
        raise BackendError(
            "An explainer cannot run inside an nnsight trace (it runs traces of its own on the model). Save the "
            "activation inside the `with` block (h = lm.model.layers[L].output[:, -1].save()) and call the explainer "
            "after it: explainer.explain(h)."
        )


def _execution_order(site) -> tuple[int, int]:
    """Sites in the order the forward pass reaches them (nnsight reads must follow it)."""
    if site.kind == "embed":
        return (-1, 0)
    return (site.layer, 0 if site.kind == "resid_pre" else 1)


def _path_of(root: torch.nn.Module, module: torch.nn.Module) -> str:
    for name, candidate in root.named_modules():
        if candidate is module:
            return name
    raise BackendError(f"Cannot locate {type(module).__name__} in {type(root).__name__}; use a standard causal LM.")
