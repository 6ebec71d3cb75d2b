"""A directory of weight diffs: `index.jsonl` (one row per finished diff: id, topic, trigger, rank,
split, kind) and `diffs/<id>/`, each a plain PEFT LoRA adapter. Rows are appended as diffs finish,
so `make-diffs` resumes after a crash by skipping the ids already indexed; a diff whose row is
missing is simply made again. Paths come from ids, never from the index, so an index cannot point
outside its directory."""

from __future__ import annotations

import json
import re
from pathlib import Path

from selfinterp_plugins.errors import ArtifactError

from .weight_diff import WeightDiff

INDEX = "index.jsonl"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]+$")


def diff_dir(root: str | Path, diff_id: str) -> Path:
    if not _SAFE_ID.match(diff_id) or diff_id in (".", ".."):
        raise ArtifactError(f"Diff id {diff_id!r} is not a plain name; use letters, digits, '.', '_' or '-'.")
    return Path(root) / "diffs" / diff_id


def read_index(root: str | Path) -> list[dict]:
    path = Path(root) / INDEX
    if not path.exists():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                break  # a half-written last line from a crash: that diff is made again
            raise ArtifactError(f"{path} line {n} is not JSON; delete the line and rerun to make that diff again.")
        if not isinstance(row, dict) or "id" not in row or "topic" not in row:
            raise ArtifactError(f"{path} line {n} lacks 'id' or 'topic'; delete the line and rerun.")
        rows.append(row)
    return rows


def add_diff(root: str | Path, row: dict, diff: WeightDiff, base_model) -> None:
    """Save the diff, then index it (the index row is the commit)."""
    diff.save_pretrained(diff_dir(root, row["id"]), base_model)
    _drop_torn_tail(Path(root) / INDEX)
    with open(Path(root) / INDEX, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line a crash left half-written, so the next row starts on a line of its own."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def load_diffs(root: str | Path, rows: list[dict]) -> list[WeightDiff]:
    return [WeightDiff.from_pretrained(diff_dir(root, row["id"])) for row in rows]
