"""The validation layer (selfinterp_plugins/validation.py) and the bounded readers, then one
regression test per defect it closed: each input below ended in a traceback (exit 1), a
MemoryError, or was accepted silently, and must now be a one-line SelfInterpError naming the file
and field (exit 2 in the CLI)."""

from __future__ import annotations

import gzip
import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Annotated, Literal

import pytest
import torch

from selfinterp_plugins import Explainer, Sampling, VectorLabelDataset
from selfinterp_plugins.adapters import AdapterConfig
from selfinterp_plugins.errors import (
    ArtifactError,
    BackendError,
    ModelMismatchError,
    OptionError,
    TemplateError,
    UnknownNameError,
)
from selfinterp_plugins.evaluation.report import ReportConfig
from selfinterp_plugins.storage._files import read_bytes, read_json, read_jsonl
from selfinterp_plugins.storage.validation import (
    MAX_TEXT_CHARS,
    LossValue,
    Name,
    NonNegativeInt,
    PositiveFloat,
    Text,
    between,
    check_fields,
    validate,
)

# ---- the layer itself ---------------------------------------------------------------------------


@dataclass
class Example:
    kind: Name
    width: Annotated[int, between(1, 64)]
    scale: PositiveFloat = 1.0
    layers: list[NonNegativeInt] = field(default_factory=list)
    mode: Literal["a", "b"] = "a"
    losses: list[LossValue] = field(default_factory=list)
    text: Text = ""
    layer: NonNegativeInt | None = None

    def __post_init__(self):
        check_fields(self, "Example", "pass valid fields.")


def check(data, **options):
    return validate(Example, data, "f.json", "re-save it.", **options)


def test_a_valid_dict_builds_the_dataclass_and_an_int_is_accepted_for_a_float():
    built = check({"kind": "k", "width": 3, "scale": 2, "layers": [0, 4], "losses": [math.nan]})
    assert built == Example("k", 3, 2.0, [0, 4], "a", built.losses) and math.isnan(built.losses[0])
    assert isinstance(built.scale, float)


@pytest.mark.parametrize("changes, where, reason", [
    ({"width": "5"}, "width", "should be a valid integer (got '5')"),
    ({"width": True}, "width", "should be a valid integer"),
    ({"width": 5.0}, "width", "should be a valid integer"),
    ({"width": 1e30}, "width", "should be a valid integer"),
    ({"width": 65}, "width", "less than or equal to 64"),
    ({"scale": math.nan}, "scale", "finite number"),
    ({"scale": math.inf}, "scale", "finite number"),
    ({"scale": 0}, "scale", "greater than 0"),
    ({"scale": "1"}, "scale", "valid number"),
    ({"layers": "ab"}, "layers", "valid list"),
    ({"layers": [1, -1]}, "layers[1]", "greater than or equal to 0"),
    ({"mode": "c"}, "mode", "should be 'a' or 'b'"),
    ({"kind": ""}, "kind", "at least 1 character"),
    ({"kind": 3}, "kind", "valid string"),
    ({"text": "x" * (MAX_TEXT_CHARS + 1)}, "text", f"at most {MAX_TEXT_CHARS} characters"),
    ({"layer": "0"}, "layer", "valid integer"),
])
def test_a_bad_field_is_one_line_naming_file_field_and_fix(changes, where, reason):
    with pytest.raises(ArtifactError) as caught:
        check({"kind": "k", "width": 3, **changes})
    message = str(caught.value)
    assert message.startswith(f"f.json: field {where} ") and reason in message and message.endswith("re-save it.")
    assert "\n" not in message


def test_missing_unknown_and_non_object_inputs():
    with pytest.raises(ArtifactError, match="f.json: field sec.width is missing"):
        check({"kind": "k"}, prefix="sec")
    with pytest.raises(ArtifactError, match="unknown field.*extra"):
        check({"kind": "k", "width": 1, "extra": 1})
    assert check({"kind": "k", "width": 1, "extra": 1}, unknown="ignore").width == 1
    with pytest.warns(UserWarning, match="unknown field 'extra'"):
        check({"kind": "k", "width": 1, "extra": 1}, unknown="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check({"kind": "k", "width": 1, "old": 1}, unknown="warn", ignored=("old",))
    with pytest.raises(ArtifactError, match="field scale is missing"):
        check({"kind": "k", "width": 1}, required=("scale",))
    with pytest.raises(ArtifactError, match="should be a JSON object, got list"):
        check([1])
    with pytest.raises(TemplateError):
        check({"kind": 1, "width": 1}, error=TemplateError)


def test_check_fields_applies_the_same_rules_to_objects_built_in_python():
    with pytest.raises(ArtifactError, match="Example: field width should be less than or equal to 64"):
        Example("k", 65)


# ---- bounded readers ----------------------------------------------------------------------------


def test_read_json_refuses_a_file_over_its_byte_limit(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"x": "y" * 100}))
    assert read_json(path)["x"]
    with pytest.raises(ArtifactError, match="over the 50-byte limit"):
        read_json(path, max_bytes=50)
    path.with_suffix(".jsonl").write_text('{"a": 1}\n' * 20)
    with pytest.raises(ArtifactError, match="over the 100-byte limit"):
        read_jsonl(path.with_suffix(".jsonl"), max_bytes=100)


@pytest.mark.parametrize("depth", [150, 100_000])
def test_json_nested_too_deep_is_refused_not_a_recursion_error(tmp_path, depth):
    """100k levels ended in RecursionError (exit 1); 150 parse but are refused too."""
    path = tmp_path / "deep.json"
    path.write_text('{"a": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(ArtifactError, match="nests JSON deeper than 100 levels"):
        read_json(path)
    path.with_suffix(".jsonl").write_text("[" * depth + "]" * depth + "\n")
    with pytest.raises(ArtifactError, match="deep.jsonl:1"):
        read_jsonl(path.with_suffix(".jsonl"))


def test_gzip_is_read_bounded_and_bad_gzip_is_an_artifact_error(tmp_path):
    good = tmp_path / "x.jsonl.gz"
    good.write_bytes(gzip.compress(b"a" * 10_000))
    assert read_bytes(good) == b"a" * 10_000
    with pytest.raises(ArtifactError, match="inflates to over 1,000 bytes"):
        read_bytes(good, max_inflated=1000)
    (tmp_path / "not.gz").write_bytes(b"plain text, not gzip")
    with pytest.raises(ArtifactError, match="not a complete gzip file"):
        read_bytes(tmp_path / "not.gz")
    (tmp_path / "cut.gz").write_bytes(good.read_bytes()[:20])
    with pytest.raises(ArtifactError, match="not a complete gzip file"):
        read_bytes(tmp_path / "cut.gz")


# ---- explainer_config.json: regressions ---------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tiny_llama, tmp_path_factory):
    model, tok = tiny_llama
    return Explainer.create(model, tok, adapter="scalar_affine", template="echo").save_pretrained(
        tmp_path_factory.mktemp("saved") / "explainer")


def tampered(saved, tmp_path, change):
    """A copy of the saved explainer whose config went through `change(config)`."""
    directory = tmp_path / "tampered"
    directory.mkdir()
    config = json.loads((saved / "explainer_config.json").read_text())
    change(config)
    (directory / "explainer_config.json").write_text(json.dumps(config, allow_nan=True))
    (directory / "adapter.safetensors").write_bytes((saved / "adapter.safetensors").read_bytes())
    return directory


def load(tiny_llama, directory, **options):
    return Explainer.from_pretrained(directory, model=tiny_llama[0], tokenizer=tiny_llama[1], **options)


@pytest.mark.parametrize("section, key, value, error", [
    ("template", "prompt", 5, TemplateError),
    ("template", "closing", None, TemplateError),
    ("template", "prompt", "x" * (4 << 20), TemplateError),  # a 4 MB prompt ran > 180 s at 4.7 GB
    ("site", "coef", "big", ArtifactError),
    ("site", "layer", "3", ArtifactError),
    ("adapter", "init_scale", math.nan, ArtifactError),
])
def test_a_bad_template_site_or_adapter_field_is_refused_at_load(tiny_llama, saved, tmp_path, section, key, value, error):
    directory = tampered(saved, tmp_path, lambda c: c[section].update({key: value}))
    with pytest.raises(error, match=rf"explainer_config.json( \(adapter kind '\w+'\))?: field {section}.{key} "):
        load(tiny_llama, directory)


def test_nan_adapter_weights_are_refused_at_load(tiny_llama, saved, tmp_path):
    """Every label of an adapter with a NaN weight was <|endoftext|>."""
    from safetensors.torch import load_file, save_file

    directory = tampered(saved, tmp_path, lambda c: None)
    weights = load_file(str(directory / "adapter.safetensors"))
    weights = {k: torch.full_like(v, math.nan) for k, v in weights.items()}
    save_file(weights, str(directory / "adapter.safetensors"))
    config = json.loads((directory / "explainer_config.json").read_text())
    config.pop("weights_sha256", None)
    (directory / "explainer_config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="adapter.safetensors: tensor .* NaN or infinite"):
        load(tiny_llama, directory)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_nan_float8_adapter_weights_are_refused_at_load(tiny_llama, saved, tmp_path, dtype):
    """torch has no isfinite for float8: the finite check raised NotImplementedError (a traceback)."""
    from safetensors.torch import load_file, save_file

    directory = tampered(saved, tmp_path, lambda c: c.pop("weights_sha256", None))
    weights = load_file(str(directory / "adapter.safetensors"))
    first = sorted(weights)[0]
    weights = {k: v.to(dtype) for k, v in weights.items()}
    weights[first] = weights[first].float().flatten().index_fill(0, torch.tensor([0]), math.nan).view(
        weights[first].shape).to(dtype)
    save_file(weights, str(directory / "adapter.safetensors"))
    with pytest.raises(ArtifactError, match=rf"adapter.safetensors: tensor {first} holds 1 NaN or infinite value\(s\)"):
        load(tiny_llama, directory)


def test_a_config_without_a_fingerprint_is_refused_unless_the_check_is_off(tiny_llama, saved, tmp_path):
    """Without the fingerprint the model check was silently skipped."""
    directory = tampered(saved, tmp_path, lambda c: c.pop("embedding_fingerprint"))
    with pytest.raises(ModelMismatchError, match="records no embedding_fingerprint.*check_model=False"):
        load(tiny_llama, directory)
    assert load(tiny_llama, directory, check_model=False).adapter.kind == "scalar_affine"


def test_a_deeply_nested_explainer_config_is_one_line(tiny_llama, saved, tmp_path):
    directory = tampered(saved, tmp_path, lambda c: None)
    (directory / "explainer_config.json").write_text('{"metadata": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ArtifactError, match="nests JSON deeper"):
        load(tiny_llama, directory)


# ---- the API ------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, where", [({"temperature": math.nan}, "temperature"), ({"top_p": 0.0}, "top_p"),
                                            ({"max_new_tokens": 0}, "max_new_tokens"), ({"top_k": -1}, "top_k")])
def test_bad_sampling_is_an_option_error(options, where):
    """temperature NaN and top_p 0 ended in torch.multinomial's RuntimeError."""
    with pytest.raises(OptionError, match=f"Sampling: field {where} "):
        Sampling(**options)


def test_a_site_that_is_not_a_name_and_options_dropped_beside_a_config_are_refused(tiny_llama):
    model, tok = tiny_llama
    with pytest.raises(BackendError, match="not int 3"):
        Explainer.create(model, tok, site=3)  # was AttributeError: 'int' object has no attribute 'strip'
    with pytest.raises(UnknownNameError, match=r"\['rank'\] given with an AdapterConfig"):
        Explainer.create(model, tok, adapter=AdapterConfig("scalar_affine", 64), rank=4)  # rank was dropped silently


# ---- datasets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_int_or_bool_dataset_vectors_are_refused_at_load(tmp_path, dtype):
    """They were cast to float silently; explain() refuses them (adapters.check_vectors)."""
    from safetensors.torch import save_file

    path = VectorLabelDataset(torch.randn(2, 4), [{"label": "a"}, {"label": "b"}]).save(tmp_path / "d")
    save_file({"vectors": torch.ones(2, 4, dtype=dtype)}, str(path / "vectors.safetensors"))
    with pytest.raises(ArtifactError, match=f"holds {dtype} vectors"):
        VectorLabelDataset.load(path)


@pytest.mark.parametrize("meta, match", [({"d_model": "4"}, "field d_model should be a valid integer"),
                                         ({"d_model": 5}, "says d_model 5"), ({"count": -1}, "field count")])
def test_bad_dataset_meta_is_refused(tmp_path, meta, match):
    path = VectorLabelDataset(torch.randn(2, 4), [{"label": "a"}, {"label": "b"}]).save(tmp_path / "d")
    (path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=match):
        VectorLabelDataset.load(path)


# ---- training checkpoints -----------------------------------------------------------------------


@pytest.mark.parametrize("step", ["missing", "2", 1e30, -1, 10**15])
def test_a_bad_step_in_state_json_is_refused(tiny_llama, checkpointed_run, tmp_path, step):
    """A missing step was a KeyError, a string a TypeError, 1e30 a float step (an endless loop)."""
    import shutil

    data, config, out = checkpointed_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    if step == "missing":
        del state["step"]
    else:
        state["step"] = step
    (run / "checkpoint" / "state.json").write_text(json.dumps(state))
    with pytest.raises(ArtifactError, match="state.json: field step "):
        Explainer.create(*tiny_llama).train(data, config=config, output_dir=run, progress=False)


# ---- report config ------------------------------------------------------------------------------


@pytest.mark.parametrize("options, where", [({"test_topics": "ten"}, "test_topics"), ({"explainers": "s"}, "explainers"),
                                            ({"sweep_layers": [1, "2"]}, r"sweep_layers\[1\]"), ({"seed": True}, "seed")])
def test_a_bad_report_config_is_refused(options, where):
    """"ten" topics, and a string of explainers read letter by letter, were accepted."""
    with pytest.raises(ArtifactError, match=rf"r.json: field {where} "):
        ReportConfig.from_dict(options, source="r.json")
    with pytest.raises(ArtifactError, match="unknown field"):
        ReportConfig.from_dict({"topics": 3})


def test_more_report_topics_than_there_are_is_one_line_before_any_work(tmp_path):
    """`random.sample`'s ValueError came after the model and explainers loaded."""
    from selfinterp_plugins.errors import OptionError
    from selfinterp_plugins.evaluation.report import run_report

    for options in ({"test_topics": 100_000}, {"validation_topics": 100_000}):
        with pytest.raises(OptionError, match="topics there are; ask for at most"):
            run_report(ReportConfig(**options), tmp_path / "out", progress=False, backend=object())
    assert not (tmp_path / "out").exists()


# ---- plugins ------------------------------------------------------------------------------------


def peft_dir(tmp_path, **config):
    from safetensors.torch import save_file

    directory = tmp_path / "lora"
    directory.mkdir(parents=True)
    save_file({"base_model.model.layer.lora_A.weight": torch.ones(2, 4), "base_model.model.layer.lora_B.weight": torch.ones(3, 2)},
              str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2, **config}))
    return directory


@pytest.mark.parametrize("config, where", [({"lora_alpha": "x"}, "lora_alpha"), ({"alpha_pattern": [1]}, "alpha_pattern"),
                                           ({"lora_alpha": math.nan}, "lora_alpha"), ({"use_rslora": "yes"}, "use_rslora")])
def test_a_bad_peft_adapter_config_is_refused(tmp_path, config, where):
    pytest.importorskip("peft")
    from selfinterp_peft.weight_diff import WeightDiff

    assert WeightDiff.from_pretrained(peft_dir(tmp_path / "ok")).modules["layer"].scale == 1.0
    with pytest.raises(ArtifactError, match=f"adapter_config.json: field {where} "):
        WeightDiff.from_pretrained(peft_dir(tmp_path, **config))


@pytest.mark.parametrize("info, where", [({"energy_kept": [0.5]}, "energy_kept"), ({"energy_kept": {"layer": "x"}}, "energy_kept.layer"),
                                         ({"energy_kept": {"layer": 7}}, "energy_kept.layer"), ({"rank": "2"}, "rank")])
def test_a_bad_weight_diff_json_is_refused(tmp_path, info, where):
    pytest.importorskip("peft")
    from selfinterp_peft.weight_diff import WeightDiff

    directory = peft_dir(tmp_path)
    (directory / "weight_diff.json").write_text(json.dumps(info))
    with pytest.raises(ArtifactError, match=rf"weight_diff.json: field {where} "):
        WeightDiff.from_pretrained(directory)


def test_nan_peft_weights_are_refused(tmp_path):
    pytest.importorskip("peft")
    from safetensors.torch import save_file

    from selfinterp_peft.weight_diff import WeightDiff

    directory = peft_dir(tmp_path)
    save_file({"base_model.model.layer.lora_A.weight": torch.full((2, 4), math.nan),
               "base_model.model.layer.lora_B.weight": torch.ones(3, 2)}, str(directory / "adapter_model.safetensors"))
    with pytest.raises(ArtifactError, match="NaN or infinite"):
        WeightDiff.from_pretrained(directory)


@pytest.mark.parametrize("config, where", [({"rank": "16"}, "rank"), ({"init": "kaiming"}, "init"), ({"lr": -1}, "lr"),
                                           ({"question": None}, "question")])
def test_a_bad_dit_config_is_refused(config, where):
    pytest.importorskip("peft")
    from selfinterp_peft.dit import DITConfig

    with pytest.raises(ArtifactError, match=f"dit_config.json: field {where} "):
        DITConfig.from_dict(config)


@pytest.mark.parametrize("state, where", [({"epochs_done": "1"}, "epochs_done"), ({"epochs_done": 0, "history": 5}, "history"),
                                          ({"epochs_done": 0, "history": "ab"}, "history"), ({}, "epochs_done")])
def test_a_bad_epoch_state_json_is_refused(tmp_path, state, where):
    """history 5 was a TypeError, "ab" was read as the losses ['a', 'b']."""
    pytest.importorskip("peft")
    from selfinterp_plugins.epoch_checkpoints import resume_epochs

    layer = torch.nn.Linear(2, 2)
    (tmp_path / "state.json").write_text(json.dumps(state))
    with pytest.raises(ArtifactError, match=f"state.json: field {where} "):
        resume_epochs(tmp_path, list(layer.named_parameters()), torch.optim.AdamW(layer.parameters()))


@pytest.mark.parametrize("config, where", [({"rank": "2"}, "rank"), ({"dropout": 1.5}, "dropout"), ({"markers": ["a"]}, "markers"),
                                           ({"target_modules": []}, "target_modules"), ({"shuffle": 1}, "shuffle")])
def test_a_bad_lora_explainer_config_is_refused(config, where):
    pytest.importorskip("peft")
    from selfinterp_introspective.config import LoRAExplainerConfig

    with pytest.raises(ArtifactError, match=f"lora_explainer_config.json: field {where} "):
        LoRAExplainerConfig.from_dict(config)


@pytest.mark.parametrize("hook, d_sae, where", [(3, 16, "hook_name"), (None, 16, "hook_name"), ("blocks.1.hook_resid_post", "x", "d_sae")])
def test_bad_sae_metadata_is_refused(hook, d_sae, where):
    """A numeric hook name was an AttributeError ('int' has no 'strip'), d_sae "x" a ValueError."""
    pytest.importorskip("sae_lens")
    from sae_lens import StandardSAE, StandardSAEConfig

    from selfinterp_sae_lens.sae_info import sae_metadata

    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16, dtype="float32", device="cpu"))
    sae.cfg.metadata.hook_name = hook
    sae.cfg.d_sae = d_sae
    with pytest.raises(ArtifactError, match=f"The SAE's config: field {where} "):
        sae_metadata(sae)


NP_ROW = {"modelId": "tiny", "layer": "0-res", "index": "3", "description": "cats"}


def test_neuronpedia_gzip_csv_and_depth_failures_are_artifact_errors(tmp_path):
    """A non-gzip .gz was BadGzipFile, a truncated one EOFError, a 3 MB bomb inflated to a
    MemoryError, a CSV field over 128 KB a csv.Error, deep JSON a RecursionError."""
    pytest.importorskip("sae_lens")
    import selfinterp_sae_lens.neuronpedia as neuronpedia

    good = tmp_path / "e.jsonl.gz"
    good.write_bytes(gzip.compress((json.dumps(NP_ROW) + "\n").encode() * 200))
    assert len(neuronpedia.read_explanations(good)) == 200
    (tmp_path / "plain.jsonl.gz").write_text(json.dumps(NP_ROW))
    (tmp_path / "cut.jsonl.gz").write_bytes(good.read_bytes()[:30])
    for bad in ("plain.jsonl.gz", "cut.jsonl.gz"):
        with pytest.raises(ArtifactError, match="not a complete gzip file"):
            neuronpedia.read_explanations(tmp_path / bad)
    with pytest.raises(ArtifactError, match="inflates to over 1,000 bytes"):
        neuronpedia._open_text(good, max_inflated=1000)
    csv_path = tmp_path / "e.csv"
    csv_path.write_text("index,description\n3," + "x" * 200_000 + "\n")
    with pytest.raises(ArtifactError, match="e.csv line 2 is not valid CSV"):
        neuronpedia.read_explanations(csv_path)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError, match="nests JSON deeper"):
        neuronpedia.read_explanations(deep)




def test_a_lone_surrogate_in_an_explainer_config_is_refused_by_the_reader(tiny_llama, saved, tmp_path):
    """Every JSON file is checked for lone surrogates as it is read, so a `str` field that pydantic
    would let through unconstrained is covered too (here the template's, which its length bound
    already refused: this pins where the check runs, it was not a defect)."""
    directory = tampered(saved, tmp_path, lambda c: c["template"].update({"prompt": "What is \ud800 <empty_output>?"}))
    with pytest.raises(ArtifactError, match=r"explainer_config\.json holds a lone surrogate in the string "
                                            r"'What is \\\\ud800 <empty_output>\?'"):
        load(tiny_llama, directory)
