"""One training step (loss + backward) of the shipped explainer's adapter on SmolLM2:
ours (shared-prefix K/V reused, LM head only at target positions) vs the naive way (whole
sequence through the model, injection by a forward hook on the embedding, full logits), and vs
the floor: the bare model's forward and backward over only the tokens that differ between
examples (the shared prefix computed once, before timing), the LM head at the target positions,
no adapter and no hooks, gradients taken with respect to those tokens' input embeddings.

Both compute the same loss on the same batch (checked); the ratios are naive / ours and ours / floor.

    python benchmarks/training_step.py [--batch 32] [--repeat 5]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from selfinterp_plugins.backends import pad_token_id

from _common import machine, median_time, shipped_setup


def naive_loss(explainer, vectors, labels, clamp: float = 100.0):
    """The straightforward implementation: full forward, full logits, shifted cross-entropy."""
    tok, model = explainer.backend.tokenizer, explainer.backend.model
    soft = explainer.soft_tokens(vectors)
    prompt = explainer.prompt_ids
    targets = [explainer.template.target_ids(tok, label) for label in labels]
    width = max(map(len, targets))
    ids = torch.full((len(labels), len(prompt) + width), pad_token_id(tok), dtype=torch.long)
    gold = torch.full_like(ids, -100)
    ids[:, : len(prompt)] = prompt
    for i, target in enumerate(targets):
        ids[i, len(prompt) : len(prompt) + len(target)] = torch.tensor(target)
        gold[i, len(prompt) : len(prompt) + len(target)] = torch.tensor(target)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, : len(prompt)] = explainer.inject_mask

    def hook(_module, _args, output):
        return torch.where(mask[:, :, None], soft[:, None, :].to(output.dtype), output)

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        logits = model(input_ids=ids).logits
    finally:
        handle.remove()
    per_token = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), gold[:, 1:], ignore_index=-100, reduction="none")
    valid = (gold[:, 1:] != -100).float()
    return ((per_token.clamp(max=clamp) * valid).sum(1) / valid.sum(1)).mean()


def floor_step(explainer, labels):
    """The bare model's share of our step, as a function to time: what no implementation of this
    training step can avoid. The prefix's keys and values are computed here, once."""
    from transformers import DynamicCache

    tok, model = explainer.backend.tokenizer, explainer.backend.model
    body, head, prefix = model.base_model, model.get_output_embeddings(), explainer.prefix_len
    device = model.get_input_embeddings().weight.device  # benchmarks/gpu.py runs it on CUDA
    prompt = explainer.prompt_ids.to(device)
    targets = [explainer.template.target_ids(tok, label) for label in labels]
    width = max(map(len, targets))
    ids = torch.full((len(labels), len(prompt) + width), pad_token_id(tok), dtype=torch.long, device=device)
    gold = torch.full((len(labels), width), -100, device=device)
    ids[:, : len(prompt)] = prompt
    for i, target in enumerate(targets):
        ids[i, len(prompt) : len(prompt) + len(target)] = torch.tensor(target)
        gold[i, : len(target)] = torch.tensor(target)
    positions = (len(prompt) - 1 - prefix + torch.arange(width, device=device)).expand(len(labels), width)
    rows = torch.arange(len(labels), device=device)[:, None]
    with torch.no_grad():
        stored = body(input_ids=prompt[None, :prefix], use_cache=True).past_key_values
        rest = model.get_input_embeddings()(ids[:, prefix:])

    def run():
        batch = len(labels)
        cache = DynamicCache([(layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1))
                              for layer in stored.layers], config=model.config)
        embeds = rest.detach().requires_grad_(True)
        hidden = body(inputs_embeds=embeds, past_key_values=cache, use_cache=True).last_hidden_state
        logits = head(hidden[rows, positions])
        loss = F.cross_entropy(logits.float().transpose(1, 2), gold, ignore_index=-100)
        loss.backward()

    return run


def ours_step(explainer, vectors, labels, loss=None):
    """One training step of ours (or of `loss(explainer, vectors, labels)`) as a function to time:
    the adapter's gradients cleared, the loss computed and backpropagated."""
    loss = loss or (lambda e, v, targets: e.loss(v, targets))

    def run():
        explainer.adapter.zero_grad(set_to_none=True)
        loss(explainer, vectors, labels).backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--template", default=None,
                        help="instead of the shipped explainer, a fresh scalar_affine one with this template (e.g. chat)")
    args = parser.parse_args()

    model, _tok, explainer, data = shipped_setup(args.batch, split="train")
    if args.template:
        from selfinterp_plugins import Explainer

        explainer = Explainer.create(explainer.backend, adapter="scalar_affine", template=args.template, site=explainer.site)
    vectors, labels = data.vectors, [r["label"] for r in data.records]
    ours = explainer.loss(vectors, labels)
    naive = naive_loss(explainer, vectors, labels)
    print(f"machine: {machine()}")
    print(f"batch {args.batch} topic vectors, {explainer.adapter.config.kind} adapter, {explainer.template.name} template, "
          f"prompt {len(explainer.prompt_ids)} tokens (shared prefix {explainer.prefix_len})")
    print(f"same loss: ours {ours.item():.6f}  naive {naive.item():.6f}  |diff| {abs(ours.item() - naive.item()):.2e}")

    def step(fn):
        return ours_step(explainer, vectors, labels, fn)

    t_ours = median_time(step(lambda e, v, labels: e.loss(v, labels)), args.repeat)
    t_naive = median_time(step(naive_loss), args.repeat)
    t_floor = median_time(floor_step(explainer, labels), args.repeat)
    prefix_len, explainer.prefix_len = explainer.prefix_len, 0
    t_no_prefix = median_time(step(lambda e, v, labels: e.loss(v, labels)), args.repeat)
    explainer.prefix_len = prefix_len
    print(f"training step: ours {t_ours * 1000:.0f} ms, naive {t_naive * 1000:.0f} ms -> {t_naive / t_ours:.2f}x faster (goal >= 1.5x)")
    print(f"floor (bare model, differing tokens only, no adapter, no hooks): {t_floor * 1000:.0f} ms -> "
          f"ours / floor = {t_ours / t_floor:.2f}x (goal <= 1.10x)")
    print(f"  of which the prefix cache: ours without it {t_no_prefix * 1000:.0f} ms ({t_no_prefix / t_ours:.2f}x); "
          f"the rest is the LM head at target positions only ({t_naive / t_no_prefix:.2f}x)")


if __name__ == "__main__":
    main()
