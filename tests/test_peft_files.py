"""One validation for every PEFT directory (`adapter_files`), with a base model and without, before
PEFT reads it: a hostile file is refused in one line naming what is wrong, the same way on both
paths, and a refused load (also one that fails inside PEFT) leaves the base exactly as it was."""

from __future__ import annotations

import json
import math

import pytest
import torch

peft = pytest.importorskip("peft")

from safetensors.torch import load_file, save_file  # noqa: E402

from selfinterp_peft.batched import per_row_diffs  # noqa: E402
from selfinterp_peft.weight_diff import WeightDiff, WeightDiffError  # noqa: E402
from selfinterp_plugins.errors import ArtifactError  # noqa: E402
from selfinterp_plugins.models import tiny_model  # noqa: E402

IDS = torch.tensor([[1, 50, 200, 7, 4000, 12, 9]])
# the tiny llama: d_model 64, MLP width 128; the LoRA below is rank 2 on q_proj and down_proj
DOWN = "base_model.model.model.layers.0.mlp.down_proj"
A, B = f"{DOWN}.lora_A.weight", f"{DOWN}.lora_B.weight"  # (2, 128) and (64, 2)


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _set(key, value):
    return lambda tensors, config: tensors.__setitem__(key, value)


def _config(key, value):
    return lambda tensors, config: config.__setitem__(key, value)


def _extra_layer(tensors, config):  # the factors of a third layer the two-layer model lacks
    tensors[A.replace("layers.0", "layers.7")] = tensors[A].clone()
    tensors[B.replace("layers.0", "layers.7")] = tensors[B].clone()


#: change of (tensors, config) -> the refusal expected with a base, and without one: "same", or "at use"
#: (only the model can tell: the diff loads and is refused where it meets the model), or "what it holds"
#: (without a base the diff is the file's modules; PEFT would add a random change for the missing one)
HOSTILE = {
    "wider input than the module": (_set(A, torch.ones(2, 99)), r"lora_A.weight is \(2, 99\), but on the model given it is "
                                                               r"\(2, 128\)", "at use"),
    "0-d tensor": (_set(A, torch.tensor(1.0)), r"lora_A.weight has shape \(\), not a matrix", "same"),
    "3-D tensor": (_set(A, torch.ones(2, 128, 2)), r"lora_A.weight has shape \(2, 128, 2\), not a matrix", "same"),
    "rank 0": (lambda t, c: (t.__setitem__(A, torch.ones(0, 128)), t.__setitem__(B, torch.ones(64, 0))),
               r"lora_A.weight has rank 0", "same"),
    "inner sizes differ": (_set(B, torch.ones(64, 3)), r"lora_B.weight is \(64, 3\), but .*lora_A.weight has rank 2: the "
                                                       "two factors do not multiply", "same"),
    "NaN weights": (_set(A, torch.full((2, 128), math.nan)), r"tensor .*lora_A.weight holds 256 NaN or infinite", "same"),
    "float8 NaN weights": (_set(A, torch.full((2, 128), math.nan).to(torch.float8_e4m3fn)),
                           r"tensor .*lora_A.weight holds 256 NaN or infinite", "same"),
    "integer weights": (_set(A, torch.ones(2, 128, dtype=torch.int64)), r"lora_A.weight is torch.int64, not floating", "same"),
    "NaN lora_alpha": (_config("lora_alpha", math.nan), r"field lora_alpha should be a finite number", "same"),
    "lora_alpha overflowing float32": (_config("lora_alpha", 1e300), r"lora_alpha 1e\+300 makes the change of "
                                                                      r"model.layers.0.mlp.down_proj overflow float32", "same"),
    "empty file": (lambda t, c: t.clear(), r"holds no tensors", "same"),
    "lora_B missing": (lambda t, c: t.pop(B), rf"has {A} but no {B}", "same"),
    "lora_A missing": (lambda t, c: t.pop(A), rf"has {B} but no {A}", "same"),
    "a module the model lacks": (_extra_layer, r"PEFT would drop tensor .*layers.7.mlp.down_proj.lora_A.weight \(the model "
                                               r"given has no module 'model.layers.7.mlp.down_proj'\)", "at use"),
    "a targeted module without its tensors": (lambda t, c: [t.pop(k) for k in list(t) if "layers.1.self_attn" in k],
                                              r"has no tensor .*layers.1.self_attn.q_proj.lora_A.weight \(and 1 more\), "
                                              "which PEFT creates", "what it holds"),
    "unknown peft_type": (_config("peft_type", "FOO"), r"peft_type 'FOO' is none of the \d+ adapter types PEFT", "same"),
    # PEFT allocated rank × width for every target module (256 GB for SmolLM2) before loading the file
    "huge rank": (_config("r", 10 ** 8), r"lora_A.weight has rank 2 \(its first dimension\), but adapter_config.json gives "
                                         r"model.layers.0.mlp.down_proj rank 100000000", "same"),
}


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    """A rank-2 LoRA on the tiny llama's q_proj and down_proj, saved by PEFT: (tensors, config)."""
    torch.manual_seed(3)
    config = peft.LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    directory = tmp_path_factory.mktemp("lora") / "lora"
    peft.get_peft_model(tiny_model("llama", seed=0)[0], config).save_pretrained(directory)
    return load_file(str(directory / "adapter_model.safetensors")), json.loads((directory / "adapter_config.json").read_text())


def hostile(lora_files, tmp_path, change):
    tensors, config = dict(lora_files[0]), dict(lora_files[1])
    change(tensors, config)
    directory = tmp_path / "hostile"
    directory.mkdir()
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return directory


def state(model):
    """What a load must leave as it was: logits, every module's type, every parameter's flag."""
    return (logits(model), [type(m) for m in model.modules()], [p.requires_grad for p in model.parameters()])


def assert_untouched(model, before):
    logits_before, types, flags = before
    torch.testing.assert_close(logits(model), logits_before, rtol=0, atol=0)
    assert [type(m) for m in model.modules()] == types  # no PEFT layer left in
    assert [p.requires_grad for p in model.parameters()] == flags


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_adapter_is_refused_the_same_with_a_base_or_without_and_the_base_is_untouched(lora_files, tmp_path,
                                                                                                 case):
    change, message, without = HOSTILE[case]
    directory = hostile(lora_files, tmp_path, change)
    base = tiny_model("llama", seed=0)[0]
    before = state(base)
    with pytest.raises(ArtifactError, match=message):
        WeightDiff.from_peft(directory, base=base)
    assert_untouched(base, before)
    if without == "same":
        with pytest.raises(ArtifactError, match=message):
            WeightDiff.from_peft(directory)
    elif without == "what it holds":
        assert len(WeightDiff.from_peft(directory).modules) == 3  # 4 LoRA modules, layer 1's q_proj taken out
    else:  # only the model can tell: refused where the diff meets it, never a traceback
        diff = WeightDiff.from_peft(directory)
        with pytest.raises(WeightDiffError, match=r"(its change of .* is 64×99 but the model's module is 64×128|no module)"):
            with per_row_diffs(base, [diff]):
                pass


def test_a_load_that_fails_inside_peft_leaves_the_base_as_it_was(lora_files, tmp_path, monkeypatch):
    """PEFT had already put its LoRA layers into the base when loading the weights failed (logits off
    by up to 5.5, though the docstring says the base is left as it was): it now wraps a copy."""
    directory = hostile(lora_files, tmp_path, lambda t, c: None)
    base = tiny_model("llama", seed=0)[0]
    before = state(base)

    def fail(*args, **kwargs):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(peft.PeftModel, "load_adapter", fail)
    with pytest.raises(ArtifactError, match=r"PEFT could not load this adapter onto the model given \(RuntimeError: disk gone\)"):
        WeightDiff.from_peft(directory, base=base)
    assert_untouched(base, before)


def test_a_sound_adapter_loads_the_same_with_a_base_or_without_and_the_base_is_untouched(lora_files, tmp_path):
    directory = hostile(lora_files, tmp_path, lambda t, c: None)
    base = tiny_model("llama", seed=0)[0]
    before = state(base)
    through_peft = WeightDiff.from_peft(directory, base=base)
    assert_untouched(base, before)
    from_files = WeightDiff.from_peft(directory)
    assert through_peft.modules.keys() == from_files.modules.keys() and len(from_files.modules) == 4
    tensors = lora_files[0]
    want = 1.0 * tensors[B] @ tensors[A]  # lora_alpha 2 / r 2
    for diff in (through_peft, from_files):
        torch.testing.assert_close(diff.modules["model.layers.0.mlp.down_proj"].delta(), want, rtol=0, atol=1e-6)
