"""The Activation Oracle explainer of the core (selfinterp_plugins.oracles): its shapes and
refusals; its math against the reference is tests/reference/test_reference_karvonen.py."""

from __future__ import annotations

import pytest
import torch

from selfinterp_plugins import ArtifactError, BackendError, Explainer, OptionError, VectorError
from selfinterp_plugins.backends import LowRankPatch
from selfinterp_plugins.oracles import activation_oracle, oracle_layer


@pytest.fixture(scope="module")
def oracle(tiny_llama):
    model, tok = tiny_llama
    return activation_oracle(model, tok, layer=1, question="What is this?", positions=3)


@pytest.mark.parametrize("shape", [(2, 2, 64), (4, 64), (2, 3, 32), (64,)])
def test_vectors_of_another_shape_are_refused_in_one_line(oracle, shape):
    with pytest.raises(VectorError, match=r"takes vectors of shape \(N, 3, d_model\), got " + repr(shape).replace("(", r"\(").replace(")", r"\)")
                       if shape[-1] == 64 else "does not match the model's d_model 64"):
        oracle.explain(torch.randn(*shape), progress=False)


def test_one_row_of_k_vectors_is_a_batch_of_one(oracle):
    one = oracle.explain(torch.ones(3, 64), progress=False)
    assert len(one) == 1 and one == oracle.explain(torch.ones(1, 3, 64), progress=False)


def test_a_layer_the_model_lacks_is_refused(tiny_llama):
    model, tok = tiny_llama
    with pytest.raises(BackendError, match="resid_post.5 is past the last layer"):
        activation_oracle(model, tok, layer=5, question="What?")
    with pytest.raises(BackendError, match="resid_post.2 is past the last layer"):
        activation_oracle(model, tok, layer=0, question="What?", injection_layer=2)


def test_the_reference_reads_at_half_depth():
    assert (oracle_layer(36), oracle_layer(42), oracle_layer(80), oracle_layer(2)) == (18, 21, 40, 1)


def test_an_oracle_with_a_lora_is_not_saved_as_an_explainer_folder(tiny_llama, tmp_path):
    model, tok = tiny_llama
    explainer = activation_oracle(model, tok, layer=1, question="What?")
    explainer.model_patch = LowRankPatch({"model.layers.0.mlp.up_proj": (torch.ones(1, 64), torch.ones(128, 1), 1.0)})
    with pytest.raises(ArtifactError, match="keep the oracle's own directory"):
        explainer.save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_an_untrained_oracle_saves_and_loads_as_any_explainer(tiny_llama, tmp_path):
    model, tok = tiny_llama
    explainer = activation_oracle(model, tok, layer=1, question="What?", positions=2)
    loaded = Explainer.from_pretrained(explainer.save_pretrained(tmp_path / "o"), model=model, tokenizer=tok)
    assert loaded.template == explainer.template and torch.equal(loaded.inject_mask, explainer.inject_mask)
    v = torch.randn(2, 2, 64)
    assert loaded.default_sampling == explainer.default_sampling  # greedy, 50 tokens: saved with it
    assert loaded.explain(v, progress=False) == explainer.explain(v, progress=False)
    with pytest.raises(OptionError, match=r"Option\(s\) \['question'\] are for an explainer in another format"):
        Explainer.from_pretrained(tmp_path / "o", model=model, tokenizer=tok, question="Why?")


def test_a_peft_adapter_folder_without_a_plugin_for_it_says_which_plugin(tiny_llama, tmp_path, monkeypatch):
    from selfinterp_plugins import plugins

    model, tok = tiny_llama
    (tmp_path / "adapter_config.json").write_text("{}")
    monkeypatch.setenv("SELFINTERP_PLUGINS", "")
    plugins.reset()
    try:
        with pytest.raises(ArtifactError, match=r"is a PEFT adapter directory.*pip install 'selfinterp-plugins\[peft\]'"):
            Explainer.from_pretrained(tmp_path, model=model, tokenizer=tok)
        with pytest.raises(Exception, match="Unknown explainer format 'activation-oracle'; installed: selfie-adapters"):
            Explainer.from_pretrained(tmp_path, model=model, tokenizer=tok, format="activation-oracle")
    finally:
        monkeypatch.delenv("SELFINTERP_PLUGINS")
        plugins.reset()
