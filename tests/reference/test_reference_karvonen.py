"""Activation Oracles against the reference (Karvonen et al. 2025, adamkarvonen/activation_oracles).

`tests/ao_reference.py` re-states the reference's prompt, slot finding, steering hook and greedy
answer from a reading of its code (files and lines named there); these tests hold the library's
oracle (`selfinterp_plugins.oracles`) to them on a tiny model with the real SmolLM2 tokenizer:
the prompt's ids and slots exactly, the injection at K ordinary-token positions to 1e-6 in the
logits of every prompt position, the greedy answers token for token. The model has four layers, so
what is added after layer 1 reaches the answer (after the last layer it would change nothing).
"""

from __future__ import annotations

import pytest
import torch
from ao_reference import (
    cut,
    eval_prompt_ids,
    pattern_positions,
    prompt_ids,
    reference_answers,
    reference_run,
    steering_hook,
)

from selfinterp_plugins import Sampling
from selfinterp_plugins.oracles import ORACLE_SAMPLING, activation_oracle
from selfinterp_plugins.sites import Site, combine

QUESTION = "Can you name which person the model is thinking about?"  # the demo notebook's


@pytest.fixture(scope="module")
def deep():
    from selfinterp_plugins.models import tiny_model

    return tiny_model("llama", seed=0, num_hidden_layers=4, initializer_range=0.2)


def vectors(n: int, k: int, d: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, d, generator=g) * torch.rand(n, k, 1, generator=g) * 20


@pytest.mark.parametrize("k", [1, 3, 10])
def test_the_prompt_and_its_slots_are_the_references(deep, k):
    model, tok = deep
    oracle = activation_oracle(model, tok, layer=2, question=QUESTION, positions=k)
    ids = prompt_ids(tok, 2, k, QUESTION)
    assert oracle.prompt_ids.tolist() == ids == eval_prompt_ids(tok, 2, k, QUESTION)
    assert oracle.inject_mask.nonzero().flatten().tolist() == pattern_positions(ids, tok, k)


def test_a_question_holding_the_placeholder_keeps_the_slots_first(deep):
    """The reference takes the first K ` ?` (those of the prefix): one in the question is text."""
    model, tok = deep
    question = "Is it a cat ? Or a dog ?"
    oracle = activation_oracle(model, tok, layer=1, question=question, positions=2)
    ids = prompt_ids(tok, 1, 2, question)
    assert sum(t == tok.encode(" ?", add_special_tokens=False)[0] for t in ids) == 4
    assert oracle.inject_mask.nonzero().flatten().tolist() == pattern_positions(ids, tok, 2)


def ours_run(oracle, v: torch.Tensor, prefix: bool = False):
    """(residual entering decoder layer 2, i.e. leaving layer 1 with the injection; logits at every
    prompt position, or at the last one after the shared prefix) of the library's oracle."""
    n, ids = len(v), oracle.prompt_ids
    seen = {}

    def keep(module, args, kwargs):  # the last pass wins: a shared prefix, when run, comes first
        seen["resid"] = (args[0] if args else kwargs["hidden_states"]).clone()

    handle = oracle.backend.model.model.layers[2].register_forward_pre_hook(keep, with_kwargs=True)
    positions = torch.full((n, 1), len(ids) - 1) if prefix else torch.arange(len(ids)).expand(n, -1)
    try:
        with torch.no_grad():
            logits = oracle.backend.logits(ids.expand(n, -1), oracle.soft_tokens(v), oracle.inject_mask.expand(n, -1),
                                           oracle.site, positions, oracle.prefix_len if prefix else 0)
    finally:
        handle.remove()
    return seen["resid"], logits


@pytest.mark.parametrize("k, coef", [(1, 1.0), (3, 1.0), (3, 2.5)])
def test_injection_at_k_ordinary_token_positions_equals_the_references_hook(deep, k, coef):
    """The residual stream leaving layer 1 equals the reference hook's to 1e-6; the logits of
    every position to 1e-5 (the rest of the forward pass: the same model, summed in another order)."""
    model, tok = deep
    oracle = activation_oracle(model, tok, layer=2, question=QUESTION, positions=k, coef=coef)
    v = vectors(3, k)
    ids = oracle.prompt_ids.tolist()
    resid, logits = reference_run(model, ids, v, pattern_positions(ids, tok, k), coef=coef)
    ours_resid, ours_logits = ours_run(oracle, v)
    torch.testing.assert_close(ours_resid, resid, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours_logits, logits, atol=1e-5, rtol=0)
    # with the template's shared prefix run once and cached (what explain does), attention over the
    # cache sums in another order: a few float32 ulps of these residuals (|h| up to ~20)
    after_prefix, last = ours_run(oracle, v, prefix=True)
    torch.testing.assert_close(after_prefix, resid[:, oracle.prefix_len:], atol=1e-5, rtol=0)
    torch.testing.assert_close(last, logits[:, -1:], atol=1e-5, rtol=0)
    base, _ = reference_run(model, ids, v * 0, pattern_positions(ids, tok, k))  # a zero vector adds nothing
    assert (resid - base).abs().max() > 1.0  # so the comparison above is not of two no-ops


def test_greedy_answers_equal_the_references(deep):
    model, tok = deep
    oracle = activation_oracle(model, tok, layer=2, question=QUESTION, positions=3)
    v = vectors(4, 3, seed=1)
    ids = oracle.prompt_ids.tolist()
    theirs = reference_answers(model, tok, ids, v, pattern_positions(ids, tok, 3), max_new_tokens=12)
    records = oracle.explain(v, sampling=Sampling(max_new_tokens=12), progress=False)
    stops = oracle._is_finished.stop_ids
    assert [r["text"] for r in records] == [tok.decode(cut(row, stops)) for row in theirs]
    assert len({tuple(row) for row in theirs}) > 1  # the rows' vectors changed the answers


def test_the_oracle_decodes_as_the_demo_does(deep):
    """Greedy, at most 50 new tokens (the demo notebook's generation_kwargs), steering 1.0 after
    layer 1 (sft_config.py lines 15 and 23), when explain is given no sampling."""
    model, tok = deep
    oracle = activation_oracle(model, tok, layer=2, question=QUESTION)
    assert oracle.default_sampling == ORACLE_SAMPLING == Sampling(temperature=0.0, max_new_tokens=50)
    assert oracle.site == Site("resid_post", 1, "add_normmatched", 1.0)


def test_the_added_term_carries_no_gradient_into_the_hidden_state():
    """The reference adds `steered.detach()` (steering_hooks.py line 191): the gradient reaching
    the residual is the identity, as if nothing were added. (Before, it also flowed through ‖h‖.)"""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 8, generator=g).requires_grad_(True)
    soft = torch.randn(2, 2, 8, generator=g)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[:, 1:3] = True
    weights = torch.randn(2, 5, 8, generator=g)
    (combine(hidden, soft, mask, "add_normmatched", 1.0) * weights).sum().backward()
    ours = hidden.grad.clone()

    hidden.grad = None
    clone = hidden.clone()
    steering_hook(list(soft), [[1, 2], [1, 2]], 1.0, torch.float32)(None, None, clone)
    (clone * weights).sum().backward()
    torch.testing.assert_close(ours, hidden.grad, atol=0, rtol=0)
