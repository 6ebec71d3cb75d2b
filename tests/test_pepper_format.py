"""selfie-adapters files (pepper_format): every bad input is one line with the fix (exit 2 in the
CLI), nothing in a pickle runs, an export leaves no half-written file, a topic adapter takes the
repo's mean vectors as its centring, the hub path, and the label presets."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from selfinterp_plugins import Explainer, Sampling
from selfinterp_plugins.errors import ArtifactError, ModelMismatchError, OptionError, OutputError
from selfinterp_plugins.pepper_format import label_preset, reference_template
from selfinterp_plugins.storage import _files

from cli_models import ok, refused
from selfie_adapter_files import reference_state, write_reference_file

D = 64


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.safetensors"
    write_reference_file(path, "scalar_affine", reference_state("scalar_affine", D), "flat", D)
    return path


def load(path, tiny_llama31, **options):
    model, tok = tiny_llama31
    return Explainer.from_pretrained(path, model=model, tokenizer=tok, **options)


def refuse(path, tiny_llama31, match, error=ArtifactError, **options):
    with pytest.raises(error, match=match) as caught:
        load(path, tiny_llama31, **options)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def bad_file(tmp_path, tensors, meta, name="bad.safetensors"):
    path = tmp_path / name
    save_file(tensors, str(path), metadata=meta)
    return path


FLAT = {"projection_type": "scalar_affine", "normalize_input": "true", "init_scale": "5.0", "model_dim": str(D)}
SA = {"log_scale": torch.zeros(1), "bias": torch.zeros(D)}


def test_a_file_for_another_width_is_refused(tmp_path, tiny_llama31):
    path = tmp_path / "wide.safetensors"
    write_reference_file(path, "scalar_affine", reference_state("scalar_affine", 32), "flat", 32)
    message = refuse(path, tiny_llama31, "width 32; this model's is 64", ModelMismatchError)
    assert "Load it onto the model it was trained for" in message


@pytest.mark.parametrize("tensors,meta,match", [
    (SA, None, "no metadata header"),
    (SA, {"model_dim": str(D)}, "neither config_json nor projection_type"),
    (SA, {**FLAT, "projection_type": "diagonal_affine"}, "unknown projection type 'diagonal_affine'"),
    (SA, {"config_json": json.dumps({"model": {}}), "model_dim": str(D)}, "no 'projection' section"),
    (SA, {"config_json": "{not json", "model_dim": str(D)}, "config_json is not valid JSON"),
    (SA, {"config_json": json.dumps({"projection": {"type": "scalar_affine"}})}, "has no normalize_input"),
    (SA, {**FLAT, "normalize_input": "false"}, "always normalise"),
    (SA, {**FLAT, "model_dim": "sixty-four"}, "model_dim should be a number"),
    ({"log_scale": torch.zeros(1), "bias": torch.zeros(D, dtype=torch.int32)}, FLAT, "bias is torch.int32, not floating"),
    ({"log_scale": torch.zeros(1), "bias": torch.full((D,), float("nan"))}, FLAT, "bias holds 64 NaN"),
    ({"log_scale": torch.zeros(()), "bias": torch.zeros(D)}, FLAT, r"log_scale has shape \(\), .* needs \(1,\)"),
    ({**SA, "weight": torch.zeros(D, D)}, FLAT, "holds tensors"),
    ({"U": torch.zeros(D, 4), "V": torch.zeros(D, 4), "bias": torch.zeros(D)},
     {**FLAT, "projection_type": "low_rank_only", "low_rank_rank": "8"}, "low_rank_rank 8 but U and V have rank 4"),
], ids=["no-metadata", "no-kind", "unknown-kind", "no-projection", "bad-json", "no-normalize", "unnormalised",
        "bad-number", "int-tensor", "nan", "scalar-log-scale", "extra-tensor", "rank-mismatch"])
def test_bad_files_are_one_line_with_the_fix(tensors, meta, match, tmp_path, tiny_llama31):
    refuse(bad_file(tmp_path, tensors, meta), tiny_llama31, match)


@pytest.mark.parametrize("damage", ["truncated", "text", "huge-header", "empty"])
def test_damaged_files_are_refused(damage, good, tiny_llama31):
    data = good.read_bytes()
    good.write_bytes({"truncated": data[: len(data) // 2], "text": b"these are not tensors at all",
                      "huge-header": (10 ** 12).to_bytes(8, "little") + b"{}", "empty": b""}[damage])
    refuse(good, tiny_llama31, "safetensors")


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # what unpickling would run
        return (open, (str(self.path), "w"))


def test_the_references_legacy_pt_checkpoint_is_refused_and_never_unpickled(tmp_path, tiny_llama31):
    marker = tmp_path / "unpickled"
    path = tmp_path / "scalar_affine_best.pt"
    path.write_bytes(pickle.dumps({"projection_state": _Marker(marker)}))
    message = refuse(path, tiny_llama31, "legacy .pt checkpoint, a pickle")
    assert "safetensors" in message and not marker.exists()


def test_a_reference_file_with_a_pickle_suffix_is_refused_by_name(good, tiny_llama31):
    renamed = good.rename(good.with_suffix(".bin"))
    refuse(renamed, tiny_llama31, "pickle")


def test_a_topic_adapter_takes_the_mean_vectors_as_its_centring(good, tmp_path, tiny_llama31):
    """`examples/contrastive_topic_vector.py`: `Tell me about {title}.` in the chat template, the
    residual after layer L at the last token, minus `mean-vectors.safetensors["layer_{L}"]`."""
    mean = torch.randn(D)
    save_file({"layer_0": torch.randn(D), "layer_1": mean}, str(tmp_path / "mean-vectors.safetensors"))
    explainer = load(good, tiny_llama31, mean_vectors=tmp_path / "mean-vectors.safetensors", layer=1)
    spec = explainer.vector_spec
    assert (spec.site, spec.prompt, spec.prompt_format, spec.position, spec.centring) == (
        "resid_post.1", "Tell me about {title}.", "chat", "last", "mean")
    activation = torch.randn(3, D)
    assert torch.equal(explainer.prepare_vectors(activation, site="resid_post.1"), activation - mean)
    _, tok = tiny_llama31
    # the text runs as the chat template's ids (the tokenizer adds the BOS the text then leaves out)
    chat = tok.apply_chat_template([{"role": "user", "content": "Tell me about Moon."}], tokenize=False,
                                   add_generation_prompt=True)
    assert tok(explainer.vector_prompt("Moon")).input_ids == tok(chat, add_special_tokens=False).input_ids


def test_mean_vectors_of_another_width_or_layer_are_refused(good, tmp_path, tiny_llama31):
    save_file({"layer_1": torch.randn(32)}, str(tmp_path / "m.safetensors"))
    refuse(good, tiny_llama31, "width 64", mean_vectors=tmp_path / "m.safetensors")
    refuse(good, tiny_llama31, r"layers \[1\], not of layer 5", mean_vectors=tmp_path / "m.safetensors", layer=5)


def test_a_hub_repo_and_filename_download_as_the_references_readme_does(good, tmp_path, tiny_llama31, monkeypatch):
    import huggingface_hub

    fetched = []

    def fake_download(repo_id, filename):
        fetched.append((repo_id, filename))
        return str(good)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    explainer = load("keenanpepper/selfie-adapters-llama-3.1-8b-instruct", tiny_llama31,
                     filename="goodfire-sae-scalar-affine.safetensors")
    assert fetched == [("keenanpepper/selfie-adapters-llama-3.1-8b-instruct", "goodfire-sae-scalar-affine.safetensors")]
    assert explainer.adapter.kind == "scalar_affine"


def test_an_unreachable_hub_is_one_line(tiny_llama31, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = refuse("keenanpepper/selfie-adapters-llama-3.1-8b-instruct", tiny_llama31, "Cannot fetch goodfire",
                     filename="goodfire-sae-scalar-affine.safetensors")
    assert "download it where the hub is reachable and pass the file's path" in message


def test_a_folder_explainer_refuses_the_file_only_options(tmp_path, tiny_llama31):
    model, tok = tiny_llama31
    Explainer.create(model, tok).save_pretrained(tmp_path / "ex")
    refuse(tmp_path / "ex", tiny_llama31, "are for an explainer in another format .a selfie-adapters file", OptionError, layer=3)


def test_exports_refuse_what_the_format_cannot_hold(tmp_path, tiny_llama31):
    model, tok = tiny_llama31
    explainer = Explainer.create(model, tok)
    with pytest.raises(OptionError, match="one .safetensors file"):
        explainer.save_pretrained(tmp_path / "adapter", format="selfie-adapters")
    with pytest.raises(OptionError, match="Unknown format 'pepper'"):
        explainer.save_pretrained(tmp_path / "x", format="pepper")
    raw = Explainer.create(model, tok, adapter="raw")
    with pytest.raises(OptionError, match="'raw' has no selfie-adapters counterpart"):
        raw.save_pretrained(tmp_path / "raw.safetensors", format="selfie-adapters")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("step", ["write", "replace"])
def test_an_export_killed_or_failing_midway_leaves_nothing_half_written(step, tmp_path, tiny_llama31, monkeypatch):
    model, tok = tiny_llama31
    explainer = Explainer.create(model, tok)
    path = tmp_path / "a.safetensors"

    def fail(name, where):
        if name == step:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(_files, "_step_hook", fail)
    with pytest.raises(OutputError, match="No space left"):
        explainer.save_pretrained(path, format="selfie-adapters")
    assert list(tmp_path.iterdir()) == []


def test_families_without_a_reference_prompt_get_this_librarys_chat_prompt(tiny_family):
    _, gemma = tiny_family("gemma3")
    template = reference_template(gemma)
    assert template.name == "selfie-adapters-chat" and template.end == "<end_of_turn>" and not template.stop_at_closing
    _, qwen = tiny_family("qwen3")
    assert reference_template(qwen).prompt == ('<|im_start|>user\nWhat is the meaning of "<|fim_pad|>"?<|im_end|>\n'
                                               '<|im_start|>assistant\nThe meaning of "<|fim_pad|>" is "')


def test_label_presets_are_the_references_settings():
    preset = label_preset("pepper-sae-eval")
    assert preset["scales"] == (0.5, 0.8, 1.3, 2.1, 3.4, 5.5)
    assert preset["sampling"] == Sampling(temperature=0.7, top_p=0.9, top_k=50, max_new_tokens=30)
    with pytest.raises(OptionError, match="pepper-sae-eval"):
        label_preset("nope")


def test_the_cli_explains_with_a_selfie_adapters_file_and_refuses_a_bad_one(tmp_path, tiny_llama31, capsys, good):
    from selfinterp_plugins import VectorLabelDataset

    model, tok = tiny_llama31
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    records = [{"id": str(i), "label": "x", "split": "test"} for i in range(2)]
    VectorLabelDataset(torch.randn(2, D), records).save(tmp_path / "vecs")
    common = ["--vectors", str(tmp_path / "vecs"), "--split", "test", "--model", str(tmp_path / "model"),
              "--max-new-tokens", "3"]
    ok(capsys, "explain", str(good), *common, "--output", str(tmp_path / "labels.jsonl"))
    assert len((tmp_path / "labels.jsonl").read_text().splitlines()) == 2
    bad = bad_file(tmp_path, SA, {**FLAT, "projection_type": "diagonal"})
    line = refused(capsys, "explain", str(bad), *common, "--output", str(tmp_path / "bad.jsonl"))
    assert "unknown projection type 'diagonal'" in line
