"""Every save is atomic: killed at any of its steps, the directory holds the complete old state or
the complete new state, never less; a full disk or an unwritable place is one `OutputError` line
that names the path and the fix, with the old state intact and no temporary file left.

The library calls `serialization._step(name, path)` before each step that changes a file (write a
temporary file, rename, unlink, truncate, append). These tests replace that hook: to raise `Killed`
(a BaseException nothing in the library catches, like SIGKILL) at step N, after leaving behind
what a kill mid-step would (a torn temporary file, a torn JSONL line); or to raise an OSError
(ENOSPC, EACCES) there, as a full disk or a read-only directory would.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
from pathlib import Path

import pytest
import torch

from selfinterp_plugins.errors import OutputError
from selfinterp_plugins.storage import _files as serialization
from selfinterp_plugins.storage._files import write_json

from artifact_kinds import KINDS, Kind, make_kind


class Killed(BaseException):
    """A SIGKILL stand-in: not an Exception, so no `except Exception` in the library sees it."""


@contextlib.contextmanager
def hook(function):
    serialization._step_hook = function
    try:
        yield
    finally:
        serialization._step_hook = None


def always(code: int):
    """A hook failing every step with OSError `code` (a full disk, a read-only directory)."""
    def fail(step: str, path: Path) -> None:
        raise OSError(code, os.strerror(code), str(path))
    return fail


def steps_of(action) -> list[tuple[str, str]]:
    """The (step, file name) sequence `action()` goes through."""
    seen = []
    with hook(lambda step, path: seen.append((step, path.name))):
        action()
    return seen


def fail_at(n: int, error: BaseException):
    """A hook raising `error` at the n-th step; for a kill, after what a kill mid-step leaves."""
    count = {"n": 0}

    def at_step(step: str, path: Path) -> None:
        count["n"] += 1
        if count["n"] - 1 != n:
            return
        if isinstance(error, Killed) and step == "write":
            path.write_bytes(b"torn")  # half a temporary file
        if isinstance(error, Killed) and step == "append" and path.exists():
            with open(path, "ab") as f:
                f.write(b'{"torn": ')  # half a record
        raise error

    return at_step


@pytest.fixture(params=KINDS)
def kind(request, tiny_llama, tmp_path_factory) -> Kind:
    return make_kind(request.param, tiny_llama, tmp_path_factory)


def _states(kind: Kind, tmp_path: Path):
    """(old directory, old value, new value, the steps of the new save)."""
    old_dir = tmp_path / "old"
    kind.make_old(old_dir)
    new_dir = tmp_path / "new"
    shutil.copytree(old_dir, new_dir)
    steps = steps_of(lambda: kind.save_new(new_dir))
    return old_dir, kind.load(old_dir), kind.load(new_dir), steps


def _fresh_copy(old_dir: Path, tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    shutil.copytree(old_dir, d)
    return d


# ---- a kill at every step --------------------------------------------------------------------------

def _sampled_steps(count: int, seed: str, others: int = 4) -> list[int]:
    """The first and the last of `count` steps, and `others` of the steps between drawn by an RNG
    seeded with `seed` (the same draw every run)."""
    between = list(range(1, count - 1))
    return sorted({0, count - 1, *random.Random(seed).sample(between, min(others, len(between)))})


def test_a_save_killed_at_every_step_leaves_the_old_state_or_the_new_one(kind, tmp_path, record_property):
    """Kill the save at each of its steps in turn (a torn temporary file or record left behind): what
    loads is exactly the old state or the new one; a second save, itself killed at its first step,
    its last and two seeded others (a new draw after each first kill: the second kills are the
    quadratic part, up to 17 x 15 saves for the LoRA explainer), still leaves one of the three; a
    save run to the end then gives the newest state."""
    old_dir, old, new, steps = _states(kind, tmp_path)
    assert steps, "the save goes through no instrumented step"
    kills = 0
    for n in range(len(steps)):
        d = _fresh_copy(old_dir, tmp_path, f"kill-{n}")
        with hook(fail_at(n, Killed())), pytest.raises(Killed):
            kind.save_new(d)
        kills += 1
        after_kill = kind.load(d)
        assert after_kill in (old, new), (kind.name, n, steps[n])
        # the next save starts from whatever the kill left (a staged file, a commit half moved ...)
        second = steps_of(lambda: kind.save_new(_fresh_copy(d, tmp_path, f"probe-{n}")))
        for m in _sampled_steps(len(second), f"{kind.name}/{n}"):
            d2 = _fresh_copy(d, tmp_path, f"kill-{n}-{m}")
            with hook(fail_at(m, Killed())), pytest.raises(Killed):
                kind.save_new(d2)
            kills += 1
            assert kind.load(d2) in (old, new, after_kill), (kind.name, n, steps[n], m, second[m])
            kind.save_new(d2)
            assert kind.load(d2) == new, (kind.name, n, m)
        kind.save_new(d)
        assert kind.load(d) == new, (kind.name, n)
        assert not [p.name for p in d.iterdir() if ".tmp" in p.name or ".next." in p.name]
    record_property("kills", kills)
    print(f"{kind.name}: {len(steps)} steps, {kills} kills")


# ---- a full disk, an unwritable directory ------------------------------------------------------------

def _drop_capabilities() -> None:
    """Clear this process's capabilities (effective, permitted, inheritable), keeping its uid.

    Root writes into a 0o500 directory through CAP_DAC_OVERRIDE; without it, root is a user like
    any other and its own 0o500 directory refuses writes with EACCES, as a normal user's does. The
    uid stays 0, so the test's files (owned by root, under root's 0o700 temporary directory) stay
    readable. For a normal user this clears nothing."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words
    if ctypes.CDLL(None, use_errno=True).capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset: cannot drop this process's capabilities")


def unprivileged(action):
    """`action()` in a forked child that has dropped its capabilities (`_drop_capabilities`); its
    return value comes back, or the exception it raised is raised here. Why a child: CI runs as
    root, whose CAP_DAC_OVERRIDE writes anywhere, so a read-only directory refuses nothing unless
    the writing process gives that up, and a process cannot take it back once dropped."""
    import pickle

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 0
        try:
            os.close(read_end)
            torch.set_num_threads(1)  # no OpenMP pool is carried over a fork
            _drop_capabilities()
            try:
                outcome = ("returned", action())
            except BaseException as err:  # noqa: BLE001 - handed to the parent to raise
                outcome = ("raised", err)
            try:
                payload = pickle.dumps(outcome)
            except Exception:  # noqa: BLE001 - an unpicklable exception still reaches the parent, as text
                payload = pickle.dumps(("raised", RuntimeError(f"{outcome[0]}: {outcome[1]!r}")))
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
        except BaseException:  # noqa: BLE001
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0 and payload, f"the unprivileged child failed (wait status {status})"
    how, value = pickle.loads(payload)
    if how == "raised":
        raise value
    return value


def test_an_unprivileged_child_is_refused_a_read_only_directory(tmp_path):
    """What the read-only tests stand on: a 0o500 directory refuses the child's write with EACCES,
    whoever runs the suite (root's override is gone in the child), while this process keeps its own."""
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o500)
    try:
        with pytest.raises(PermissionError):
            unprivileged((read_only / "x").touch)
        assert unprivileged(lambda: (tmp_path / "x").write_text("ok")) == 2  # a writable place still is
    finally:
        read_only.chmod(0o700)
    assert not (read_only / "x").exists() and (tmp_path / "x").read_text() == "ok"


@pytest.mark.parametrize(("code", "fix"), [(errno.ENOSPC, "free space on"), (errno.EDQUOT, "free space on"),
                                           (errno.EACCES, "choose a writable"), (errno.EROFS, "choose a writable")])
def test_a_failing_write_at_any_step_is_an_output_error_naming_the_path_and_the_fix(kind, tmp_path, code, fix):
    """An OSError at each step of a save: one OutputError naming the file and the fix, the old
    state (or, once the save committed, the new one) intact, no temporary file left."""
    old_dir, old, new, steps = _states(kind, tmp_path)
    for n in range(len(steps)):
        d = _fresh_copy(old_dir, tmp_path, f"fail-{n}")
        with hook(fail_at(n, OSError(code, os.strerror(code)))), pytest.raises(OutputError) as raised:
            kind.save_new(d)
        message = str(raised.value)
        assert "\n" not in message and fix in message and str(d) in message, message
        assert message.startswith(f"Cannot write {d}"), message
        state = kind.load(d)
        assert state in (old, new), (kind.name, n, steps[n])
        litter = [p.name for p in d.iterdir() if p.name.endswith(".tmp") or (state == old and ".next." in p.name)]
        assert not litter, (kind.name, steps[n], litter)


def test_a_read_only_directory_is_an_output_error(kind, tmp_path):
    """A real read-only directory (chmod 0o500, its files 0o400), written by a process without
    root's override (`unprivileged`), so that it runs in CI, which runs as root."""
    old_dir, old, _, _ = _states(kind, tmp_path)
    files = [p for p in old_dir.iterdir() if p.is_file()]
    for path in files:
        path.chmod(0o400)
    old_dir.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="choose a writable") as raised:
            unprivileged(lambda: kind.save_new(old_dir))
        assert f"Cannot write {old_dir}" in str(raised.value)
    finally:
        old_dir.chmod(0o700)
        for path in files:
            path.chmod(0o600)
    assert kind.load(old_dir) == old
    assert sorted(old_dir.iterdir()) == sorted(files)


def test_writes_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    """The new bytes reach the disk before the rename makes them the file: else a power cut can
    leave the new name on empty contents."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(serialization.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(serialization.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    write_json({"a": 1}, tmp_path / "a.json")
    serialization.save_safetensors({"t": torch.ones(2)}, tmp_path / "t.safetensors")
    assert events == ["fsync", "replace", "fsync"] * 2  # the file, the rename, the directory holding it


# ---- through the CLI: one `Error:` line, exit 2 ------------------------------------------------------

@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A tiny model, a dataset and an explainer trained by `selfinterp train`."""
    from cli_models import save_dataset, save_tiny_model
    from plugin_fakes import run_cli

    root = tmp_path_factory.mktemp("cli")
    model, data = save_tiny_model(root / "model"), save_dataset(root / "data")

    class _Capsys:  # run_cli wants a capsys; this module-scoped fixture has none
        def readouterr(self):
            return type("Out", (), {"out": "", "err": ""})()

    code, _, _ = run_cli(_Capsys(), "train", data, "--model", model, "--epochs", "1", "--batch-size", "4",
                         "--out", str(root / "explainer"))
    if code not in (0, None):
        pytest.fail("the tiny training run failed")
    return root, model, data


def _one_error_line(code, stdout, err) -> str:
    assert code == 2, (stdout, err)
    assert "Traceback" not in stdout + err
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("Error")] == lines[-1:], err
    return lines[-1]


@pytest.mark.parametrize("code", [errno.EACCES, errno.ENOSPC])
def test_cli_train_into_an_unwritable_out_is_one_error_line(capsys, cli_run, tmp_path, code):
    """`selfinterp train --out` where nothing can be written (EACCES injected: this may run as
    root) or the disk is full: exit 2, one line naming the place and the fix; a previous
    explainer in --out is left as it was."""
    from plugin_fakes import run_cli

    root, model, data = cli_run
    out = tmp_path / "out"
    shutil.copytree(root / "explainer", out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with hook(always(code)):
        line = _one_error_line(*run_cli(capsys, "train", data, "--model", model, "--epochs", "1", "--batch-size",
                                        "4", "--out", str(out)))
    assert str(out) in line and ("choose a writable --out" in line if code == errno.EACCES else "free space on" in line)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not list(out.rglob("*.tmp"))


def test_cli_explain_into_an_unwritable_output_is_one_error_line(capsys, cli_run, tmp_path):
    from plugin_fakes import run_cli

    root, model, data = cli_run
    output = tmp_path / "labels.jsonl"
    with hook(always(errno.EACCES)):
        line = _one_error_line(*run_cli(capsys, "explain", str(root / "explainer"), "--vectors", data, "--model",
                                        model, "--max-new-tokens", "4", "--output", str(output)))
    assert str(output) in line and "choose a writable --out / --output" in line


def test_cli_train_into_a_read_only_directory(capsys, cli_run, tmp_path):
    from plugin_fakes import run_cli

    root, model, data = cli_run
    parent = tmp_path / "ro"
    parent.mkdir()
    os.chmod(parent, 0o500)
    try:
        line = _one_error_line(*unprivileged(lambda: run_cli(capsys, "train", data, "--model", model, "--epochs", "1",
                                                             "--batch-size", "4", "--out", str(parent / "out"))))
    finally:
        os.chmod(parent, 0o700)
    assert str(parent / "out") in line and "choose a writable" in line
