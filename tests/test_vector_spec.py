"""What vectors an explainer reads: the spec recorded by training on topic vectors, saved and
reloaded (old artifacts without one still load), and `prepare_vectors` / `vector_prompt` giving
exactly the vectors it was trained on from each kind of input, with warnings where they differ."""

from __future__ import annotations

import json
import types
import warnings

import pytest
import torch

from selfinterp_plugins import Explainer, HFBackend, TrainConfig
from selfinterp_plugins.errors import ArtifactError, VectorError
from selfinterp_plugins.explainer import CONFIG_FILE
from selfinterp_plugins.sites import Site
from selfinterp_plugins.topics import TOPIC_PROMPT, load_topics, topic_prompt_ids, topic_vectors
from selfinterp_plugins.vector_spec import VectorSpec

LAYER = 1


@pytest.fixture(scope="module")
def trained(tiny_llama, tmp_path_factory):
    """An explainer trained (a few steps) on topic vectors of layer 1, saved and reloaded."""
    model, tok = tiny_llama
    data = topic_vectors(model, load_topics()[:24], [LAYER], progress=False, tokenizer=tok)[LAYER]
    explainer = Explainer.create(model, tok, adapter="scalar_affine", template="echo")
    explainer.train(data, config=TrainConfig(epochs=1, batch_size=8, max_steps=2), progress=False)
    path = explainer.save_pretrained(tmp_path_factory.mktemp("spec") / "explainer")
    return explainer, Explainer.from_pretrained(path, model=HFBackend(model, tok)), data, path


def test_training_on_topic_vectors_records_the_spec_and_it_survives_a_reload(trained):
    explainer, loaded, data, path = trained
    spec = explainer.vector_spec
    assert spec == VectorSpec(source="topic_vectors", site=f"resid_post.{LAYER}", prompt=TOPIC_PROMPT, prompt_format="chat",
                              position="last", centring="mean", mean_key="topic_mean", vector_norm=spec.vector_norm)
    assert spec.vector_norm == pytest.approx(float(data.vectors.norm(dim=-1).median()), rel=1e-4)
    assert explainer.metadata["topic_mean"] == pytest.approx(data.meta["mean"])
    saved = json.loads((path / CONFIG_FILE).read_text())["vector_spec"]
    assert saved["site"] == f"resid_post.{LAYER}" and saved["layer"] == LAYER and saved["centring"] == "mean"
    assert loaded.vector_spec == spec and loaded.metadata["topic_mean"] == explainer.metadata["topic_mean"]


def test_an_artifact_saved_before_specs_still_loads(trained, tiny_llama):
    """No vector_spec, prompt_ids or signature in the config: it loads, and a topic explainer's
    spec is read back from its metadata (source, layer, topic_mean)."""
    _, _, _, path = trained
    config = json.loads((path / CONFIG_FILE).read_text())
    for key in ("vector_spec", "prompt_ids", "embedding_signature"):
        del config[key]
    (path / CONFIG_FILE).write_text(json.dumps({**config, "metadata": {"source": "topics", "layer": LAYER,
                                                                        "topic_mean": config["metadata"]["topic_mean"]}}))
    old = Explainer.from_pretrained(path, model=tiny_llama[0], tokenizer=tiny_llama[1])
    assert old.vector_spec.site == f"resid_post.{LAYER}" and old.vector_spec.centring == "mean"
    (path / CONFIG_FILE).write_text(json.dumps({**config, "metadata": {}}))
    assert Explainer.from_pretrained(path, model=tiny_llama[0], tokenizer=tiny_llama[1]).vector_spec is None


@pytest.mark.parametrize(("meta", "want"), [
    ({"source": "topics", "site": "resid_post.1", "layer": 1, "mean_subtracted": True, "mean": [0.5] * 64},
     {"source": "topics", "site": "resid_post.1", "layer": 1, "topic_mean": [0.5] * 64}),
    ({"source": "x", "layer": 2, "mean_subtracted": True, "mean": [0.5] * 64},  # no site: no spec, the rest kept
     {"source": "x", "layer": 2, "topic_mean": [0.5] * 64}),
])
def test_train_records_the_datasets_source_layer_site_and_mean(tiny_llama, meta, want):
    """What an explainer records from its dataset is decided in one place: `Explainer.train`
    records what `selfinterp train` recorded (it used to add site and, without a site, the
    source, layer and mean by hand)."""
    from selfinterp_plugins import VectorLabelDataset

    data = VectorLabelDataset(torch.randn(4, 64), [{"label": w} for w in "abcd"], meta)
    explainer = Explainer.create(*tiny_llama, adapter="scalar_affine", template="echo")
    explainer.train(data, config=TrainConfig(epochs=1, batch_size=4, max_steps=1), progress=False)
    assert explainer.metadata == want
    assert (explainer.vector_spec is None) == ("site" not in meta)


@pytest.mark.parametrize("spec", [{"site": "resid_post.1"}, {"source": "x", "site": "resid_mid.1"},
                                  {"source": "x", "site": "resid_post.1", "centring": "median"}, ["x"]])
def test_a_malformed_spec_is_refused_naming_the_file(trained, tiny_llama, tmp_path, spec):
    _, _, _, path = trained
    import shutil

    copy = shutil.copytree(path, tmp_path / "copy")
    config = json.loads((copy / CONFIG_FILE).read_text())
    (copy / CONFIG_FILE).write_text(json.dumps({**config, "vector_spec": spec}))
    with pytest.raises(ArtifactError, match="vector_spec"):
        Explainer.from_pretrained(copy, model=tiny_llama[0], tokenizer=tiny_llama[1])


def test_vector_prompt_is_the_prompt_topic_vectors_read(trained, tokenizer):
    explainer = trained[1]
    assert explainer.vector_prompt("volcano", tokenize=True) == topic_prompt_ids(tokenizer, "volcano")
    text = explainer.vector_prompt("volcano")
    assert "Tell me about volcano." in text and tokenizer(text, add_special_tokens=False)["input_ids"] == \
        topic_prompt_ids(tokenizer, "volcano")


def _raw(explainer, titles, site=None):
    """(N, T, d) activations of the spec's prompts at `site`, one prompt per row (no padding)."""
    site = Site.parse(site or explainer.vector_spec.site)
    return [explainer.backend.read(torch.tensor([explainer.vector_prompt(t, tokenize=True)]), [site])[0][0].float()
            for t in titles]


def test_prepare_vectors_gives_the_training_vector_from_each_input_kind(trained):
    explainer, _, data, _ = trained
    titles = data.labels[:3]
    full = _raw(explainer, titles)  # each (T, d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # right inputs: no warning
        for i, seq in enumerate(full):
            want = data.vectors[i]
            torch.testing.assert_close(explainer.prepare_vectors(seq[-1])[0], want, rtol=0, atol=1e-5)  # (d)
            torch.testing.assert_close(explainer.prepare_vectors(seq[None], site="blocks.1.hook_resid_post")[0], want,
                                       rtol=0, atol=1e-5)  # (1, T, d), TL's name for the site
            torch.testing.assert_close(explainer.prepare_vectors(seq[-1:].numpy(), site="resid_post.1")[0], want,
                                       rtol=0, atol=1e-5)  # (1, d) numpy
        rows = torch.stack([seq[-1] for seq in full])
        torch.testing.assert_close(explainer.prepare_vectors(rows), data.vectors[:3], rtol=0, atol=1e-5)


class _Cache:
    """What prepare_vectors uses of TransformerLens' ActivationCache."""

    def __init__(self, entries):
        self.cache_dict = entries

    def __getitem__(self, key):
        return self.cache_dict[key]


def test_prepare_vectors_reads_the_spec_site_from_an_activation_cache(trained):
    explainer, _, data, _ = trained
    seq = _raw(explainer, data.labels[:1])[0]
    cache = _Cache({"blocks.1.hook_resid_post": seq[None]})
    torch.testing.assert_close(explainer.prepare_vectors(cache)[0], data.vectors[0], rtol=0, atol=1e-5)
    with pytest.raises(VectorError, match="blocks.0.hook_resid_post"):
        explainer.prepare_vectors(cache, site="resid_post.0")


def test_an_explainer_without_a_spec_reads_a_cache_at_the_site_given(tiny_llama):
    """Without a vector_spec (an explainer made, not trained on a dataset) a whole cache is read at
    site=, and without site= the error says to pass one (it was "Cannot read a _Cache as vectors")."""
    model, tok = tiny_llama
    explainer = Explainer.create(model, tok, adapter="scalar_affine", template="echo")
    assert explainer.vector_spec is None
    entry = torch.randn(1, 5, model.config.hidden_size)
    cache = _Cache({"blocks.1.hook_resid_post": entry})
    torch.testing.assert_close(explainer.prepare_vectors(cache, site="blocks.1.hook_resid_post"), entry[:, -1])
    with pytest.raises(VectorError, match="pass site="):
        explainer.prepare_vectors(cache)


def test_prepare_vectors_warns_on_another_site_and_on_vectors_centred_twice(trained):
    explainer, _, data, _ = trained
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explainer.prepare_vectors(_raw(explainer, data.labels[:1], "resid_post.0")[0], site="blocks.0.hook_resid_post")
    assert any("from resid_post.0 but this explainer was trained on resid_post.1" in str(w.message) for w in caught)
    with pytest.warns(UserWarning, match="centred twice"):  # already centred, then centred again
        explainer.prepare_vectors(data.vectors[:2])


def test_prepare_vectors_takes_an_sae_and_refuses_what_is_not_a_vector(trained):
    explainer = trained[0]
    w_dec = torch.randn(10, explainer.backend.d_model)
    sae = types.SimpleNamespace(W_dec=w_dec, cfg=types.SimpleNamespace(metadata=types.SimpleNamespace(
        hook_name="blocks.1.hook_resid_post")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(explainer.prepare_vectors(sae, features=[3, 7]), w_dec[[3, 7]])
    sae.cfg.metadata.hook_name = "blocks.0.hook_resid_pre"
    with pytest.warns(UserWarning, match="from resid_pre.0"):
        explainer.prepare_vectors(sae)
    for bad in ("text", torch.zeros(2, 3, 4, 5), torch.zeros(3, dtype=torch.long)):
        with pytest.raises(VectorError, match="Vectors must be|Cannot read"):
            explainer.prepare_vectors(bad)


def test_vector_prompt_needs_a_spec(tiny_llama):
    with pytest.raises(VectorError, match="no vector_spec"):
        Explainer.create(*tiny_llama).vector_prompt("volcano")


@pytest.mark.parametrize("field, value", [("vector_norm", "abc"), ("vector_norm", float("nan")), ("prompt", 5),
                                          ("position", 1), ("mean_key", ["topic_mean"]), ("prompt_format", "md"),
                                          ("centring", "median"), ("site", "resid_mid.1")])
def test_a_mistyped_vector_spec_field_is_one_line_at_load(field, value):
    """`vector_norm: "abc"` or `prompt: 5` loaded and crashed later, in prepare_vectors or vector_prompt.
    The message has the validation layer's form, naming the file as every other file's does."""
    from selfinterp_plugins.errors import ArtifactError
    from selfinterp_plugins.vector_spec import VectorSpec

    data = {"source": "topic_vectors", "site": "resid_post.1", field: value}
    with pytest.raises(ArtifactError, match=rf"^c\.json: field vector_spec\.{field} .*\(got .*\); re-save the explainer\.$"):
        VectorSpec.from_dict(data, "c.json")


def test_an_sae_features_argument_that_is_not_latent_indices_is_one_line(tiny_llama):
    from selfinterp_plugins import Explainer
    from selfinterp_plugins.errors import VectorError

    class FakeSAE:
        W_dec = torch.randn(4, 64)

    explainer = Explainer.create(*tiny_llama, template="echo")
    # -1 was W_dec[-1] (latent 3), 2.7 was cast to latent 2, True to latent 1, [] and range(3, 1)
    # gave no row at all: each silently another latent (or none), now refused like the rest
    for features in (5, [7], ["a"], [-1], [2.7], [True], [], range(3, 1), "12", torch.tensor([0.5])):
        with pytest.raises(VectorError, match="features= takes latent indices 0..3"):
            explainer.prepare_vectors(FakeSAE(), features=features)
    torch.testing.assert_close(explainer.prepare_vectors(FakeSAE(), features=torch.tensor([3, 0])),
                               FakeSAE.W_dec[[3, 0]])


@pytest.mark.parametrize(("prompt", "why"), [
    ("Tell me about {name}.", "names the field {name}; a prompt fills only {title} (or {topic})"),
    ("Tell me about {0}.", "names the field {0};"),
    ("Tell me about {}.", "names the field {};"),
    ("Tell me about {title.upper}.", "names the field {title.upper};"),
    ("Tell me about {title[0]}.", "names the field {title[0]};"),
    ("Tell me about {title!r}.", "names the field {title!r};"),
    ("Tell me about {title:>9}.", "names the field {title:>9};"),
    ("Tell me about {title", "is not a prompt template (expected '}' before end of string;"),
    ("Tell me about } {title}", "is not a prompt template (Single '}' encountered in format string;"),
    ("Tell me about it.", "has no {title} field, so every topic would get the same prompt"),
])
def test_a_prompt_naming_another_field_is_refused_at_load(prompt, why):
    """A saved vector_spec.prompt of `Tell me about {name}.` loaded, then `vector_prompt` raised
    KeyError ({0}: IndexError, a lone brace: ValueError); one without a field gave every topic the
    same prompt. Now the load is one line naming the file and the field."""
    data = {"source": "topic_vectors", "site": "resid_post.1", "prompt": prompt}
    with pytest.raises(ArtifactError) as caught:
        VectorSpec.from_dict(data, "c.json")
    message = str(caught.value)
    assert message.startswith("c.json: field vector_spec.prompt ") and why in message, message
    assert message.endswith("re-save the explainer.") and "\n" not in message


@pytest.mark.parametrize("prompt", ["Tell me about {topic}.", "{title}", "{{literal}} braces around {title}"])
def test_a_prompt_of_title_or_topic_fields_is_kept(prompt, tokenizer):
    spec = VectorSpec.from_dict({"source": "topic_vectors", "site": "resid_post.1", "prompt": prompt}, "c.json")
    assert spec.prompt == prompt
    from selfinterp_plugins.vector_spec import prompt_text

    assert prompt_text(tokenizer, prompt, "volcano", "raw") == prompt.replace("{topic}", "volcano").replace(
        "{title}", "volcano").replace("{{", "{").replace("}}", "}")


BAD_MEANS = [("abc", "should be a list of numbers"), (5, "should be a list of numbers"),
             ([[0.5] * 64], "should be a list of numbers"), ([True] * 64, "should be a list of numbers"),
             ([], "should be a list of numbers"), ([0.5] * 63, "has 63 values, but the model's width is 64"),
             ([float("nan")] * 64, "holds NaN or infinite values"), (None, "is missing")]


@pytest.mark.parametrize(("mean", "why"), BAD_MEANS)
def test_a_topic_mean_that_is_not_a_vector_of_the_models_width_is_refused_before_the_model(trained, tiny_llama,
                                                                                           tmp_path, mean, why):
    """A centred explainer whose metadata.topic_mean is a string, a scalar, a nested list or
    another width loaded; `prepare_vectors` then raised torch's TypeError or IndexError, or (a
    (1, d) list) broadcast silently. Now the load refuses it, checked against the config's own
    d_model, so `check_pretrained` (what the commands run before loading a model) refuses it too."""
    copy = trained[0].save_pretrained(tmp_path / "copy")  # not trained[3]: an earlier test rewrites its config
    config = json.loads((copy / CONFIG_FILE).read_text())
    assert config["vector_spec"]["centring"] == "mean"
    config["metadata"]["topic_mean"] = mean
    if mean is None:
        del config["metadata"]["topic_mean"]
    (copy / CONFIG_FILE).write_text(json.dumps(config))
    want = rf"^{copy / CONFIG_FILE}: metadata\['topic_mean'\] .*; re-save the explainer \(save_pretrained\) or re-download it\.$"
    with pytest.raises(ArtifactError, match=want) as caught:
        Explainer.from_pretrained(copy, model=tiny_llama[0], tokenizer=tiny_llama[1])
    assert why in str(caught.value)
    with pytest.raises(ArtifactError, match=want):
        Explainer.check_pretrained(copy)


@pytest.mark.parametrize(("mean", "why"), BAD_MEANS[:-1])
def test_prepare_vectors_refuses_a_mean_changed_after_loading(trained, mean, why):
    explainer = trained[1]
    saved = explainer.metadata["topic_mean"]
    explainer.metadata["topic_mean"] = mean
    try:
        if "width" in why:  # a mean of another width than the vectors: the vectors' message
            why = "Vectors have width 64 but the explainer's mean 63"
        with pytest.raises(VectorError) as caught:
            explainer.prepare_vectors(torch.randn(2, 64))
        assert why in str(caught.value)
    finally:
        explainer.metadata["topic_mean"] = saved


@pytest.mark.parametrize("mean", ["abc", 5, [0.5] * 63, [[0.5] * 64]])
def test_training_refuses_a_centred_dataset_whose_mean_is_not_a_vector(tiny_llama, mean):
    """Training copied a dataset meta's `mean` with `list(...)`: an int raised TypeError, a string
    became a list of characters saved as the explainer's mean."""
    from selfinterp_plugins import VectorLabelDataset

    data = VectorLabelDataset(torch.randn(4, 64), [{"label": w} for w in "abcd"],
                              {"source": "topics", "site": "resid_post.1", "mean_subtracted": True, "mean": mean})
    explainer = Explainer.create(*tiny_llama, adapter="scalar_affine", template="echo")
    with pytest.raises(ArtifactError, match=r"^The training dataset is centred, but its meta's 'mean' (should be|has 63)"):
        explainer.train(data, config=TrainConfig(epochs=1, batch_size=4, max_steps=1), progress=False)


@pytest.mark.parametrize("spec, mean", [
    (VectorSpec("topic_vectors", "resid_post.10", "Tell me about {title}.", "chat", "last", "mean", "topic_mean"), [0.5, -1.0]),
    (VectorSpec("sae_lens", "resid_pre.3", None, "raw"), None),
])
def test_to_meta_is_read_back_by_from_meta(spec, mean):
    meta = spec.to_meta(mean)
    assert VectorSpec.from_meta(meta) == spec
    assert meta.get("mean") == mean and meta["layer"] == spec.layer
    assert meta["source"] == ("topics" if spec.source == "topic_vectors" else spec.source)  # as topic_vectors writes it
