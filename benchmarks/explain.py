"""Explaining 256 held-out topic vectors with the shipped explainer on SmolLM2 (greedy, up to
30 new tokens): ours (batched, shared prefix, finished rows dropped) vs a loop that explains one
vector at a time, and vs bare `model.generate` of the same prompts in the same batches with no
injection, each row generating as many tokens as ours did for it (without injection the model's
answer to the bare template is a lone newline, so the same stopping rule would compare a
1-token run with ours), and vs the floor: the bare model's forward over only the tokens that
differ between examples (the template's shared prefix computed once, before timing), fed the
tokens ours generated, each row leaving the batch when it has as many as ours, the LM head at
the last position only; no adapter, no hooks, no label parsing.

    python benchmarks/explain.py [--n 256] [--batch 64]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from selfinterp_plugins import Sampling
from selfinterp_plugins.backends import pad_token_id

from _common import machine, shipped_setup


class RowBudget(StoppingCriteria):
    """Stops row i once it has generated `budget[i]` tokens."""

    def __init__(self, budget: list[int], prompt_len: int):
        self.budget, self.prompt_len = torch.tensor(budget), prompt_len

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - self.prompt_len) >= self.budget


def bare_generate(explainer, budgets: list[int], batch: int) -> int:
    """Plain `model.generate` on the template prompt (placeholder left as is, no injection), row i
    generating `budgets[i]` tokens (fewer only if it emits end-of-sequence); returns new tokens."""
    model, prompt, pad = explainer.backend.model, explainer.prompt_ids, pad_token_id(explainer.backend.tokenizer)
    tokens = 0
    for start in range(0, len(budgets), batch):
        budget = budgets[start : start + batch]
        ids = prompt.expand(len(budget), -1)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max(budget), do_sample=False,
                             min_new_tokens=min(budget), stopping_criteria=StoppingCriteriaList([RowBudget(budget, len(prompt))]),
                             pad_token_id=pad)
        tokens += sum(min(b, out.shape[1] - len(prompt)) for b in budget)
    return tokens


def floor_generate(explainer, generated: list[list[int]], batch: int) -> float:
    """Seconds the bare model needs to produce `generated` (the token ids ours produced, row by row)
    in batches of `batch`: the prompt's tokens after the shared prefix, then one step per token but
    the last, finished rows dropped from the key-value cache, argmax over the last position's logits."""
    from transformers import DynamicCache

    model, prefix = explainer.backend.model, explainer.prefix_len
    body, head = model.base_model, model.get_output_embeddings()
    device = model.get_input_embeddings().weight.device  # benchmarks/gpu.py runs it on CUDA
    prompt = explainer.prompt_ids.to(device)
    with torch.no_grad():
        stored = body(input_ids=prompt[None, :prefix], use_cache=True).past_key_values
        start = time.perf_counter()
        for first in range(0, len(generated), batch):
            rows = generated[first : first + batch]
            cache = DynamicCache([(layer.keys.expand(len(rows), -1, -1, -1), layer.values.expand(len(rows), -1, -1, -1))
                                  for layer in stored.layers], config=model.config)
            out = body(input_ids=prompt[prefix:].expand(len(rows), -1), past_key_values=cache, use_cache=True)
            head(out.last_hidden_state[:, -1]).argmax(-1)
            alive = list(range(len(rows)))
            for step in range(max(map(len, rows)) - 1):
                keep = [j for j, row in enumerate(alive) if len(rows[row]) > step + 1]
                if len(keep) < len(alive):
                    cache.batch_select_indices(torch.tensor(keep, device=device))
                    alive = [alive[j] for j in keep]
                out = body(input_ids=torch.tensor([[rows[row][step]] for row in alive], device=device),
                           past_key_values=cache, use_cache=True)
                head(out.last_hidden_state[:, -1]).argmax(-1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the kernels above are queued, not yet run
        return time.perf_counter() - start


def timed_explain(explainer, vectors, sampling, batch: int):
    """Ours, timed: (records, seconds, the token ids generated row by row, which the floor is fed)."""
    generated: list[list[int]] = []
    generate = explainer.backend.generate

    def recording(*call_args, **kwargs):
        out = generate(*call_args, **kwargs)
        generated.extend(out)
        return out

    explainer.backend.generate = recording
    try:
        start = time.perf_counter()
        records = explainer.explain(vectors, sampling=sampling, batch_size=batch, progress=False)
        seconds = time.perf_counter() - start  # the labels are decoded text: the device has finished
    finally:
        del explainer.backend.generate
    return records, seconds, generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    sampling = Sampling(max_new_tokens=30)

    _model, tok, explainer, data = shipped_setup(args.n)
    vectors = data.vectors
    print(f"machine: {machine()}")
    explainer.explain(vectors[:8], sampling=sampling, progress=False)  # warm-up

    batched, t_ours, generated = timed_explain(explainer, vectors, sampling, args.batch)
    t_floor = floor_generate(explainer, generated, args.batch)
    budgets = [len(tok(r["text"], add_special_tokens=False)["input_ids"]) for r in batched]
    new_tokens = sum(budgets)

    start = time.perf_counter()
    single = [explainer.explain(v, sampling=sampling, batch_size=1, progress=False)[0] for v in vectors]
    t_loop = time.perf_counter() - start
    same = sum(a["label"] == b["label"] for a, b in zip(batched, single))

    start = time.perf_counter()
    bare_tokens = bare_generate(explainer, budgets, args.batch)
    t_bare = time.perf_counter() - start

    print(f"{args.n} vectors, batch {args.batch}, greedy, <= {sampling.max_new_tokens} new tokens")
    print(f"ours (batched):         {t_ours:7.1f} s  {new_tokens} new tokens  ({t_ours / new_tokens * 1000:.1f} ms/token)")
    print(f"one vector at a time:   {t_loop:7.1f} s  -> ours is {t_loop / t_ours:.1f}x faster (goal >= 8x); "
          f"same labels {same}/{args.n}")
    print(f"bare model.generate:    {t_bare:7.1f} s  {bare_tokens} new tokens  ({t_bare / bare_tokens * 1000:.1f} ms/token)")
    print(f"floor (bare model, differing tokens only, ours' {sum(map(len, generated))} tokens): {t_floor:7.1f} s "
          f"-> ours / floor = {t_ours / t_floor:.2f}x (goal <= 1.10x)")
    print(f"ours / bare generate: {t_ours / t_bare:.2f}x wall time (goal <= 1.10x), "
          f"{(t_ours / new_tokens) / (t_bare / bare_tokens):.2f}x per generated token")


if __name__ == "__main__":
    main()
