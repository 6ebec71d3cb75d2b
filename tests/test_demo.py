"""The main job: the shipped explainer beats untrained injection on held-out topics."""

import pytest
import torch

from selfinterp_plugins import shipped_explainer_dir
from selfinterp_plugins.demo import run_demo


def test_shipped_explainer_is_packaged():
    directory = shipped_explainer_dir()
    assert (directory / "adapter.safetensors").is_file()
    assert (directory / "explainer_config.json").is_file()


@pytest.mark.real_model
def test_demo_trained_beats_untrained(capsys):
    scores = run_demo(shipped_explainer_dir(), n_topics=60, show=5)
    out = capsys.readouterr().out
    assert "recall@1 over all" in out and "trained" in out
    assert scores["trained"]["recall@1"] > scores["untrained"]["recall@1"] + 0.1


def test_an_unknown_explainer_name_lists_the_shipped_ones(tiny_llama):
    from selfinterp_plugins import Explainer, shipped_explainer_names
    from selfinterp_plugins.errors import ArtifactError

    names = ", ".join(["shipped", *shipped_explainer_names()])  # the core's and the installed plugins' (SAE-Lens's)
    assert "smollm2-topics" in names
    with pytest.raises(ArtifactError, match=rf"shipped explainer's name \({names}\)\.$"):
        Explainer.from_pretrained("smollm2-topicz", model=tiny_llama[0], tokenizer=tiny_llama[1])


@pytest.mark.real_model
def test_shipped_explainers_load_by_name(smollm2, tmp_path, monkeypatch):
    """`smollm2-topics` (or `shipped`) names the packaged explainer wherever the package is
    installed; a local directory of that name is preferred, as transformers prefers a local folder
    to a hub id. (The commands: `sae label` in tests/integrations/sae_lens/test_sae_smollm2.py,
    `explain` in tests/test_cli.py.)"""
    from selfinterp_plugins import Explainer, shipped_explainer_names

    assert "smollm2-topics" in shipped_explainer_names()
    model, tok = smollm2
    monkeypatch.chdir(tmp_path)  # nowhere near the repository
    by_name = Explainer.from_pretrained("smollm2-topics", model=model, tokenizer=tok)
    by_alias = Explainer.from_pretrained("shipped", model=model, tokenizer=tok)
    assert by_name.adapter.state_dict().keys() == by_alias.adapter.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(by_name.adapter.state_dict().values(),
                                                 by_alias.adapter.state_dict().values()))
    local = Explainer.create(model, tok, adapter="scalar_affine", template="echo")
    local.save_pretrained(tmp_path / "smollm2-topics")
    assert Explainer.from_pretrained("smollm2-topics", model=model, tokenizer=tok).adapter.config.kind == "scalar_affine"
