"""A researcher's own vectors through nnsight (a trace of `vector_prompt`, then `prepare_vectors`)
train an explainer that saves its vector spec, as topic vectors read through nnsight do
(tests/own_vectors.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("nnsight")

from nnsight import TransformersModel  # noqa: E402
from own_vectors import check_own_vectors  # noqa: E402

from selfinterp_plugins.models import tiny_model  # noqa: E402


def test_own_vectors_through_nnsight_keep_their_vector_spec(tmp_path):
    model, tok = tiny_model("llama", seed=7)
    lm = TransformersModel(model, tokenizer=tok)

    def read(explainer, word):
        with lm.trace(explainer.vector_prompt(word)):
            hidden = lm.model.layers[1].output.save()  # (1, T, d)
        return hidden

    check_own_vectors(lm, tok, 1, read, tmp_path)
