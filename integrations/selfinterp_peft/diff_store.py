"""A directory of weight diffs: `index.jsonl` (one row per finished diff: id, topic, trigger, rank,
split, kind) and `diffs/<id>/`, each a plain PEFT LoRA adapter. Rows are appended as diffs finish,
so `make-diffs` resumes after a crash by skipping the ids already indexed; a diff whose row is
missing is simply made again. Paths come from ids, never from the index, so an index cannot point
outside its directory."""

from __future__ import annotations

import re
from pathlib import Path

from selfinterp_plugins.errors import ArtifactError
from selfinterp_plugins.storage import JsonlWriter, member, read_jsonl

from .weight_diff import WeightDiff

INDEX = "index.jsonl"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]+$")


def diff_dir(root: str | Path, diff_id: str) -> Path:
    if not _SAFE_ID.match(diff_id) or diff_id in (".", ".."):
        raise ArtifactError(f"Diff id {diff_id!r} is not a plain name; use letters, digits, '.', '_' or '-'.")
    # the folder and the id are members: a planted `diffs` symlink or an id with a path in it stays inside
    return member(member(root, "diffs", what="folder of diffs"), diff_id, what="diff")


def read_index(root: str | Path) -> list[dict]:
    path = Path(root) / INDEX
    if not path.exists():
        return []
    rows = read_jsonl(path, tolerate_torn_tail=True)  # a half-written last row: that diff is made again
    for n, row in enumerate(rows, 1):
        if "id" not in row or "topic" not in row:
            raise ArtifactError(f"{path} row {n} lacks 'id' or 'topic'; delete the line and rerun.")
    return rows


def add_diff(root: str | Path, row: dict, diff: WeightDiff, base_model) -> None:
    """Save the diff, then index it (the index row is the commit)."""
    diff.save_pretrained(diff_dir(root, row["id"]), base_model)
    with JsonlWriter(Path(root) / INDEX) as index:  # cuts a torn last row first
        index.write(row)


def load_diffs(root: str | Path, rows: list[dict]) -> list[WeightDiff]:
    return [WeightDiff.from_pretrained(diff_dir(root, row["id"])) for row in rows]
