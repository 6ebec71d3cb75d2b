"""The selfie-adapters label file (the paper's Goodfire 8B SAE labels) into a dataset with the
paper's split, on a tiny SAE-Lens SAE and a small file in the same format (its first entries are
the real file's first three latents; the expected rows are written out by hand from
`prepare_sae_training_data.py`'s rules: first label, split kept, no label -> left out)."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from selfinterp_plugins import VectorLabelDataset
from selfinterp_plugins.errors import ArtifactError, LabelError

from cli_models import ok, refused
from sae_fixtures import random_sae

GOODFIRE_META = {"dataset_name": "Goodfire/Llama-3.1-8B-Instruct-SAE-l19", "layer": 1, "source": "Goodfire",
                 "vector_type": "sae_decoder"}
ENTRIES = [
    {"index": 1, "labels": ["Syntactical special characters and delimiters in programming contexts"], "split": "train"},
    {"index": 2, "labels": ["The Russian word состав (composition/compilation) and its variations"], "split": "train"},
    {"index": 3, "labels": ["Syntactical markers that introduce descriptions or explanations"], "split": "val"},
    {"index": 5, "labels": ["first label", "a second label, not used"], "split": "val"},
    {"index": 7, "labels": []},  # no label: left out
    {"index": 9, "labels": ["no split given"]},  # -> train
]


def write_labels(path, entries=ENTRIES, meta=GOODFIRE_META):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump([{"metadata": meta, "vectors": entries}], f)
    return path


@pytest.fixture
def sae():
    return random_sae(64, d_sae=16, hook="blocks.1.hook_resid_post")


def test_the_label_file_becomes_a_dataset_with_the_papers_split(sae, tmp_path):
    from selfinterp_sae_lens.selfie_labels import selfie_labels_dataset

    data = selfie_labels_dataset(sae, write_labels(tmp_path / "labels.json.gz"))
    assert [(r["id"], r["split"]) for r in data.records] == [("1", "train"), ("2", "train"), ("3", "validation"),
                                                             ("5", "validation"), ("9", "train")]
    assert data.records[3]["label"] == "first label" and data.records[1]["label"].startswith("The Russian word состав")
    assert torch.equal(data.vectors, sae.W_dec.detach()[[1, 2, 3, 5, 9]])
    assert data.meta["labels_dataset"] == "Goodfire/Llama-3.1-8B-Instruct-SAE-l19" and data.meta["site"] == "resid_post.1"
    assert len(data.split("validation")) == 2


@pytest.mark.parametrize("entries,meta,error,match", [
    ([{"index": 16, "labels": ["x"], "split": "train"}], GOODFIRE_META, LabelError, "labels latent 16, but this SAE has 16"),
    (ENTRIES, {**GOODFIRE_META, "layer": 19}, ArtifactError, "layer-19 SAE; this SAE reads resid_post.1"),
    ([{"index": 1, "labels": ["x"], "split": "test"}], GOODFIRE_META, LabelError, "neither 'train' nor 'val'"),
    ([{"index": "1", "labels": ["x"]}], GOODFIRE_META, LabelError, "no integer 'index'"),
    ([{"index": 1, "labels": "x"}], GOODFIRE_META, LabelError, "should be a list of non-empty strings"),
    ([{"index": 1, "labels": ["x"]}, {"index": 1, "labels": ["y"]}], GOODFIRE_META, LabelError, "repeated"),
    ([{"index": 1, "labels": []}], GOODFIRE_META, ArtifactError, "labels no latent"),
], ids=["past-the-sae", "other-layer", "bad-split", "bad-index", "bad-labels", "repeated", "empty"])
def test_a_file_that_cannot_be_this_saes_is_one_line(entries, meta, error, match, sae, tmp_path):
    from selfinterp_sae_lens.selfie_labels import selfie_labels_dataset

    with pytest.raises(error, match=match) as caught:
        selfie_labels_dataset(sae, write_labels(tmp_path / "labels.json.gz", entries, meta))
    assert "\n" not in str(caught.value)


def test_a_truncated_or_foreign_file_is_refused(sae, tmp_path):
    from selfinterp_sae_lens.selfie_labels import selfie_labels_dataset

    path = write_labels(tmp_path / "labels.json.gz")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ArtifactError, match="not a complete gzip file"):
        selfie_labels_dataset(sae, path)
    (tmp_path / "other.json").write_text(json.dumps({"1": "a Goodfire mapping, not the training format"}))
    with pytest.raises(ArtifactError, match="not a selfie-adapters label file"):
        selfie_labels_dataset(sae, tmp_path / "other.json")


def test_the_cli_makes_the_papers_sae_training_set_in_one_command(sae, tmp_path, capsys):
    sae.save_model(tmp_path / "sae")
    labels = write_labels(tmp_path / "goodfire_8b_sae_labels.json.gz")
    out = ok(capsys, "sae", "import-labels", str(labels), "--sae", str(tmp_path / "sae"), "--out", str(tmp_path / "ds"))
    assert json.loads(out) == {"latents": 5, "train": 3, "validation": 2, "saved": str(tmp_path / "ds")}
    assert VectorLabelDataset.load(tmp_path / "ds").ids == ["1", "2", "3", "5", "9"]
    bad = write_labels(tmp_path / "bad.json.gz", meta={**GOODFIRE_META, "layer": 19})
    line = refused(capsys, "sae", "import-labels", str(bad), "--sae", str(tmp_path / "sae"), "--out", str(tmp_path / "x"))
    assert "layer-19 SAE" in line and not (tmp_path / "x").exists()
