"""What the directory-lock tests share: a lock held by another process (which a test may kill),
or by another thread of this one, and a snapshot of every byte under a directory, to check that a
refused writer wrote nothing."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from pathlib import Path

from selfinterp_plugins.storage._locks import DirectoryLock

HOLD = ("import sys\nfrom selfinterp_plugins.storage._locks import DirectoryLock\n"
        "with DirectoryLock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()\n")


@contextlib.contextmanager
def held_by_process(directory):
    """Another Python process holds `directory`'s lock until the block ends (or the test kills it);
    yields the process (its pid is the one the refusal names)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            proc.stdin.close()  # the holder leaves its `with` and exits
            proc.wait(timeout=120)


@contextlib.contextmanager
def held_by_thread(directory):
    """Another thread of this process holds `directory`'s lock until the block ends."""
    entered, release = threading.Event(), threading.Event()

    def hold():
        with DirectoryLock(directory):
            entered.set()
            release.wait(120)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert entered.wait(120)
        yield thread
    finally:
        release.set()
        thread.join()


def holder(kind: str, directory):
    """`held_by_process` or `held_by_thread`, by name (for parametrised tests)."""
    return {"process": held_by_process, "thread": held_by_thread}[kind](directory)


def snapshot(directory) -> dict[str, bytes]:
    """Every file under `directory` (the lock file included), by relative path."""
    root = Path(directory)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
