"""One checkpoint, every TransformerLens view of it: an explainer saved through transformers loads on
a HookedTransformer whose weights TransformerLens processed (centred embedding rows, folded norms)
and on a TransformerBridge (without tokenizer=: its BOS-prepending tokenizer must not change a
label), and back; another model's is refused. topic_vectors takes the TL models and hook names,
and prepare_vectors a TL cache; sites are checked when the explainer is created."""

from __future__ import annotations

import json
import tempfile
import warnings

import pytest
import torch

pytest.importorskip("transformer_lens")

from selfinterp_plugins import Explainer, HFBackend, Sampling  # noqa: E402
from selfinterp_plugins.errors import BackendError, ModelMismatchError  # noqa: E402
from selfinterp_plugins.explainer import CONFIG_FILE  # noqa: E402
from selfinterp_plugins.models import tiny_model  # noqa: E402
from selfinterp_plugins.topics import load_topics, topic_vectors  # noqa: E402

warnings.filterwarnings("ignore")
FAST = Sampling(max_new_tokens=5)


def hooked(model, tokenizer, process: bool):
    """A HookedTransformer of `model`'s weights, converted by TransformerLens; `process` applies
    its default weight processing (HookedTransformer.from_pretrained's: fold LayerNorm, centre
    writing weights and unembedding, fold value biases)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config, get_pretrained_state_dict

    config = model.config
    config.architectures = [type(model).__name__]
    if hasattr(config, "n_positions"):
        config.n_ctx = config.n_positions
    with tempfile.TemporaryDirectory() as directory:
        config.save_pretrained(directory)
        fields = convert_hf_model_config(directory)
        if getattr(config, "n_inner", None):
            fields["d_mlp"] = config.n_inner
        fields.update(device="cpu", default_prepend_bos=False)
        cfg = HookedTransformerConfig(**fields)
        state = get_pretrained_state_dict(directory, cfg, hf_model=model)
    out = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    out.load_and_process_state_dict(state, fold_ln=process, center_writing_weights=process, center_unembed=process,
                                    fold_value_biases=process)
    out.eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def bridge_of(seed: int):
    """A TransformerBridge around its own copy of the tiny gpt2 (a bridge replaces the wrapped
    model's modules, so never around a model used elsewhere)."""
    from transformer_lens.model_bridge import TransformerBridge

    model, tokenizer = tiny_model("gpt2", seed=seed)

    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        return TransformerBridge.boot_transformers(directory, hf_model=model)  # its own (BOS-prepending) tokenizer


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A LayerNorm model (TransformerLens centres its embedding rows) and an explainer saved through hf."""
    model, tok = tiny_model("gpt2", seed=3)
    explainer = Explainer.create(model, tok, adapter="scalar_affine", template="echo")
    with torch.no_grad():
        for p in explainer.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    path = explainer.save_pretrained(tmp_path_factory.mktemp("tl-identity") / "hf")
    return model, tok, explainer, path


def test_processed_hooked_transformer_and_bridge_accept_an_explainer_saved_through_hf(gpt2, tmp_path):
    model, tok, explainer, path = gpt2
    processed = hooked(model, tok, process=True)
    assert not torch.allclose(processed.W_E, model.get_input_embeddings().weight, atol=1e-3)  # centred rows
    vectors = torch.randn(6, explainer.backend.d_model, generator=torch.Generator().manual_seed(0)) * 3
    want = [r["label"] for r in explainer.explain(vectors, sampling=FAST, progress=False)]
    for other in (processed, bridge_of(3)):
        loaded = Explainer.from_pretrained(path, model=other)  # no tokenizer=: the model's own
        assert loaded.backend.name == "transformer_lens"
        assert torch.equal(loaded.prompt_ids, explainer.prompt_ids)
        assert [r["label"] for r in loaded.explain(vectors, sampling=FAST, progress=False)] == want
    # and back: saved through the processed model (model_id recorded), loaded through hf
    through_tl = Explainer.create(processed, adapter="scalar_affine", template="echo")
    assert through_tl.model_id
    back = Explainer.from_pretrained(through_tl.save_pretrained(tmp_path / "tl"), model=model, tokenizer=tok)
    assert back.model_id == through_tl.model_id


def test_an_explainer_trained_through_a_bos_prepending_tokenizer_keeps_its_prompt_on_hf(gpt2, tmp_path):
    model, tok, _, _ = gpt2
    bridge = bridge_of(3)
    through_bridge = Explainer.create(bridge, adapter="scalar_affine", template="echo")
    assert int(through_bridge.prompt_ids[0]) == bridge.tokenizer.bos_token_id  # TL's tokenizer prepended BOS
    loaded = Explainer.from_pretrained(through_bridge.save_pretrained(tmp_path / "b"), model=model, tokenizer=tok)
    assert torch.equal(loaded.prompt_ids, through_bridge.prompt_ids)


def test_another_tokenizer_is_refused(gpt2, tmp_path):
    model, tok, _, path = gpt2
    config = json.loads((path / CONFIG_FILE).read_text())
    (tmp_path / "x").mkdir()
    for name in ("adapter.safetensors",):
        (tmp_path / "x" / name).write_bytes((path / name).read_bytes())
    (tmp_path / "x" / CONFIG_FILE).write_text(json.dumps({**config, "prompt_ids": [5, *config["prompt_ids"][1:]]}))
    with pytest.raises(ModelMismatchError, match="tokenises the explainer's prompt differently"):
        Explainer.from_pretrained(tmp_path / "x", model=model, tokenizer=tok)


def test_another_models_explainer_is_refused_through_transformer_lens(gpt2):
    _, _, _, path = gpt2
    other, tok = tiny_model("gpt2", seed=4)
    with pytest.raises(ModelMismatchError, match="check_model=False"):
        Explainer.from_pretrained(path, model=hooked(other, tok, process=True))


@pytest.fixture(scope="module")
def llama():
    model, tok = tiny_model("llama", seed=5)
    return model, tok, hooked(model, tok, process=False)


def test_topic_vectors_and_prepare_vectors_from_a_tl_cache(llama):
    model, tok, tl = llama
    topics = load_topics()[:5]
    want = topic_vectors(HFBackend(model, tok), topics, [1], progress=False)[1]
    got = topic_vectors(tl, topics, ["blocks.1.hook_resid_post"], progress=False, tokenizer=tok)["blocks.1.hook_resid_post"]
    torch.testing.assert_close(got.vectors, want.vectors, rtol=0, atol=1e-4)
    explainer = Explainer.create(tl, tok, adapter="scalar_affine", template="echo")
    explainer._record_vector_spec(want)
    ids = torch.tensor([explainer.vector_prompt(topics[2]["title"], tokenize=True)])
    _, cache = tl.run_with_cache(ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for given in (cache, cache["blocks.1.hook_resid_post"]):
            torch.testing.assert_close(explainer.prepare_vectors(given, site="blocks.1.hook_resid_post")[0],
                                       want.vectors[2], rtol=0, atol=1e-4)


def test_the_vector_prompt_text_runs_as_its_ids_through_transformer_lens(gpt2, llama):
    """`model.run_with_cache(explainer.vector_prompt(topic))`, a string: TransformerLens prepends BOS
    to a string and the chat markup starts with one, so the text ran with two and the activation
    was another prompt's (a fluent, wrong label). The text now runs as the prompt's ids, and its
    activation is the training vector, on a BOS-prepending bridge and on a HookedTransformer with
    `default_prepend_bos` on and off."""
    model, tok, _, _ = gpt2
    gpt2_topics, llama_topics = load_topics()[:4], load_topics()[4:8]
    bridge = bridge_of(3)  # the gpt2 fixture's weights, its own BOS-prepending tokenizer
    llama_model, llama_tok, tl = llama
    prepending = hooked(llama_model, llama_tok, process=False)
    prepending.cfg.default_prepend_bos = True
    cases = [(bridge, model, tok, gpt2_topics), (tl, llama_model, llama_tok, llama_topics),
             (prepending, llama_model, llama_tok, llama_topics)]
    for tl_model, hf_model, hf_tok, topics in cases:
        want = topic_vectors(HFBackend(hf_model, hf_tok), topics, [1], progress=False)[1]
        explainer = Explainer.create(tl_model, adapter="scalar_affine", template="echo")
        explainer._record_vector_spec(want)
        for i, topic in enumerate(topics):
            text = explainer.vector_prompt(topic["title"])
            assert tl_model.to_tokens(text)[0].tolist() == explainer.vector_prompt(topic["title"], tokenize=True)
            _, cache = tl_model.run_with_cache(text)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                got = explainer.prepare_vectors(cache, site="blocks.1.hook_resid_post")[0]
            torch.testing.assert_close(got, want.vectors[i], rtol=0, atol=1e-4)


@pytest.mark.parametrize("site, match", [("blocks.1.hook_resid_mid", "blocks.K.hook_resid_post"),
                                         ("blocks.99.hook_resid_pre", "past the last layer")])
def test_sites_are_checked_when_created(llama, site, match):
    _, tok, tl = llama
    with pytest.raises(BackendError, match=match):
        Explainer.create(tl, tok, site=site)


@pytest.mark.real_model
def test_gemma3_through_a_processed_hooked_transformer_is_the_same_model_as_through_hf(tmp_path):
    """The report's case: TransformerLens stores Gemma's embedding scaled by sqrt(d_model) (W_E differs
    from the checkpoint's by up to 22.8); an explainer made through it loads through hf."""
    from transformer_lens import HookedTransformer

    from selfinterp_plugins.models import load_model

    model, tok = load_model("gemma-3-270m")
    tl = HookedTransformer.from_pretrained("google/gemma-3-270m", hf_model=model, tokenizer=tok, device="cpu",
                                           dtype=model.dtype)
    assert float((tl.W_E.float() - model.get_input_embeddings().weight.float()).abs().max()) > 1
    explainer = Explainer.create(tl, template="echo")
    assert explainer.backend.fingerprint() != HFBackend(model, tok).fingerprint() and explainer.model_id
    Explainer.from_pretrained(explainer.save_pretrained(tmp_path / "g"), model=model, tokenizer=tok)


def test_a_padded_batch_through_run_with_cache_read_at_pos_gives_the_training_vectors(llama):
    """docs/transformer_lens.md's batched form: prompts of different lengths, left-padded, one
    `run_with_cache(ids, attention_mask=...)`, read with pos=-1 and the mask: each row is its
    topic's training vector. Before, prepare_vectors took no pos= or mask."""
    model, tok, tl = llama
    topics = [t for t in load_topics() if " " in t["title"]][:2] + load_topics()[:2]
    want = topic_vectors(HFBackend(model, tok), topics, [1], progress=False)[1]
    explainer = Explainer.create(tl, tok, adapter="scalar_affine", template="echo")
    explainer._record_vector_spec(want)
    prompts = [explainer.vector_prompt(t["title"], tokenize=True) for t in topics]
    assert len({len(p) for p in prompts}) > 1
    batch = tok.pad({"input_ids": prompts}, padding_side="left", return_tensors="pt")
    _, cache = tl.run_with_cache(batch["input_ids"], attention_mask=batch["attention_mask"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = explainer.prepare_vectors(cache, pos=-1, attention_mask=batch["attention_mask"])
    torch.testing.assert_close(got, want.vectors, rtol=0, atol=1e-4)
