"""A resumable experiment's results file, shared by the scripts that run many named settings.

Each finished setting is one JSON line under its name; a rerun skips the names already there. The
file is rewritten whole and atomically after each result (through the storage layer), because an
append torn by a kill would stop the next run from reading it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from selfinterp_plugins.storage import write_text_atomic


class ResultLog:
    """`record(name, fn)` runs `fn()` once per name (its dict, plus `seconds`), keeps and prints it;
    `quiet` keys (long lists) are kept in the file and left out of the printed line."""

    def __init__(self, path: str | Path, quiet: tuple[str, ...] = ("examples", "per_scale", "history")):
        self.path, self.quiet = Path(path), quiet
        self.done = {}
        if self.path.exists():
            self.done = {r["name"]: r for r in map(json.loads, self.path.read_text().splitlines()) if r}

    def record(self, name: str, fn) -> dict:
        if name in self.done:
            return self.done[name]
        started = time.time()
        result = {"name": name, **fn(), "seconds": round(time.time() - started, 1)}
        self.done[name] = result
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.done.values()))
        print(json.dumps({k: v for k, v in result.items() if k not in self.quiet}), flush=True)
        return result
