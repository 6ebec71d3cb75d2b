"""The model check: the same weights seen rescaled and row-centred (as TransformerLens stores them)
are accepted, other weights refused saying what differed and how to override; model ids are
recorded; sites a model lacks are refused when the explainer is created."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from selfinterp_plugins import Explainer, HFBackend
from selfinterp_plugins.errors import BackendError, ModelMismatchError
from selfinterp_plugins.explainer import CONFIG_FILE
from selfinterp_plugins.models.identity import SIGNATURE_TOLERANCE, embedding_signature, signature_distance


def _restored(model, scale):
    """A copy whose embedding rows are centred and scaled: TransformerLens' processed W_E of the same
    checkpoint (center_writing_weights; Gemma's sqrt(d_model) folded in)."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        weight = other.get_input_embeddings().weight
        weight.copy_((weight - weight.mean(-1, keepdim=True)) * scale)
    return other


@pytest.fixture(scope="module")
def saved(tiny_llama, tmp_path_factory):
    model, tok = tiny_llama
    return Explainer.create(model, tok).save_pretrained(tmp_path_factory.mktemp("identity") / "explainer")


@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_the_same_weights_centred_and_scaled_are_accepted(tiny_llama, saved, scale):
    model, tok = tiny_llama
    processed = HFBackend(_restored(model, scale), tok)
    assert processed.fingerprint() != HFBackend(model, tok).fingerprint()
    assert signature_distance(embedding_signature(processed), embedding_signature(HFBackend(model, tok))) < 1e-5
    Explainer.from_pretrained(saved, model=processed)


def test_bfloat16_weights_are_within_the_tolerance(tiny_llama):
    model, tok = tiny_llama
    half = HFBackend(copy.deepcopy(model).to(torch.bfloat16), tok)
    distance = signature_distance(embedding_signature(half), embedding_signature(HFBackend(model, tok)))
    assert 0 < distance < SIGNATURE_TOLERANCE


def test_other_weights_are_refused_saying_what_differed(tiny, saved):
    model, tok = tiny("llama", seed=1)
    with pytest.raises(ModelMismatchError) as err:
        Explainer.from_pretrained(saved, model=model, tokenizer=tok)
    message = str(err.value)
    assert "embedding fingerprint" in message and "after undoing scaling and centring" in message
    assert message.rstrip().endswith("pass check_model=False if you know they share weights.")
    Explainer.from_pretrained(saved, model=model, tokenizer=tok, check_model=False)


def test_an_old_artifact_without_a_signature_says_so(tiny, saved, tmp_path):
    import shutil

    copy_dir = shutil.copytree(saved, tmp_path / "old")
    config = json.loads((copy_dir / CONFIG_FILE).read_text())
    del config["embedding_signature"]
    (copy_dir / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelMismatchError, match="predates signatures"):
        Explainer.from_pretrained(copy_dir, model=tiny("llama", seed=1)[0], tokenizer=tiny("llama", seed=1)[1])


def test_model_id_is_recorded(tiny_llama, saved):
    model, tok = tiny_llama
    assert Explainer.create(model, tok, model_id="me/tiny").model_id == "me/tiny"
    config = json.loads((saved / CONFIG_FILE).read_text())
    assert config["model_id"] == (model.config._name_or_path or tok.name_or_path)
    assert config["model_id"]


@pytest.mark.parametrize("site", ["resid_post.2", "blocks.99.hook_resid_pre"])
def test_a_layer_the_model_lacks_is_refused_at_create(tiny_llama, site):
    with pytest.raises(BackendError, match="past the last layer"):
        Explainer.create(*tiny_llama, site=site)


@pytest.mark.parametrize("site", ["blocks.1.hook_resid_mid", "resid_mid.1", "blocks.0.hook_attn_out"])
def test_sites_inside_a_block_are_refused_listing_every_site(tiny_llama, site):
    with pytest.raises(BackendError) as err:
        Explainer.create(*tiny_llama, site=site)
    for name in ("'embed'", "'resid_pre.K'", "'resid_post.K'", "'hook_embed'", "'blocks.K.hook_resid_pre'",
                 "'blocks.K.hook_resid_post'", "between blocks"):
        assert name in str(err.value)
