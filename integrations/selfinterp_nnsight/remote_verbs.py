"""The nnsight backend's verbs on the remote path: one request each.

A request cannot be built from the primitives, because each primitive would be a round trip
carrying hidden states and caches, and the LM head and loss would run here, where a remote-only
model has no weights. So the adapter itself runs inside the intervention (`NNsightBackend._request`):
the request carries the vectors, the adapter's own tensors (d_model + 1 floats for scalar affine)
and its kind's `math` function, never soft tokens or the model; training computes the loss *and*
the adapter's gradients next to the model, so only a scalar and the gradients come back (`loss`);
labels are one nnsight `generate`. No adapter kind is known here: whatever `math` the adapter's
class defines (`Adapter.forward` calls the same) is shipped by value (its source,
`remote.code_by_value`), so NDIF runs it without selfinterp.

Run here (`_here()`), each verb is the base class's, built from the backend's primitives.
"""

from __future__ import annotations

import torch

from selfinterp_plugins.backends import AdapterInput, Sampling, pad_token_id


class RemoteVerbs:
    """`logits`, `loss` and `generate` as one request each when remote; a mixin of `NNsightBackend`
    (before `Backend`, whose verbs it falls back to here), using its `_here`, `_call` and `_request`."""

    def _tensors(self, soft, want_grad: bool) -> tuple[dict, list[str], torch.Tensor | None]:
        """What travels: the vectors (+ scales), the adapter's tensors and its kind's `math`, or soft
        tokens when the caller passed soft tokens.

        Returns the request's inputs, the names of the adapter tensors whose gradients to compute,
        and the local soft tokens to chain gradients back through (when soft tokens travel)."""
        if isinstance(soft, AdapterInput):
            adapter = soft.adapter
            params = {name: t.detach().requires_grad_(want_grad and t.requires_grad)
                      for name, t in adapter.tensors().items()}
            scales = None if soft.scales is None else soft.scales.to(adapter.param_dtype).cpu()
            inputs = {"math": type(adapter).math, "params": params, "scales": scales,
                      "vectors": soft.vectors.detach().to(adapter.param_dtype).cpu()}
            return inputs, [n for n, t in params.items() if t.requires_grad], None
        shipped = soft.detach().requires_grad_(want_grad and soft.requires_grad)
        return {"soft": shipped}, (["soft"] if shipped.requires_grad else []), soft

    def _scoring_request(self, want, input_ids, tensors, inject_mask, site, positions, extra):
        """Shared by the remote `logits` and `loss`: logits only at `positions`, no prefix cache (a
        request carries no key/value tensors)."""
        input_ids, positions = torch.as_tensor(input_ids), torch.as_tensor(positions)
        if bool((positions == positions[:1]).all()):
            extra["logits_to_keep"] = positions[0].to(self.device)  # the head runs at these positions only
        else:
            extra["gather"] = (torch.arange(positions.shape[0])[:, None], positions)
        return self._request(want, input_ids.to(self.device), tensors, inject_mask, site, extra)

    def logits(self, input_ids, soft, inject_mask, site, positions, prefix_len=0):
        """Here: the base class's. Remote: one request; not differentiable (train with `loss`)."""
        if self._here():
            return super().logits(input_ids, soft, inject_mask, site, positions, prefix_len)
        self.check_site(site)
        tensors = self._tensors(soft, want_grad=False)[0] if isinstance(soft, AdapterInput) else {"soft": soft.detach()}
        return self._call("logits", lambda: self._scoring_request(
            "logits", input_ids, tensors, inject_mask, site, positions, {}))

    def loss(self, input_ids, soft, inject_mask, site, positions, gold, clamp=100.0, prefix_len=0):
        """Here: the base class's. Remote: the loss computed next to the model with the adapter's
        gradients, in one request. The returned scalar backpropagates into the adapter: its gradient
        with respect to each parameter is the one computed in the request (value + <p, g> - <p, g>.detach())."""
        if self._here():
            return super().loss(input_ids, soft, inject_mask, site, positions, gold, clamp, prefix_len)
        self.check_site(site)
        want_grad = torch.is_grad_enabled()
        tensors, names, local = self._tensors(soft, want_grad)
        extra = {"grad_names": names, "gold": gold, "clamp": clamp}
        value, grads = self._call("training step" if want_grad else "loss", lambda: self._scoring_request(
            "loss", input_ids, tensors, inject_mask, site, positions, dict(extra)))
        if not names:
            return value.to(self.device)
        targets = [local] if local is not None else [soft.adapter.tensors()[n] for n in names]
        link = sum((t * g.to(t.device, t.dtype)).sum() for t, g in zip(targets, grads))
        return value.to(link.device) + (link - link.detach())

    @torch.no_grad()
    def generate(self, input_ids, soft, inject_mask, site, sampling: Sampling, is_finished, prefix_len=0):
        """Here: the base class's (prefill trace, shared decoding loop). Remote: one `generate`
        request, the tokens that end a label acting as end-of-sequence (every row runs until the
        longest label ends; rows are cut where their label ended)."""
        if self._here():
            return super().generate(input_ids, soft, inject_mask, site, sampling, is_finished, prefix_len)
        self.check_site(site)
        tensors, _, _ = self._tensors(soft, want_grad=False)
        input_ids = torch.as_tensor(input_ids)
        stop = sorted(_finishing_ids(is_finished, self.tokenizer))
        extra = {"max_new_tokens": sampling.max_new_tokens, "do_sample": not sampling.greedy, "eos_token_id": stop,
                 "pad_token_id": pad_token_id(self.tokenizer), "attention_mask": torch.ones_like(input_ids)}
        if sampling.greedy:
            extra.update(temperature=None, top_p=None, top_k=None)
        else:
            # top_k=None would be transformers' default 50, not what the local path draws
            extra.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)

        def request():
            return self._request("generate", input_ids.to(self.device), tensors, inject_mask, site, dict(extra))

        sequences = self._call("generation", request)
        outputs = []
        for row in sequences[:, input_ids.shape[1]:].tolist():
            ids: list[int] = []
            for token in row:  # cut where the row's label ended, as the shared decode loop does
                ids.append(token)
                if is_finished(ids):
                    break
            outputs.append(ids)
        return outputs


def _finishing_ids(is_finished, tokenizer) -> frozenset[int]:
    """Token ids that end a row: the explainer lists them; any other callable is asked per token."""
    listed = getattr(is_finished, "token_ids", None)
    if listed is not None:
        return listed()
    return frozenset(i for i in range(len(tokenizer)) if is_finished([i]))
