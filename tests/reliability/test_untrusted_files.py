"""Files other people published must not run code: every artifact the library reads is
safetensors or JSON. A pickle whose unpickling would run a command (here: create a marker
file) is put in place of each weight file the library reads; loading must fail with a clear
ArtifactError and the command must never run. `trust_remote_code` is never turned on."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from selfinterp_plugins import Explainer, TrainConfig, VectorLabelDataset
from selfinterp_plugins.errors import ArtifactError

MARKER = "selfinterp-pickle-ran"


class _Payload:
    """Unpickling this calls Path.touch on the marker: a stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant(path: Path, marker: Path, how: str) -> None:
    if how == "pickle":
        path.write_bytes(pickle.dumps(_Payload(marker)))
    else:  # torch.save: a zip archive whose data.pkl carries the payload
        torch.save({"weight": _Payload(marker)}, path)


def _assert_refused(load, marker: Path) -> None:
    with pytest.raises(ArtifactError, match="not a valid safetensors file"):
        load()
    assert not marker.exists(), "the payload ran"


def _check_payload_is_live(path: Path, marker: Path) -> None:
    """The planted file really would run code if someone unpickled it (so the test can fail)."""
    probe = marker.with_name("probe")  # beside the marker, outside the artifact (a .pkl in it is refused by name)
    marker.with_name("probe.pkl").write_bytes(pickle.dumps(_Payload(probe)))
    pickle.loads(marker.with_name("probe.pkl").read_bytes())
    assert probe.exists()


@pytest.fixture()
def explainer_dir(tiny_llama, tmp_path):
    model, tok = tiny_llama
    return Explainer.create(model, tok, adapter="scalar_affine").save_pretrained(tmp_path / "explainer")


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_in_place_of_adapter_weights_is_refused(tiny_llama, explainer_dir, tmp_path, how):
    marker = tmp_path / MARKER
    _plant(explainer_dir / "adapter.safetensors", marker, how)
    _check_payload_is_live(explainer_dir / "adapter.safetensors", marker)
    model, tok = tiny_llama
    _assert_refused(lambda: Explainer.from_pretrained(explainer_dir, model=model, tokenizer=tok), marker)


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_in_place_of_dataset_vectors_is_refused(tmp_path, how):
    directory = VectorLabelDataset(torch.randn(3, 8), [{"id": str(i), "label": "x"} for i in range(3)], {}).save(tmp_path / "d")
    marker = tmp_path / MARKER
    _plant(directory / "vectors.safetensors", marker, how)
    _assert_refused(lambda: VectorLabelDataset.load(directory), marker)


def test_pickle_in_place_of_a_training_checkpoint_is_refused(tiny_llama, tmp_path):
    model, tok = tiny_llama
    data = VectorLabelDataset(torch.randn(8, model.config.hidden_size), [{"id": str(i), "label": "dog"} for i in range(8)], {})
    config = TrainConfig(epochs=1, batch_size=4, checkpoint_every=1)
    Explainer.create(model, tok).train(data, config=config, output_dir=tmp_path / "run", progress=False)
    marker = tmp_path / MARKER
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    for name in state["files"].values():  # the weight files the checkpoint commits
        _plant(tmp_path / "run" / "checkpoint" / name, marker, "pickle")
    _assert_refused(lambda: Explainer.create(model, tok).train(data, config=config, output_dir=tmp_path / "run",
                                                               progress=False), marker)


def test_load_model_never_trusts_remote_code(monkeypatch, tmp_path):
    import transformers

    from selfinterp_plugins import models

    seen = []

    def fake_from_pretrained(name, **kwargs):
        seen.append(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_from_pretrained)
    (tmp_path / "m").mkdir()
    with pytest.raises(Exception):
        models.load_model(str(tmp_path / "m"))
    assert seen and all(not kwargs.get("trust_remote_code") for kwargs in seen)


def test_no_module_of_the_package_unpickles():
    """A guard against regressions: no pickle.load, trust_remote_code or weights_only=False anywhere in
    the shipped code, and torch.load only in the storage layer, each call with weights_only=True
    (torch's restricted unpickler: tensors and plain containers; the published DIT files need it)."""
    import ast

    root = Path(__file__).resolve().parents[2]
    offenders = []
    for path in list((root / "selfinterp_plugins").rglob("*.py")) + list((root / "integrations").rglob("*.py")):
        rel = path.relative_to(root)
        text = path.read_text(encoding="utf-8")
        for needle in ("pickle.load", "pickle.loads", "trust_remote_code=True", "weights_only=False"):
            if needle in text:
                offenders.append(f"{rel}: {needle}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                restricted = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                                 for k in node.keywords)
                if not (restricted and rel.parts[:2] == ("selfinterp_plugins", "storage")):
                    offenders.append(f"{rel}:{node.lineno}: torch.load outside the storage layer or without weights_only=True")
    assert not offenders, offenders


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_in_place_of_a_weight_diff_is_refused(tmp_path, how):
    pytest.importorskip("peft")
    from selfinterp_peft.weight_diff import WeightDiff
    from selfinterp_plugins.errors import SelfInterpError
    from selfinterp_plugins.models import tiny_model

    base, tuned = tiny_model("llama", seed=0)[0], tiny_model("llama", seed=1)[0]
    directory = tmp_path / "diff"
    WeightDiff.from_models(base, tuned, rank=2).save_pretrained(directory, base)
    marker = tmp_path / MARKER
    _plant(directory / "adapter_model.safetensors", marker, how)
    _check_payload_is_live(directory / "adapter_model.safetensors", marker)
    with pytest.raises(SelfInterpError, match="safetensors"):
        WeightDiff.from_pretrained(directory)
    assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize("name", ["adapter_model.bin", "pytorch_model.bin", "extra.pt", "state.pkl", "sub/w.ckpt"])
def test_a_pickle_format_file_in_any_artifact_is_refused_by_name(tiny_llama, explainer_dir, tmp_path, name):
    """Beside the real weights, a pickle-format file is refused before anything reads it, with an
    ArtifactError naming it (torch's weights_only refusal was a traceback advising weights_only=False)."""
    pytest.importorskip("peft")
    from selfinterp_peft.weight_diff import WeightDiff
    from selfinterp_plugins.models import tiny_model

    base, tuned = tiny_model("llama", seed=0)[0], tiny_model("llama", seed=1)[0]
    diff_dir = tmp_path / "diff"
    WeightDiff.from_models(base, tuned, rank=2).save_pretrained(diff_dir, base)
    model, tok = tiny_llama
    marker = tmp_path / MARKER
    loaders = {explainer_dir: lambda: Explainer.from_pretrained(explainer_dir, model=model, tokenizer=tok),
               diff_dir: lambda: WeightDiff.from_pretrained(diff_dir)}
    for directory, load in loaders.items():
        (directory / name).parent.mkdir(exist_ok=True)
        _plant(directory / name, marker, "torch.save")
        with pytest.raises(ArtifactError, match="pickle-format file, which is never read"):
            load()
        assert not marker.exists(), "the payload ran"


def test_a_symlink_out_of_an_artifact_is_refused(tiny_llama, explainer_dir, tmp_path):
    model, tok = tiny_llama
    outside = tmp_path / "elsewhere.safetensors"
    (explainer_dir / "adapter.safetensors").rename(outside)
    (explainer_dir / "adapter.safetensors").symlink_to(outside)
    with pytest.raises(ArtifactError, match="outside the artifact"):
        Explainer.from_pretrained(explainer_dir, model=model, tokenizer=tok)
    inside = explainer_dir / "copy.safetensors"  # a link that stays inside is fine
    (explainer_dir / "adapter.safetensors").unlink()
    outside.rename(inside)
    (explainer_dir / "adapter.safetensors").symlink_to(inside.name)
    Explainer.from_pretrained(explainer_dir, model=model, tokenizer=tok)
