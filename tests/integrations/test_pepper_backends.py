"""An imported selfie-adapters file (Pepper et al.'s format) explains the same on every backend:
hf, nnsight (here and rehearsing NDIF, `remote="local"`) and TransformerLens, on a tiny
Llama-3.1-shaped model with the real Llama 3 tokenizer; greedy labels identical, and the size of
what one remote request carries printed (the vectors and the adapter's tensors, never the model)."""

from __future__ import annotations

import tempfile
import warnings

import pytest
import torch

from selfinterp_plugins import Explainer, Sampling
from selfinterp_plugins.models import tiny_family_model

from selfie_adapter_files import reference_state, write_reference_file

pytest.importorskip("nnsight")
pytest.importorskip("transformer_lens")

SAMPLING = Sampling(max_new_tokens=8)


@pytest.fixture(scope="module")
def adapter_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pepper") / "goodfire-sae-scalar-affine.safetensors"
    state = reference_state("scalar_affine", 64)
    state["log_scale"] = torch.tensor([2.0])  # a soft token of norm e² ≈ 7, the size of the model's embeddings
    write_reference_file(path, "scalar_affine", state, "config_json", 64)
    return path


@pytest.fixture(scope="module")
def reference_labels(adapter_file, tiny_llama31):
    model, tok = tiny_llama31
    explainer = Explainer.from_pretrained(adapter_file, model=model, tokenizer=tok)
    vectors = torch.randn(3, 64, generator=torch.Generator().manual_seed(4)) * 5
    return vectors, explainer.explain(vectors, scales=(1.0, 3.4), sampling=SAMPLING, progress=False)


def labels_of(records):
    return [(r["id"], r["scale"], r["text"]) for r in records]


def test_nnsight_here_and_rehearsing_ndif_gives_hfs_labels(adapter_file, reference_labels):
    from nnsight import TransformersModel

    from selfinterp_nnsight.requests import recording_requests

    vectors, expected = reference_labels
    model, tok = tiny_family_model("llama3.1")  # the session's model's weights, in a copy the wrapper may change
    lm = TransformersModel(model, tokenizer=tok)
    explainer = Explainer.from_pretrained(adapter_file, model=lm)
    assert explainer.backend.name == "nnsight"
    assert labels_of(explainer.explain(vectors, scales=(1.0, 3.4), sampling=SAMPLING, progress=False)) == labels_of(expected)
    with recording_requests() as blobs:
        remote = explainer.explain(vectors, scales=(1.0, 3.4), sampling=SAMPLING, progress=False, remote="local")
    assert labels_of(remote) == labels_of(expected)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"\nnnsight remote='local': {len(blobs)} request(s) of {[len(b) for b in blobs]} bytes "
          f"(the model's weights: {weights:,} bytes, not sent)")
    assert len(blobs) == 1 and len(blobs[0]) < weights / 10
    assert explainer.adapter.bias.detach().numpy().tobytes() in blobs[0]


def test_transformer_lens_gives_hfs_labels(adapter_file, reference_labels):
    from transformer_lens.model_bridge import TransformerBridge

    vectors, expected = reference_labels
    model, tok = tiny_family_model("llama3.1")  # the session's model's weights, in a copy the wrapper may change
    with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(directory)
        tok.save_pretrained(directory)
        bridge = TransformerBridge.boot_transformers(directory, hf_model=model, tokenizer=tok)
    explainer = Explainer.from_pretrained(adapter_file, model=bridge, tokenizer=tok)
    assert explainer.backend.name == "transformer_lens"
    assert explainer.prompt_ids.tolist()[:2] == [128000, 128006]  # one BOS: the reference's template carries its own
    assert labels_of(explainer.explain(vectors, scales=(1.0, 3.4), sampling=SAMPLING, progress=False)) == labels_of(expected)
