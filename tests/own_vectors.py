"""A researcher's own vectors on any backend (issue 27 §2): an explainer trained on topic vectors, or
on vectors `prepare_vectors` made from the researcher's own traces, saves the recipe it reads. A
tensor from prepare_vectors carries no trace of it, so before `Explainer.vector_meta` the dataset
built from one had an empty meta and the trained explainer saved `vector_spec=None`."""

from __future__ import annotations

import json
import warnings

import torch

from selfinterp_plugins import Explainer, TrainConfig, VectorLabelDataset
from selfinterp_plugins.explainer import CONFIG_FILE
from selfinterp_plugins.topics import load_topics, topic_vectors

#: the spec of topic vectors read after layer 1, written out by hand from topics.py's recipe
TOPIC_SPEC = {"source": "topic_vectors", "site": "resid_post.1", "prompt": "Tell me about {title}.",
              "prompt_format": "chat", "position": "last", "centring": "mean", "mean_key": "topic_mean", "layer": 1}
WORDS = ["harbour", "lantern", "meadow"]
STEP = TrainConfig(max_steps=1, batch_size=3)


def saved_spec(path) -> dict:
    spec = json.loads((path / CONFIG_FILE).read_text())["vector_spec"]
    return {k: v for k, v in spec.items() if k != "vector_norm"}


def check_own_vectors(model, tokenizer, layer, read, tmp_path):
    """`layer` names resid_post.1 the backend's way; `read(explainer, word)` is the researcher's own
    trace of `explainer.vector_prompt(word)` through the backend's library: the (1, T, d) activation
    after layer 1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the small training sets here are warned about; not the point
        _check(model, tokenizer, layer, read, tmp_path)


def _check(model, tokenizer, layer, read, tmp_path):
    data = topic_vectors(model, load_topics()[:6], [layer], progress=False, tokenizer=tokenizer)[layer]
    source = Explainer.create(model, tokenizer, adapter="scalar_affine", template="echo")
    source.train(data, config=STEP, progress=False)
    assert saved_spec(source.save_pretrained(tmp_path / "topics")) == TOPIC_SPEC

    vectors = torch.cat([source.prepare_vectors(read(source, word)) for word in WORDS])
    own = VectorLabelDataset(vectors, [{"label": word} for word in WORDS], meta=source.vector_meta())
    mine = Explainer.create(model, tokenizer, adapter="scalar_affine", template="echo")
    mine.train(own, config=STEP, progress=False)
    path = mine.save_pretrained(tmp_path / "own")
    assert saved_spec(path) == TOPIC_SPEC
    again = Explainer.from_pretrained(path, model=model, tokenizer=tokenizer)
    assert again.metadata["topic_mean"] == source.metadata["topic_mean"] == data.meta["mean"]
    # the researcher's next trace is read the way the training vectors were
    torch.testing.assert_close(again.prepare_vectors(read(again, WORDS[1]))[0], vectors[1], rtol=0, atol=1e-5)
