"""`selfinterp dit import` on strangers' files: every bad input is one line with the fix (exit 2),
nothing in a pickle runs, nothing half-written is left, and `dit ask` / `dit eval` work on what it
imported. The files are written as the reference writes them (`tests/dit_published_files.py`)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil

import pytest
import torch

pytest.importorskip("peft")

from dit_published_files import INDEX_COLUMNS, dit_adapter_state, write_index, write_published_folder  # noqa: E402

from selfinterp_peft.diff_store import diff_dir, read_index  # noqa: E402
from selfinterp_peft.dit_format import import_published  # noqa: E402
from selfinterp_peft.weight_diff import WeightDiff  # noqa: E402
from selfinterp_plugins.errors import ArtifactError  # noqa: E402
from selfinterp_plugins.models import tiny_family_model  # noqa: E402
from selfinterp_plugins.storage import _files as storage_files  # noqa: E402

from plugin_fakes import run_cli  # noqa: E402


class _Marker:
    """Unpickling this creates a file: the proof that a pickle ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class Killed(BaseException):
    """A SIGKILL stand-in: not an Exception, so nothing in the library catches it."""


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_qwen3):
    """The tiny Qwen3 saved for the CLI, and a published folder for it (3 diffs in 2 files, an adapter)."""
    model, tok = tiny_qwen3
    root = tmp_path_factory.mktemp("dit-import")
    model.save_pretrained(root / "tiny-qwen3")
    tok.save_pretrained(root / "tiny-qwen3")
    write_published_folder(root / "published", model, files=(("Apples", "Birds"), ("Cats",)), rank=2)
    return root


def copy_folder(saved, tmp_path):
    target = tmp_path / "hidden-topic" / "qwen3-tiny"
    shutil.copytree(saved / "published", target)
    return target


def one_line(capsys, *argv) -> str:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and "Traceback" not in out + err, (code, out, err)
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("Error")] == lines[-1:], err
    return lines[-1]


def import_cli(capsys, saved, src, out, *flags):
    return run_cli(capsys, "dit", "import", str(src), "--model", str(saved / "tiny-qwen3"), "--out", str(out), *flags)


def rows_of(src):
    with open(src / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def edit_row(src, **changes):
    rows = rows_of(src)
    rows[0].update(changes)
    write_index(src / "index.csv", rows)


def edit_entries(src, name, change):
    path = src / "weight-diffs" / name
    entries = torch.load(path, weights_only=True)
    torch.save(change(entries), path)


def test_a_weight_diff_file_carrying_a_pickled_object_is_refused_and_never_runs(saved, tmp_path, capsys):
    src = copy_folder(saved, tmp_path)
    marker = tmp_path / "pickle-ran"

    def plant(entries):
        entries[0]["weight_diff"]["model.layers.0.mlp.down_proj"] = (torch.zeros(1), _Marker(marker))
        return entries

    edit_entries(src, "weight-diff-000.pt", plant)
    probe = tmp_path / "probe"  # the planted object really runs when fully unpickled (so the test can fail)
    torch.save(_Marker(probe), tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.exists()
    line = one_line(capsys, "dit", "import", str(src), "--model", str(saved / "tiny-qwen3"), "--out", str(tmp_path / "o"))
    assert re.search(r"weight-diff-000\.pt is refused: it names [\w.]*open, .*nothing in it was run", line), line
    assert not marker.exists()


def test_a_dit_adapter_carrying_a_pickled_object_is_refused_and_never_runs(saved, tmp_path, capsys):
    src = copy_folder(saved, tmp_path)
    marker = tmp_path / "pickle-ran"
    torch.save({"model.layers.0.mlp.down_proj": (_Marker(marker), torch.zeros(1))}, src / "dit-adapter.pt")
    line = one_line(capsys, "dit", "import", str(src), "--model", str(saved / "tiny-qwen3"), "--out", str(tmp_path / "o"))
    assert "dit-adapter.pt is refused: it names" in line and not marker.exists()
    assert not (tmp_path / "o" / "index.jsonl").exists()  # refused before anything was written


def _other_width():
    model, _ = tiny_family_model("qwen3", hidden_size=32, intermediate_size=64)
    return model


def _for_other_width(src):
    """Every file rewritten for a Qwen3 of width 32 (this one's is 64)."""
    write_published_folder(src, _other_width(), files=(("Apples", "Birds"), ("Cats",)), rank=2, with_adapter=False)


def _unknown_module(src):
    edit_entries(src, "weight-diff-000.pt", lambda e: [dict(e[0], weight_diff={
        **e[0]["weight_diff"], "model.layers.7.mlp.down_proj": e[0]["weight_diff"]["model.layers.0.mlp.down_proj"]})] + e[1:])


def _entry(change):
    return lambda src: edit_entries(src, "weight-diff-000.pt", lambda e: [change(e[0])] + e[1:])


def _truncate(src):
    path = src / "weight-diffs" / "weight-diff-001.pt"
    path.write_bytes(path.read_bytes()[:300])


def _dit_rank_mix(src):
    state = torch.load(src / "dit-adapter.pt", weights_only=True)
    name = next(iter(state))
    state[name] = (state[name][0][:, :8], state[name][1][:8])
    torch.save(state, src / "dit-adapter.pt")


DOWN = "model.layers.0.mlp.down_proj"
BAD_FILES = {  # case -> (what it does to a good folder, the line's expected content)
    "for another width": (_for_other_width, r"weight-diff-000\.pt #0: module model\.layers\.0\.self_attn\.q_proj has "
                          r"factors for a 32->64 layer, this model's is 64->64 \(another width or model\)"),
    "dit adapter for another width": (
        lambda src: torch.save(dit_adapter_state(_other_width()), src / "dit-adapter.pt"),
        r"dit-adapter\.pt: module model\.layers\.0\.self_attn\.q_proj has factors for a 32->64 layer"),
    "an unknown module": (_unknown_module, r"module 'model\.layers\.7\.mlp\.down_proj' is not a decoder linear of this model"),
    "no weight_diff key": (_entry(lambda e: {"topic": e["topic"], "trigger": 1}), r"entry 0 has no 'weight_diff' key"),
    "no topic key": (_entry(lambda e: {"weight_diff": e["weight_diff"]}), r"entry 0 has no 'topic' key"),
    "a full fine-tune's tensor": (_entry(lambda e: dict(e, weight_diff={DOWN: torch.zeros(64, 128)})),
                                  r"holds one tensor \(a full fine-tune's weights, not LoRA factors\)"),
    "text instead of factors": (_entry(lambda e: dict(e, weight_diff={DOWN: ("a", "b")})), r"holds tuple, not the pair"),
    "a 3-D factor": (_entry(lambda e: dict(e, weight_diff={DOWN: (torch.zeros(1, 2, 128), torch.zeros(64, 2))})),
                     r"A is a 3-D torch\.float32 tensor, not a floating-point matrix"),
    "integer factors": (_entry(lambda e: dict(e, weight_diff={DOWN: (torch.zeros(2, 64, dtype=torch.int64),
                                                                       torch.zeros(128, 2, dtype=torch.int64))})),
                        r"A is a 2-D torch\.int64 tensor"),
    "NaN factors": (_entry(lambda e: dict(e, weight_diff={DOWN: (torch.full((2, 64), float("nan")), torch.zeros(128, 2))})),
                    r"A holds NaN or infinite values"),
    "ranks that differ": (_entry(lambda e: dict(e, weight_diff={DOWN: (torch.zeros(2, 64), torch.zeros(128, 3))})),
                          r"their ranks differ"),
    "a dict, not a list": (lambda src: torch.save({"a": 1}, src / "weight-diffs" / "weight-diff-000.pt"),
                           r"holds dict, not the list of diffs"),
    "a truncated file": (_truncate, r"weight-diff-001\.pt is truncated or not a file torch\.save wrote"),
    "a dit adapter mixing ranks": (_dit_rank_mix, r"dit-adapter\.pt mixes ranks \[8, 16\]"),
    "a dit adapter that is a list": (lambda src: torch.save([1], src / "dit-adapter.pt"), r"holds list, not the mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_published_file_is_one_line_with_the_fix(saved, tmp_path, capsys, case):
    src = copy_folder(saved, tmp_path)
    spoil, message = BAD_FILES[case]
    spoil(src)
    line = one_line(capsys, "dit", "import", str(src), "--model", str(saved / "tiny-qwen3"), "--out", str(tmp_path / "o"))
    assert re.search(message, line), line
    assert "; " in line  # the fix follows


BAD_ROWS = {  # case -> (changes to the first row, or a function of the rows, the line's expected content)
    "a path for lora_path": ({"lora_path": "../weight-diff-000.pt"}, r"line 2 names its weight-diff file '\.\./weight"),
    "an absolute lora_path": ({"lora_path": "/etc/passwd"}, r"'/etc/passwd' is a path, not a bare file name"),
    "a lora_idx that is no number": ({"lora_idx": "first"}, r"line 2: lora_idx 'first' is not a whole number"),
    "a negative lora_idx": ({"lora_idx": "-1"}, r"line 2: lora_idx -1 is outside 0-"),
    "a lora_idx past the file": ({"lora_idx": "7"}, r"lora_idx 7 but weight-diff-00\d\.pt holds \d diffs"),
    "a trigger over 999": ({"trigger": "1234"}, r"line 2: trigger 1234 is outside 0-999"),
    "no topic": ({"topic": ""}, r"line 2: no topic"),
    "another diff's topic": ({"topic": "Zebras"}, r"says topic 'Zebras' but weight-diff-00\d\.pt #\d is '.*': the row points"),
    "another diff's n_params": ({"n_params": "5"}, r"says n_params 5 but .* has \d+: the row points at another diff"),
    "a missing file": ({"lora_path": "weight-diff-009.pt"}, r"line 2: no file weight-diffs/weight-diff-009\.pt; fix that row"),
    "two rows for one diff": (lambda rows: rows + rows[:1], r"line 5 names the same diff as line 2"),
    "no lora_path column": (lambda rows: [{k: v for k, v in r.items() if k != "lora_path"} for r in rows],
                            r"has no column 'lora_path'"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_a_bad_index_row_is_one_line_with_the_fix_before_the_model_loads(saved, tmp_path, capsys, case, monkeypatch):
    src = copy_folder(saved, tmp_path)
    change, message = BAD_ROWS[case]
    rows = rows_of(src)
    if callable(change):
        rows = change(rows)
    else:
        rows[0].update(change)
    columns = [c for c in INDEX_COLUMNS if c in rows[0]]
    with open(src / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    line = one_line(capsys, "dit", "import", str(src), "--model", str(saved / "tiny-qwen3"), "--out", str(tmp_path / "o"))
    assert re.search(message, line), line
    assert not (tmp_path / "o" / "index.jsonl").exists()  # nothing imported


def test_an_import_stopped_by_a_bad_file_leaves_whole_diffs_and_resumes(saved, tmp_path, capsys, tiny_qwen3):
    src = copy_folder(saved, tmp_path)
    good = (src / "weight-diffs" / "weight-diff-001.pt").read_bytes()
    _truncate(src)
    out = tmp_path / "out"
    line = one_line(capsys, "dit", "import", str(src), "--model", str(saved / "tiny-qwen3"), "--out", str(out))
    assert "weight-diff-001.pt is truncated" in line
    assert [r["id"] for r in read_index(out)] == ["weight-diff-000-000", "weight-diff-000-001"]  # file 000, whole
    assert sorted(p.name for p in (out / "diffs").iterdir()) == ["weight-diff-000-000", "weight-diff-000-001"]
    (src / "weight-diffs" / "weight-diff-001.pt").write_bytes(good)
    code, printed, err = import_cli(capsys, saved, src, out)
    assert code in (0, None), err
    assert json.loads(printed.strip().splitlines()[-1])["new"] == 1
    assert sorted(r["id"] for r in read_index(out)) == ["weight-diff-000-000", "weight-diff-000-001", "weight-diff-001-000"]


def _state(out):
    """What an import left that a reader uses: the index rows and each indexed diff's factors."""
    index = read_index(out)
    diffs = {r["id"]: WeightDiff.from_pretrained(diff_dir(out, r["id"])) for r in index}
    return sorted(json.dumps(r, sort_keys=True) for r in index), {
        i: {n: (m.A, m.B, m.scale) for n, m in d.modules.items()} for i, d in diffs.items()}


def test_an_import_killed_at_any_step_leaves_whole_diffs_and_a_rerun_ends_as_one_run(saved, tmp_path, tiny_qwen3):
    model, tok = tiny_qwen3
    src = copy_folder(saved, tmp_path)
    steps = []
    storage_files._step_hook = lambda step, path: steps.append(step)
    try:
        import_published(src, tmp_path / "whole", model, tok)
    finally:
        storage_files._step_hook = None
    expected = _state(tmp_path / "whole")
    tried = sorted({round(k * (len(steps) - 1) / 7) for k in range(8)})  # 8 kill points spread over every step
    for n in tried:
        out = tmp_path / f"killed-{n}"
        count = {"n": 0}

        def kill(step, path, n=n):
            count["n"] += 1
            if count["n"] - 1 == n:
                raise Killed

        storage_files._step_hook = kill
        with pytest.raises(Killed):
            try:
                import_published(src, out, model, tok)
            finally:
                storage_files._step_hook = None
        if out.exists() and (out / "index.jsonl").exists():
            for row in read_index(out):  # every indexed diff is whole
                WeightDiff.from_pretrained(diff_dir(out, row["id"]))
        import_published(src, out, model, tok)
        rows, got = _state(out)
        assert rows == expected[0]
        assert got.keys() == expected[1].keys()
        for i in got:
            for name, (A, B, s) in got[i].items():
                eA, eB, es = expected[1][i][name]
                assert torch.equal(A, eA) and torch.equal(B, eB) and s == es
    assert len(tried) == 8


def test_a_rerun_from_another_source_or_model_is_refused(saved, tmp_path, capsys):
    src = copy_folder(saved, tmp_path)
    out = tmp_path / "out"
    code, _, err = import_cli(capsys, saved, src, out, "--limit", "1")
    assert code in (0, None), err
    other = tmp_path / "other" / "qwen3-tiny"
    write_published_folder(other, tiny_family_model("qwen3")[0], files=(("Dogs",),), rank=1)
    line = one_line(capsys, "dit", "import", str(other), "--model", str(saved / "tiny-qwen3"), "--out", str(out))
    assert re.search(r"index_sha256 \(SRC\) was .*delete .* or choose another --out", line), line
    assert len(read_index(out)) == 1


def test_no_folder_and_an_empty_folder_are_one_line(saved, tmp_path, capsys):
    line = one_line(capsys, "dit", "import", str(tmp_path / "nope"), "--model", str(saved / "tiny-qwen3"), "--out",
                    str(tmp_path / "o"))
    assert "No folder" in line and "hidden-topic/qwen3-4b" in line
    (tmp_path / "empty").mkdir()
    line = one_line(capsys, "dit", "import", str(tmp_path / "empty"), "--model", str(saved / "tiny-qwen3"), "--out",
                    str(tmp_path / "o"))
    assert "has neither index.csv nor dit-adapter.pt" in line


def test_the_wrong_model_is_named_with_the_one_the_reference_loads(tmp_path, tiny_qwen3):
    """A folder named as published (qwen3-4b) imported onto another model: the fix names Qwen/Qwen3-4B."""
    model, tok = tiny_qwen3
    src = tmp_path / "hidden-topic" / "qwen3-4b"
    write_published_folder(src, _other_width(), files=(("Apples",),), rank=1)
    with pytest.raises(ArtifactError, match=r"\(for qwen3-4b: --model Qwen/Qwen3-4B, as the reference loads it\)"):
        import_published(src, tmp_path / "o", model, tok)


def test_dit_ask_and_dit_eval_work_on_imported_diffs(saved, tmp_path, capsys, tiny_qwen3):
    from selfinterp_peft.dit import DITAdapter

    src = copy_folder(saved, tmp_path)
    out = tmp_path / "out"
    code, printed, err = import_cli(capsys, saved, src, out)
    assert code in (0, None), err
    assert json.loads(printed.strip().splitlines()[-1]) == {"diffs": 3, "new": 3, "dit_adapter": str(out / "dit-adapter"),
                                                           "saved": str(out)}
    code, printed, err = run_cli(capsys, "dit", "ask", str(out / "dit-adapter"), str(out / "diffs" / "weight-diff-000-000"),
                                 "--model", str(saved / "tiny-qwen3"))
    assert code in (0, None), err
    assert json.loads(printed.strip().splitlines()[-1])["diff"].endswith("weight-diff-000-000")
    dit = DITAdapter.from_pretrained(out / "dit-adapter", tiny_qwen3[0], tiny_qwen3[1])
    dit.config.baseline_max_new_tokens = 8  # the paper's 256 on a random model: 20 s of noise
    dit.save_pretrained(out / "dit-adapter")
    code, printed, err = run_cli(capsys, "dit", "eval", str(out / "dit-adapter"), str(out), "--model",
                                 str(saved / "tiny-qwen3"), "--llm-judge", "none", "--candidates", "diffs", "--limit", "2",
                                 "--out", str(tmp_path / "eval"))
    assert code in (0, None), err
    metrics = json.loads(printed.strip().splitlines()[-1])
    assert sorted(metrics) == ["dit", "no_dit", "trigger"] and metrics["dit"]["n"] == 2
    assert os.path.exists(tmp_path / "eval" / "answers.jsonl")
    # the news diffs were published without triggers: evaluated without the trigger baseline
    news = tmp_path / "news-summary" / "qwen3-tiny"
    shutil.copytree(src, news)
    write_index(news / "index.csv", [dict(r, trigger="") for r in rows_of(news)])
    code, _, err = import_cli(capsys, saved, news, tmp_path / "news-out")
    assert code in (0, None), err
    assert all(r["trigger"] is None for r in read_index(tmp_path / "news-out"))
    code, printed, err = run_cli(capsys, "dit", "eval", str(out / "dit-adapter"), str(tmp_path / "news-out"), "--model",
                                 str(saved / "tiny-qwen3"), "--llm-judge", "none", "--candidates", "diffs", "--limit", "1",
                                 "--out", str(tmp_path / "news-eval"))
    assert code in (0, None), err
    assert sorted(json.loads(printed.strip().splitlines()[-1])) == ["dit", "no_dit"]
