"""A DIT adapter and a weight diff record the base model they were made on, and refuse another model
of the same shapes (they used to answer for it without a word) in one line naming both; one saved
before the record (no fingerprint) loads and runs as before."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")

from transformers import AutoModelForCausalLM  # noqa: E402

from selfinterp_peft.dit import DITAdapter, DITConfig  # noqa: E402
from selfinterp_peft.weight_diff import ModuleDiff, WeightDiff  # noqa: E402
from selfinterp_plugins.errors import ModelMismatchError  # noqa: E402
from selfinterp_plugins.models import tiny_model  # noqa: E402

from plugin_fakes import run_cli  # noqa: E402

FINGERPRINT = r"embedding fingerprint [0-9a-f]{16} != [0-9a-f]{16}"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two tiny llamas of the same shapes saved to disk ("tiny", "other"), a DIT adapter and a
    rank-1 weight diff made on "tiny"."""
    root = tmp_path_factory.mktemp("identity")
    for name, seed in (("tiny", 0), ("other", 1)):
        model, tok = tiny_model("llama", seed=seed, initializer_range=0.2)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    tiny = AutoModelForCausalLM.from_pretrained(root / "tiny")
    DITAdapter.create(tiny, tok, DITConfig(rank=2, max_new_tokens=2)).save_pretrained(root / "dit")
    down = tiny.model.layers[0].mlp.down_proj
    g = torch.Generator().manual_seed(0)
    diff = WeightDiff({"model.layers.0.mlp.down_proj": ModuleDiff(A=torch.randn(1, down.in_features, generator=g),
                                                                  B=torch.randn(down.out_features, 1, generator=g))})
    diff.save_pretrained(root / "diff", tiny)
    return root


def load(saved, name):
    return AutoModelForCausalLM.from_pretrained(saved / name), tiny_model("llama")[1]


def forget_the_model(directory, record):
    """The artifact as saved before records named the model: no model_id, no fingerprint."""
    config = json.loads((directory / record).read_text())
    del config["model_id"], config["embedding_fingerprint"]
    (directory / record).write_text(json.dumps(config))


def test_a_dit_adapter_refuses_another_model_naming_both(saved):
    config = json.loads((saved / "dit" / "dit_config.json").read_text())
    assert config["model_id"] == str(saved / "tiny") and len(config["embedding_fingerprint"]) == 16
    other, tok = load(saved, "other")
    with pytest.raises(ModelMismatchError, match=rf"^{saved / 'dit'}: this DIT adapter was made on {saved / 'tiny'}; the "
                                                 rf"model given \({saved / 'other'}\) has other weights \({FINGERPRINT}\)"):
        DITAdapter.from_pretrained(saved / "dit", other, tok)
    DITAdapter.from_pretrained(saved / "dit", *load(saved, "tiny"))  # its own model loads it


def test_a_weight_diff_refuses_another_model_wherever_it_meets_one(saved):
    other, tok = load(saved, "other")
    diff = WeightDiff.from_pretrained(saved / "diff")
    refusal = rf"^{saved / 'diff'}: this weight diff was made on {saved / 'tiny'}; the model given \({saved / 'other'}\) has"
    with pytest.raises(ModelMismatchError, match=refusal):
        with diff.applied(other):
            pass
    with pytest.raises(ModelMismatchError, match=refusal):
        DITAdapter.without_adapter(other, tok).ask([diff], use_dit=False, max_new_tokens=1)
    with pytest.raises(ModelMismatchError, match=refusal):
        WeightDiff.from_peft(saved / "diff", base=other)
    with pytest.raises(ModelMismatchError, match=refusal):
        diff.save_pretrained(saved / "resaved", other)
    tiny, _ = load(saved, "tiny")
    assert WeightDiff.from_peft(saved / "diff", base=tiny).meta["embedding_fingerprint"] == diff.meta["embedding_fingerprint"]


def test_artifacts_saved_before_the_record_still_load_and_run(saved, tmp_path):
    import shutil

    for name, record in (("dit", "dit_config.json"), ("diff", "weight_diff.json")):
        shutil.copytree(saved / name, tmp_path / name)
        forget_the_model(tmp_path / name, record)
    other, tok = load(saved, "other")
    dit = DITAdapter.from_pretrained(tmp_path / "dit", other, tok)
    assert len(dit.ask([WeightDiff.from_pretrained(tmp_path / "diff")], max_new_tokens=1)) == 1


def test_dit_ask_on_another_model_is_one_line(saved, capsys):
    code, out, err = run_cli(capsys, "dit", "ask", str(saved / "dit"), str(saved / "diff"), "--model", str(saved / "other"))
    assert code == 2 and "Traceback" not in out + err
    assert err.strip().splitlines()[-1].startswith(f"Error: {saved / 'dit'}: this DIT adapter was made on {saved / 'tiny'}")
