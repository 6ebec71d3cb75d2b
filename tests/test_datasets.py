"""VectorLabelDataset: plain files on disk, splits, and refusing broken data."""

from __future__ import annotations

import json

import pytest
import torch

from selfinterp_plugins import VectorLabelDataset
from selfinterp_plugins.datasets import LABELS_FILE, META_FILE, VECTORS_FILE
from selfinterp_plugins.errors import ArtifactError, LabelError, OptionError, VectorError


def make(n=6, d=8):
    vectors = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    splits = ["train", "train", "validation", "test", "train", "validation"]
    records = [{"id": f"r{i}", "label": f"label {i} é", "split": splits[i % len(splits)], "extra": i} for i in range(n)]
    return VectorLabelDataset(vectors, records, {"source": "unit", "layer": 3})


def test_save_load_round_trip(tmp_path):
    data = make()
    path = data.save(tmp_path / "ds")
    assert sorted(p.name for p in path.iterdir()) == sorted([VECTORS_FILE, LABELS_FILE, META_FILE])
    again = VectorLabelDataset.load(path)
    assert torch.equal(again.vectors, data.vectors)
    assert again.records == data.records
    assert again.labels == data.labels and again.ids == data.ids
    assert again.meta == {"source": "unit", "layer": 3, "count": 6, "d_model": 8}
    assert again.d_model == 8 and len(again) == 6
    # plain files any tool can read
    lines = (path / LABELS_FILE).read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["label"] == "label 0 é"
    assert json.loads((path / META_FILE).read_text())["count"] == 6


def test_load_without_meta_file(tmp_path):
    path = make().save(tmp_path / "ds")
    (path / META_FILE).unlink()
    assert VectorLabelDataset.load(path).meta == {"d_model": 8}


def test_ids_default_to_row_numbers():
    data = VectorLabelDataset(torch.zeros(2, 3), [{"label": "a"}, {"label": "b", "id": "x"}])
    assert data.ids == ["0", "x"]
    assert data.meta["d_model"] == 3


def test_split_select_and_head():
    data = make()
    train = data.split("train")
    assert train.ids == ["r0", "r1", "r4"]
    assert torch.equal(train.vectors, data.vectors[[0, 1, 4]])
    assert train.meta == data.meta and train.meta is not data.meta
    assert data.split("validation").ids == ["r2", "r5"]
    assert data.split("test").ids == ["r3"]
    with pytest.raises(ArtifactError, match="'holdout'"):
        data.split("holdout")
    # selections are copies: editing one leaves the original alone
    train.records[0]["label"] = "changed"
    train.vectors[0, 0] = 1e6
    assert data.records[0]["label"] == "label 0 é" and data.vectors[0, 0] != 1e6
    assert data.head(2).ids == ["r0", "r1"]
    assert data.head(None) is data and data.head(100) is data


def test_mismatched_counts():
    with pytest.raises(ArtifactError, match="3 vectors but 2"):
        VectorLabelDataset(torch.zeros(3, 4), [{"label": "a"}, {"label": "b"}])


def test_mismatched_counts_on_disk(tmp_path):
    path = make().save(tmp_path / "ds")
    lines = (path / LABELS_FILE).read_text(encoding="utf-8").splitlines()
    (path / LABELS_FILE).write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    with pytest.raises(ArtifactError, match="6 vectors but 5"):
        VectorLabelDataset.load(path)


@pytest.mark.parametrize("record", [{"label": ""}, {"label": "   "}, {"label": None}, {"label": 5}, {"id": "x"}])
def test_empty_or_missing_label(record):
    with pytest.raises(LabelError):
        VectorLabelDataset(torch.zeros(2, 4), [{"label": "ok"}, record])


def test_vectors_must_be_2d():
    with pytest.raises(VectorError):
        VectorLabelDataset(torch.zeros(4), [{"label": "a"}] * 4)


def test_truncated_labels_line(tmp_path):
    path = make().save(tmp_path / "ds")
    text = (path / LABELS_FILE).read_text(encoding="utf-8")
    (path / LABELS_FILE).write_text(text[: len(text) - 15], encoding="utf-8")  # last line cut mid-record
    with pytest.raises(ArtifactError, match=f"{LABELS_FILE}:6"):
        VectorLabelDataset.load(path)


def test_non_object_labels_line(tmp_path):
    path = make().save(tmp_path / "ds")
    with open(path / LABELS_FILE, "a", encoding="utf-8") as f:
        f.write("[1, 2]\n")
    with pytest.raises(ArtifactError, match="JSON object"):
        VectorLabelDataset.load(path)


@pytest.mark.parametrize("name", [VECTORS_FILE, LABELS_FILE])
def test_missing_file(tmp_path, name):
    path = make().save(tmp_path / "ds")
    (path / name).unlink()
    with pytest.raises(ArtifactError, match="Missing file"):
        VectorLabelDataset.load(path)


def test_missing_directory(tmp_path):
    with pytest.raises(ArtifactError, match="No dataset directory"):
        VectorLabelDataset.load(tmp_path / "nope")


def test_vectors_file_without_vectors_tensor(tmp_path):
    from safetensors.torch import save_file

    path = make().save(tmp_path / "ds")
    save_file({"something_else": torch.zeros(6, 8)}, str(path / VECTORS_FILE))
    with pytest.raises(ArtifactError, match="'vectors'"):
        VectorLabelDataset.load(path)


def test_corrupt_meta_file(tmp_path):
    path = make().save(tmp_path / "ds")
    (path / META_FILE).write_text("{oops")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        VectorLabelDataset.load(path)


def _labels_file(tmp_path, text: str):
    path = make(n=2).save(tmp_path / "ds")
    (path / META_FILE).unlink()  # no commit record: labels.jsonl is read as written here
    (path / LABELS_FILE).write_text(text, encoding="utf-8")
    return path


def test_a_lone_surrogate_in_labels_jsonl_is_refused_naming_the_line(tmp_path):
    """`"\\ud800"` in labels.jsonl decoded to a str holding a lone surrogate: the dataset loaded,
    then training failed in the tokenizer (TypeError) and a save in the writer (UnicodeEncodeError)."""
    path = _labels_file(tmp_path, '{"label": "ok"}\n{"label": "bad \\ud800 label"}\n')
    with pytest.raises(ArtifactError) as caught:
        VectorLabelDataset.load(path)
    assert str(caught.value) == (
        f"{path / LABELS_FILE}:2 holds a lone surrogate in the string 'bad \\\\ud800 label' (an escape such as \\ud800 "
        "without its pair, which no text encoding can write); fix that escape (a pair such as \\ud83d\\ude00 is one "
        "character) or re-save the file.")


def test_a_surrogate_pair_is_one_character_and_loads(tmp_path):
    path = _labels_file(tmp_path, '{"label": "smile \\ud83d\\ude00"}\n{"label": "\\\\ud800 is text here"}\n')
    assert VectorLabelDataset.load(path).labels == ["smile 😀", "\\ud800 is text here"]


def test_a_label_with_a_lone_surrogate_is_refused_in_python():
    with pytest.raises(LabelError, match=r"^Row 1 \(b\) has a label holding a lone surrogate"):
        VectorLabelDataset(torch.zeros(2, 4), [{"id": "a", "label": "fine"}, {"id": "b", "label": "x\ud800"}])


def test_labels_holding_line_separators_survive_a_save(tmp_path):
    """U+2028, U+2029 and U+0085 are kept raw in labels.jsonl (JSON allows them in strings), and
    the reader split lines at them too (`str.splitlines`): a dataset saved with such a label could
    not be loaded back ('labels.jsonl:1 is not valid JSON')."""
    labels = ["a\u2028b", "c\u2029d", "e\x85f", "g\x1ch"]
    path = VectorLabelDataset(torch.zeros(4, 4), [{"label": label} for label in labels]).save(tmp_path / "ds")
    assert VectorLabelDataset.load(path).labels == labels


def rows(n, **fields):
    return VectorLabelDataset(torch.arange(n * 3, dtype=torch.float32).reshape(n, 3),
                              [dict({"id": f"r{i}", "label": f"w{i}"}, **fields) for i in range(n)], {"site": "resid_post.1"})


def test_train_test_split_marks_every_row_and_keeps_the_rest():
    data = rows(96, split="test", note="kept")
    marked = data.train_test_split(test_size=0.1, seed=0)
    # ceil(0.1 x 96) = ceil(9.6) = 10 held out, as HF datasets' train_test_split counts
    assert len(marked.split("validation")) == 10 and len(marked.split("train")) == 86
    assert {r["split"] for r in marked.records} == {"train", "validation"}  # the old 'test' replaced
    assert [r["note"] for r in marked.records] == ["kept"] * 96 and marked.ids == data.ids
    assert torch.equal(marked.vectors, data.vectors) and marked.meta == data.meta
    assert [r["split"] for r in data.records] == ["test"] * 96  # the original is left alone
    assert len(rows(10).train_test_split(test_size=3, test_split="test").split("test")) == 3  # a count
    assert len(rows(10).train_test_split(test_size=0.01).split("validation")) == 1  # ceil(0.1) = 1


def test_train_test_split_is_a_function_of_the_seed():
    data = rows(50)
    held = [data.train_test_split(test_size=0.2, seed=seed).split("validation").ids for seed in (0, 0, 1)]
    assert held[0] == held[1] and held[0] != held[2] and len(held[0]) == 10


def test_a_marked_split_survives_a_save(tmp_path):
    marked = rows(20).train_test_split(test_size=0.25, seed=3)
    again = VectorLabelDataset.load(marked.save(tmp_path / "d"))
    assert again.split("validation").ids == marked.split("validation").ids and len(again.split("validation")) == 5


@pytest.mark.parametrize("bad", [0, 1.0, 0.0, -0.1, 1.5, float("nan"), float("inf"), True, 10, 11, -2, "0.1", None, 0.95])
def test_train_test_split_refuses_a_size_that_leaves_a_side_empty_in_one_line(bad):
    with pytest.raises(OptionError, match=r"^test_size= takes a fraction between 0 and 1 or a row count from 1 to 9") as err:
        rows(10).train_test_split(test_size=bad)  # 0.95 x 10 rounds up to all 10 rows
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("call, message", [
    (lambda d: d.train_test_split(test_split="train"), "test_split= names the held-out part"),
    (lambda d: d.train_test_split(test_split=""), "test_split= names the held-out part"),
    (lambda d: d.train_test_split(seed=0.5), "seed= takes a whole number"),
    (lambda d: d.select([0]).train_test_split(), "at least 2 rows to be split, this one has 1"),
])
def test_train_test_split_refuses_other_nonsense(call, message):
    with pytest.raises(OptionError, match=message):
        call(rows(10))


def test_a_missing_validation_split_names_the_splits_there_and_the_helper():
    with pytest.raises(ArtifactError, match=r"no rows in split 'validation' \(its rows: 96 with no 'split' field\); "
                                            r"mark them with data = data.train_test_split\(test_size=0.1\)"):
        rows(96).split("validation")
    mixed = VectorLabelDataset(torch.zeros(3, 2), [{"label": "a", "split": "train"}, {"label": "b", "split": "train"},
                                                    {"label": "c"}])
    with pytest.raises(ArtifactError, match=r"\(its rows: 2 'train', 1 with no 'split' field\)"):
        mixed.split("validation")
