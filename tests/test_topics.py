"""topic_vectors takes what users hold: a model object (as Explainer.create does) and layers as
ints, our site names or TransformerLens hook names; anything else is refused with the fix."""

from __future__ import annotations

import pytest
import torch

from selfinterp_plugins import HFBackend
from selfinterp_plugins.errors import BackendError
from selfinterp_plugins.topics import load_topics, topic_vectors


@pytest.fixture(scope="module")
def topics():
    return load_topics()[:6]


def test_a_model_object_and_site_names_give_the_backends_vectors(tiny_llama, topics):
    model, tok = tiny_llama
    want = topic_vectors(HFBackend(model, tok), topics, [1], progress=False)[1]
    got = topic_vectors(model, topics, [1, "resid_post.1", "blocks.1.hook_resid_post"], progress=False, tokenizer=tok)
    assert list(got) == [1, "resid_post.1", "blocks.1.hook_resid_post"]
    for data in got.values():
        torch.testing.assert_close(data.vectors, want.vectors, rtol=0, atol=0)
        assert data.meta["site"] == "resid_post.1" and data.meta["layer"] == 1 and data.meta["prompt_format"] == "chat"


def test_resid_pre_and_means_keyed_by_the_layer_given(tiny_llama, topics):
    model, tok = tiny_llama
    pre = topic_vectors(model, topics, ["blocks.1.hook_resid_pre"], progress=False, tokenizer=tok)["blocks.1.hook_resid_pre"]
    post0 = topic_vectors(model, topics, [0], progress=False, tokenizer=tok)[0]
    torch.testing.assert_close(pre.vectors, post0.vectors)  # what enters block 1 is what leaves block 0
    mean = torch.tensor(post0.meta["mean"])
    again = topic_vectors(model, topics[:2], ["resid_post.0"], progress=False, tokenizer=tok, means={0: mean})
    torch.testing.assert_close(again["resid_post.0"].vectors, post0.vectors[:2])


@pytest.mark.parametrize("layer, match", [(2, "past the last layer"), ("blocks.1.hook_resid_mid", "blocks.K.hook_resid_post"),
                                          (1.5, "int or a site name"), (True, "int or a site name")])
def test_bad_layers_are_refused_with_the_fix(tiny_llama, topics, layer, match):
    model, tok = tiny_llama
    with pytest.raises(BackendError, match=match):
        topic_vectors(model, topics, [layer], progress=False, tokenizer=tok)
