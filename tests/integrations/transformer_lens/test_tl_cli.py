"""`selfinterp train / explain / eval / vectors topics --backend transformer_lens` on a tiny model
saved to disk: the CLI wraps the loaded transformers model in a TransformerBridge (offline) and gives
hf's losses, labels and vectors (the tolerances of test_smollm2_bridge.py)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformer_lens")

from selfinterp_plugins import VectorLabelDataset  # noqa: E402
from selfinterp_plugins.cli_options import load_backend  # noqa: E402
from selfinterp_plugins.models import load_tokenizer  # noqa: E402

from cli_models import evaluate, explain, ok, one_line_error, save_dataset, save_tiny_model, train  # noqa: E402

FLAGS = ["--backend", "transformer_lens"]


pytestmark = pytest.mark.usefixtures("fresh_plugins")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tl-cli")
    return root, save_tiny_model(root / "tiny"), save_dataset(root / "data")


def test_train_explain_eval_equal_hf(files, capsys):
    """Loss within rtol 1e-4; after 3 Adam steps the adapters agree within 1e-2 (Adam divides by the
    gradients' running RMS, so 1e-5-level gradient differences move nearly-zero components by a
    fraction of the learning rate); the hf-trained explainer gives hf's labels exactly."""
    root, model, data = files
    hf_out, hf_adapter = train(capsys, model, data, root / "hf")
    out, adapter = train(capsys, model, data, root / "tl", *FLAGS)
    assert out["steps"] == hf_out["steps"] == 3
    torch.testing.assert_close(torch.tensor(out["validation_loss"]), torch.tensor(hf_out["validation_loss"]),
                               rtol=1e-4, atol=1e-5)
    for key, tensor in hf_adapter.items():
        torch.testing.assert_close(adapter[key], tensor, rtol=0, atol=1e-2, msg=key)
    hf_labels = explain(capsys, root / "hf", model, data, root / "hf.jsonl")
    assert explain(capsys, root / "hf", model, data, root / "tl.jsonl", *FLAGS) == hf_labels
    assert evaluate(capsys, root / "hf", model, data, *FLAGS) == evaluate(capsys, root / "hf", model, data)


def test_vectors_topics_equal_hf(files, capsys):
    root, model, _ = files
    for name, flags in (("hf", []), ("tl", FLAGS)):
        ok(capsys, "vectors", "topics", "--model", model, "--layer", "1", "--limit", "4", "--out", str(root / f"v-{name}"),
           *flags)
    expected, got = (VectorLabelDataset.load(root / f"v-{name}" / "layer1") for name in ("hf", "tl"))
    assert got.labels == expected.labels
    torch.testing.assert_close(got.vectors, expected.vectors, rtol=0, atol=1e-4)


def test_the_helper_builds_a_bridge_with_the_models_own_tokenizer(files):
    _, model, _ = files
    backend = load_backend(model, "transformer_lens")
    assert backend.name == "transformer_lens" and type(backend.model).__name__ == "TransformerBridge"
    text = "Tell me about volcanoes."
    assert backend.tokenizer(text)["input_ids"] == load_tokenizer(model)(text)["input_ids"]


def test_remote_is_refused_for_transformer_lens(files, capsys):
    root, model, data = files
    line = one_line_error(capsys, "train", data, "--model", model, *FLAGS, "--remote", "local", "--out", str(root / "r"))
    assert "--remote local needs --backend nnsight" in line
