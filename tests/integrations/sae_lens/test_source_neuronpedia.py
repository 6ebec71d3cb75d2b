"""SAE features as vectors and Neuronpedia explanations: read in every published shape, matched
to latents, malformed rows refused with the row named, nothing dropped, written back."""

from __future__ import annotations

import csv
import gzip
import json

import pytest
import torch

from selfinterp_plugins.errors import ArtifactError, BackendError, LabelError, VectorError
from selfinterp_sae_lens.neuronpedia import (  # noqa: E402
    labelled_dataset,
    read_explanations,
    split_features,
    write_explanations,
)
from selfinterp_sae_lens.source import build_sae_dataset, feature_vectors, load_sae, sae_dataset, sae_site  # noqa: E402

from sae_fixtures import random_sae


def np_rows(indices, model="tiny", sae_id="1-res-test"):
    return [{"modelId": model, "layer": sae_id, "index": str(i), "description": f"feature {i} words",
             "explanationModelName": "gpt-4o-mini", "typeName": "oai_token-act-pair", "authorId": "x"} for i in indices]


def test_decoder_rows_site_and_saved_directory(tmp_path):
    sae = random_sae(d_in=64, d_sae=16)
    assert sae_site(sae).name == "resid_post.1"
    assert torch.equal(feature_vectors(sae, [3, 5]), sae.W_dec.detach()[[3, 5]])
    sae.save_model(tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    assert torch.equal(feature_vectors(loaded), feature_vectors(sae))
    data = sae_dataset(loaded, {2: "two", 7: "seven"})
    assert data.ids == ["2", "7"] and data.meta["layer"] == 1 and data.meta["site"] == "resid_post.1"
    assert torch.equal(data.vectors[1], sae.W_dec.detach()[7])
    assert build_sae_dataset(sae=str(tmp_path / "sae"), labels={"4": "four"}).labels == ["four"]


def test_source_errors(tmp_path):
    sae = random_sae(d_in=64, d_sae=16)
    with pytest.raises(VectorError, match="outside this SAE's 16 latents"):
        feature_vectors(sae, [16])
    with pytest.raises(VectorError, match="repeat"):
        feature_vectors(sae, [1, 1])
    with pytest.raises(ArtifactError, match="cfg.json"):
        load_sae(tmp_path)
    with pytest.raises(BackendError, match="not a residual-stream site"):
        sae_site(random_sae(d_in=64, hook="blocks.1.attn.hook_z"))


@pytest.mark.parametrize("kind", ["json", "jsonl", "csv", "jsonl.gz"])
def test_read_every_published_shape(tmp_path, kind):
    rows = np_rows([0, 5, 5, 9])
    path = tmp_path / f"explanations.{kind}"
    if kind == "json":
        path.write_text(json.dumps(rows))
    elif kind == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows)
        path.write_bytes(gzip.compress(text.encode()) if kind.endswith("gz") else text.encode())
    explanations = read_explanations(path)
    assert [e.index for e in explanations] == [0, 5, 5, 9]
    data = labelled_dataset(random_sae(d_in=64, d_sae=16), explanations)
    # both explanations of latent 5 are kept, under distinct ids, with the same vector
    assert data.ids == ["0", "5", "5.1", "9"]
    assert torch.equal(data.vectors[1], data.vectors[2])
    assert data.meta["neuronpedia_sae"] == "1-res-test" and data.meta["skipped_other_sae"] == 0


@pytest.mark.parametrize("bad, message", [
    ({"modelId": "tiny", "layer": "x", "description": "no index"}, "row 2 has no 'index'"),
    ({"modelId": "tiny", "layer": "x", "index": "seven", "description": "d"}, "row 2 has index 'seven'"),
    ({"modelId": "tiny", "layer": "x", "index": "3", "description": "  "}, r"row 2 \(index 3\) has an empty"),
    (["not", "an", "object"], "row 2 is not an object"),
])
def test_malformed_rows_are_named_not_dropped(tmp_path, bad, message):
    path = tmp_path / "e.json"
    path.write_text(json.dumps([np_rows([1])[0], bad]))
    with pytest.raises(LabelError, match=message):
        read_explanations(path)


def test_unmatched_and_mixed_rows(tmp_path):
    sae = random_sae(d_in=64, d_sae=16)
    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in np_rows([1, 99])))
    with pytest.raises(LabelError, match="Row 2 explains latent 99, but this SAE has 16 latents"):
        labelled_dataset(sae, read_explanations(path))
    mixed = np_rows([1, 2]) + np_rows([3], sae_id="2-res-test")
    path.write_text("".join(json.dumps(r) + "\n" for r in mixed))
    with pytest.raises(ArtifactError, match="mixes explanations of 2 SAEs"):
        labelled_dataset(sae, read_explanations(path))
    data = labelled_dataset(sae, read_explanations(path), sae_id="1-res-test")
    assert data.ids == ["1", "2"] and data.meta["skipped_other_sae"] == 1  # counted, not hidden
    path.write_text("{not json\n")
    with pytest.raises(ArtifactError, match="line 1 is not valid JSON"):
        read_explanations(path)
    path.with_suffix(".txt").write_text("x")
    with pytest.raises(ArtifactError, match=r"\.json, \.jsonl or \.csv"):
        read_explanations(path.with_suffix(".txt"))


def test_write_round_trip_and_splits(tmp_path):
    records = [{"id": "4", "scale": 1.0, "label": "ünïcode \"quoted\" label"}, {"id": "9", "scale": 2.0, "label": "b"}]
    for name in ("out.json", "out.jsonl"):
        path = write_explanations(records, tmp_path / name, "tiny", "1-res-test", "selfinterp:test")
        back = read_explanations(path)
        assert [(e.index, e.description, e.model_id, e.sae_id) for e in back] == [
            (4, records[0]["label"], "tiny", "1-res-test"), (9, "b", "tiny", "1-res-test")]
    splits = split_features([5, 1, 1, 3, 9, 7, 2, 8, 6, 4], seed=0)
    assert sorted(splits) == list(range(1, 10)) and list(splits.values()).count("train") == 7
    assert splits == split_features(range(1, 10), seed=0)


@pytest.mark.parametrize("features, match", [
    ([2.5], "2.5 is not a latent number"),         # was int(2.5): latent 2's row
    ([True], "True is not a latent number"),       # was latent 1
    ([3, "x"], "'x' is not a latent number"),
    ([-1], "-1 is outside this SAE's 16 latents"),
    ([16], "16 is outside this SAE's 16 latents"),
    ([], "The feature selection is empty"),        # was no latent, and a run that did nothing
    (range(5, 2), "The feature selection is empty"),
    ("3", "takes a list or range"),
])
def test_a_selection_that_names_another_latent_or_none_is_refused(features, match):
    sae = random_sae(d_in=64, d_sae=16)
    with pytest.raises(VectorError, match=match):
        feature_vectors(sae, features)


def test_whole_numbers_of_any_integer_type_are_latents():
    import numpy as np

    sae = random_sae(d_in=64, d_sae=16)
    assert torch.equal(feature_vectors(sae, [np.int64(3), torch.tensor(4), "5"]), sae.W_dec.detach()[[3, 4, 5]])


@pytest.mark.parametrize("spec", [" ", "", "5:2", "3:3", "-1", "-2:3", "3,,4", "1:2:3", "2.5", "a:b"])
def test_a_features_option_naming_no_latent_is_one_line(spec):
    """`sae label --features " "` (or `5:2`) labelled nothing and exited 0."""
    from selfinterp_sae_lens.cli import parse_features

    with pytest.raises(VectorError, match=r"(select no latent|Cannot read features)"):
        parse_features(spec)


def test_a_features_option_names_its_latents():
    from selfinterp_sae_lens.cli import parse_features

    assert parse_features("all") is None and parse_features(None) is None
    assert parse_features("0:3") == [0, 1, 2] and parse_features(":2") == [0, 1] and parse_features(" 3, 17 ") == [3, 17]


def test_an_export_reads_back_through_the_librarys_reader(tmp_path):
    """Neuronpedia export -> `read_explanations` -> `labelled_dataset`, in both formats: an empty label
    was written as an empty description, which the reader then refused (LabelError); a `.csv` or
    `.gz` name got JSON inside that the reader could not read. Empty labels are now left out with
    their count said, and only names the reader reads are written."""
    sae = random_sae(d_in=64, d_sae=16)
    records = [{"id": "4", "feature": 4, "scale": 1.0, "label": "rivers"}, {"id": "5", "feature": 5, "scale": 1.0, "label": ""},
               {"id": "6", "feature": 6, "scale": 2.0, "label": "  "}, {"id": "9", "feature": 9, "scale": 1.0, "label": " ök "}]
    for name in ("out.json", "out.jsonl"):
        with pytest.warns(UserWarning, match=r"2 of 4 labels are empty and left out"):
            path = write_explanations(records, tmp_path / name, "tiny", "1-res-test", "selfinterp:test")
        back = read_explanations(path)
        assert [(e.index, e.description, e.model_id, e.sae_id) for e in back] == [
            (4, "rivers", "tiny", "1-res-test"), (9, "ök", "tiny", "1-res-test")]
        data = labelled_dataset(sae, back, "tiny", "1-res-test")
        assert data.ids == ["4", "9"] and torch.equal(data.vectors[1], sae.W_dec.detach()[9])
    for name in ("out.csv", "out.json.gz", "out"):
        with pytest.raises(ArtifactError, match="written as .json or .jsonl"):
            write_explanations(records, tmp_path / name, "tiny", "1-res-test", "selfinterp:test")
        assert not (tmp_path / name).exists()
    with pytest.raises(LabelError, match="Every one of the 2 labels is empty"):
        write_explanations(records[1:3], tmp_path / "none.json", "tiny", "1-res-test", "selfinterp:test")


def test_a_lone_surrogate_in_an_explanation_is_refused_and_a_line_separator_kept(tmp_path):
    """A JSONL export's description holding `\\ud800` loaded (then failed when tokenised or written);
    one holding a raw U+2028 was cut in two by `splitlines` ('line 1 is not valid JSON')."""
    row = {"modelId": "m", "layer": "s", "index": 3, "description": "a\u2028b"}
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert [e.description for e in read_explanations(path)] == ["a\u2028b"]
    path.write_text(json.dumps({**row, "description": "x\ud800"}) + "\n")
    with pytest.raises(ArtifactError, match=r"e\.jsonl line 1 holds a lone surrogate"):
        read_explanations(path)
