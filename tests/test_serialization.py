"""JsonlWriter's crash repair and lock: a crashed run's output keeps every complete record and
every earlier byte, and a second writer to the same file fails at once (issue 19, items 1, 2, 4, 5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from selfinterp_plugins.errors import ArtifactError
from selfinterp_plugins.storage._files import JsonlWriter, read_jsonl

RECORDS = [{"id": str(i), "scale": 1.0, "label": f"label {i}"} for i in range(3)]


def write_raw(path, text: str):
    path.write_bytes(text.encode("utf-8"))
    return os.stat(path).st_ino


def test_a_complete_last_record_without_its_newline_is_kept(tmp_path):
    """The record counts as done for a resume (read_jsonl parses it), so it must stay in the file."""
    path = tmp_path / "out.jsonl"
    write_raw(path, "\n".join(json.dumps(r) for r in RECORDS))
    with JsonlWriter(path) as writer:
        writer.write({"id": "3", "scale": 1.0, "label": "new"})
    assert [r["id"] for r in read_jsonl(path)] == ["0", "1", "2", "3"]


def test_a_one_line_file_is_not_emptied(tmp_path):
    path = tmp_path / "one.jsonl"
    write_raw(path, json.dumps(RECORDS[0]))
    JsonlWriter(path).close()
    assert read_jsonl(path) == [RECORDS[0]]


def test_a_torn_tail_is_cut_in_place_never_rewritten(tmp_path):
    """Truncation to the last newline: same inode, the earlier bytes untouched, so a kill during
    the repair cannot lose them (rewriting the file left it empty for a while)."""
    path = tmp_path / "out.jsonl"
    good = "".join(json.dumps(r) + "\n" for r in RECORDS)
    inode = write_raw(path, good + '{"id": "3", "sca')
    with JsonlWriter(path):
        pass
    assert path.read_text() == good and os.stat(path).st_ino == inode


@pytest.mark.parametrize("tail", [b'{"id": "3"', b'{"label": "\xed\xb3\xbf"}', b"[1, 2]", b"7"])
def test_anything_but_a_complete_record_at_the_end_is_cut(tmp_path, tail):
    """Torn JSON, invalid UTF-8, and JSON that is not a record are all cut."""
    path = tmp_path / "out.jsonl"
    good = "".join(json.dumps(r) + "\n" for r in RECORDS)
    path.write_bytes(good.encode() + tail)
    JsonlWriter(path).close()
    assert path.read_text() == good


def test_a_second_writer_fails_at_once_and_writes_nothing(tmp_path):
    path = tmp_path / "out.jsonl"
    first = JsonlWriter(path)
    first.write(RECORDS[0])
    other = subprocess.run([sys.executable, "-c", "import sys\nfrom selfinterp_plugins.storage._files import JsonlWriter\n"
                            "try:\n    JsonlWriter(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, e)\n",
                            str(path)], capture_output=True, text=True, timeout=120)
    assert other.stdout.startswith("OutputLockedError") and "being written by another run" in other.stdout  # an ArtifactError
    with pytest.raises(ArtifactError, match="being written by another run"):
        JsonlWriter(path)  # in this process too
    first.write(RECORDS[1])
    first.close()
    assert read_jsonl(path) == RECORDS[:2]
    with JsonlWriter(path) as again:  # the lock goes with the writer
        again.write(RECORDS[2])
    assert read_jsonl(path) == RECORDS


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_infinity_are_refused_not_written_as_invalid_json(tmp_path, value):
    path = tmp_path / "out.jsonl"
    with JsonlWriter(path) as writer:
        with pytest.raises(ArtifactError, match="NaN or infinity"):
            writer.write({"id": "0", "scale": value, "label": "x"})
    assert path.read_text() == ""


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_saved_weights_are_readable_as_the_umask_allows(tmp_path, umask):
    """safetensors writes through a private temporary file: without a chmod every artifact's weights
    were 0600, unreadable by the rest of a team sharing a results directory."""
    import torch

    from selfinterp_plugins.storage._files import save_safetensors, write_json

    mask = os.umask(umask)
    try:
        save_safetensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
        write_json({"a": 1}, tmp_path / "c.json")
    finally:
        os.umask(mask)
    assert os.stat(tmp_path / "w.safetensors").st_mode & 0o777 == 0o666 & ~umask
    assert os.stat(tmp_path / "c.json").st_mode & 0o777 == 0o666 & ~umask



def test_a_file_that_cannot_be_read_is_an_artifact_error(tmp_path, monkeypatch):
    """A file without read permission (or an I/O error) was a raw PermissionError traceback."""
    from pathlib import Path

    from selfinterp_plugins.errors import ArtifactError
    from selfinterp_plugins.storage._files import read_json

    (tmp_path / "c.json").write_text("{}")

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ArtifactError, match="Cannot read .*c.json .*Permission denied"):
        read_json(tmp_path / "c.json")


def test_a_library_save_with_a_sub_folder_is_refused_not_half_committed(tmp_path):
    """Only files are committed; a sub-folder a library writes (PEFT's non-default adapters) was
    dropped silently with the scratch folder."""
    from selfinterp_plugins.errors import ArtifactError
    from selfinterp_plugins.storage._commits import SCRATCH_DIR, save_serialised_committed

    def serialise(folder):
        (folder / "adapter_config.json").write_text("{}")
        (folder / "other").mkdir()
        (folder / "other" / "adapter_config.json").write_text("{}")

    with pytest.raises(ArtifactError, match=r"sub-folder\(s\) \['other'\]"):
        save_serialised_committed(tmp_path / "a", serialise, {"x": 1}, "config.json")
    assert not (tmp_path / "a" / "config.json").exists() and not (tmp_path / "a" / SCRATCH_DIR).exists()
