"""`selfinterp dit train | make-diffs` and the DIT / weight-diff artifacts, as runs: one writer per
output directory (a second one, from another process or thread, stops at once with one line and
writes nothing; a killed holder leaves no lock), and a checkpoint that remembers its run (a resume
with another setting is refused by name, the checkpoint untouched)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

pytest.importorskip("peft")

from lock_holders import held_by_process, holder, snapshot  # noqa: E402

from selfinterp_plugins.errors import OutputLockedError  # noqa: E402
from selfinterp_plugins.models import tiny_model  # noqa: E402
from selfinterp_plugins.storage._locks import LOCK_FILE  # noqa: E402

from cli_models import assert_refused_by_setting, ok, refused, replace_flag  # noqa: E402

BASE = ("--rank", "4", "--alpha", "1", "--lr", "0.001", "--weight-decay", "0.01", "--epochs", "1", "--batch-size", "2",
        "--seed", "0")


def _must_run(*argv):
    """An in-process `selfinterp` run for a module fixture (no capsys there); it must succeed."""
    from selfinterp_plugins.cli import main

    try:
        main(list(argv))
    except SystemExit as exit_:
        assert exit_.code in (0, None), argv


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A tiny model (and another one), three train diffs and one test diff, and a finished
    checkpointed `dit train` run on them (2 steps)."""
    root = tmp_path_factory.mktemp("dit_runs")
    for name, seed in (("tiny", 0), ("other", 1)):
        model, tok = tiny_model("llama", seed=seed, initializer_range=0.2)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    _must_run("dit", "make-diffs", "--model", str(root / "tiny"), "--n-train", "3", "--n-test", "1", "--questions", "1",
              "--answer-tokens", "3", "--group", "2", "--out", str(root / "diffs"))
    _must_run("dit", "train", str(root / "diffs"), "--model", str(root / "tiny"), *BASE, "--out", str(root / "dit"))
    assert (root / "dit" / "checkpoint" / "state.json").is_file()
    return root


def _copy(first_run, tmp_path, name="dit"):
    shutil.copytree(first_run / name, tmp_path / name)
    return tmp_path / name


def _train(first_run, out, *flags, model="tiny", diffs=None):
    return ("dit", "train", str(diffs or first_run / "diffs"), "--model", str(first_run / model), *flags, "--out", str(out))



def _locked_line(out, pid) -> str:
    return f"Error: {out} is being written by another run (pid {pid}); wait for it to finish or choose another --out."


# ---- locks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["process", "thread"])
def test_a_second_dit_train_into_the_same_out_stops_at_once(first_run, tmp_path, capsys, kind):
    out = _copy(first_run, tmp_path)
    with holder(kind, out) as held:
        before = snapshot(out)
        line = refused(capsys, *_train(first_run, out, *BASE))
        assert line == _locked_line(out, held.pid if kind == "process" else os.getpid())
        assert snapshot(out) == before


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_a_second_make_diffs_into_the_same_out_stops_at_once(first_run, tmp_path, capsys, kind):
    diffs = _copy(first_run, tmp_path, "diffs")
    argv = ("dit", "make-diffs", "--model", str(first_run / "tiny"), "--n-train", "4", "--n-test", "1", "--questions", "1",
            "--answer-tokens", "3", "--group", "2", "--out", str(diffs))  # one diff left to make
    with holder(kind, diffs) as held:
        before = snapshot(diffs)
        line = refused(capsys, *argv)
        assert line == _locked_line(diffs, held.pid if kind == "process" else os.getpid())
        assert snapshot(diffs) == before


def _save_dit(first_run, directory):
    from selfinterp_peft.dit import DITAdapter

    model, tok = tiny_model("llama", seed=0, initializer_range=0.2)
    DITAdapter.from_pretrained(first_run / "dit", model, tok).save_pretrained(directory)


def _save_diff(first_run, directory):
    from selfinterp_peft.diff_store import load_diffs, read_index

    model, _ = tiny_model("llama", seed=0, initializer_range=0.2)
    load_diffs(first_run / "diffs", read_index(first_run / "diffs")[:1])[0].save_pretrained(directory, model)


SAVES = {"DITAdapter": _save_dit, "WeightDiff": _save_diff}


@pytest.mark.parametrize("kind", ["process", "thread"])
@pytest.mark.parametrize("artifact", sorted(SAVES))
def test_a_second_save_pretrained_into_the_same_directory_fails_and_writes_nothing(first_run, tmp_path, artifact, kind):
    out = tmp_path / "saved"
    SAVES[artifact](first_run, out)
    with holder(kind, out) as held:
        before = snapshot(out)
        pid = held.pid if kind == "process" else os.getpid()
        with pytest.raises(OutputLockedError, match=rf"^{out} is being written by another run \(pid {pid}\)"):
            SAVES[artifact](first_run, out)
        assert snapshot(out) == before
    SAVES[artifact](first_run, out)
    assert not (out / LOCK_FILE).exists()


def test_after_a_killed_dit_train_a_rerun_resumes(first_run, tmp_path, capsys):
    out = _copy(first_run, tmp_path)
    with held_by_process(out) as proc:
        proc.kill()
        proc.wait(timeout=60)
    assert (out / LOCK_FILE).exists()  # the killed run's, stale
    assert json.loads(ok(capsys, *_train(first_run, out, *BASE)))["steps"] == 2
    assert not (out / LOCK_FILE).exists()


# ---- run manifests ----------------------------------------------------------------------------

@pytest.mark.parametrize(("option", "value", "setting", "old", "new"), [
    ("--rank", "8", "rank (--rank)", "4", "8"),
    ("--alpha", "2", "alpha (--alpha)", "1.0", "2.0"),
    ("--init", "peft", "init (--init)", '"reference"', '"peft"'),
    ("--lr", "0.002", "lr (--lr)", "0.001", "0.002"),
    ("--weight-decay", "0", "weight_decay (--weight-decay)", "0.01", "0.0"),
    ("--batch-size", "1", "batch_size (--batch-size)", "2", "1"),
    ("--seed", "1", "seed (--seed)", "0", "1"),
    ("--model", None, "model_fingerprint (--model)", None, None),
    ("DIFFS_DIR", None, "training_data_sha256 (DIFFS_DIR)", None, None),
])
def test_a_dit_train_resume_with_another_setting_is_refused_by_name(first_run, tmp_path, capsys, option, value, setting,
                                                                     old, new):
    """Before the manifest each of these resumed silently, training on with the old checkpoint."""
    out = _copy(first_run, tmp_path)
    before = snapshot(out)
    if option == "--model":
        argv = _train(first_run, out, *BASE, model="other")
    elif option == "DIFFS_DIR":  # the same diffs in another order
        diffs = _copy(first_run, tmp_path, "diffs")
        lines = (diffs / "index.jsonl").read_text().splitlines()
        (diffs / "index.jsonl").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
        argv = _train(first_run, out, *BASE, diffs=diffs)
    else:
        argv = _train(first_run, out, *replace_flag(BASE, option, value))
    assert_refused_by_setting(refused(capsys, *argv), out / "checkpoint", setting, old, new)
    assert snapshot(out) == before  # nothing resumed, nothing rewritten


def test_a_dit_train_rerun_with_the_same_settings_resumes_and_may_grow_its_epochs(first_run, tmp_path, capsys):
    out = _copy(first_run, tmp_path)
    state = (out / "checkpoint" / "state.json").read_bytes()
    assert json.loads(state)["run"]["lr"] == 0.001 and json.loads(state)["run"]["training_rows"] == 3
    assert json.loads(ok(capsys, *_train(first_run, out, *BASE)))["steps"] == 2  # the finished run, not a new one
    assert (out / "checkpoint" / "state.json").read_bytes() == state
    # more epochs continue the run (the batches of epoch 1 do not depend on the total) ...
    assert json.loads(ok(capsys, *_train(first_run, out, *replace_flag(BASE, "--epochs", "2"))))["steps"] == 4
    assert json.loads((out / "checkpoint" / "state.json").read_text())["epochs_done"] == 2
    # ... fewer than the checkpoint holds is refused
    before = snapshot(out)
    line = refused(capsys, *_train(first_run, out, *BASE))
    assert line == (f"Error: {out / 'checkpoint'} holds 2 epochs of training, more than the 1 this run asks for; rerun "
                    f"with --epochs 2 or more to resume, or to start afresh delete {out / 'checkpoint'} or choose another --out.")
    assert snapshot(out) == before


def test_a_dit_checkpoint_without_a_manifest_resumes_as_before(first_run, tmp_path, capsys):
    out = _copy(first_run, tmp_path)
    path = out / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    del state["run"]
    path.write_text(json.dumps(state))
    assert json.loads(ok(capsys, *_train(first_run, out, *replace_flag(BASE, "--lr", "0.002"))))["steps"] == 2


def test_answer_lengths_may_change_on_a_resume(first_run, tmp_path):
    """DITConfig fields that shape answers, not training, are left out of the manifest."""
    from selfinterp_peft.diff_store import load_diffs, read_index
    from selfinterp_peft.dit import DITAdapter, DITConfig

    out = _copy(first_run, tmp_path)
    rows = [r for r in read_index(first_run / "diffs") if r["split"] == "train"]
    model, tok = tiny_model("llama", seed=0, initializer_range=0.2)
    dit = DITAdapter.create(model, tok, DITConfig(rank=4, alpha=1.0, lr=0.001, batch_size=2, seed=0, max_new_tokens=5,
                                                  baseline_max_new_tokens=7))
    history = dit.train(load_diffs(first_run / "diffs", rows), [r["topic"] for r in rows], checkpoint_dir=out / "checkpoint")
    assert len(history) == 2


def test_a_second_dit_eval_into_the_same_out_is_refused(first_run, tmp_path, capsys):
    """`dit eval --out` was not locked: two evaluations appended answers to one answers.jsonl."""
    out = tmp_path / "eval"
    with held_by_process(out) as proc:
        before = snapshot(out)
        line = refused(capsys, "dit", "eval", str(first_run / "dit"), str(first_run / "diffs"), "--model",
                       str(first_run / "tiny"), "--candidates", "diffs", "--llm-judge", "none", "--out", str(out))
        assert line == f"Error: {out} is being written by another run (pid {proc.pid}); wait for it to finish or choose another --out."
        assert snapshot(out) == before


# ---- dit eval: its output remembers its run ------------------------------------------------------

def _short_answers(directory):
    """The DIT adapter answering in 2 tokens (256 without DIT): the evaluation tests take seconds."""
    config = json.loads((directory / "dit_config.json").read_text())
    (directory / "dit_config.json").write_text(json.dumps({**config, "max_new_tokens": 2, "baseline_max_new_tokens": 2}))
    return directory


@pytest.fixture(scope="module")
def short_dit(first_run):
    shutil.copytree(first_run / "dit", first_run / "dit-short")
    return _short_answers(first_run / "dit-short")


def _eval(first_run, out, *flags, dit=None):
    return ("dit", "eval", str(dit or first_run / "dit-short"), str(first_run / "diffs"), "--model", str(first_run / "tiny"),
            "--candidates", "diffs", "--llm-judge", "none", "--out", str(out), *flags)


@pytest.fixture(scope="module")
def second_dit(first_run, short_dit):
    """Another DIT adapter for the same model and diffs (another seed)."""
    _must_run(*_train(first_run, first_run / "dit-seed1", *replace_flag(BASE, "--seed", "1")))
    return _short_answers(first_run / "dit-seed1")


@pytest.mark.parametrize(("change", "setting"), [
    ("another DIT adapter", "dit_adapter_sha256 (DIT_DIR)"),
    ("more diffs", "diffs.{id} (DIFFS_DIR, --split or --limit)"),
    ("a guesser", "guesser (--llm-judge)"),
])
def test_dit_eval_refuses_to_resume_another_runs_answers(first_run, second_dit, tmp_path, capsys, change, setting):
    """`dit eval --out` reused the answers another DIT adapter gave and wrote metrics for the wrong adapter."""
    out = tmp_path / "eval"
    ok(capsys, *_eval(first_run, out, "--split", "train", "--limit", "2"))
    before = snapshot(out)
    if change == "another DIT adapter":
        argv = _eval(first_run, out, "--split", "train", "--limit", "2", dit=second_dit)
    elif change == "more diffs":
        argv = _eval(first_run, out, "--split", "train")
    else:
        argv = replace_flag(_eval(first_run, out, "--split", "train", "--limit", "2"), "--llm-judge", str(first_run / "tiny"))
    line = refused(capsys, *argv)
    third = [r for r in _rows(first_run) if r["split"] == "train"][2]["id"]
    assert line.startswith(f"Error: {out / 'answers.jsonl'} is the checkpoint of a run with other settings: "
                           f"{setting.format(id=third)} was ")
    assert line.endswith(f"to start afresh delete {out / 'answers.jsonl'} or choose another --out (or rerun with the old "
                         "settings to resume).")
    assert snapshot(out) == before
    manifest = json.loads((out / "answers.jsonl.run.json").read_text())  # what made the answers, beside them
    assert len(manifest["diffs"]) == 2 and manifest["guesser"] is None and len(manifest["dit_adapter_sha256"]) == 64


def _rows(first_run):
    return [json.loads(line) for line in (first_run / "diffs" / "index.jsonl").read_text().splitlines()]


def test_dit_eval_resumes_its_own_run_and_an_output_saved_before_manifests(first_run, short_dit, tmp_path, capsys):
    out = tmp_path / "eval"
    first = json.loads(ok(capsys, *_eval(first_run, out)))
    answers = (out / "answers.jsonl").read_bytes()
    assert json.loads(ok(capsys, *_eval(first_run, out))) == first and (out / "answers.jsonl").read_bytes() == answers
    (out / "answers.jsonl.run.json").unlink()  # an output written before manifests resumes as before
    assert json.loads(ok(capsys, *_eval(first_run, out))) == first and (out / "answers.jsonl.run.json").is_file()
