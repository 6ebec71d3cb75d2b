"""One writer per output: an exclusive `flock`, taken without waiting, on an output file or directory.

Two runs writing the same place interleave what they write (two `train --out DIR` runs each
overwrite the other's checkpoints; two JSONL writers duplicate records), so the second fails at
once with one line. `flock` belongs to the open file, so the kernel drops it when the holder dies:
a killed run never leaves a lock behind that needs deleting by hand.

`DirectoryLock` locks a hidden file inside the directory (`LOCK_FILE`, holding the writer's pid
for the message) and removes it on release, so a finished artifact holds no trace of it. A file
left by a killed run is stale and harmless: loaders read only the files they name, and the next
run takes it over. A thread that already holds a directory enters it again (the CLI locks OUT
for the whole run; `save_pretrained(OUT)` inside it takes the same lock).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from ..errors import OutputLockedError
from ._files import output_errors, try_flock
from ._paths import open_for_write

# public: plugins lock their output directories (checkpoints, artifacts) as the core does
__all__ = ["LOCK_FILE", "DirectoryLock"]

#: the lock file inside a locked directory (hidden; never an artifact's content)
LOCK_FILE = ".selfinterp.lock"

_held = threading.local()  # per thread: {directory key: DirectoryLock holding it}


class DirectoryLock:
    """`with DirectoryLock(directory):` makes the directory (parents too) and holds its lock, or
    raises `OutputLockedError` naming the holder's pid; a directory the lock made and nothing was
    written into is removed again on release, so a run refused or failed early leaves nothing."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None
        self._made = False
        self._reentered = False

    def _key(self) -> str:
        return os.path.realpath(self.directory)

    def __enter__(self) -> DirectoryLock:
        table = _held.__dict__.setdefault("locks", {})
        if self._key() in table:  # this thread holds it already
            self._reentered = True
            return self
        with output_errors(self.directory):  # an unwritable place or a full disk: one line, not a traceback
            self._made = not self.directory.exists()
            self.directory.mkdir(parents=True, exist_ok=True)
            self._fd = self._acquire()
            try:
                os.ftruncate(self._fd, 0)
                os.write(self._fd, f"{os.getpid()}\n".encode())
            except OSError:  # not even the pid fits (a full disk): let go of the lock, or a retry in this process is refused
                os.close(self._fd)
                self._fd = None
                raise
        table[self._key()] = self
        return self

    def _acquire(self) -> int:
        while True:
            try:
                fd = open_for_write(self.path, os.O_RDWR | os.O_CREAT)  # never through a planted link
            except FileNotFoundError:  # the directory was removed meanwhile (a refused run tidying up)
                self.directory.mkdir(parents=True, exist_ok=True)
                continue
            if not try_flock(fd):
                pid = os.read(fd, 32).decode("ascii", "replace").strip()
                os.close(fd)
                held = f" (pid {pid})" if pid.isdigit() else ""
                raise OutputLockedError(f"{self.directory} is being written by another run{held}; wait for it to "
                                        "finish or choose another --out.")
            # a holder removes the file as it releases it: a lock on a file no longer at the path
            # guards nothing (the next run would lock a new file), so open the path again
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            opened = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
                return fd
            os.close(fd)

    def __exit__(self, *exc) -> None:
        if self._reentered:
            return
        _held.locks.pop(self._key(), None)
        try:
            with contextlib.suppress(OSError):  # (where an open file cannot be removed, it stays: stale, harmless)
                self.path.unlink(missing_ok=True)  # while still held: see _acquire
            if self._made:
                with contextlib.suppress(OSError):
                    self.directory.rmdir()  # only if empty: the run wrote nothing
        finally:
            os.close(self._fd)  # releases the lock
            self._fd = None
