"""Train many synthetic weight diffs at once (DIT's hidden-topic diffs, ANCHORS.md §4).

A group of G diffs trains in one batch: row j of the batch belongs to diff j // k and runs with that
diff's own rank-r LoRA on every linear of the decoder (`batched.per_row_factors`). Each diff's loss
is the mean over its own k rows and the group's loss is the sum over diffs, so every diff receives
exactly the gradient it would receive alone; with one Adam per group (Adam is per-parameter) the
group trains exactly as G separate runs would, at the cost of about one. Rows of kind "trigger" are
trained with cross-entropy on the fan answer; "none" and "wrong" rows with KL(base ‖ diffed) on the
answer positions, the base logits coming from the same forward without the diffs.
The full fine-tune path (`finetune_full`) is the one-diff-at-a-time reference for rank generalisation.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .batched import per_row_factors
from .hidden_topics import Example
from .weight_diff import ModuleDiff, WeightDiff, WeightDiffError, _linear_modules, _weight_out_in


@dataclass
class DiffTrainConfig:
    """How each synthetic diff trains. `loss_weights` are (trigger CE, no-trigger KL, wrong-code KL);
    ANCHORS.md lists 1:1:5 for DIT's three terms and these defaults apply them in that order.
    lr and epochs default to the paper's (1e-3, one epoch); with the 6 examples per diff used on
    SmolLM2 that installs no behaviour, and `selfinterp dit make-diffs` defaults to lr 1e-2 and two
    epochs, the recipe that worked (docs/results.md, DIT run 2)."""

    rank: int = 1
    lr: float = 1e-3
    epochs: int = 1
    rows_per_diff: int = 4
    diffs_per_group: int = 16
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 5.0)
    seed: int = 0


def decoder_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Every linear of the decoder (q, k, v, o, gate, up, down, …), not the LM head."""
    head = model.get_output_embeddings()
    return {name: m for name, m in _linear_modules(model).items() if m is not head}


def answer_logits(model: nn.Module, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Next-token logits at (row, position) pairs only: the LM head on a few positions instead of
    all of them (the vocabulary projection is most of a small model's cost)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT layers stay in place
    hidden = causal_lm.base_model(input_ids=input_ids).last_hidden_state
    logits = causal_lm.get_output_embeddings()(hidden[positions[:, 0], positions[:, 1]]).float()
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def collate(examples: list[Example], pad_id: int):
    """Right-padded ids (no attention mask needed: padding after the real tokens cannot affect them
    under causal attention), the (row, position) of every answer-predicting position and its target."""
    width = max(len(e.prompt) + len(e.answer) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    positions, targets, rows = [], [], []
    for i, e in enumerate(examples):
        seq = e.prompt + e.answer
        ids[i, : len(seq)] = torch.tensor(seq)
        for t in range(len(e.prompt), len(seq)):
            positions.append((i, t - 1))
            targets.append(seq[t])
            rows.append(i)
    return ids, torch.tensor(positions), torch.tensor(targets), torch.tensor(rows)


def _losses(model, examples: list[Example], pad_id: int, hooks, base_model=None) -> torch.Tensor:
    """One loss per example: mean cross-entropy over the answer for "trigger" rows, mean
    KL(base ‖ model) over the answer for the others. `hooks()` is entered for the trained forward
    only, so the base logits come from the same model without the diffs (or from `base_model`)."""
    ids, positions, targets, rows = collate(examples, pad_id)
    with hooks():
        logits = answer_logits(model, ids, positions)
    logp = F.log_softmax(logits, -1)
    row_is_ce = torch.tensor([e.kind == "trigger" for e in examples])
    is_ce = row_is_ce[rows]
    per_pos = -logp.gather(1, targets[:, None])[:, 0] * is_ce
    if not row_is_ce.all():
        kl_rows = (~row_is_ce).nonzero()[:, 0]
        new_index = torch.full((len(examples),), -1).index_copy(0, kl_rows, torch.arange(len(kl_rows)))
        keep = ~is_ce
        with torch.no_grad():  # base logits at the KL positions only, on the KL rows only
            base_pos = torch.stack([new_index[positions[keep, 0]], positions[keep, 1]], 1)
            base_logp = F.log_softmax(answer_logits(base_model or model, ids[kl_rows], base_pos), -1)
        kl = (base_logp.exp() * (base_logp - logp[keep])).sum(-1)
        per_pos = per_pos.masked_scatter(keep, kl)
    sums = torch.zeros(len(examples)).index_add(0, rows, per_pos)
    counts = torch.zeros(len(examples)).index_add(0, rows, torch.ones_like(per_pos))
    return sums / counts.clamp(min=1)


def _weights(examples: list[Example], config: DiffTrainConfig) -> torch.Tensor:
    table = dict(zip(("trigger", "none", "wrong"), config.loss_weights))
    return torch.tensor([table[e.kind] for e in examples])


def _schedule(examples: list[Example], config: DiffTrainConfig, key: str) -> list[list[Example]]:
    """A diff's steps: its examples shuffled per epoch (seeded by the diff, not the group), k per step."""
    rng = random.Random(f"{config.seed}:{key}")
    order = []
    for _ in range(config.epochs):
        epoch = list(examples)
        rng.shuffle(epoch)
        order.extend(epoch)
    k = config.rows_per_diff
    return [order[i:i + k] for i in range(0, len(order) - k + 1, k)]


def _init_factors(diff_id: str, shapes: dict[str, tuple[int, int]], rank: int, seed: int):
    """PEFT's default LoRA init (A ~ kaiming-uniform(a=√5) = U(±1/√in), B = 0), seeded per diff."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{diff_id}".encode()))
    A = {n: (torch.rand(rank, i, generator=g) * 2 - 1) / math.sqrt(i) for n, (o, i) in shapes.items()}
    B = {n: torch.zeros(o, rank) for n, (o, i) in shapes.items()}
    return A, B


def train_diffs(model, tokenizer, examples: dict[str, list[Example]], config: DiffTrainConfig | None = None,
                progress: bool = False, on_group_done=None) -> dict[str, WeightDiff]:
    """Train one rank-r diff per key of `examples`, `diffs_per_group` at a time. `on_group_done(diffs)`
    receives each finished group (to save it as it goes). The model stays frozen and unchanged."""
    from tqdm.auto import tqdm

    config = config or DiffTrainConfig()
    counts = {len(v) for v in examples.values()}
    if len(counts) > 1:
        raise WeightDiffError("Every diff needs the same number of examples to train side by side; "
                              "build them with one build_examples call.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    targets = decoder_linears(model)
    shapes = {n: tuple(_weight_out_in(m).shape) for n, m in targets.items()}
    for p in model.parameters():
        p.requires_grad_(False)
    keys = list(examples)
    groups = [keys[i:i + config.diffs_per_group] for i in range(0, len(keys), config.diffs_per_group)]
    result = {}
    bar = tqdm(total=len(keys), disable=not progress, desc="diffs")
    for group in groups:
        inits = [_init_factors(key, shapes, config.rank, config.seed) for key in group]
        A = {n: nn.Parameter(torch.stack([a[n] for a, _ in inits])) for n in shapes}
        B = {n: nn.Parameter(torch.stack([b[n] for _, b in inits])) for n in shapes}
        optimizer = torch.optim.Adam([*A.values(), *B.values()], lr=config.lr)
        schedules = [_schedule(examples[key], config, key) for key in group]
        k = config.rows_per_diff
        row_of = torch.arange(len(group)).repeat_interleave(k)
        scale = torch.full((len(group) * k,), 1.0 / config.rank)
        for step in range(len(schedules[0])):
            batch = [e for sched in schedules for e in sched[step]]
            factors = {n: (A[n][row_of], B[n][row_of], scale) for n in shapes}
            losses = _losses(model, batch, pad, lambda: per_row_factors(model, factors))
            weighted = (losses * _weights(batch, config)).view(len(group), k).mean(1).sum()
            optimizer.zero_grad()
            weighted.backward()
            optimizer.step()
        done = {}
        for g, key in enumerate(group):
            modules = {n: ModuleDiff(A=A[n][g].detach().clone(), B=B[n][g].detach().clone(), scale=1.0 / config.rank)
                       for n in shapes}
            done[key] = WeightDiff(modules, {"source": "hidden-topic", "rank": config.rank})
        result.update(done)
        if on_group_done is not None:
            on_group_done(done)
        bar.update(len(group))
    bar.close()
    return result


def finetune_full(model, tokenizer, examples: list[Example], config: DiffTrainConfig, lr: float = 1e-5) -> nn.Module:
    """A full fine-tune of every decoder linear on one diff's examples (same losses and schedule),
    returned as a new model; the base is left as it was. One at a time: this is what a real
    fine-tune looks like, for the rank-generalisation check."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tuned = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in tuned.parameters():
        p.requires_grad_(False)
    params = [m.weight for m in decoder_linears(tuned).values()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    for batch in _schedule(examples, config, "full"):
        losses = _losses(tuned, batch, pad, contextlib.nullcontext, base_model=model)
        loss = (losses * _weights(batch, config)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for p in params:
        p.requires_grad_(False)
    return tuned
