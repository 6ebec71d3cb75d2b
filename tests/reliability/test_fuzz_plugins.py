"""Bad input to the ecosystem plugins, fuzzed with hypothesis (see test_fuzz.py for the core):
causal-task rows (ours or the published Transluce schema) with fields dropped or of the wrong type,
Neuronpedia explanation rows, LoRA-explainer configs, and vectors handed to a LoRA explainer.
Every case must end in a result or a SelfInterpError whose message says something, never another
exception type, and a row the loader accepts must also build its training example.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from selfinterp_plugins.errors import SelfInterpError

from fuzzing import FUZZ, outcome

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=30), st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=5), st.floats()), max_size=6),
                 st.dictionaries(st.text(max_size=8), st.integers(), max_size=3))


def mutated(row: dict, draw_key, draw_value, drop: bool) -> dict:
    """`row` with one (possibly nested, dotted) field dropped or replaced."""
    row = json.loads(json.dumps(row))
    *parents, leaf = draw_key.split(".")
    target = row
    for p in parents:
        target = target[p]
    if drop:
        target.pop(leaf, None)
    else:
        target[leaf] = draw_value
    return row


D = 64  # the tiny llama's d_model

PATCH_ROW = {"layer": 1, "input_tokens": ["A", "Ġcat", "Ġis"], "original_continuation": ["Ġa"], "ablated_continuation": ["Ġthe"],
             "is_different": True, "patch_position": {"orig_pos": 1, "orig_text_token": "Ġcat", "intervention_vector": [0.1] * D}}
HINT_ROW = {"hint_user_prompt": "Which is a cat?\n(A) animal\n(B) tool\nHint: (B)", "original_user_prompt": "Which is a cat?",
            "random_hint_prediction": "B", "zeroshot_prediction": "A", "changed_pred_bc_hint": True}
PATCH_KEYS = ["layer", "input_tokens", "original_continuation", "ablated_continuation", "is_different", "patch_position",
              "patch_position.orig_pos", "patch_position.orig_text_token", "patch_position.intervention_vector"]
HINT_KEYS = list(HINT_ROW) + ["system_prompt"]


@pytest.fixture(scope="module")
def lora_explainer(tiny_llama):
    pytest.importorskip("peft")
    from selfinterp_peft.li.config import LoRAExplainerConfig
    from selfinterp_peft.li.explainer import LoRAExplainer
    from selfinterp_plugins.models import tiny_model

    model, tok = tiny_model("llama", seed=1)
    return LoRAExplainer.create(model, tok, LoRAExplainerConfig(rank=2, dropout=0.0, max_new_tokens=2))


@FUZZ
@given(task=st.sampled_from(["activation_patching", "input_ablation"]), data=st.data(), drop=st.booleans(), value=JUNK)
def test_any_causal_task_row(lora_explainer, tmp_path_factory, task, data, drop, value):
    from selfinterp_peft.li import act_patch_task, input_ablation_task
    from selfinterp_peft.li.causal_targets import read_task_rows
    from selfinterp_plugins.plugins import get_task

    base, keys, module = ((PATCH_ROW, PATCH_KEYS, act_patch_task) if task == "activation_patching"
                          else (HINT_ROW, HINT_KEYS, input_ablation_task))
    row = mutated(base, data.draw(st.sampled_from(keys)), value, drop)
    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    path.write_text(json.dumps(row, allow_nan=True) + "\n")

    def load_and_build():
        rows = read_task_rows(path, module.check_row)
        return get_task(task).examples(lora_explainer, rows)

    result = outcome(load_and_build)
    if not isinstance(result, SelfInterpError):
        assert len(result) == 1 and result[0].answer
        assert lora_explainer.loss(result).isfinite()


@FUZZ
@given(data=st.data(), drop=st.booleans(), value=JUNK, fmt=st.sampled_from(["json", "jsonl", "csv"]))
def test_any_neuronpedia_row(tmp_path_factory, data, drop, value, fmt):
    pytest.importorskip("sae_lens")
    from selfinterp_sae_lens.neuronpedia import read_explanations

    base = {"modelId": "tiny", "layer": "0-res", "index": "3", "description": "cats", "explanationModelName": "x"}
    row = mutated(base, data.draw(st.sampled_from(list(base))), value, drop)
    path = tmp_path_factory.mktemp("np") / f"explanations.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps([row], allow_nan=True))
    elif fmt == "jsonl":
        path.write_text(json.dumps(row, allow_nan=True) + "\n")
    else:
        import csv

        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            writer.writeheader()
            writer.writerow(row)
    result = outcome(lambda: read_explanations(path))
    if not isinstance(result, SelfInterpError):
        assert len(result) == 1 and result[0].index >= 0 and result[0].description.strip()


@FUZZ
@given(field=st.sampled_from(["rank", "alpha", "dropout", "lr", "markers", "subject_d_model", "subject_layers",
                              "target_modules", "max_new_tokens", "epochs", "batch_size"]),
       value=JUNK, drop=st.booleans())
def test_any_lora_explainer_config(lora_explainer, tmp_path_factory, field, value, drop):
    from selfinterp_peft.li.config import CONFIG_FILE
    from selfinterp_peft.li.explainer import LoRAExplainer
    from selfinterp_plugins.models import tiny_model

    directory = tmp_path_factory.mktemp("lx")
    lora_explainer.save_pretrained(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    if drop:
        config.pop(field, None)
    else:
        config[field] = value
    (directory / CONFIG_FILE).write_text(json.dumps(config, allow_nan=True))
    model, tok = tiny_model("llama", seed=1)
    result = outcome(lambda: LoRAExplainer.from_pretrained(directory, model, tok))
    if not isinstance(result, SelfInterpError):
        example = result.feature_example(torch.ones(D), "cats", 0, __import__("random").Random(0))
        assert len(result.generate([example], max_new_tokens=2)) == 1


SPECIAL = [0.0, math.nan, math.inf, -math.inf, 1e30, -1e30]


@FUZZ
@given(shape=st.lists(st.sampled_from([0, 1, D - 1, D, D + 1]), min_size=0, max_size=2),
       fill=st.one_of(st.floats(-1e3, 1e3), st.sampled_from(SPECIAL)),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.bool]))
def test_lora_explainer_any_vector(lora_explainer, shape, fill, dtype):
    import random

    vector = torch.full(tuple(shape), fill, dtype=torch.float64)
    vector = vector.to(dtype) if dtype != torch.bool else vector > 0

    def run():
        example = lora_explainer.feature_example(vector, "cats", 0, random.Random(0))
        return lora_explainer.generate([example], max_new_tokens=2)

    result = outcome(run)
    if not isinstance(result, SelfInterpError):
        assert len(result) == 1
