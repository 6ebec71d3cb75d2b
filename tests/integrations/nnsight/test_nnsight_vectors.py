"""nnsight users' path: topic_vectors on the TransformersModel they hold, an explainer saved through
transformers loading on it, and the activation of their own trace of `vector_prompt(topic)` made
into exactly the training vector by `prepare_vectors` (the docs' snippet)."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("nnsight")

from nnsight import TransformersModel  # noqa: E402

from selfinterp_plugins import Explainer, HFBackend  # noqa: E402
from selfinterp_plugins.models import tiny_model  # noqa: E402
from selfinterp_plugins.topics import load_topics, topic_vectors  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, tok = tiny_model("llama", seed=7)
    hf = HFBackend(model, tok)
    data = topic_vectors(hf, load_topics()[:5], [1], progress=False)[1]
    explainer = Explainer.create(hf, adapter="scalar_affine", template="echo")
    explainer._record_vector_spec(data)
    path = explainer.save_pretrained(tmp_path_factory.mktemp("nnsight-vectors") / "explainer")
    return TransformersModel(model, tokenizer=tok), data, path


def test_topic_vectors_take_the_nnsight_model(setup):
    lm, data, _ = setup
    got = topic_vectors(lm, load_topics()[:5], ["blocks.1.hook_resid_post"], progress=False)["blocks.1.hook_resid_post"]
    assert got.meta["site"] == "resid_post.1"
    torch.testing.assert_close(got.vectors, data.vectors, rtol=0, atol=1e-5)


def test_a_traced_activation_of_the_vector_prompt_is_the_training_vector(setup):
    lm, data, path = setup
    explainer = Explainer.from_pretrained(path, model=lm)
    assert explainer.backend.name == "nnsight" and explainer.vector_spec.site == "resid_post.1"
    title = data.labels[3]
    with lm.trace(explainer.vector_prompt(title)):
        hidden = lm.model.layers[1].output.save()  # (1, T, d): prepare_vectors takes the last token
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = explainer.prepare_vectors(hidden, site="resid_post.1")
    torch.testing.assert_close(got[0], data.vectors[3], rtol=0, atol=1e-5)


@pytest.mark.real_model
def test_the_docs_snippet_labels_a_volcano_and_warns_on_a_plain_prompt(smollm2):
    """docs/nnsight.md: the shipped explainer on a trace of its own prompt form says the topic; the
    plain prompt the report traced is warned about as read elsewhere."""
    from selfinterp_plugins import Sampling, shipped_explainer_dir

    model, tok = smollm2
    lm = TransformersModel(model, tokenizer=tok)
    explainer = Explainer.from_pretrained(shipped_explainer_dir(), model=lm)
    with lm.trace(torch.tensor([explainer.vector_prompt("volcano", tokenize=True)])):
        hidden = lm.model.layers[10].output.save()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vector = explainer.prepare_vectors(hidden, site="resid_post.10")
    assert explainer.explain(vector, sampling=Sampling(max_new_tokens=12), progress=False)[0]["label"] == "volcano"
    with lm.trace("volcano"):
        plain = lm.model.layers[10].output.save()
    with pytest.warns(UserWarning, match="not read where the training vectors were"):
        explainer.prepare_vectors(plain)
