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


def test_a_left_padded_batched_trace_read_at_pos_gives_every_training_vector(setup):
    """docs/nnsight.md's batched form: one trace of prompts of different lengths, left-padded, read
    at the last real token through attention_mask; each row is its topic's training vector."""
    lm, data, path = setup
    explainer = Explainer.from_pretrained(path, model=lm)
    topics = [t for t in load_topics() if " " in t["title"]][:2] + load_topics()[:2]  # of different lengths
    want = topic_vectors(lm, topics, [1], progress=False, means={1: data.meta["mean"]})[1].vectors
    prompts = [explainer.vector_prompt(t["title"], tokenize=True) for t in topics]
    assert len({len(p) for p in prompts}) > 1  # padding happens
    for side in ("left", "right"):
        batch = lm.tokenizer.pad({"input_ids": prompts}, padding_side=side, return_tensors="pt")
        with lm.trace(dict(batch)):
            hidden = lm.model.layers[1].output.save()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = explainer.prepare_vectors(hidden, site="resid_post.1", pos=-1, attention_mask=batch["attention_mask"])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_output_0_of_a_one_prompt_trace_is_named_with_its_fix(setup):
    """nnsight 0.8's layer output is a tensor, so the habit `output[0]` is (T, d): every position
    became a vector and was labelled; now a warning says so."""
    lm, data, path = setup
    explainer = Explainer.from_pretrained(path, model=lm)
    with lm.trace(torch.tensor([explainer.vector_prompt(data.labels[0], tokenize=True)])):
        hidden = lm.model.layers[1].output[0].save()
    assert hidden.dim() == 2
    with pytest.warns(UserWarning, match=r"positions of one prompt \(T, d\).*output\[0\]"):
        explainer.prepare_vectors(hidden, site="resid_post.1")
