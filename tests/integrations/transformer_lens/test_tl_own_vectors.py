"""A researcher's own vectors through TransformerLens (`run_with_cache` of `vector_prompt`, then
`prepare_vectors`) train an explainer that saves its vector spec, as topic vectors read through TL
do (tests/own_vectors.py; HookedTransformer and TransformerBridge)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformer_lens")

from own_vectors import check_own_vectors  # noqa: E402
from test_tl_identity import bridge_of, hooked  # noqa: E402

from selfinterp_plugins.models import tiny_model  # noqa: E402


def read(explainer, word):
    _, cache = explainer.backend.model.run_with_cache(explainer.vector_prompt(word))
    return cache  # the whole ActivationCache: prepare_vectors reads the spec's hook


def test_own_vectors_through_a_hooked_transformer_keep_their_vector_spec(tmp_path):
    model, tok = tiny_model("llama", seed=5)
    check_own_vectors(hooked(model, tok, process=False), tok, "blocks.1.hook_resid_post", read, tmp_path)


def test_own_vectors_through_a_transformer_bridge_keep_their_vector_spec(tmp_path):
    check_own_vectors(bridge_of(seed=4), None, "blocks.1.hook_resid_post", read, tmp_path)
