"""One writer per output directory (`selfinterp_plugins.storage._locks`): a second writer, from another
process or another thread, fails at once with one line naming the holder's pid and writes nothing;
the lock goes with its holder, also when the holder is killed; loaders never mind the lock file."""

from __future__ import annotations

import os
import threading

import pytest
import torch
from lock_holders import held_by_process, holder, snapshot

from selfinterp_plugins import Explainer, TrainConfig, VectorLabelDataset
from selfinterp_plugins.errors import OutputLockedError
from selfinterp_plugins.storage import _locks as locks
from selfinterp_plugins.storage._locks import LOCK_FILE, DirectoryLock

WORDS = ["cat", "dog", "river", "sun"]


def _rows(n=8):
    records = [{"id": str(i), "label": WORDS[i % 4], "split": "train"} for i in range(n)]
    return VectorLabelDataset(torch.randn(n, 64, generator=torch.Generator().manual_seed(0)), records)


def _refusal(directory, pid) -> str:
    return rf"^{directory} is being written by another run \(pid {pid}\); wait for it to finish or choose another --out\.$"


def _in_thread(fn):
    """What `fn()` raised in another thread of this process (None if nothing)."""
    raised = []

    def run():
        try:
            fn()
        except BaseException as err:  # noqa: BLE001 - handed back to the test
            raised.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return raised[0] if raised else None


def test_the_lock_file_holds_the_pid_and_goes_with_the_lock(tmp_path):
    out = tmp_path / "new" / "out"
    with DirectoryLock(out):
        assert (out / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with DirectoryLock(out):  # the thread holding it enters again (the CLI's run, then save_pretrained)
            pass
        assert (out / LOCK_FILE).exists()  # still held: leaving the inner block kept it
        err = _in_thread(lambda: DirectoryLock(out).__enter__())
        assert isinstance(err, OutputLockedError) and err.args[0].startswith(f"{out} is being written by another run "
                                                                             f"(pid {os.getpid()})")
    assert not out.exists()  # made by the lock and left empty: removed, as a refused run leaves nothing
    (tmp_path / "kept").mkdir()
    with DirectoryLock(tmp_path / "kept"):
        (tmp_path / "kept" / "file").write_text("x")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["file"]  # no lock file left in the artifact


def test_a_second_process_holding_the_lock_is_named(tmp_path):
    with held_by_process(tmp_path) as proc:
        with pytest.raises(OutputLockedError, match=_refusal(tmp_path, proc.pid)):
            DirectoryLock(tmp_path).__enter__()
    with DirectoryLock(tmp_path):  # released when the holder left
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_a_killed_holder_leaves_no_lock(tmp_path):
    """flock belongs to the open file: the kernel drops it with the process. The file the killed
    run left (its pid inside) is taken over, and loaders never read it."""
    with held_by_process(tmp_path) as proc:
        proc.kill()
        proc.wait(timeout=60)
    assert (tmp_path / LOCK_FILE).read_text() == f"{proc.pid}\n"  # stale, left behind
    with DirectoryLock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_file_removed_by_its_releasing_holder_is_not_taken_as_the_lock(tmp_path, monkeypatch):
    """A run that opened the lock file just before its holder released it (and removed it) locks a
    file no longer at the path; it must open the path again, or a third run would lock a new file
    and two runs would write at once."""
    first = DirectoryLock(tmp_path).__enter__()
    stale = os.open(tmp_path / LOCK_FILE, os.O_RDWR)
    first.__exit__(None, None, None)
    real_open, opened = os.open, []

    def open_(path, flags, mode=0o777):
        opened.append(path)
        return stale if len(opened) == 1 else real_open(path, flags, mode)

    monkeypatch.setattr(locks.os, "open", open_)
    with DirectoryLock(tmp_path):
        monkeypatch.setattr(locks.os, "open", real_open)
        assert len(opened) == 2
        assert isinstance(_in_thread(lambda: DirectoryLock(tmp_path).__enter__()), OutputLockedError)


def _save(tiny_llama, directory):
    model, tok = tiny_llama
    Explainer.create(model, tok, adapter="scalar_affine", template="echo").save_pretrained(directory)


def _train(tiny_llama, directory):
    model, tok = tiny_llama
    explainer = Explainer.create(model, tok, adapter="scalar_affine", template="echo")
    explainer.train(_rows(), None, TrainConfig(epochs=1, batch_size=4, lr=1e-2, checkpoint_every=1), output_dir=directory,
                    progress=False)


ENTRIES = {"save_pretrained": _save, "train": _train}


@pytest.mark.parametrize("kind", ["process", "thread"])
@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_a_second_writer_of_an_explainer_directory_fails_and_writes_nothing(tiny_llama, tmp_path, entry, kind):
    """Explainer.save_pretrained and Explainer.train(output_dir=...) while another run writes the
    directory: one line naming the holder, every byte left as it was."""
    ENTRIES[entry](tiny_llama, tmp_path / "out")  # a first run's files
    with holder(kind, tmp_path / "out") as held:
        before = snapshot(tmp_path / "out")
        pid = held.pid if kind == "process" else os.getpid()
        # from this thread; the thread holder is another thread of this process
        with pytest.raises(OutputLockedError, match=_refusal(tmp_path / "out", pid)):
            ENTRIES[entry](tiny_llama, tmp_path / "out")
        assert snapshot(tmp_path / "out") == before
    ENTRIES[entry](tiny_llama, tmp_path / "out")  # free again once the holder is done


def test_an_explainer_left_with_a_killed_writers_lock_file_loads_and_saves(tiny_llama, tmp_path):
    model, tok = tiny_llama
    _save(tiny_llama, tmp_path)
    with held_by_process(tmp_path) as proc:
        proc.kill()
        proc.wait(timeout=60)
    assert (tmp_path / LOCK_FILE).exists()
    Explainer.from_pretrained(tmp_path, model, tok)  # check_artifact_dir and the loader ignore it
    _save(tiny_llama, tmp_path)
    assert not (tmp_path / LOCK_FILE).exists()


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
    from cli_models import save_dataset, save_tiny_model

    root = tmp_path_factory.mktemp("cli")
    return save_tiny_model(root / "model"), save_dataset(root / "data")


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_a_second_selfinterp_train_into_the_same_out_is_one_line_and_exit_2(cli_inputs, tmp_path, capsys, kind):
    """`selfinterp train --out OUT` holds OUT for the whole run: another run into it stops at once
    (before loading the model), writing nothing; after the holder is killed, a rerun resumes."""
    from cli_models import ok, one_line_error

    model, data = cli_inputs
    out = tmp_path / "out"
    argv = ("train", data, "--model", model, "--adapter", "scalar_affine", "--epochs", "1", "--batch-size", "4",
            "--out", str(out))
    ok(capsys, *argv)
    with holder(kind, out) as held:
        before = snapshot(out)
        pid = held.pid if kind == "process" else os.getpid()
        err = one_line_error(capsys, *argv)
        assert err == f"Error: {out} is being written by another run (pid {pid}); wait for it to finish or choose another --out."
        assert snapshot(out) == before
    with held_by_process(out) as proc:
        proc.kill()
        proc.wait(timeout=60)
    ok(capsys, *argv)
    assert not (out / LOCK_FILE).exists()


def test_vectors_topics_and_report_lock_their_out(cli_inputs, tmp_path, capsys):
    """`vectors topics --out` and `report --out` (whose sweeps are appended to rows.jsonl) were not
    locked: two runs into one directory interleaved. Now the second stops at once, writing nothing."""
    from selfinterp_plugins.evaluation.report import ReportConfig, run_report

    from cli_models import one_line_error

    model, _ = cli_inputs
    out = tmp_path / "vecs"
    with held_by_process(out) as proc:
        before = snapshot(out)
        err = one_line_error(capsys, "vectors", "topics", "--model", model, "--layer", "1", "--limit", "4", "--out", str(out))
        assert err == f"Error: {out} is being written by another run (pid {proc.pid}); wait for it to finish or choose another --out."
        assert snapshot(out) == before
        report_out = tmp_path / "report"
    with held_by_process(report_out):
        before = snapshot(report_out)
        with pytest.raises(OutputLockedError, match="is being written by another run"):
            run_report(ReportConfig(validation_topics=2, test_topics=2), report_out, progress=False, backend=object())
        assert snapshot(report_out) == before


def test_an_unwritable_place_for_a_lock_is_one_line(tmp_path, monkeypatch):
    """The lock is the first thing a run writes: a read-only or full place must be an OutputError there too."""
    from selfinterp_plugins.errors import OutputError

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(locks.os, "open", refuse)
    with pytest.raises(OutputError, match="Cannot write"):
        with DirectoryLock(tmp_path / "out"):
            pass



def test_a_lock_whose_pid_cannot_be_written_is_let_go(tmp_path, monkeypatch):
    """A full disk refusing even the pid left the lock held for the rest of the process: the retry
    after freeing space was refused as "another run"."""
    from selfinterp_plugins.errors import OutputError

    def full(fd, data):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(locks.os, "write", full)
        with pytest.raises(OutputError, match="No space left"):
            with DirectoryLock(tmp_path / "out"):
                pass
    with DirectoryLock(tmp_path / "out"):  # space freed: the same process takes it
        pass
