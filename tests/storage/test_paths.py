"""storage/_paths.py: a record's file name is a bare name inside its artifact, and a writer never
writes through a link; each refusal's message as the user reads it."""

from __future__ import annotations

import os

import pytest

from selfinterp_plugins.errors import ArtifactError, OutputError
from selfinterp_plugins.storage._paths import bare_name_problem, member, open_for_write


@pytest.mark.parametrize("name, problem", [
    ("adapter.safetensors", None),
    ("é" * 127 + "x", None),  # 255 bytes in UTF-8: the longest a file name can be
    ("é" * 128, "is longer than a file name can be (255 bytes)"),  # 256 bytes
    ("", "'' is not a file name"),
    (".", "'.' is not a file name"),
    ("..", "'..' is not a file name"),
    ("a/b", "'a/b' is a path, not a bare file name"),
    ("a\\b", "'a\\\\b' is a path, not a bare file name"),
    ("a\0b", "'a\\x00b' is a path, not a bare file name"),
    ("/etc/passwd", "'/etc/passwd' is a path, not a bare file name"),
    (7, "should be a file name (a string), got int"),
])
def test_bare_name_problem(name, problem):
    assert bare_name_problem(name) == problem


def test_member_is_the_name_inside_the_directory(tmp_path):
    assert member(tmp_path, "w.safetensors") == tmp_path / "w.safetensors"
    (tmp_path / "real").write_text("x")
    (tmp_path / "alias").symlink_to(tmp_path / "real")  # a link that stays inside is a member
    assert member(str(tmp_path), "alias") == tmp_path / "alias"


def test_member_refuses_a_path_naming_the_record_and_what_it_names(tmp_path):
    with pytest.raises(ArtifactError) as err:
        member(tmp_path, "../x", source="cfg.json", what="weights file")
    assert str(err.value) == ("cfg.json names its weights file '../x': '../x' is a path, not a bare file name; an "
                              "artifact's files are bare names inside its directory. Re-save or re-download it.")
    with pytest.raises(ArtifactError) as err:
        member(tmp_path, "")
    assert str(err.value) == (f"{tmp_path} names its file '': '' is not a file name; an artifact's files are bare "
                              "names inside its directory. Re-save or re-download it.")


def test_member_refuses_a_symlink_out_of_the_artifact(tmp_path):
    art, outside = tmp_path / "art", tmp_path / "secret"
    art.mkdir()
    outside.write_text("x")
    (art / "w").symlink_to(outside)
    with pytest.raises(ArtifactError) as err:
        member(art, "w")
    assert str(err.value) == f"{art / 'w'} is a symlink to {outside}, outside the artifact; copy the file in instead."


def test_open_for_write_writes_a_plain_file(tmp_path):
    fd = open_for_write(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"ok")
    os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"ok"


def test_open_for_write_refuses_a_symlink_and_leaves_its_target(tmp_path):
    target = tmp_path / "target"
    target.write_text("keep")
    (tmp_path / "lock").symlink_to(target)
    with pytest.raises(OutputError) as err:
        open_for_write(tmp_path / "lock", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    assert str(err.value) == (f"{tmp_path / 'lock'} is a symlink (to {target}); the library never writes through a "
                              "link: remove it, or choose another output.")
    assert target.read_text() == "keep"


def test_open_for_write_refuses_a_hard_link_and_a_non_regular_file(tmp_path):
    (tmp_path / "a").write_text("keep")
    os.link(tmp_path / "a", tmp_path / "b")
    with pytest.raises(OutputError) as err:
        open_for_write(tmp_path / "b", os.O_WRONLY)
    assert str(err.value) == (f"{tmp_path / 'b'} is one of 2 hard links to one file; writing it would change a file "
                              "elsewhere: remove it, or choose another output.")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutputError) as err:
        open_for_write(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    assert str(err.value) == (f"{tmp_path / 'fifo'} is not a regular file; writing it would change a file elsewhere: "
                              "remove it, or choose another output.")


def test_open_for_write_passes_other_os_errors_on(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_for_write(tmp_path / "missing" / "f", os.O_WRONLY | os.O_CREAT)


# ---- the Hugging Face hub cache: a snapshot's files are links into its repository's blobs ------


def _hub_repo(root, name="models--org--name"):
    repo = root / name
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "blobs" / "h1").write_text("{}")
    (snapshot / "adapter_config.json").symlink_to("../../blobs/h1")
    return repo, snapshot


def test_a_hub_snapshots_links_into_its_own_blobs_stay_inside(tmp_path):
    from selfinterp_plugins.storage import check_artifact_dir

    _repo, snapshot = _hub_repo(tmp_path)
    assert check_artifact_dir(snapshot) == snapshot
    assert member(snapshot, "adapter_config.json") == snapshot / "adapter_config.json"


@pytest.mark.parametrize("where", ["another repository's blobs", "outside the cache", "a folder of blobs",
                                   "a blob linking out", "not a snapshot", "snapshots of no hub repository"])
def test_other_links_from_a_hub_snapshot_are_refused(tmp_path, where):
    from selfinterp_plugins.storage import check_artifact_dir

    repo, snapshot = _hub_repo(tmp_path)
    link = snapshot / "adapter_config.json"
    link.unlink()
    if where == "another repository's blobs":
        other, _ = _hub_repo(tmp_path, "models--someone--else")
        link.symlink_to(other / "blobs" / "h1")
    elif where == "outside the cache":
        (tmp_path / "secret").write_text("x")
        link.symlink_to(tmp_path / "secret")
    elif where == "a folder of blobs":
        (repo / "blobs" / "sub").mkdir()
        (repo / "blobs" / "sub" / "h2").write_text("x")
        link.symlink_to("../../blobs/sub/h2")
    elif where == "a blob linking out":
        (tmp_path / "secret").write_text("x")
        (repo / "blobs" / "h1").unlink()
        (repo / "blobs" / "h1").symlink_to(tmp_path / "secret")
        link.symlink_to("../../blobs/h1")
    elif where == "snapshots of no hub repository":  # snapshots/ and blobs/, in a folder not named models--…
        plain = tmp_path / "my-project" / "snapshots" / "abc123"
        plain.mkdir(parents=True)
        (tmp_path / "my-project" / "blobs").mkdir()
        (tmp_path / "my-project" / "blobs" / "h1").write_text("x")
        (plain / "adapter_config.json").symlink_to("../../blobs/h1")
        snapshot, link = plain, plain / "adapter_config.json"
    else:  # the same layout, but the folder is not under snapshots/ of a hub repository folder
        plain = tmp_path / "plain" / "abc123"
        plain.mkdir(parents=True)
        (plain / "adapter_config.json").symlink_to(repo / "blobs" / "h1")
        snapshot, link = plain, plain / "adapter_config.json"
    with pytest.raises(ArtifactError, match=r"is a symlink to .*, outside the artifact; copy the file in instead\.$"):
        check_artifact_dir(snapshot)
    with pytest.raises(ArtifactError, match=r"outside the artifact"):
        member(snapshot, "adapter_config.json")


def test_a_new_file_gets_the_usual_mode_under_the_umask(tmp_path):
    """Created 0o666 less the umask, as open() would: never executable, never wider than asked."""
    old = os.umask(0o022)
    try:
        fd = open_for_write(tmp_path / "new", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    finally:
        os.umask(old)
    os.close(fd)
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o644
