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
    from selfinterp_introspective.config import LoRAExplainerConfig
    from selfinterp_introspective.explainer import LoRAExplainer

    from selfinterp_plugins.models import tiny_model

    model, tok = tiny_model("llama", seed=1)
    return LoRAExplainer.create(model, tok, LoRAExplainerConfig(rank=2, dropout=0.0, max_new_tokens=2))


@FUZZ
@given(task=st.sampled_from(["activation_patching", "input_ablation"]), data=st.data(), drop=st.booleans(), value=JUNK)
def test_any_causal_task_row(lora_explainer, tmp_path_factory, task, data, drop, value):
    from selfinterp_introspective import act_patch_task, input_ablation_task
    from selfinterp_introspective.causal_targets import read_task_rows

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
    from selfinterp_introspective.config import CONFIG_FILE
    from selfinterp_introspective.explainer import LoRAExplainer

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


# ---- every other file the plugins read, field by field (the core's validation layer) -----------

NUMBERS = st.sampled_from([0, 1, 2, -1, 0.5, 1e30, math.nan, math.inf, "2", True, None, [1], {"a": 1}])


def _peft_dir(directory, config: dict):
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({"base_model.model.layer.lora_A.weight": torch.ones(2, 4), "base_model.model.layer.lora_B.weight": torch.ones(3, 2)},
              str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps(config, allow_nan=True))
    return directory


PEFT_CONFIG = {"peft_type": "LORA", "r": 2, "lora_alpha": 2, "use_rslora": False, "use_dora": False,
               "alpha_pattern": {"layer": 4}, "base_model_name_or_path": "tiny", "target_modules": ["layer"]}


@FUZZ
@given(data=st.data(), drop=st.booleans(), value=st.one_of(JUNK, NUMBERS))
def test_any_peft_adapter_config(tmp_path_factory, data, drop, value):
    pytest.importorskip("peft")
    from selfinterp_peft.weight_diff import WeightDiff

    config = mutated(PEFT_CONFIG, data.draw(st.sampled_from(list(PEFT_CONFIG) + ["alpha_pattern.layer"])), value, drop)
    directory = _peft_dir(tmp_path_factory.mktemp("peft") / "lora", config)
    result = outcome(lambda: WeightDiff.from_pretrained(directory))
    if not isinstance(result, SelfInterpError):
        assert math.isfinite(result.modules["layer"].scale) and result.modules["layer"].delta().isfinite().all()


@FUZZ
@given(info=st.dictionaries(st.sampled_from(["energy_kept", "source", "rank", "base_model", "other"]),
                            st.one_of(JUNK, NUMBERS, st.dictionaries(st.sampled_from(["layer", "x"]), st.one_of(JUNK, NUMBERS),
                                                                     max_size=2)), max_size=4))
def test_any_weight_diff_json(tmp_path_factory, info):
    pytest.importorskip("peft")
    from selfinterp_peft.weight_diff import WeightDiff

    directory = _peft_dir(tmp_path_factory.mktemp("wd") / "lora", PEFT_CONFIG)
    (directory / "weight_diff.json").write_text(json.dumps(info, allow_nan=True))
    result = outcome(lambda: WeightDiff.from_pretrained(directory))
    if not isinstance(result, SelfInterpError):
        assert all(0 <= e <= 1.001 for e in result.energy_report().values())


DIT_FIELDS = ["rank", "alpha", "init", "lr", "weight_decay", "epochs", "batch_size", "question", "max_new_tokens",
              "baseline_max_new_tokens", "seed", "other"]


@FUZZ
@given(config=st.dictionaries(st.sampled_from(DIT_FIELDS), st.one_of(JUNK, NUMBERS, st.sampled_from(["reference", "peft",
                                                                                                         "x" * 20_000])),
                              max_size=4))
def test_any_dit_config(tmp_path_factory, config):
    pytest.importorskip("peft")
    from selfinterp_peft.dit import CONFIG_FILE, DITConfig
    from selfinterp_plugins.storage._files import read_json

    path = tmp_path_factory.mktemp("dit") / CONFIG_FILE
    path.write_text(json.dumps(config, allow_nan=True))
    result = outcome(lambda: DITConfig.from_dict(read_json(path), str(path)))
    if not isinstance(result, SelfInterpError):
        assert result.rank >= 1 and result.batch_size >= 1 and result.init in ("reference", "peft")
        assert math.isfinite(result.lr) and len(result.question) <= 16_384


@FUZZ
@given(done=st.sampled_from([1, 1, 1, "1", 1.0, True, -1, 2, 10**30, None, [1]]),
       history=st.one_of(JUNK, st.lists(st.one_of(st.floats(), st.text(max_size=2)), max_size=3)),
       drop=st.sampled_from([(), ("epochs_done",), ("history",)]))
def test_any_epoch_state_json(tmp_path_factory, done, history, drop):
    state = {k: v for k, v in {"epochs_done": done, "history": history}.items() if k not in drop}
    pytest.importorskip("peft")
    from selfinterp_plugins.epoch_checkpoints import resume_epochs, save_epoch

    directory = tmp_path_factory.mktemp("epochs")
    layer = torch.nn.Linear(2, 2)
    named, optimizer = list(layer.named_parameters()), torch.optim.AdamW(layer.parameters())
    save_epoch(directory, 1, named, optimizer, [0.5])
    (directory / "state.json").write_text(json.dumps(state, allow_nan=True))
    result = outcome(lambda: resume_epochs(directory, named, optimizer))
    if not isinstance(result, SelfInterpError):
        history, done = result
        assert done == 1 and all(isinstance(x, float) for x in history)


@FUZZ
@given(hook=st.one_of(JUNK, st.sampled_from(["blocks.1.hook_resid_post", "hook_embed", "blocks.0.hook_attn_out", ""])),
       d_sae=st.one_of(NUMBERS, st.sampled_from([16, "16", 16.0])),
       extra=st.sampled_from(["model_name", "release", "sae_id", "neuronpedia_id"]), value=st.one_of(JUNK, NUMBERS))
def test_any_sae_metadata(hook, d_sae, extra, value):
    pytest.importorskip("sae_lens")
    from sae_lens import StandardSAE, StandardSAEConfig

    from selfinterp_sae_lens.sae_info import sae_metadata

    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16, dtype="float32", device="cpu"))
    sae.cfg.metadata.hook_name = hook
    sae.cfg.metadata[extra] = value
    sae.cfg.d_sae = d_sae
    result = outcome(lambda: sae_metadata(sae))
    if not isinstance(result, SelfInterpError):
        assert result["d_sae"] == 16 and isinstance(result["hook_name"], str) and json.dumps(result)


@FUZZ
@given(fmt=st.sampled_from(["json", "jsonl", "csv"]), damage=st.sampled_from(["none", "truncate", "not-gzip", "garbage-tail",
                                                                              "bomb", "deep", "long-field"]),
       cut=st.floats(0, 1), garbage=st.binary(max_size=30))
def test_any_neuronpedia_gz_file(tmp_path_factory, fmt, damage, cut, garbage):
    import gzip

    pytest.importorskip("sae_lens")
    from selfinterp_sae_lens import neuronpedia

    row = {"modelId": "tiny", "layer": "0-res", "index": "3", "description": "cats"}
    if damage == "long-field":
        row["description"] = "x" * 200_000
    text = {"json": json.dumps([row]), "jsonl": json.dumps(row) + "\n",
            "csv": "modelId,layer,index,description\n" + ",".join(row.values()) + "\n"}[fmt]
    if damage == "deep":
        text = "[" * 5000 + "]" * 5000
    if damage == "bomb":
        text = text * 100
    raw = gzip.compress(text.encode())
    path = tmp_path_factory.mktemp("npgz") / f"explanations.{fmt}.gz"
    if damage == "truncate":
        raw = raw[: min(int(len(raw) * cut), len(raw) - 1)]
    elif damage == "not-gzip":
        raw = text.encode()
    elif damage == "garbage-tail":
        raw = raw + garbage
    path.write_bytes(raw)
    if damage == "bomb":  # more than the limit inflates (the limit lowered to 1,000 bytes to keep the test small)
        result = outcome(lambda: neuronpedia._open_text(path, max_inflated=1000))
        assert isinstance(result, SelfInterpError) or len(result.encode()) <= 1000
        return
    result = outcome(lambda: neuronpedia.read_explanations(path))
    if not isinstance(result, SelfInterpError):
        intact = damage in ("none", "garbage-tail") or (damage == "long-field" and fmt != "csv")  # CSV caps fields at 128 KB
        assert len(result) == (1 if intact else 0)  # a .gz cut to 0 bytes reads as empty (read_explanations' callers refuse it)
