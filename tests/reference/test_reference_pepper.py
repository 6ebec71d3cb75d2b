"""Self-interpretation adapters against the reference (Pepper et al. 2026, agencyenterprise/selfie-adapters).

Each test re-implements, from a reading of the reference code, the piece of math it checks (the
docstring names the file and function) and compares it with this library on a tiny model, to
1e-5. They are written to fail if a setting drifts back to what it was before docs/fidelity.md:
the prompt's system turn, the identity init of `full_rank`, weight decay on the scale, the
warm-up's first step, the clamp's place, the eval-time scale convention, the scoring prompts and
sampling, the knowledge control's budget and redaction.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from selfinterp_plugins import Explainer, TrainConfig, VectorLabelDataset
from selfinterp_plugins.adapters import AdapterConfig, make_adapter
from selfinterp_plugins.backends.base import Sampling, pick_next
from selfinterp_plugins.templates import PromptTemplate

D = 64
WORDS = ["dog", "tree", "house", "river", "cat", "sun"]


def reference_normalize(x):
    """`projection.py::ProjectionModule._normalize_if_needed`: x / (‖x‖₂ + 1e-8)."""
    return x / (x.norm(dim=-1, keepdim=True) + 1e-8)


def reference_project(kind, params, x, normalize=True):
    """`projection.py`: the five forward passes, on x̂ (normalised unless told not to)."""
    x_hat = reference_normalize(x) if normalize else x
    s = params["log_scale"].exp() if "log_scale" in params else None
    if kind == "scale_only":
        return s * x_hat
    if kind in ("scalar_affine", "bias_only"):
        return s * x_hat + params["bias"]
    if kind == "full_rank":
        return x_hat @ params["weight"].T + params["bias"]
    if kind == "low_rank":
        return (x_hat @ params["U"]) @ params["V"].T + params["bias"]
    if kind == "scalar_affine_plus_low_rank":
        return s * x_hat + (x_hat @ params["U"]) @ params["V"].T + params["bias"]
    raise KeyError(kind)


def randomised(kind, seed=0):
    """An adapter with every parameter set to random values (so no term can hide behind a zero)."""
    adapter = make_adapter(AdapterConfig.for_kind(kind, D, rank=8))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() else 0.5))
    return adapter


@pytest.mark.parametrize("kind", ["scale_only", "scalar_affine", "low_rank", "scalar_affine_plus_low_rank", "full_rank"])
def test_adapter_forward_and_eval_scale_equal_the_references(kind):
    """Training forward = `transform(x)`; evaluation at scale s = `evaluation_functions.py`:
    v/‖v‖ (no eps), times s, then the adapter with its own normalisation off."""
    adapter = randomised(kind)
    params = dict(adapter.named_parameters())
    x = torch.randn(5, D) * 7
    torch.testing.assert_close(adapter(x), reference_project(kind, params, x), atol=1e-5, rtol=1e-5)
    for s in (0.5, 2.1, 5.5):
        evaluated = reference_project(kind, params, x / x.norm(dim=-1, keepdim=True) * s, normalize=False)
        torch.testing.assert_close(adapter(x, scale=s), evaluated, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,count", [("scale_only", 1), ("scalar_affine", D + 1), ("low_rank", 2 * D * 8 + D),
                                        ("scalar_affine_plus_low_rank", 1 + 2 * D * 8 + D), ("full_rank", D * D + D)])
def test_parameter_counts_equal_the_references(kind, count):
    """`projection.py::num_parameters`."""
    assert make_adapter(AdapterConfig.for_kind(kind, D, rank=8)).num_trainable() == count


def test_paper_init_is_the_references():
    """`projection.py::initialize_weights`: log_scale = log(init_scale), biases 0, U and V
    ~ N(0, (init·0.01/√r)²), and full_rank's W ~ N(0, (init·√(2/(d+d)))²): a random matrix, no identity."""
    d, init = 256, 5.0
    torch.manual_seed(0)
    full = make_adapter(AdapterConfig(kind="full_rank", d_model=d, init_scale=init))
    w = full.weight.detach()
    assert w.std().item() == pytest.approx(init * math.sqrt(2 / (2 * d)), rel=0.02)
    assert abs(w.mean().item()) < 0.01 and abs(torch.diagonal(w).mean().item()) < 0.1  # 5·I has diagonal mean 5
    assert torch.equal(full.bias.detach(), torch.zeros(d))
    low = make_adapter(AdapterConfig.for_kind("scalar_affine_plus_low_rank", d, init_scale=init, rank=64))
    assert low.U.detach().std().item() == pytest.approx(init * 0.01 / math.sqrt(64), rel=0.05)
    assert low.log_scale.item() == pytest.approx(math.log(init))


def test_chat_template_is_the_references_prompt_with_no_system_turn(tokenizer):
    """`configs/qwen_scaling/*_label_gen.json`: the ChatML prompt written out, no system turn (SmolLM2's
    tokenizer template would add one), the placeholder twice; the target is label + '"' + end-of-turn
    (`training/data.py`)."""
    ph = "<empty_output>"
    reference = f'<|im_start|>user\nWhat is the meaning of "{ph}"?<|im_end|>\n<|im_start|>assistant\nThe meaning of "{ph}" is "'
    template = PromptTemplate.chat(tokenizer)
    assert template.prompt == reference and template.placeholder == ph
    assert "system" not in template.prompt and template.prompt.count(ph) == 2
    assert template.target_text(" cat ") == 'cat"<|im_end|>'
    assert "system" in PromptTemplate.tokenizer_chat(tokenizer).prompt  # the named variant keeps the tokenizer's


def make_data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(WORDS), D, generator=torch.Generator().manual_seed(99)) * 3
    which = torch.arange(n) % len(WORDS)
    vectors = centres[which] + 0.3 * torch.randn(n, D, generator=g)
    return VectorLabelDataset(vectors, [{"id": str(i), "label": WORDS[int(w)]} for i, w in enumerate(which)], {})


def reference_loss(model, template_ids, inject, adapter, vectors, targets, max_loss):
    """`training/model.py::SelfIEModel.compute_loss`: template embeddings with the soft token at EVERY
    placeholder, target embeddings after them, right-padded with zero embeddings and an attention
    mask; logits[T−1 : T+L−1] predict the target; per-token CE clamped at `max_loss` BEFORE the
    per-example mean; then the mean over examples."""
    embed = model.get_input_embeddings()
    soft = adapter(vectors)
    rows, lengths = [], []
    for i, target in enumerate(targets):
        e = embed(template_ids).clone()
        e[inject] = soft[i].to(e.dtype)
        rows.append(torch.cat([e, embed(torch.tensor(target))]))
        lengths.append(len(target))
    width = max(r.shape[0] for r in rows)
    embeds = torch.zeros(len(rows), width, rows[0].shape[1])
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        embeds[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = 1
    logits = model(inputs_embeds=embeds, attention_mask=mask).logits
    t = len(template_ids)
    losses = []
    for i, target in enumerate(targets):
        token = F.cross_entropy(logits[i, t - 1 : t + lengths[i] - 1].float(), torch.tensor(target), reduction="none")
        losses.append(torch.clamp(token, max=max_loss).mean())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("clamp", [100.0, 2.0])
def test_loss_and_gradients_equal_the_references(sharp_llama, clamp):
    model, tok = sharp_llama
    explainer = Explainer.create(model, tok, adapter="scalar_affine_plus_low_rank", template="chat", rank=4)
    with torch.no_grad():
        explainer.adapter.bias.normal_(0, 0.5)
    data = make_data(6)
    targets = [explainer.template.target_ids(tok, label) for label in data.labels]
    ours = explainer.loss(data.vectors, data.labels, clamp)
    ours_grads = torch.autograd.grad(ours, list(explainer.adapter.parameters()))
    theirs = reference_loss(model, explainer.prompt_ids, explainer.inject_mask, explainer.adapter, data.vectors, targets, clamp)
    theirs_grads = torch.autograd.grad(theirs, list(explainer.adapter.parameters()))
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    for a, b in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def reference_lrs(total, warmup, base):
    """`trainer.py::_setup_scheduler` + `train_epoch`: CosineAnnealingLR(T_max = total − warmup)
    built first, LinearLR(start_factor 1e-6, total_iters = warmup) second; after each optimiser
    step, the warm-up steps while global_step < warmup, else the cosine. Returns the lr each
    optimiser step ran with."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=base)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=0)
    linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-6, end_factor=1.0, total_iters=warmup)
    lrs = []
    for step in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        (linear if step < warmup else cosine).step()
    return lrs


def reference_training(explainer, data, batches, config, init_state):
    """The reference's loop on the same batches: AdamW with the log-scale in a weight-decay-0 group
    and everything else at 0.01 (`trainer.py::_setup_optimizer`), loss as `reference_loss`,
    clip_grad_norm_(0.5), the schedule of `reference_lrs`."""
    adapter = explainer.adapter
    adapter.load_state_dict(init_state)
    adapter.zero_grad(set_to_none=True)  # a finished run leaves its last gradients behind
    named = dict(adapter.named_parameters())
    groups = [{"params": [named["log_scale"]], "weight_decay": 0.0},
              {"params": [p for n, p in named.items() if n != "log_scale"], "weight_decay": config.weight_decay}]
    opt = torch.optim.AdamW(groups, lr=config.lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=len(batches) - config.warmup_steps, eta_min=0)
    linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-6, end_factor=1.0, total_iters=config.warmup_steps)
    tok = explainer.backend.tokenizer
    for step, rows in enumerate(batches):
        targets = [explainer.template.target_ids(tok, data.labels[i]) for i in rows]
        loss = reference_loss(explainer.backend.model, explainer.prompt_ids, explainer.inject_mask, adapter,
                              data.vectors[rows], targets, config.loss_clamp)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), config.grad_clip)
        opt.step()
        opt.zero_grad()
        (linear if step < config.warmup_steps else cosine).step()
    return {k: v.detach().clone() for k, v in adapter.state_dict().items()}


def test_schedule_equals_the_references_schedulers():
    from selfinterp_plugins.training import _lr_lambda

    for total, warmup in ((40, 10), (12, 10), (200, 10)):
        factor = _lr_lambda(total, warmup)
        theirs = reference_lrs(total, warmup, 1e-2)
        ours = [1e-2 * factor(k) for k in range(total)]
        assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-12)


def test_a_training_run_equals_the_references_loop(sharp_llama, tmp_path):
    """Fifteen steps of `train()` against the reference's loop on the same batches: the same
    adapter to 1e-5 (the schedule, the per-parameter weight decay, clipping, the loss). With the old
    warm-up (one step ahead) or weight decay on the log-scale this fails."""
    from selfinterp_plugins.training import epoch_batches

    model, tok = sharp_llama
    explainer = Explainer.create(model, tok, adapter="scalar_affine", template="chat")
    with torch.no_grad():
        explainer.adapter.log_scale.fill_(math.log(3.0))  # a scale far from 1, so decaying its log would show
    init = {k: v.detach().clone() for k, v in explainer.adapter.state_dict().items()}
    data = make_data(30)
    config = TrainConfig(epochs=3, batch_size=6, lr=5e-2, weight_decay=0.5, warmup_steps=10, seed=3)
    explainer.train(data, config=config, progress=False)
    ours = {k: v.detach().clone() for k, v in explainer.adapter.state_dict().items()}
    batches = [b for epoch in range(3) for b in epoch_batches([0] * len(data), 6, 3, epoch, False)]
    theirs = reference_training(explainer, data, batches, config, init)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=1e-5)


def test_generation_scoring_prompts_and_sampling_are_the_references():
    """`evals/generation_scoring/config.py` and `reward_system.py`: the system and user prompts word
    for word (label put in with replace('_', label)); generate(temperature=0.7, top_p=0.9) with
    top_k unset, i.e. transformers' default 50."""
    pytest.importorskip("sae_lens")
    from selfinterp_sae_lens.generation_scoring import REFERENCE_TOP_K, WRITER_SYSTEM, ConversationWriter, writer_prompt

    assert WRITER_SYSTEM == ("You are a helpful AI assistant who generates EXTREMELY SHORT example conversations. The "
                             "conversations are between a user and an assistant, and have the following format:\n"
                             "[USER] I'm a user.\n[ASSISTANT] I'm the assistant.")
    assert writer_prompt("cats and dogs") == ("Produce a VERY SHORT conversation which exhibits 'cats and dogs'\nDo not "
                                              "include any other text in your response. Start immediately with the conversation.")
    from transformers import GenerationConfig

    assert GenerationConfig._get_default_generation_params()["top_k"] == REFERENCE_TOP_K == 50
    writer = ConversationWriter(backend=None)
    assert (writer.sampling.temperature, writer.sampling.top_p, writer.sampling.top_k, writer.sampling.max_new_tokens) == (
        0.7, 0.9, 50, 100)


def test_sampling_filters_as_transformers_does():
    """Temperature, then top-k, then top-p, as transformers' warpers apply them: with the same
    uniform draw both pick the same token."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(1)) * 3
    sampling = Sampling(temperature=0.7, top_p=0.9, top_k=50)
    warped = logits
    for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(50), TopPLogitsWarper(0.9)):
        warped = warper(None, warped)
    theirs = torch.softmax(warped, -1)
    for seed in range(5):
        ours = pick_next(logits, sampling, torch.Generator().manual_seed(seed))
        expected = torch.multinomial(theirs, 1, generator=torch.Generator().manual_seed(seed)).squeeze(-1)
        assert torch.equal(ours, expected)


def test_knowledge_control_is_the_references_taboo_baseline():
    """`evals/taboo_baseline/taboo_generator.py`: the prompt word for word, greedy, max_tokens 150,
    and `filter_obvious_mentions` (the topic redacted, case-insensitive) before scoring."""
    from selfinterp_plugins.evaluation import knowledge

    assert knowledge.DESCRIBE_PROMPT.format(title="hiccups") == (
        'Describe hiccups without using the word "hiccups", any part of it, or obvious synonyms. Be specific enough '
        "that someone could guess what you're describing.")
    assert knowledge.DESCRIPTION_TOKENS == 150
    import inspect

    assert inspect.signature(knowledge.prompted_descriptions).parameters["max_new_tokens"].default == 150

    def reference_filter(description, topic):
        return re.compile(re.escape(topic), re.IGNORECASE).sub("[REDACTED]", description)

    for text in ("A Volcano is a volcano.", "no mention", "VOLCANOES erupt"):
        assert knowledge.redact(text, "volcano") == reference_filter(text, "volcano")


@pytest.fixture(scope="module")
def sharp_llama():
    from selfinterp_plugins.models import tiny_model

    return tiny_model("llama", seed=0, initializer_range=0.2)
