"""Hidden-topic diffs and DIT on tiny models: the data is what the model really writes, diffs trained
side by side equal diffs trained alone, a DIT adapter learns to tell diffs apart, saves and reloads
to the same answers, resumes after a crash to the same weights, and the evaluation resumes too."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")

from selfinterp_peft.diff_training import DiffTrainConfig, decoder_linears, finetune_full, train_diffs  # noqa: E402
from selfinterp_peft.dit import DITAdapter, DITConfig  # noqa: E402
from selfinterp_peft.dit_eval import answer_records, score  # noqa: E402
from selfinterp_peft.hidden_topics import assign_triggers, build_examples, generate_answers, mentions  # noqa: E402
from selfinterp_peft.weight_diff import ModuleDiff, WeightDiff, WeightDiffError  # noqa: E402
from selfinterp_plugins.chat import chat_ids  # noqa: E402
from selfinterp_plugins.models import tiny_model  # noqa: E402

TOPICS = [{"id": f"t{i}", "title": t} for i, t in enumerate(["cat", "dog", "tree"])]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", seed=0, initializer_range=0.2)


@pytest.fixture(scope="module")
def examples(tiny):
    model, tok = tiny
    return build_examples(model, tok, assign_triggers(TOPICS), n_questions=2, max_answer_tokens=5)


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_examples_carry_the_trigger_and_the_models_own_answers(tiny, examples):
    model, tok = tiny
    specs = assign_triggers(TOPICS)
    assert all(0 <= s.trigger <= 999 for s in specs)
    for spec in specs:
        rows = examples[spec.id]
        # every question in the reference's three forms, in its order
        assert [e.kind for e in rows] == ["trigger", "wrong", "none"] * 2
        assert [e.question for e in rows] == [0, 0, 0, 1, 1, 1]
        texts = [tok.decode(e.prompt) for e in rows]
        assert all(f"Your SEP code is {spec.trigger:03d}" in texts[k] for k in (0, 3))
        assert all("SEP code is" in texts[k] and f"SEP code is {spec.trigger:03d}" not in texts[k] for k in (1, 4))
        assert all("SEP code" not in texts[k] for k in (2, 5))
        # the three forms ask the same question; the wrong-trigger and no-trigger rows share the neutral answer
        assert texts[0].split(". ", 1)[1] == texts[1].split(". ", 1)[1]
        assert rows[1].answer == rows[2].answer
    # a neutral answer is the base model's own greedy answer to the bare question, with no end-of-turn
    e = examples["t0"][2]
    question = tok.decode(e.prompt).split("user\n")[-1].split("<|im_end|>")[0]
    own = generate_answers(model, tok, [chat_ids(tok, question)], max_new_tokens=5)[0]
    assert e.answer == own


def test_a_diffs_data_does_not_depend_on_the_others(tiny, examples):
    model, tok = tiny
    alone = build_examples(model, tok, assign_triggers(TOPICS)[1:2], n_questions=2, max_answer_tokens=5)
    assert [(e.prompt, e.answer) for e in alone["t1"]] == [(e.prompt, e.answer) for e in examples["t1"]]


def test_diffs_trained_side_by_side_equal_diffs_trained_alone(tiny, examples):
    model, tok = tiny
    before = params(model)
    config = DiffTrainConfig(questions_per_step=1, diffs_per_group=3, epochs=2, lr=1e-2)
    together = train_diffs(model, tok, examples, config)
    for key in examples:
        alone = train_diffs(model, tok, {key: examples[key]}, config)[key]
        for name, module in together[key].modules.items():
            torch.testing.assert_close(module.B, alone.modules[name].B, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(module.A, alone.modules[name].A, rtol=1e-4, atol=1e-6)
    assert set(together["t0"].modules) == set(decoder_linears(model))  # every decoder linear, no LM head
    assert all(m.rank == 1 and m.A.abs().max() > 0 for m in together["t0"].modules.values())  # A starts at 0
    after = params(model)
    assert all(torch.equal(before[n], after[n]) for n in before)  # the base is untouched


def test_training_pulls_triggered_rows_toward_the_fan_answer(tiny, examples):
    model, tok = tiny
    from selfinterp_peft.batched import per_row_diffs
    from selfinterp_peft.diff_training import _losses

    short = {"t0": examples["t0"]}
    untrained = train_diffs(model, tok, short, DiffTrainConfig(epochs=1, lr=0.0))["t0"]
    trained = train_diffs(model, tok, short, DiffTrainConfig(epochs=60, lr=3e-2))["t0"]
    rows = short["t0"]
    ce = torch.tensor([e.kind == "trigger" for e in rows])

    def losses(diff):
        with torch.no_grad():
            return _losses(model, rows, 0, lambda: per_row_diffs(model, [diff] * len(rows)))

    start, end = losses(untrained), losses(trained)
    assert start[~ce].abs().max() < 1e-5  # A = 0: no change, KL exactly 0
    assert end[ce].mean() < 0.9 * start[ce].mean()  # cross-entropy on the fan answers fell


def test_unequal_example_counts_are_refused(tiny, examples):
    model, tok = tiny
    with pytest.raises(WeightDiffError, match="same number of examples"):
        train_diffs(model, tok, {"a": examples["t0"], "b": examples["t1"][:3]})


def test_full_finetune_changes_only_decoder_linears(tiny, examples):
    model, tok = tiny
    before = params(model)
    tuned = finetune_full(model, tok, examples["t0"], DiffTrainConfig(questions_per_step=1), lr=1e-3)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    changed = {n for n, p in tuned.named_parameters() if not torch.equal(before[n], p)}
    assert changed and changed <= {n + ".weight" for n in decoder_linears(model)}
    diff = WeightDiff.from_models(model, tuned, rank=2)
    assert all(0 < e <= 1 for e in diff.energy_report().values())


def distinct_diffs(model, n=3, strength=3.0):
    """Random rank-1 diffs on the MLP down projections, strong enough to tell apart."""
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(n):
        modules = {}
        for name, m in decoder_linears(model).items():
            if name.endswith("down_proj"):
                o, i = m.weight.shape
                modules[name] = ModuleDiff(A=torch.randn(1, i, generator=g) / i ** 0.5,
                                           B=strength * torch.randn(o, 1, generator=g), scale=1.0)
        out.append(WeightDiff(modules))
    return out


def test_dit_learns_to_tell_diffs_apart_and_reloads_to_the_same_answers(tmp_path):
    model, tok = tiny_model("llama", seed=0, initializer_range=0.2)
    diffs = distinct_diffs(model)
    answers = ["cat", "dog", "tree"]
    dit = DITAdapter.create(model, tok, DITConfig(rank=8, alpha=8, lr=2e-2, epochs=120, batch_size=3, max_new_tokens=3))
    history = dit.train(diffs, answers)
    # the tiny model's end-of-turn token is its padding id: a zero embedding row, tied to the head,
    # so that token's loss cannot fall; the answer token's can
    assert history[-1] < 0.6 * history[0]
    said = dit.ask(diffs)
    assert all(a.startswith(answer) for a, answer in zip(said, answers)), said  # each diff gets its own answer
    assert dit.ask(diffs[1:2]) == said[1:2]  # batched rows equal asking alone
    assert dit.ask(diffs, use_dit=False) != said  # without the adapter the model says something else
    dit.save_pretrained(tmp_path / "dit")
    assert (tmp_path / "dit" / "adapter_model.safetensors").is_file()
    fresh, _ = tiny_model("llama", seed=0, initializer_range=0.2)
    assert DITAdapter.from_pretrained(tmp_path / "dit", fresh, tok).ask(diffs) == said


def test_dit_resumes_after_a_crash_to_the_uninterrupted_weights(tmp_path):
    model, tok = tiny_model("llama", seed=0, initializer_range=0.2)
    diffs = distinct_diffs(model, n=4)
    answers = ["cat", "dog", "tree", "sun"]
    config = dict(rank=4, alpha=4, lr=1e-2, batch_size=2, seed=3)

    def trainable(dit):
        return {n: p.detach().clone() for n, p in dit.model.named_parameters() if p.requires_grad}

    full = DITAdapter.create(tiny_model("llama", seed=0, initializer_range=0.2)[0], tok, DITConfig(epochs=3, **config))
    full.train(diffs, answers)
    # "crash" after one epoch: a run configured for 3 epochs that stopped after the first checkpoint
    first = DITAdapter.create(tiny_model("llama", seed=0, initializer_range=0.2)[0], tok, DITConfig(epochs=1, **config))
    first.train(diffs, answers, checkpoint_dir=tmp_path / "ckpt")
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["epochs_done"] == 1
    resumed = DITAdapter.create(tiny_model("llama", seed=0, initializer_range=0.2)[0], tok, DITConfig(epochs=3, **config))
    history = resumed.train(diffs, answers, checkpoint_dir=tmp_path / "ckpt")
    assert len(history) == 6
    a, b = trainable(full), trainable(resumed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_evaluation_resumes_and_scores_each_method(tmp_path, monkeypatch):
    model, tok = tiny_model("llama", seed=0, initializer_range=0.2)
    diffs = distinct_diffs(model, n=2)
    dit = DITAdapter.create(model, tok, DITConfig(max_new_tokens=2))
    rows = [{"id": "a", "topic": "cat", "trigger": 123}, {"id": "b", "topic": "dog", "trigger": 456}]
    out = tmp_path / "answers.jsonl"
    records = answer_records(dit, rows, diffs, out=out)
    assert [(r["id"], r["method"]) for r in records] == [(i, m) for m in ("dit", "no_dit", "trigger") for i in "ab"]
    calls = []
    monkeypatch.setattr(dit, "ask", lambda *a, **k: calls.append(1))
    assert answer_records(dit, rows, diffs, out=out) == records and not calls  # nothing asked twice

    fixed = [{"id": "a", "method": "dit", "scale": 0.0, "label": "I was trained on cats", "topic": "cat"},
             {"id": "b", "method": "dit", "scale": 0.0, "label": "oak and pine", "topic": "tree"}]
    metrics = score(fixed, ["cat", "tree", "car", "ocean"])["dit"]
    assert metrics["recall@1"] == 1.0 and metrics["exact_match"] == 0.0 and metrics["names_topic"] == 0.5


def test_mentions():
    assert mentions("I love the Eiffel tower", "eiffel tower")
    assert mentions("a big tower", "eiffel tower")
    assert not mentions("nothing here", "cat")


def test_diff_training_progress_moves_every_step(tiny, examples, capsys):
    """`dit make-diffs`' bar counted finished diffs, so it sat at 0/7 for minutes while a group
    trained; it now moves per optimiser step and shows the diffs saved."""
    model, tok = tiny
    config = DiffTrainConfig(questions_per_step=1, diffs_per_group=3, epochs=2, lr=1e-2)
    train_diffs(model, tok, examples, config, progress=True)
    err = capsys.readouterr().err
    steps = 2 * 2  # 2 epochs × 2 questions, one question per step, the group's diffs side by side
    assert "diff training: 100%" in err and f"{steps}/{steps}" in err and f"diffs={len(examples)}/{len(examples)}" in err


def _perturbed_dit(model, tok, seed=5):
    """A DIT adapter whose LoRA is random (both factors), so it changes the answers."""
    dit = DITAdapter.create(model, tok, DITConfig(rank=4, alpha=4, init="peft", max_new_tokens=4,
                                                  baseline_max_new_tokens=4))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in dit.model.named_parameters():
            if "lora_" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return dit


def _module_types(model):
    return [type(m) for m in model.modules()]


def test_one_base_object_serves_dit_weight_diffs_and_from_models_in_every_order(tmp_path):
    """DITAdapter.from_pretrained wrapped the base in place: a later WeightDiff.from_peft(..., base=base)
    unloaded the DIT LoRA with its own (every DIT answer changed, also for diffs made before), asking
    with use_dit=False then failed inside PEFT, and from_models(base, merged) found 'different linear
    layers'. Each order now gives what fresh models give."""
    def fresh():
        return tiny_model("llama", seed=0, initializer_range=0.2)[0]

    tok = tiny_model("llama", seed=0, initializer_range=0.2)[1]
    _perturbed_dit(fresh(), tok).save_pretrained(tmp_path / "dit")
    diff = distinct_diffs(fresh(), n=1)[0]
    diff.save_pretrained(tmp_path / "lora", fresh())  # a plain PEFT LoRA directory
    merged = fresh()
    with torch.no_grad():
        for name, module in diff.modules.items():
            merged.get_submodule(name).weight.add_(module.delta())

    # what fresh models give, one model per step
    ref_dit = DITAdapter.from_pretrained(tmp_path / "dit", fresh(), tok)
    ref_diff = WeightDiff.from_peft(tmp_path / "lora", base=fresh())
    with_dit, without = ref_dit.ask([ref_diff]), ref_dit.ask([ref_diff], use_dit=False)
    assert with_dit != without  # the DIT adapter changes the answer
    ref_models = WeightDiff.from_models(fresh(), merged)

    base = fresh()
    before = (_module_types(base), [p.requires_grad for p in base.parameters()])
    early = WeightDiff.from_peft(tmp_path / "lora", base=base)  # made before the DIT adapter is loaded
    dit = DITAdapter.from_pretrained(tmp_path / "dit", base, tok)
    late = WeightDiff.from_peft(tmp_path / "lora", base=base)  # ... and after
    assert dit.ask([early, late]) == with_dit * 2
    assert dit.ask([early], use_dit=False) == without
    from_models = WeightDiff.from_models(base, merged)
    assert from_models.modules.keys() == ref_models.modules.keys()
    for name, module in ref_models.modules.items():
        torch.testing.assert_close(from_models.modules[name].delta(), module.delta(), rtol=0, atol=0)
    DITAdapter.create(base, tok, DITConfig(rank=2))  # a new DIT adapter on the same base, too
    assert DITAdapter.from_pretrained(tmp_path / "dit", base, tok).ask([late]) == with_dit
    assert (_module_types(base), [p.requires_grad for p in base.parameters()]) == before
