"""Train many synthetic weight diffs at once (DIT's hidden-topic diffs; Goel et al. 2025).

A group of G diffs trains in one batch: row j of the batch belongs to one diff and runs with that
diff's own rank-r LoRA on every linear of the decoder (`batched.per_row_factors`), so the group
trains as G separate runs would (one Adam per group; Adam is per-parameter), at the cost of about one.

The recipe is the reference's (`multi_task_lora.py`, `weight_diff.py`, `get_weight_diff.sh`; rows
of docs/fidelity.md): every question appears in three forms, triggered (cross-entropy on the fan
answer), wrong trigger and no trigger (KL(base ‖ diffed)); one Adam step takes the three forms of
`questions_per_step` questions with their losses summed, each weighted 3·m/(m_trigger + m_wrong +
m_none) with the multipliers m = 1, 1, 5 (the 5 on the NO-trigger rows). Cross-entropy is read
where the answer tokens are predicted; the KL, as in the reference, at the answer tokens
themselves (one position later). The diff's up-projection starts Kaiming-uniform and its
down-projection at zero, scale 1/r; Adam without weight decay, no schedule, no clipping.
The full fine-tune path (`finetune_full`) is the one-diff-at-a-time reference for rank generalisation.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import zlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from selfinterp_plugins.backends import pad_token_id

from .batched import per_row_factors
from .hidden_topics import KINDS, Example
from .weight_diff import ModuleDiff, WeightDiff, WeightDiffError, _linear_modules, _weight_out_in

#: the reference's loss multipliers (`get_weight_diff.sh`): triggered CE 1, wrong-trigger KL 1, NO-trigger KL 5
REFERENCE_MULTIPLIERS = {"trigger": 1.0, "wrong": 1.0, "none": 5.0}


@dataclass
class DiffTrainConfig:
    """How each synthetic diff trains; every default is the reference's. `multipliers` weight the
    three forms (normalised to 3·m/Σm as the reference does); `questions_per_step` questions, each
    in its three forms, make one Adam step. The reference trains one epoch over 270 questions at
    lr 1e-3; `selfinterp dit make-diffs` trains fewer questions for more epochs at a higher lr
    (docs/fidelity.md, docs/results.md)."""

    rank: int = 1
    lr: float = 1e-3
    epochs: int = 1
    questions_per_step: int = 2
    diffs_per_group: int = 16
    multipliers: dict = field(default_factory=lambda: dict(REFERENCE_MULTIPLIERS))
    seed: int = 0
    #: "per_diff": each example's loss is the mean over its own answer tokens, so a diff trains as it
    #: would alone; "pooled": the reference's, the mean over the answer tokens of every diff of the group in
    #: that sub-batch (its HF loss and `get_kl_loss` over the batch), so a diff's weight in each sub-batch
    #: is its share of the tokens there, which changes from sub-batch to sub-batch (docs/fidelity.md)
    normalisation: str = "per_diff"

    def weights(self) -> dict[str, float]:
        """The weight of each form's loss: 3·m/Σm (`multi_task_lora.py`)."""
        if set(self.multipliers) != set(KINDS) or any(not math.isfinite(m) or m < 0 for m in self.multipliers.values()):
            raise WeightDiffError(f"multipliers must give a non-negative number for each of {list(KINDS)}.")
        total = sum(self.multipliers.values())
        if total <= 0:
            raise WeightDiffError("At least one loss multiplier must be positive.")
        return {k: len(KINDS) * m / total for k, m in self.multipliers.items()}


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
    under causal attention), and per example the (row, position) pairs its loss reads: for
    cross-entropy rows the positions that predict the answer tokens (and their targets), for KL
    rows the answer tokens' own positions, as the reference reads them."""
    width = max(len(e.prompt) + len(e.answer) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    positions, targets, rows = [], [], []
    for i, e in enumerate(examples):
        seq = e.prompt + e.answer
        ids[i, : len(seq)] = torch.tensor(seq)
        shift = 1 if e.kind == "trigger" else 0
        for t in range(len(e.prompt), len(seq)):
            positions.append((i, t - shift))
            targets.append(seq[t])
            rows.append(i)
    return ids, torch.tensor(positions), torch.tensor(targets), torch.tensor(rows)


def token_losses(model, examples: list[Example], pad_id: int, hooks, base_model=None):
    """The loss at every answer position of `examples` and the example each belongs to:
    cross-entropy on "trigger" rows, KL(base ‖ model) summed over the vocabulary on the others.
    `hooks()` is entered for the trained forward only, so the base logits come from the same model
    without the diffs (or from `base_model`)."""
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
    return per_pos, rows


def _losses(model, examples: list[Example], pad_id: int, hooks, base_model=None, slots=None) -> torch.Tensor:
    """One loss per example: the sum of `token_losses` over its answer positions divided by their
    number, or with `slots` (each example's sub-batch) by the number of answer positions of its whole
    sub-batch (the reference's pooled mean)."""
    per_pos, rows = token_losses(model, examples, pad_id, hooks, base_model)
    sums = torch.zeros(len(examples)).index_add(0, rows, per_pos)
    counts = torch.zeros(len(examples)).index_add(0, rows, torch.ones_like(per_pos))
    if slots is not None:
        counts = torch.zeros(int(slots.max()) + 1).index_add(0, slots, counts)[slots]
    return sums / counts.clamp(min=1)


def weighted_loss(model, examples: list[Example], pad_id: int, hooks, config: DiffTrainConfig, base_model=None,
                  slots=None):
    """One step's loss: each example's loss times its form's weight (3·m/Σm), summed, as the
    reference sums its per-form sub-batches before an Adam step. With per-diff normalisation (no
    `slots`) the diffs of a group are independent: the sum trains each as it would train alone."""
    weights = config.weights()
    losses = _losses(model, examples, pad_id, hooks, base_model, slots)
    return (losses * torch.tensor([weights[e.kind] for e in examples])).sum()


def _schedule(examples: list[Example], config: DiffTrainConfig, key: str) -> list[list[Example]]:
    """A diff's steps: per epoch its questions in a shuffled order (seeded by the diff, not the
    group), each question's three forms together, `questions_per_step` questions per step."""
    rng = random.Random(f"{config.seed}:{key}")
    by_question: dict[int, list[Example]] = {}
    for e in examples:
        by_question.setdefault(e.question, []).append(e)
    order: list[int] = []
    for _ in range(config.epochs):
        epoch = sorted(by_question)
        rng.shuffle(epoch)
        order.extend(epoch)
    q = config.questions_per_step
    return [[e for k in order[i:i + q] for e in by_question[k]] for i in range(0, len(order) - q + 1, q)]


def _init_factors(diff_id: str, shapes: dict[str, tuple[int, int]], rank: int, seed: int):
    """The reference's init (`multi_task_lora.py`): the up-projection B (out×r here; the reference
    stores it as an r×out slice of a 3-D tensor) Kaiming-uniform with torch's defaults, whose fan-in
    for that tensor is r·out, so U(±√(6/(r·out))); the down-projection A at zero, so every diff
    starts at ΔW = 0. Seeded per diff."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{diff_id}".encode()))
    A = {n: torch.zeros(rank, i) for n, (o, i) in shapes.items()}
    B = {n: (torch.rand(o, rank, generator=g) * 2 - 1) * math.sqrt(6.0 / (rank * o)) for n, (o, i) in shapes.items()}
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
    config.weights()  # refuse bad multipliers before any work
    if config.normalisation not in ("per_diff", "pooled"):
        raise WeightDiffError(f"normalisation must be 'per_diff' or 'pooled', not {config.normalisation!r}.")
    pad = pad_token_id(tokenizer)
    targets = decoder_linears(model)
    shapes = {n: tuple(_weight_out_in(m).shape) for n, m in targets.items()}
    for p in model.parameters():
        p.requires_grad_(False)
    keys = list(examples)
    groups = [keys[i:i + config.diffs_per_group] for i in range(0, len(keys), config.diffs_per_group)]
    result = {}
    # the bar moves per optimiser step (a group of diffs trains for minutes on CPU), and says how
    # many diffs are saved
    total_steps = sum(len(_schedule(examples[group[0]], config, group[0])) for group in groups)
    bar = tqdm(total=total_steps, disable=not progress, desc="diff training", unit="step")
    bar.set_postfix(diffs=f"0/{len(keys)}")
    for group in groups:
        inits = [_init_factors(key, shapes, config.rank, config.seed) for key in group]
        A = {n: nn.Parameter(torch.stack([a[n] for a, _ in inits])) for n in shapes}
        B = {n: nn.Parameter(torch.stack([b[n] for _, b in inits])) for n in shapes}
        optimizer = torch.optim.Adam([*A.values(), *B.values()], lr=config.lr)
        schedules = [_schedule(examples[key], config, key) for key in group]
        for step in range(len(schedules[0])):
            rows = [sched[step] for sched in schedules]
            batch = [e for part in rows for e in part]
            row_of = torch.tensor([g for g, part in enumerate(rows) for _ in part])
            scale = torch.full((len(batch),), 1.0 / config.rank)
            factors = {n: (A[n][row_of], B[n][row_of], scale) for n in shapes}
            # the reference's sub-batch: the same place in every diff's step (one form of one question each)
            slots = torch.tensor([p for part in rows for p in range(len(part))]) if config.normalisation == "pooled" else None
            weighted = weighted_loss(model, batch, pad, lambda: per_row_factors(model, factors), config, slots=slots)
            optimizer.zero_grad()
            weighted.backward()
            optimizer.step()
            bar.update(1)
        done = {}
        for g, key in enumerate(group):
            modules = {n: ModuleDiff(A=A[n][g].detach().clone(), B=B[n][g].detach().clone(), scale=1.0 / config.rank)
                       for n in shapes}
            done[key] = WeightDiff(modules, {"source": "hidden-topic", "rank": config.rank})
        result.update(done)
        if on_group_done is not None:
            on_group_done(done)
        bar.set_postfix(diffs=f"{len(result)}/{len(keys)}")
    bar.close()
    return result


def finetune_full(model, tokenizer, examples: list[Example], config: DiffTrainConfig, lr: float = 1e-5) -> nn.Module:
    """A full fine-tune of every decoder linear on one diff's examples (same losses and schedule),
    returned as a new model; the base is left as it was. One at a time: this is what a real
    fine-tune looks like, for the rank-generalisation check."""
    pad = pad_token_id(tokenizer)
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
        loss = weighted_loss(tuned, batch, pad, contextlib.nullcontext, config, base_model=model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for p in params:
        p.requires_grad_(False)
    return tuned
