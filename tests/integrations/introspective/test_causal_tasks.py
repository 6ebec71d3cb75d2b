"""Data of the causal explainer tasks (issue 7): the target is what the model really does with and
without the patch / hint (checked against an independent forward pass), rows in the published
schema load back, and the metrics count what they claim."""

from __future__ import annotations

import json

import pytest
import torch
from selfinterp_introspective import act_patch_task, input_ablation_task
from selfinterp_introspective.causal_targets import causal_metrics, causal_target, parse_causal, read_task_rows

from selfinterp_plugins import HFBackend
from selfinterp_plugins.errors import ArtifactError
from selfinterp_plugins.models import tiny_model
from selfinterp_plugins.topics import load_topics


@pytest.fixture(scope="module")
def backend():
    # 4 layers so hidden_states[L + 1] is a plain layer output for every patched L (the last one is normed);
    # larger weights so that patches change outputs
    model, tok = tiny_model("llama", seed=3, initializer_range=0.2, num_hidden_layers=4)
    return HFBackend(model, tok)


def next_token_with_patch(model, ids, layer, pos, vector):
    """Greedy next token with layer `layer`'s output at `pos` replaced by `vector` (plain torch hook)."""
    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[0, pos] = vector
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = model.model.layers[layer].register_forward_hook(hook) if vector is not None else None
    try:
        with torch.no_grad():
            return int(model(torch.tensor([ids])).logits[0, -1].argmax())
    finally:
        if handle:
            handle.remove()


def test_patching_rows_are_what_the_model_does(backend):
    model, tok = backend.model, backend.tokenizer
    pairs = act_patch_task.counterfactual_pairs(load_topics(), 12, seed=1)
    assert all(a["category"] != b["category"] for a, b in pairs)
    rows = act_patch_task.patching_rows(backend, pairs, layers=[0, 1, 2], batch_size=5)
    assert len(rows) == 12 and {r["layer"] for r in rows} == {0, 1, 2}
    for row, (first, other) in zip(rows, pairs):
        ids = tok(act_patch_task.PATCH_PROMPT.format(title=first["title"]), add_special_tokens=False)["input_ids"]
        cf = tok(row["counterfactual_text"], add_special_tokens=False)["input_ids"]
        patch = row["patch_position"]
        with torch.no_grad():
            hidden = model(torch.tensor([cf]), output_hidden_states=True).hidden_states[row["layer"] + 1][0, patch["counterfact_pos"]]
        torch.testing.assert_close(torch.tensor(patch["intervention_vector"]), hidden, atol=1e-4, rtol=1e-4)
        assert tok.convert_ids_to_tokens([ids[patch["orig_pos"]]])[0] == patch["orig_text_token"]
        # a continuation as the reference writes it (`act_patch.py` lines 248-253): the token's text, no Ġ
        def text(token):
            return tok.convert_tokens_to_string(tok.convert_ids_to_tokens([token]))

        assert row["original_continuation"] == [text(next_token_with_patch(model, ids, row["layer"], 0, None))]
        patched = next_token_with_patch(model, ids, row["layer"], patch["orig_pos"], hidden)
        assert row["ablated_continuation"] == [text(patched)]
        assert row["is_different"] == (row["original_continuation"] != row["ablated_continuation"])
    assert any(r["is_different"] for r in rows) and not all(r["is_different"] for r in rows)


def test_ablation_rows_are_what_the_model_does(backend):
    model, tok = backend.model, backend.tokenizer
    questions = input_ablation_task.build_questions(load_topics(), 10, seed=0)
    assert all(q["question"].count("\n(") == 4 and q["correct"] in "ABCD" for q in questions)
    rows = input_ablation_task.ablation_rows(backend, questions, batch_size=4)
    letters = [tok(x, add_special_tokens=False)["input_ids"][0] for x in "ABCD"]
    for row in rows:
        assert "Hint: I think the answer is (" in row["hint_user_prompt"] and "Hint:" not in row["original_user_prompt"]
        for full, key in ((row["hint_prompt_full"], "random_hint_prediction"), (row["original_prompt_full"], "zeroshot_prediction")):
            with torch.no_grad():
                logits = model(torch.tensor([tok(full, add_special_tokens=False)["input_ids"]])).logits[0, -1]
            assert row[key] == "ABCD"[int(logits[letters].argmax())]
        assert row["changed_pred_bc_hint"] == (row["random_hint_prediction"] != row["zeroshot_prediction"])
        assert input_ablation_task.target_text(row).endswith(f"<<<Answer: {row['zeroshot_prediction']}>>>.")


def test_targets_and_metrics():
    assert causal_target(" Paris", " Paris") == "The output would remain unchanged from <<< Paris>>>."
    assert causal_target(" Paris", " Rome") == "The most likely output would change to <<< Rome>>>."
    assert parse_causal("Sure. The most likely output would change to <<<x>>>.") == (True, "x")
    assert parse_causal("no idea") == (None, None)
    truth = [causal_target("a", "a"), causal_target("a", "b"), causal_target("a", "c"), causal_target("a", "a")]
    preds = [truth[0], causal_target("a", "z"), "rubbish", causal_target("a", "q")]
    m = causal_metrics(preds, truth)
    # decisions: unchanged ok, changed ok (token wrong), unreadable (a miss, not in the F1), changed for an unchanged one
    assert m["exact_match"] == 0.25 and m["content_match"] == 0.25 and m["valid"] == 0.75
    assert m["decision_accuracy"] == 0.5 and m["unreadable"] == 1
    assert m["changed_f1"] == pytest.approx(2 / 3)  # the reference's F1 over valid answers: tp 1, fp 1, fn 0
    assert causal_metrics([causal_target("a", "a")] * 4, truth)["changed_f1"] == 0.0  # always "unchanged"
    # the reference compares lower-cased texts stripped of dots, and reads "unchanged" before "change to"
    assert causal_metrics(["  the output would REMAIN unchanged from <<<A>>>"], [truth[0]])["exact_match"] == 1.0
    assert parse_causal("would change to <<<x>>> or remain unchanged from <<<y>>>") == (False, "y")


def test_published_schema_rows_load(tmp_path):
    patch_row = {"layer": 3, "input_tokens": ["The", "ĠEiffel", "ĠTower", "Ġis", "Ġin"], "original_continuation": [" Paris"],
                 "ablated_continuation": [" Rome"], "is_different": True,
                 "patch_position": {"orig_pos": 2, "counterfact_pos": 2, "orig_text_token": "ĠTower",
                                    "counterfact_text_token": "ĠColosseum", "intervention_vector": [0.1] * 8},
                 "counterfactual_text": "The Colosseum is in", "gt_original_target": " Paris", "gt_counterfactual_target": " Rome"}
    path = tmp_path / "patch.jsonl"
    path.write_text(json.dumps(patch_row) + "\n")
    rows = read_task_rows(path, act_patch_task.check_row)
    tok = tiny_model("llama")[1]
    assert act_patch_task.target_text(rows[0], tok) == "The most likely output would change to <<< Rome>>>."
    # continuations as raw tokens become text, as the reference's _format_causal_change writes them
    raw = dict(rows[0], original_continuation=["ĠParis"], ablated_continuation=["ĠRome", "Ġcity"])
    assert act_patch_task.target_text(raw, tok) == "The most likely output would change to <<< Rome city>>>."
    same = dict(rows[0], original_continuation=["ĠParis"], ablated_continuation=" Paris")
    assert act_patch_task.target_text(same, tok) == "The output would remain unchanged from <<< Paris>>>."
    # the raw tokens reach the question as text, as the reference writes them (a literal Ġ did before)
    prompts = act_patch_task.explainer_prompts(rows[0], "<f>", tok)
    assert len(prompts) == 5
    for prompt in prompts:
        assert "<<<The Eiffel Tower is in>>>" in prompt and "layer 3" in prompt and "< Tower>" in prompt and "Ġ" not in prompt
    pd = pytest.importorskip("pandas")
    pd.DataFrame([patch_row]).to_parquet(tmp_path / "patch.parquet")
    back = read_task_rows(tmp_path / "patch.parquet", act_patch_task.check_row)[0]
    assert back["patch_position"]["intervention_vector"] == [0.1] * 8 and back["input_tokens"] == patch_row["input_tokens"]
    del patch_row["patch_position"]
    path.write_text(json.dumps(patch_row) + "\n")
    with pytest.raises(ArtifactError, match=r"row 1 lacks \['patch_position'\]"):
        read_task_rows(path, act_patch_task.check_row)
    hint = {"system_prompt": "s", "hint_user_prompt": "Q?\nHint: I think the answer is (B) but I'm curious to hear what you think.",
            "original_user_prompt": "Q?", "random_hint_prediction": "B", "zeroshot_prediction": "C", "changed_pred_bc_hint": True}
    (tmp_path / "hint.json").write_text(json.dumps([hint]))
    row = read_task_rows(tmp_path / "hint.json", input_ablation_task.check_row)[0]
    assert input_ablation_task.target_text(row) == "The most likely output would change to <<<Answer: C>>>."
    assert input_ablation_task.explainer_messages(row)[1]["content"].endswith("If the hint were removed how would the assistant answer change?")


@pytest.mark.parametrize(("text", "message"), [
    ('[{"input_tokens": ["\\ud800"]}]', r"rows\.json holds a lone surrogate in the string '\\\\ud800'"),
    ('{"rows": []}', r"rows\.json should hold a JSON list of rows"),
    ("[1, 2", r"rows\.json is not valid JSON"),
])
def test_a_json_rows_file_is_read_like_every_json_file(tmp_path, text, message):
    """The .json form of the task rows was `json.loads(read_text())`: unbounded, a lone surrogate
    loaded (to fail in the tokenizer), a dict's keys were checked as rows, a torn file was a
    JSONDecodeError traceback."""
    path = tmp_path / "rows.json"
    path.write_text(text)
    with pytest.raises(ArtifactError, match=message):
        read_task_rows(path, act_patch_task.check_row)


def test_rows_continuing_with_eos_are_dropped_as_the_reference_drops_them():
    """`dataloaders/act_patch.py` lines 99-103: a row whose original or ablated continuation holds the
    explainer tokenizer's EOS token is skipped; `patching_examples` refuses one (it would be trained
    on), `drop_eos_rows` drops them."""
    from selfinterp_introspective.config import LoRAExplainerConfig
    from selfinterp_introspective.explainer import LoRAExplainer
    from selfinterp_introspective.tasks import patching_examples

    model, tok = tiny_model("llama", seed=0)
    row = {"layer": 1, "input_tokens": ["The", "Ġcat"], "original_continuation": [" on"], "ablated_continuation": [" in"],
           "is_different": True, "patch_position": {"orig_pos": 1, "orig_text_token": "Ġcat",
                                                    "intervention_vector": [0.1] * model.config.hidden_size}}
    ends = dict(row, original_continuation=[tok.eos_token])
    changes_to_end = dict(row, ablated_continuation=[tok.eos_token])
    assert act_patch_task.drop_eos_rows([row, ends, changes_to_end, row], tok) == [row, row]
    explainer = LoRAExplainer.create(model, tok, LoRAExplainerConfig(rank=2, dropout=0.0, prompt_format="raw"))
    assert len(patching_examples(explainer, [row])) == 1
    with pytest.raises(ArtifactError, match="row 1 continues with the EOS token.*drop_eos_rows"):
        patching_examples(explainer, [row, changes_to_end])
