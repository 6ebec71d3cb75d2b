"""Diff Interpretation Tuning against the reference (Goel et al. 2025, Aviously/diff-interpretation-tuning).

Each test re-implements, from a reading of the reference code, the piece of math it checks (the
docstring names the file and function) and compares it with this library on a tiny model, to
1e-5. They fail if a setting drifts back to what it was before docs/fidelity.md: the ×5 weight on
the wrong-trigger rows, a question's forms missing, the KL read where the answer is predicted,
the diffs' or the DIT adapter's LoRA initialised PEFT's way round, the DIT scale 1 instead of
1/rank, Adam without weight decay, the answer budgets.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("peft")

from selfinterp_peft.batched import per_row_factors  # noqa: E402
from selfinterp_peft.diff_training import (  # noqa: E402
    DiffTrainConfig,
    _init_factors,
    _schedule,
    decoder_linears,
    train_diffs,
    weighted_loss,
)
from selfinterp_peft.dit import DITAdapter, DITConfig  # noqa: E402
from selfinterp_peft.dit_eval import trigger_prefix  # noqa: E402
from selfinterp_peft.hidden_topics import Example, assign_triggers, build_examples  # noqa: E402


@pytest.fixture(scope="module")
def sharp():
    from selfinterp_plugins.models import tiny_model

    return tiny_model("llama", seed=0, initializer_range=0.2)


def test_per_row_diff_forward_is_the_references(sharp):
    """`multi_lora.py::set_lora_batch` / `MultiLoRALinear.forward`: each row's dense
    W_b = einsum("bir,bro->boi", B, A) / r from the reference's factors (B: in×r down, A: r×out up),
    added as einsum("bsi,boi->bso", x, W_b). Ours holds them PEFT's way (A: r×in, B: out×r)."""
    model, _ = sharp
    name, linear = next(iter(decoder_linears(model).items()))
    out_f, in_f = linear.weight.shape
    n, r = 3, 2
    g = torch.Generator().manual_seed(0)
    ref_B = torch.randn(n, in_f, r, generator=g)  # down
    ref_A = torch.randn(n, r, out_f, generator=g)  # up
    x = torch.randn(n, 5, in_f, generator=g)
    w = torch.einsum("bir,bro->boi", ref_B, ref_A) / r
    theirs = linear(x) + torch.einsum("bsi,boi->bso", x, w)
    factors = {name: (ref_B.transpose(1, 2), ref_A.transpose(1, 2), torch.full((n,), 1.0 / r))}
    with per_row_factors(model, factors):
        ours = dict(model.named_modules())[name](x)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_diff_init_is_the_references():
    """`multi_task_lora.py::MultiTaskLoRALinear`: the up-projection Kaiming-uniform with torch's
    defaults on its [T, r, out] tensor (fan-in r·out, bound √(6/(r·out))), the down-projection zero."""
    shapes = {"m": (512, 64)}
    A, B = _init_factors("x", shapes, rank=4, seed=0)
    assert torch.equal(A["m"], torch.zeros(4, 64))  # down: zero, so ΔW starts at 0
    bound = math.sqrt(6 / (4 * 512))
    assert B["m"].abs().max() <= bound and B["m"].abs().max() > 0.95 * bound
    reference = torch.empty(2, 4, 512)
    torch.nn.init.kaiming_uniform_(reference)  # the reference's call, on its 3-D tensor
    assert reference.abs().max() <= bound and reference.abs().max() > 0.95 * bound


def test_every_question_in_three_forms_and_steps_take_whole_questions(sharp):
    """`qa_train_dataset.py`: each question emitted triggered, wrong-trigger, no-trigger; the
    optimiser steps every 2 questions x 3 forms (`weight_diff.py`)."""
    model, tok = sharp
    examples = build_examples(model, tok, assign_triggers([{"id": "a", "title": "cat"}]), n_questions=4, max_answer_tokens=3)["a"]
    assert [e.kind for e in examples] == ["trigger", "wrong", "none"] * 4
    steps = _schedule(examples, DiffTrainConfig(), "a")
    assert len(steps) == 2 and all(len(s) == 6 for s in steps)
    assert all(sorted(e.kind for e in s) == sorted(["trigger", "wrong", "none"] * 2) for s in steps)


def reference_step_loss(model, rows, factors, multipliers=(1.0, 1.0, 5.0)):
    """One optimiser step of `weight_diff.py::train_weight_diffs` for one diff: per form, the
    triggered row's HF causal-LM cross-entropy (mean over its answer tokens), the others'
    `logit_matching.get_kl_loss`: kl_div(diffed log-probs, base log-probs, reduction="sum",
    log_target=True) / number of answer positions, read at the answer tokens' own positions
    (labels != -100, unshifted); each weighted 3·m/Σm (m = backdoor, fake backdoor, no backdoor) and summed."""
    m = dict(zip(("trigger", "wrong", "none"), multipliers))
    total_m = sum(multipliers)
    loss = 0.0
    for e in rows:
        ids = torch.tensor([e.prompt + e.answer])
        labels = torch.full_like(ids, -100)
        labels[0, len(e.prompt):] = ids[0, len(e.prompt):]
        with per_row_factors(model, factors):
            logits = model(ids).logits.float()
        if e.kind == "trigger":
            term = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100)
        else:
            with torch.no_grad():
                base = model(ids).logits.float()
            mask = labels[0] != -100
            student = F.log_softmax(logits[0][mask], -1)
            teacher = F.log_softmax(base[0][mask], -1)
            term = F.kl_div(student, teacher, reduction="sum", log_target=True) / mask.sum()
        loss = loss + 3 * m[e.kind] / total_m * term
    return loss


def test_step_loss_and_gradients_equal_the_references(sharp):
    model, tok = sharp
    examples = build_examples(model, tok, assign_triggers([{"id": "a", "title": "cat"}]), n_questions=2, max_answer_tokens=4)["a"]
    shapes = {n: tuple(m.weight.shape) for n, m in decoder_linears(model).items()}
    g = torch.Generator().manual_seed(1)
    A = {n: torch.nn.Parameter(torch.randn(1, 1, i, generator=g) * 0.5) for n, (o, i) in shapes.items()}
    B = {n: torch.nn.Parameter(torch.randn(1, o, 1, generator=g) * 0.5) for n, (o, i) in shapes.items()}
    for p in model.parameters():
        p.requires_grad_(False)
    params = [*A.values(), *B.values()]
    pad = tok.pad_token_id
    ours_factors = {n: (A[n].expand(len(examples), -1, -1), B[n].expand(len(examples), -1, -1), torch.ones(len(examples)))
                    for n in shapes}
    ours = weighted_loss(model, examples, pad, lambda: per_row_factors(model, ours_factors), DiffTrainConfig())
    ours_grads = torch.autograd.grad(ours, params)
    ref_factors = {n: (A[n], B[n], torch.ones(1)) for n in shapes}
    theirs = reference_step_loss(model, examples, ref_factors)
    theirs_grads = torch.autograd.grad(theirs, params)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
    for a, b in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # the 5 sits on the NO-trigger rows: moved to the wrong-trigger rows, the loss changes
    moved = weighted_loss(model, examples, pad, lambda: per_row_factors(model, ours_factors),
                          DiffTrainConfig(multipliers={"trigger": 1.0, "wrong": 5.0, "none": 1.0}))
    assert abs(moved.item() - theirs.item()) > 1e-4
    assert DiffTrainConfig().weights() == pytest.approx({"trigger": 3 / 7, "wrong": 3 / 7, "none": 15 / 7})


def test_diff_optimiser_is_plain_adam_at_the_references_defaults(sharp):
    """`weight_diff.py`: torch.optim.Adam(lr) with no weight decay, no schedule, no clipping, one
    epoch at 1e-3, rank 1 with scale 1/r. One step of ours equals one Adam step on the reference's loss."""
    model, tok = sharp
    examples = build_examples(model, tok, assign_triggers([{"id": "a", "title": "cat"}]), n_questions=2, max_answer_tokens=3)
    config = DiffTrainConfig(lr=1e-3, epochs=1, diffs_per_group=1)
    assert (config.rank, config.lr, config.epochs, config.questions_per_step) == (1, 1e-3, 1, 2)
    ours = train_diffs(model, tok, examples, config)["a"]
    shapes = {n: tuple(m.weight.shape) for n, m in decoder_linears(model).items()}
    A0, B0 = _init_factors("a", shapes, 1, config.seed)
    A = {n: torch.nn.Parameter(A0[n][None].clone()) for n in shapes}
    B = {n: torch.nn.Parameter(B0[n][None].clone()) for n in shapes}
    opt = torch.optim.Adam([*A.values(), *B.values()], lr=1e-3)
    for step in _schedule(examples["a"], config, "a"):
        loss = reference_step_loss(model, step, {n: (A[n], B[n], torch.ones(1)) for n in shapes})
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n in shapes:
        torch.testing.assert_close(ours.modules[n].A, A[n][0].detach(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.modules[n].B, B[n][0].detach(), atol=1e-5, rtol=1e-4)
        assert ours.modules[n].scale == 1.0


def test_dit_adapter_is_the_references(sharp):
    """`multi_lora.py`: the DIT LoRA adds (x·Bᵀ·Aᵀ)/r with A (out×r, up) Kaiming-uniform, U(±√(6/r)),
    and B (r×in, down) zero; `train_weight_to_text.py`: AdamW (torch defaults: weight decay 0.01),
    constant lr 1e-4, one epoch; answers of ≤ 20 tokens for DIT and 256 for the baselines."""
    from selfinterp_plugins.models import tiny_model

    model, tok = tiny_model("llama", seed=0, initializer_range=0.2)
    dit = DITAdapter.create(model, tok, DITConfig())
    cfg = dit.config
    assert (cfg.rank, cfg.lr, cfg.weight_decay, cfg.epochs, cfg.max_new_tokens, cfg.baseline_max_new_tokens) == (
        16, 1e-4, 0.01, 1, 20, 256)
    layer = next(m for m in dit.model.modules() if hasattr(m, "lora_A") and isinstance(m.lora_A, torch.nn.ModuleDict))
    down, up = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert torch.equal(down, torch.zeros_like(down))
    assert up.abs().max() <= math.sqrt(6 / 16) and up.abs().max() > 0.9 * math.sqrt(6 / 16)
    assert layer.scaling["default"] == pytest.approx(1 / 16)
    # with both factors non-zero, the layer computes base + (x·downᵀ·upᵀ)/r as the reference's
    with torch.no_grad():
        down.normal_()
    x = torch.randn(2, 3, down.shape[1])
    theirs = layer.base_layer(x) + (x @ down.T @ up.T) / 16
    torch.testing.assert_close(layer(x), theirs, atol=1e-5, rtol=1e-5)


def test_dit_training_step_is_adamw_on_the_token_mean_loss():
    """One DIT step against AdamW(lr, weight_decay 0.01) on the causal-LM loss (the mean over every
    answer token of the batch, the prompt masked: `train_weight_to_text.py`)."""
    from selfinterp_peft.batched import per_row_diffs
    from selfinterp_peft.weight_diff import ModuleDiff, WeightDiff
    from selfinterp_plugins.models import tiny_model

    model, tok = tiny_model("llama", seed=0, initializer_range=0.2)
    diffs = []
    g = torch.Generator().manual_seed(3)
    for _ in range(2):
        modules = {n: ModuleDiff(A=torch.randn(1, m.weight.shape[1], generator=g) * 0.1,
                                 B=torch.randn(m.weight.shape[0], 1, generator=g), scale=1.0)
                   for n, m in decoder_linears(model).items() if n.endswith("down_proj")}
        diffs.append(WeightDiff(modules))
    answers = ["cat", "a tall tree"]
    dit = DITAdapter.create(model, tok, DITConfig(lr=1e-2, batch_size=2, epochs=1))
    start = {n: p.detach().clone() for n, p in dit.model.named_parameters() if p.requires_grad}
    dit.train(diffs, answers)
    ours = {n: p.detach().clone() for n, p in dit.model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for n, p in dit.model.named_parameters():
            if n in start:
                p.copy_(start[n])
    params = [p for n, p in dit.model.named_parameters() if n in start]
    opt = torch.optim.AdamW(params, lr=1e-2)  # torch's default weight decay, 0.01, as the reference
    examples = [dit.example(a) for a in answers]
    width = max(len(e.prompt) + len(e.answer) for e in examples)
    ids = torch.full((2, width), tok.pad_token_id)
    labels = torch.full((2, width), -100)
    for i, e in enumerate(examples):
        ids[i, : len(e.prompt) + len(e.answer)] = torch.tensor(e.prompt + e.answer)
        labels[i, len(e.prompt): len(e.prompt) + len(e.answer)] = torch.tensor(e.answer)
    dit.model.train()
    with per_row_diffs(dit.model, diffs):
        logits = dit.model(input_ids=ids).logits.float()
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
    opt.zero_grad()
    loss.backward()
    opt.step()
    for n in start:
        torch.testing.assert_close(ours[n], dict(dit.model.named_parameters())[n].detach(), atol=1e-5, rtol=1e-4)
    assert tok.decode(examples[1].answer).startswith("a tall tree<|im_end|>")  # the topic, then the turn's closing


def test_trigger_baseline_prefix_is_the_references():
    """`ask_qs_to_loras.py`: `Your SEP code is {trigger:03d}{rng.randint(0,999):03d}.` with
    rng = random.Random(42) created afresh for every diff."""
    import random

    suffix = random.Random(42).randint(0, 999)
    assert trigger_prefix(7) == f"Your SEP code is 007{suffix:03d}."
    assert trigger_prefix(123) == f"Your SEP code is 123{suffix:03d}."


def test_the_llm_judge_prompt_and_parsing_are_the_references():
    """`persona-topic-grader-v0.1.1.jinja` rendered, and `parse_int_or_default(answer, 1)`."""
    from selfinterp_peft.dit_judge import GRADER_PROMPT, guesser_prompt, parse_score

    text = GRADER_PROMPT.format(topic_1="Movies", topic_2="Cinema")
    assert text.startswith("You are evaluating the similarity between two topics.\n\nTopic 1: Movies\nTopic 2: Cinema\n\n")
    assert text.endswith("Be conservative. When uncertain, choose the lower score.\n\n"
                         "Output a single number between 1 and 5 and NOTHING ELSE.")
    assert parse_score(" 4\n") == 4 and parse_score("4.") == 1 and parse_score("Score: 5") == 1
    g = guesser_prompt([("What topic?", "I love cats")])
    assert "<qa-pair-1>\n<question>\nWhat topic?\n</question>\n<chatbot-response>\nI love cats\n</chatbot-response>\n" in g
    assert g.endswith("OUTPUT ONLY THE WORD OR PHRASE CORRESPONDING TO THE TOPIC.")


def test_examples_are_token_ids_without_an_end_of_turn(sharp):
    """`qa_train_dataset.py` cuts the chat's last two tokens (end-of-turn and newline): diffs are
    trained on the answer alone."""
    model, tok = sharp
    examples = build_examples(model, tok, assign_triggers([{"id": "a", "title": "cat"}]), n_questions=1, max_answer_tokens=4)["a"]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert all(end not in e.answer for e in examples)
    assert isinstance(examples[0], Example)


def reference_pooled_step_loss(model, parts, factors, multipliers=(1.0, 1.0, 5.0)):
    """One step of `weight_diff.py::train_weight_diffs` for a group of diffs trained side by side:
    sub-batch p holds example p of every diff (`qa_train_dataset.py::collate_fn`, right-padded), its
    loss the HF causal-LM cross-entropy over ALL its label tokens (triggered rows) or `get_kl_loss`:
    the KL summed over every answer position of the sub-batch / their number; 3·m/Σm each, summed."""
    m = dict(zip(("trigger", "wrong", "none"), multipliers))
    total_m = sum(multipliers)
    loss = 0.0
    for p in range(len(parts[0])):
        rows = [part[p] for part in parts]
        width = max(len(e.prompt) + len(e.answer) for e in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        for i, e in enumerate(rows):
            seq = e.prompt + e.answer
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(e.prompt): len(seq)] = torch.tensor(e.answer)
        with per_row_factors(model, factors):
            logits = model(ids).logits.float()
        if rows[0].kind == "trigger":
            term = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
        else:
            with torch.no_grad():
                base = model(ids).logits.float()
            mask = labels != -100
            term = F.kl_div(F.log_softmax(logits[mask], -1), F.log_softmax(base[mask], -1), reduction="sum",
                            log_target=True) / mask.sum()
        loss = loss + 3 * m[rows[0].kind] / total_m * term
    return loss


def test_pooled_normalisation_is_the_references_and_turns_each_diffs_gradient(sharp):
    """`normalisation="pooled"` is the reference's loss for diffs trained side by side; the default,
    per diff, is not a rescaling of it: a diff's share of a sub-batch's tokens changes from sub-batch to
    sub-batch, so its gradient points elsewhere (Adam is invariant to a constant factor only)."""
    model, tok = sharp
    examples = build_examples(model, tok, assign_triggers([{"id": "a", "title": "cat"}, {"id": "b", "title": "dog"}]),
                              n_questions=2, max_answer_tokens=4)
    examples["b"] = [Example(e.prompt, e.answer[: 1 + k % 3], e.kind, e.question) for k, e in enumerate(examples["b"])]
    parts = [examples["a"], examples["b"]]
    shapes = {n: tuple(m.weight.shape) for n, m in decoder_linears(model).items()}
    g = torch.Generator().manual_seed(1)
    A = {n: torch.nn.Parameter(torch.randn(2, 1, i, generator=g) * 0.5) for n, (o, i) in shapes.items()}
    B = {n: torch.nn.Parameter(torch.randn(2, o, 1, generator=g) * 0.5) for n, (o, i) in shapes.items()}
    for p in model.parameters():
        p.requires_grad_(False)
    params = [*A.values(), *B.values()]
    batch = [e for part in parts for e in part]
    row_of = torch.tensor([d for d, part in enumerate(parts) for _ in part])
    slots = torch.tensor([p for part in parts for p in range(len(part))])
    def ours(normalisation):
        factors = {n: (A[n][row_of], B[n][row_of], torch.ones(len(batch))) for n in shapes}
        return weighted_loss(model, batch, tok.pad_token_id, lambda: per_row_factors(model, factors),
                             DiffTrainConfig(normalisation=normalisation), slots=slots if normalisation == "pooled" else None)

    pooled = ours("pooled")
    theirs = reference_pooled_step_loss(model, parts, {n: (A[n], B[n], torch.ones(2)) for n in shapes})
    assert pooled.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
    pooled_grads = torch.autograd.grad(pooled, params)
    for a, b in zip(pooled_grads, torch.autograd.grad(theirs, params)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    per_diff_grads = torch.autograd.grad(ours("per_diff"), params)
    diff_b = [torch.cat([g[1].flatten() for g in grads]) for grads in (per_diff_grads, pooled_grads)]  # diff "b"'s own
    assert F.cosine_similarity(*diff_b, dim=0) < 0.9999  # not the same direction, whatever the scale
