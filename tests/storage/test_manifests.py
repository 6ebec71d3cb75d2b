"""storage/_manifests.py: the digests' byte layouts (checked against hashlib fed by hand), the first
difference of two runs, and the one-line refusals to resume another run."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch

from selfinterp_plugins.errors import RunMismatchError
from selfinterp_plugins.storage._manifests import check_output_run, check_same_run, first_difference, sha256_hex


def test_sha256_hex_feeds_bytes_text_and_tensors_in_order():
    expected = hashlib.sha256()
    expected.update(b"\x00raw")
    expected.update("é".encode())
    expected.update(struct.pack("<3f", 1.5, -2.0, 0.25))  # a float64 tensor is hashed as float32
    expected.update(struct.pack("<2q", 7, -1))             # an int64 tensor as it is
    expected.update(struct.pack("<4f", 1, 3, 2, 4))        # a transposed view as its contiguous values
    parts = [b"\x00raw", "é", torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64), torch.tensor([7, -1]),
             torch.tensor([[1.0, 2.0], [3.0, 4.0]]).T]
    assert sha256_hex(parts) == expected.hexdigest()
    assert sha256_hex([]) == hashlib.sha256().hexdigest()


def test_first_difference_descends_and_reads_kind_and_name_first():
    assert first_difference({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 2}}) is None
    assert first_difference({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}}) == ("b.c", 2, 3)
    assert first_difference({"x": 1, "kind": "a"}, {"x": 2, "kind": "b"}) == ("kind", "a", "b")
    assert first_difference({"x": 1, "name": "a"}, {"x": 2, "name": "b"}) == ("name", "a", "b")
    assert first_difference({"gone": 1}, {}) == ("gone", 1, None)  # a key only the old run had
    assert first_difference({"a": 1}, {"a": 1, "new": 2}) == ("new", None, 2)
    assert first_difference(1, 2, "lr") == ("lr", 1, 2)


def test_check_same_run_names_the_setting_its_option_and_how_to_start_afresh(tmp_path):
    ckpt = tmp_path / "state.json"
    check_same_run(ckpt, None, {"lr": 1})  # a checkpoint from before manifests resumes
    check_same_run(ckpt, {"lr": 1}, None)
    check_same_run(ckpt, {"lr": 1}, {"lr": 1})
    with pytest.raises(RunMismatchError) as err:
        check_same_run(ckpt, {"lr": 0.01, "epochs": 2}, {"lr": 0.001, "epochs": 2})
    assert str(err.value) == (f"{ckpt} is the checkpoint of a run with other settings: lr (--lr) was 0.01, this run "
                              f"has 0.001; to start afresh delete {ckpt} or choose another --out (or rerun with the "
                              "old settings to resume).")
    with pytest.raises(RunMismatchError) as err:  # a nested key takes the option of its first part
        check_same_run(ckpt, {"site": {"layer": 3}}, {"site": {"layer": 4}})
    assert "site.layer (--site) was 3, this run has 4;" in str(err.value)
    with pytest.raises(RunMismatchError) as err:  # a plugin's own options, and a key without one
        check_same_run(ckpt, {"rank": 2, "z": "a"}, {"rank": 2, "z": "b"}, options={"rank": "--rank"})
    assert 'settings: z was "a", this run has "b";' in str(err.value)


def test_check_output_run_records_then_refuses_another_run(tmp_path):
    out = tmp_path / "labels.jsonl"
    manifest = tmp_path / "labels.jsonl.run.json"
    run = {"explainer": "abc", "sampling": {"temperature": 0.0, "top_p": 1.0, "seed": 3}}
    check_output_run(out, run)
    assert json.loads(manifest.read_text()) == run
    check_output_run(out, run)  # the same run resumes
    with pytest.raises(RunMismatchError) as err:
        check_output_run(out, {**run, "explainer": "def"})
    assert str(err.value) == (f"{out} holds labels of another explainer (its weights, template or site differ); resume "
                              f"it with that explainer, or choose another output (or delete {out} and "
                              "labels.jsonl.run.json).")
    with pytest.raises(RunMismatchError) as err:
        check_output_run(out, {**run, "sampling": {**run["sampling"], "temperature": 0.7}})
    assert str(err.value) == (f"{out} was written with sampling temperature=0.0, this run asks 0.7; rerun with "
                              f"temperature=0.0 (--temperature 0.0), or choose another output (or delete {out} and "
                              "labels.jsonl.run.json).")
    with pytest.raises(RunMismatchError) as err:  # a field without a flag names none
        check_output_run(out, {**run, "sampling": {**run["sampling"], "seed": 4}})
    assert str(err.value).startswith(f"{out} was written with sampling seed=3, this run asks 4; rerun with seed=3, or ")
    other = {"explainer": "zzz", "sampling": {}}
    check_output_run(out, other, has_records=False)  # a leftover manifest of a deleted output is replaced
    assert json.loads(manifest.read_text()) == other
