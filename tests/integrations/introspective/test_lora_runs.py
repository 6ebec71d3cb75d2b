"""`selfinterp lora-explainer train` and LoRAExplainer.save_pretrained, as runs: one writer per
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

BASE = ("--task", "activation_patching", "--rank", "4", "--epochs", "1", "--batch-size", "4", "--lr", "0.001",
        "--seed", "0")
TINY = dict(initializer_range=0.2, num_hidden_layers=4)


def _must_run(*argv):
    """An in-process `selfinterp` run for a module fixture (no capsys there); it must succeed."""
    from selfinterp_plugins.cli import main

    try:
        main(list(argv))
    except SystemExit as exit_:
        assert exit_.code in (0, None), argv


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A tiny model (and another one), six activation-patching rows made on it, and a finished
    checkpointed `lora-explainer train` run on them (2 steps)."""
    root = tmp_path_factory.mktemp("lora_runs")
    for name, seed in (("tiny", 3), ("other", 4)):
        model, tok = tiny_model("llama", seed=seed, **TINY)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    _must_run("lora-explainer", "make-data", "--task", "activation_patching", "--model", str(root / "tiny"), "--n-train", "6",
              "--n-test", "1", "--layers", "0:3:1", "--out", str(root / "data"))
    _must_run(*_train(root, root / "lx", *BASE))
    assert (root / "lx" / "checkpoint" / "state.json").is_file()
    return root


def _train(root, out, *flags, model="tiny", data=None):
    return ("lora-explainer", "train", "--data", str(data or root / "data"), "--model", str(root / model), *flags,
            "--out", str(out))


def _copy(first_run, tmp_path, name="lx"):
    shutil.copytree(first_run / name, tmp_path / name)
    return tmp_path / name



# ---- locks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["process", "thread"])
def test_a_second_lora_explainer_train_into_the_same_out_stops_at_once(first_run, tmp_path, capsys, kind):
    out = _copy(first_run, tmp_path)
    with holder(kind, out) as held:
        before = snapshot(out)
        line = refused(capsys, *_train(first_run, out, *BASE))
        pid = held.pid if kind == "process" else os.getpid()
        assert line == f"Error: {out} is being written by another run (pid {pid}); wait for it to finish or choose another --out."
        assert snapshot(out) == before


def _save(first_run, directory):
    from selfinterp_introspective.explainer import LoRAExplainer

    model, tok = tiny_model("llama", seed=3, **TINY)
    LoRAExplainer.from_pretrained(first_run / "lx", model, tok).save_pretrained(directory)


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_a_second_lora_explainer_save_pretrained_fails_and_writes_nothing(first_run, tmp_path, kind):
    out = tmp_path / "saved"
    _save(first_run, out)
    with holder(kind, out) as held:
        before = snapshot(out)
        pid = held.pid if kind == "process" else os.getpid()
        with pytest.raises(OutputLockedError, match=rf"^{out} is being written by another run \(pid {pid}\)"):
            _save(first_run, out)
        assert snapshot(out) == before
    _save(first_run, out)
    assert not (out / LOCK_FILE).exists()


def test_after_a_killed_lora_explainer_train_a_rerun_resumes(first_run, tmp_path, capsys):
    out = _copy(first_run, tmp_path)
    with held_by_process(out) as proc:
        proc.kill()
        proc.wait(timeout=60)
    assert (out / LOCK_FILE).exists()  # the killed run's, stale
    assert json.loads(ok(capsys, *_train(first_run, out, *BASE)))["steps"] == 2
    assert not (out / LOCK_FILE).exists()


# ---- run manifests ----------------------------------------------------------------------------

@pytest.mark.parametrize(("option", "value", "setting", "old", "new"), [
    ("--finetune", "full", "finetune (--finetune)", '"lora"', '"full"'),
    ("--rank", "8", "rank (--rank)", "4", "8"),
    ("--lr", "0.002", "lr (--lr)", "0.001", "0.002"),
    ("--batch-size", "2", "batch_size (--batch-size)", "4", "2"),
    ("--shuffle", None, "shuffle (--shuffle/--no-shuffle)", "false", "true"),
    ("--loss-reduction", "token", "loss_reduction (--loss-reduction)", '"padded"', '"token"'),
    ("--prompt-format", "chat", "prompt_format (--prompt-format)", '"raw"', '"chat"'),
    ("--seed", "1", "seed (--seed)", "0", "1"),
    ("--projection", "ridge", "projection (--projection)", '"auto"', '"ridge"'),
    ("--limit", "4", "training_rows (--limit or --data)", "6", "4"),
    ("--model", None, "model_fingerprint (--model)", None, None),
    ("--data", None, "training_data_sha256 (--data)", None, None),
])
def test_a_lora_explainer_resume_with_another_setting_is_refused_by_name(first_run, tmp_path, capsys, option, value,
                                                                         setting, old, new):
    """Before the manifest each of these resumed silently (or, --finetune, failed naming a weight)."""
    out = _copy(first_run, tmp_path)
    before = snapshot(out)
    if option == "--model":
        argv = _train(first_run, out, *BASE, model="other")
    elif option == "--data":  # the same rows in another order
        data = _copy(first_run, tmp_path, "data")
        lines = (data / "train.jsonl").read_text().splitlines()
        (data / "train.jsonl").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
        argv = _train(first_run, out, *BASE, data=data)
    else:
        argv = _train(first_run, out, *replace_flag(BASE, option, value))
    assert_refused_by_setting(refused(capsys, *argv), out / "checkpoint", setting, old, new)
    assert snapshot(out) == before  # nothing resumed, nothing rewritten


def test_a_lora_explainer_rerun_with_the_same_settings_resumes_and_may_grow_its_epochs(first_run, tmp_path, capsys):
    out = _copy(first_run, tmp_path)
    state = (out / "checkpoint" / "state.json").read_bytes()
    assert json.loads(state)["run"]["lr"] == 0.001 and json.loads(state)["run"]["training_rows"] == 6
    assert json.loads(ok(capsys, *_train(first_run, out, *BASE)))["steps"] == 2  # the finished run, not a new one
    assert (out / "checkpoint" / "state.json").read_bytes() == state
    assert json.loads(ok(capsys, *_train(first_run, out, *replace_flag(BASE, "--epochs", "2"))))["steps"] == 4
    before = snapshot(out)
    line = refused(capsys, *_train(first_run, out, *BASE))
    assert line.startswith(f"Error: {out / 'checkpoint'} holds 2 epochs of training, more than the 1 this run asks for")
    assert snapshot(out) == before


def test_a_lora_explainer_checkpoint_without_a_manifest_resumes_as_before(first_run, tmp_path, capsys):
    out = _copy(first_run, tmp_path)
    path = out / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    del state["run"]
    path.write_text(json.dumps(state))
    assert json.loads(ok(capsys, *_train(first_run, out, *replace_flag(BASE, "--lr", "0.002"))))["steps"] == 2


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_a_second_make_data_into_the_same_out_stops_at_once(first_run, tmp_path, capsys, kind):
    out = tmp_path / "data"
    shutil.copytree(first_run / "data", out)
    (out / "test.jsonl").unlink()  # a split still to write: without the lock, this run would write it
    with holder(kind, out) as held:
        before = snapshot(out)
        line = refused(capsys, "lora-explainer", "make-data", "--task", "activation_patching", "--model",
                       str(first_run / "tiny"), "--n-train", "6", "--n-test", "1", "--layers", "0:3:1", "--out", str(out))
        pid = held.pid if kind == "process" else os.getpid()
        assert line == f"Error: {out} is being written by another run (pid {pid}); wait for it to finish or choose another --out."
        assert snapshot(out) == before
