"""Names inside an artifact, and opening a file to write without following a link.

A record in an artifact names its files (`weights_file`, a PEFT adapter's files, a diff's id in
an index). The record came from whoever wrote the directory, maybe a stranger: followed as given,
`"/home/me/.bashrc"`, `"../x"` or a symlink make a load read (and a save's commit move or copy)
files anywhere the user can write. So a name from a record is a *member*: a bare file name, one
path component, resolved inside the directory and never out of it.

Writers open their files with `O_NOFOLLOW` (and a new temporary file with `O_EXCL`): a symlink
planted where the library writes (a lock file, `adapter.safetensors.tmp`) would otherwise make it
truncate and overwrite the link's target.

One layout of links is the norm rather than an attack: the Hugging Face hub cache, where every file
of a downloaded snapshot (`<cache>/models--org--name/snapshots/<revision>/<file>`) is a symlink to
a content-addressed blob of the same repository (`<cache>/models--org--name/blobs/<hash>`). A
published artifact arrives that way (`snapshot_download`, `hf_hub_download`), so a link from a
snapshot folder into its own repository's `blobs/` stays inside the artifact (`link_stays_inside`).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from ..errors import ArtifactError, OutputError

#: separators of any platform: a name from a record is refused with either, whatever the OS
_SEPARATORS = ("/", "\\")


def bare_name_problem(name) -> str | None:
    """Why `name` is not a bare file name (one path component, not `.`/`..`), or None if it is."""
    if not isinstance(name, str):
        return f"should be a file name (a string), got {type(name).__name__}"
    if not name or name in (".", ".."):
        return f"{name!r} is not a file name"
    if any(sep in name for sep in _SEPARATORS) or "\0" in name or os.path.isabs(name):
        return f"{name!r} is a path, not a bare file name"
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        return "is longer than a file name can be (255 bytes)"
    return None


#: a repository's folder in the Hugging Face hub cache (huggingface_hub's `repo_folder_name`)
_HUB_REPO_FOLDER = re.compile(r"(models|datasets|spaces)--.+")


def hub_blobs(directory: Path) -> Path | None:
    """The `blobs/` folder of the hub-cache repository whose snapshot `directory` is (or is inside),
    or None when `directory` is not in a snapshot of the hub cache."""
    resolved = directory.resolve()
    for folder in (resolved, *resolved.parents):
        if folder.parent.name == "snapshots" and _HUB_REPO_FOLDER.fullmatch(folder.parent.parent.name):
            return folder.parent.parent / "blobs"
    return None


def link_stays_inside(link: Path, directory: Path) -> bool:
    """Whether the symlink `link`, in `directory`, leads to a file inside it, or (a snapshot of the
    Hugging Face hub cache) to a regular file among its own repository's blobs."""
    target = link.resolve()
    if target.is_relative_to(directory.resolve()):
        return True
    blobs = hub_blobs(directory)
    return blobs is not None and target.parent == blobs and target.is_file()


def member(directory: str | Path, name, *, source: str | Path | None = None, what: str = "file") -> Path:
    """`directory / name` for a `name` a record gives, refused (an ArtifactError naming `source`,
    the record, and the fix) unless it is a bare file name that stays inside `directory`: no
    separator, no `..`, not absolute, and not a symlink whose target is outside."""
    directory = Path(directory)
    where = source if source is not None else directory
    problem = bare_name_problem(name)
    if problem:
        raise ArtifactError(f"{where} names its {what} {name!r:.80}: {problem}; an artifact's files are bare names "
                            f"inside its directory. Re-save or re-download it.")
    path = directory / name
    if path.is_symlink() and not link_stays_inside(path, directory):
        raise ArtifactError(f"{path} is a symlink to {path.resolve()}, outside the artifact; copy the file in instead.")
    return path


def open_for_write(path: str | Path, flags: int, mode: int = 0o666) -> int:
    """`os.open(path, flags | O_NOFOLLOW)` refusing, with the fix, a symlink or a file with other hard
    links at `path` (writing through either changes a file elsewhere). Raises OutputError for those,
    OSError for the rest (the caller's `output_errors` words it)."""
    path = Path(path)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | nofollow, mode)
    except OSError as err:
        if path.is_symlink():
            raise OutputError(f"{path} is a symlink (to {os.readlink(path)}); the library never writes through a link: "
                              "remove it, or choose another output.") from None
        raise err
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        kind = "not a regular file" if not stat.S_ISREG(info.st_mode) else f"one of {info.st_nlink} hard links to one file"
        raise OutputError(f"{path} is {kind}; writing it would change a file elsewhere: remove it, or choose another output.")
    return fd
