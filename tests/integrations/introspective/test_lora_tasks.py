"""The LoRA explainer's task families: examples from real rows, baselines, registration."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")

from selfinterp_introspective import act_patch_task, input_ablation_task  # noqa: E402
from selfinterp_introspective.config import LoRAExplainerConfig  # noqa: E402
from selfinterp_introspective.tasks import causal_baselines, metrics_by_layer, rule_group, shuffled_vectors  # noqa: E402

from selfinterp_plugins import HFBackend  # noqa: E402
from selfinterp_plugins.datasets import VectorLabelDataset  # noqa: E402
from selfinterp_plugins.errors import ArtifactError, OptionError  # noqa: E402
from selfinterp_plugins.models import tiny_model  # noqa: E402
from selfinterp_plugins.plugins import get_task  # noqa: E402
from selfinterp_plugins.topics import load_topics  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    model, tok = tiny_model("llama", seed=3, initializer_range=0.2, num_hidden_layers=4)
    backend = HFBackend(model, tok)
    patch_rows = act_patch_task.patching_rows(backend, act_patch_task.counterfactual_pairs(load_topics(), 8, seed=2), [0, 1])
    hint_rows = input_ablation_task.ablation_rows(backend, input_ablation_task.build_questions(load_topics(), 8, seed=2))
    explainer = get_task("activation_patching").create(tiny_model("llama", seed=1)[0], tok,
                                                               LoRAExplainerConfig(rank=4, dropout=0.0))
    return explainer, patch_rows, hint_rows


def test_examples_of_each_task(setup):
    explainer, patch_rows, hint_rows = setup
    patch = get_task("activation_patching").examples(explainer, patch_rows)
    assert len(patch) == 8 and all(ex.vector is not None and ex.prompt_ids[ex.feature_pos] == explainer.feature_id for ex in patch)
    assert all(ex.answer == act_patch_task.target_text(r, explainer.tokenizer) for ex, r in zip(patch, patch_rows))
    torch.testing.assert_close(patch[0].vector, torch.tensor(patch_rows[0]["patch_position"]["intervention_vector"]))
    hint = get_task("input_ablation").examples(explainer, hint_rows)
    assert all(ex.vector is None for ex in hint)
    assert "If the hint were removed" in explainer.tokenizer.decode(hint[0].prompt_ids)
    data = VectorLabelDataset(torch.randn(3, 64), [{"label": w} for w in ("a", "b", "c")], {"layer": 6})
    feats = get_task("feature_descriptions").examples(explainer, data)
    assert "layer 6" in explainer.tokenizer.decode(feats[0].prompt_ids) and [f.answer for f in feats] == ["a", "b", "c"]
    assert explainer.loss(patch[:3] + hint[:2] + feats[:1]).isfinite()  # mixed tasks share a batch


def test_trivial_baselines(setup):
    explainer, patch_rows, _ = setup
    examples = get_task("activation_patching").examples(explainer, patch_rows)
    base = causal_baselines(examples, patch_rows, "activation_patching", tokenizer=explainer.tokenizer)
    changed = sum(r["is_different"] for r in patch_rows) / len(patch_rows)
    assert base["always_unchanged"]["exact_match"] == pytest.approx(1 - changed)
    assert base["always_unchanged"]["changed_f1"] == 0.0
    with pytest.raises(OptionError, match="tokenizer=explainer.tokenizer"):
        causal_baselines(examples, patch_rows, "activation_patching")
    with pytest.raises(ArtifactError, match="7 examples for 8 rows"):
        causal_baselines(examples[:7], patch_rows, "activation_patching", tokenizer=explainer.tokenizer)


def test_shuffled_vectors_moves_every_vector_within_its_layer(setup):
    explainer, patch_rows, _ = setup
    examples = get_task("activation_patching").examples(explainer, patch_rows)
    shuffled = shuffled_vectors(examples, seed=4)
    assert [ex.answer for ex in shuffled] == [ex.answer for ex in examples]  # targets untouched
    for layer in {ex.subject_layer for ex in examples}:
        before = [ex.vector for ex in examples if ex.subject_layer == layer]
        after = [ex.vector for ex in shuffled if ex.subject_layer == layer]
        assert sorted(v.sum().item() for v in before) == pytest.approx(sorted(v.sum().item() for v in after))
        distinct = {tuple(v.tolist()) for v in before}
        if len(distinct) == len(before) > 1:  # every vector moved to another example
            assert all(not torch.equal(a, b) for a, b in zip(before, after))


def test_metrics_by_layer(setup):
    explainer, patch_rows, _ = setup
    examples = get_task("activation_patching").examples(explainer, patch_rows)
    answers = [ex.answer if ex.subject_layer == 0 else "nonsense" for ex in examples]
    by_layer = metrics_by_layer(answers, examples)
    assert set(by_layer) == {"0", "1"}
    assert by_layer["0"]["exact_match"] == 1.0 and by_layer["1"]["exact_match"] == 0.0
    assert by_layer["1"]["unreadable"] == by_layer["1"]["n"]


def test_rule_by_group_baseline(setup):
    """The layer / hint-letter rule: on rows where each group always changes or never does, the
    rule fitted on those rows gets every decision right."""
    explainer, patch_rows, hint_rows = setup
    rows = [dict(r, is_different=r["layer"] == 0, ablated_continuation=(["Ġzz"] if r["layer"] == 0 else r["original_continuation"]))
            for r in patch_rows]
    examples = get_task("activation_patching").examples(explainer, rows)
    base = causal_baselines(examples, rows, "activation_patching", tokenizer=explainer.tokenizer)
    assert base["rule_by_group"]["decision_accuracy"] == 1.0 and base["rule_by_group"]["exact_match"] == 1.0
    assert rule_group("input_ablation", {k: v for k, v in hint_rows[0].items() if k != "hint"}) == hint_rows[0]["hint"]
    hint_examples = get_task("input_ablation").examples(explainer, hint_rows)
    assert 0.0 <= causal_baselines(hint_examples, hint_rows, "input_ablation")["rule_by_group"]["decision_accuracy"] <= 1.0
