"""`selfinterp train / explain / eval / vectors topics --backend nnsight [--remote local]` on a tiny
model saved to disk give hf's losses, adapters and labels (the tolerances of
test_nnsight_backend.py); `--remote local` really goes through nnsight's request serialiser, and
`--remote ndif` without an API key stops with one line before any request."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("nnsight")

from selfinterp_nnsight.backend import NNsightBackend  # noqa: E402
from selfinterp_nnsight.requests import recording_requests  # noqa: E402
from selfinterp_plugins import VectorLabelDataset  # noqa: E402
from selfinterp_plugins.cli_options import load_backend  # noqa: E402

from cli_models import evaluate, explain, ok, one_line_error, save_dataset, save_tiny_model, train  # noqa: E402

BACKENDS = {"nnsight": ["--backend", "nnsight"], "nnsight-rehearsed": ["--backend", "nnsight", "--remote", "local"]}


pytestmark = pytest.mark.usefixtures("fresh_plugins")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnsight-cli")
    return root, save_tiny_model(root / "tiny"), save_dataset(root / "data")


def test_train_explain_eval_equal_hf(files, capsys):
    root, model, data = files
    hf_out, hf_adapter = train(capsys, model, data, root / "hf")
    hf_labels = explain(capsys, root / "hf", model, data, root / "hf.jsonl")
    hf_eval = evaluate(capsys, root / "hf", model, data)
    assert hf_out["steps"] == 3 and len(hf_labels) == 20 and hf_eval["n"] == 4
    for name, flags in BACKENDS.items():
        with recording_requests() as requests:
            out, adapter = train(capsys, model, data, root / name, *flags)
        assert bool(requests) == (name == "nnsight-rehearsed"), name  # the rehearsal serialises every request
        assert out["steps"] == hf_out["steps"]
        torch.testing.assert_close(torch.tensor(out["validation_loss"]), torch.tensor(hf_out["validation_loss"]),
                                   rtol=1e-4, atol=1e-5, msg=name)
        for key, tensor in hf_adapter.items():
            torch.testing.assert_close(adapter[key], tensor, rtol=1e-4, atol=1e-6, msg=f"{name} {key}")
        # the hf-trained explainer, run through this backend
        assert explain(capsys, root / "hf", model, data, root / f"{name}.jsonl", *flags) == hf_labels, name
        assert evaluate(capsys, root / "hf", model, data, *flags) == hf_eval, name


def test_vectors_topics_equal_hf(files, capsys):
    root, model, _ = files
    ok(capsys, "vectors", "topics", "--model", model, "--layer", "1", "--limit", "4", "--out", str(root / "v-hf"))
    expected = VectorLabelDataset.load(root / "v-hf" / "layer1")
    for name, flags in BACKENDS.items():
        ok(capsys, "vectors", "topics", "--model", model, "--layer", "1", "--limit", "4", "--out", str(root / f"v-{name}"),
           *flags)
        got = VectorLabelDataset.load(root / f"v-{name}" / "layer1")
        assert got.labels == expected.labels
        torch.testing.assert_close(got.vectors, expected.vectors, rtol=0, atol=1e-5, msg=name)


def test_the_helper_builds_the_nnsight_backend(files):
    _, model, _ = files
    here = load_backend(model, "nnsight")
    assert isinstance(here, NNsightBackend) and here.remote is False and here.is_local
    assert load_backend(model, "nnsight", "local").remote == "local"
    remote_only = load_backend(model, "nnsight", "ndif")  # a local directory: config and tokenizer only
    assert remote_only.remote is True and not remote_only.is_local
    assert load_backend(model, "nnsight", "https://ndif.example.org").remote == "https://ndif.example.org"


def test_remote_ndif_without_an_api_key_is_one_line(files, capsys, monkeypatch):
    from nnsight import CONFIG

    root, model, data = files
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with recording_requests() as requests:
        line = one_line_error(capsys, "train", data, "--model", model, "--backend", "nnsight", "--remote", "ndif",
                              "--out", str(root / "ndif"))
    assert "No NDIF API key" in line and not requests
    monkeypatch.setattr(CONFIG.API, "APIKEY", "sk-test")  # with a key: the local directory is what NDIF cannot run
    with recording_requests() as requests:
        line = one_line_error(capsys, "train", data, "--model", model, "--backend", "nnsight", "--remote", "ndif",
                              "--out", str(root / "ndif"))
    assert "local path" in line and "hub id" in line and not requests


def test_a_remote_value_nnsight_does_not_take(files, capsys):
    root, model, data = files
    line = one_line_error(capsys, "explain", "shipped", "--vectors", data, "--model", model, "--backend", "nnsight",
                          "--remote", "yes", "--output", str(root / "x.jsonl"))
    assert "--remote takes off, local, ndif or an NDIF host URL" in line
