"""A directory of weight diffs: `index.jsonl` (one row per finished diff: id, topic, trigger, rank,
split, kind) and `diffs/<id>/`, each a plain PEFT LoRA adapter. Rows are appended as diffs finish,
so `make-diffs` resumes after a crash by skipping the ids already indexed; a diff whose row is
missing is simply made again. A row's fields are checked as it is read (`IndexRow`: an id or topic
that is a number, a trigger that is text, was a traceback far from the file), and an id, which
names a directory, is a bare name inside `diffs/` (`storage.member`): an index cannot point outside
its directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selfinterp_plugins.storage import JsonlWriter, member, read_jsonl
from selfinterp_plugins.storage.validation import Name, NonNegativeInt, validate

from .weight_diff import WeightDiff

INDEX = "index.jsonl"


@dataclass
class IndexRow:
    """The fields of an index row that are read (others are kept as they are)."""

    id: Name
    topic: Name
    trigger: NonNegativeInt | None = None  # the trigger baseline's code (`dit_eval.trigger_prefix`)
    rank: NonNegativeInt | None = None
    split: str | None = None
    kind: str | None = None


def diff_dir(root: str | Path, diff_id, source: str | Path | None = None) -> Path:
    """`root/diffs/<id>`, for an id that is a bare name (else an ArtifactError naming `source`)."""
    # the folder is a member too: a planted `diffs` symlink would take every diff outside the store
    folder = member(root, "diffs", what="folder of diffs")
    return member(folder, diff_id, source=source or Path(root) / INDEX, what="diff id")


def read_index(root: str | Path) -> list[dict]:
    path = Path(root) / INDEX
    if not path.exists():
        return []
    rows = read_jsonl(path, tolerate_torn_tail=True)  # a half-written last row: that diff is made again
    for n, row in enumerate(rows, 1):
        where = f"{path} row {n}"
        validate(IndexRow, row, where, "fix or delete that line and rerun.", unknown="ignore", required=("id", "topic"))
        diff_dir(root, row["id"], where)
    return rows


def add_diff(root: str | Path, row: dict, diff: WeightDiff, base_model) -> None:
    """Save the diff, then index it (the index row is the commit)."""
    diff.save_pretrained(diff_dir(root, row["id"]), base_model)
    with JsonlWriter(Path(root) / INDEX) as index:  # cuts a torn last row first
        index.write(row)


def load_diffs(root: str | Path, rows: list[dict]) -> list[WeightDiff]:
    return [WeightDiff.from_pretrained(diff_dir(root, row["id"])) for row in rows]
