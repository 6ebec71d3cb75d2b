"""An artifact's files committed together with its config: a kill at any moment leaves the old
artifact or the new one, never an explainer's new weights under its old config, nor a dataset's
new vectors with its old labels.

Several files cannot be renamed in one step, so the config is the commit record. A save writes
each new file beside the old one (`adapter.next.safetensors`), then the config naming them and
their SHA-256 (the commit), then moves them to their usual names and rewrites the config to say
so. Loading follows the config: to a staged file if the save stopped right after the commit, or
to the usual file once it was moved, which the recorded digest proves to be the committed one.
A new save first finishes a previous save that stopped after its commit.

Each file has a role, recorded in the config as `<role>_file` and `<role>_sha256` (an
explainer's `weights`; a dataset's `vectors` and `labels`). A config without them (saved before
this scheme) names the usual files.

Artifacts another library serialises (PEFT adapters, SAE-Lens SAEs: several files under fixed
names) go through the same record: `save_serialised_committed` lets the library write into a
scratch folder inside the directory, then commits each file it wrote (its role derived from its
name) with our config as the record; `committed_files` and `usual_names` read them back.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..errors import ArtifactError
from ._files import _step, output_errors, read_json, save_safetensors, write_json
from ._paths import bare_name_problem, member

__all__ = ["SCRATCH_DIR", "STAGED_SUFFIX", "committed_file", "committed_files", "file_role", "record_free",
           "save_committed", "save_serialised_committed", "save_weights_and_config", "usual_names", "weights_file"]

#: the staged weights: `adapter.safetensors` -> `adapter.next.safetensors`
STAGED_SUFFIX = ".next"
#: where another library serialises an artifact before its files are committed (hidden, inside it)
SCRATCH_DIR = ".saving"


def _staged(name: str) -> str:
    stem, dot, ext = name.partition(".")
    return f"{stem}{STAGED_SUFFIX}{dot}{ext}"


def _unstaged(named: str) -> str | None:
    """The usual name of a staged file name (`adapter.next.safetensors` -> `adapter.safetensors`), else None."""
    stem, dot, rest = named.partition(".")
    marker = STAGED_SUFFIX[1:]
    if rest == marker:
        return stem
    if rest.startswith(marker + "."):
        return f"{stem}.{rest[len(marker) + 1:]}"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _move(directory: Path, name: str) -> None:
    """Move a staged file to its usual name."""
    with output_errors(directory / name):
        _step("replace", directory / name)
        os.replace(directory / _staged(name), directory / name)


def _finish(directory: Path, config_name: str) -> None:
    """Complete a save that stopped after its commit: move the staged files its config names (all
    of them, whatever files the new save writes) to their usual names. An unreadable config commits
    nothing (no save writes one), so the new save simply replaces it."""
    config_path = directory / config_name
    if not config_path.is_file():
        return
    try:
        config = read_json(config_path)
    except ArtifactError:
        return
    staged = {f"{role}_file": _unstaged(named) for role, named in _record_roles(config, strict=False).items()
              if _unstaged(named)}
    if not staged:
        return
    for name in staged.values():
        if (directory / _staged(name)).is_file():
            _move(directory, name)
    write_json({**config, **staged}, config_path)


def _discard_staged(directory: Path, config_name: str, names: dict[str, str]) -> None:
    """Remove the staged files of a save that failed before its commit (unless a commit names them)."""
    with contextlib.suppress(ArtifactError, OSError):
        config = read_json(directory / config_name) if (directory / config_name).is_file() else {}
        if any(config.get(f"{role}_file") == _staged(name) for role, name in names.items()):
            return
        for name in names.values():
            (directory / _staged(name)).unlink(missing_ok=True)


def save_committed(directory: str | Path, files: dict[str, tuple[str, Callable[[Path], None]]], config: dict,
                   config_name: str) -> None:
    """Save `config` (as `config_name`) and, for each role, the file `write(path)` writes under its
    usual name, so that a kill anywhere leaves the old set or the new set. `write` must write
    atomically (`save_safetensors`, `write_text_atomic`)."""
    directory = Path(directory)
    with output_errors(directory):
        directory.mkdir(parents=True, exist_ok=True)
    names = {role: name for role, (name, _) in files.items()}
    _finish(directory, config_name)
    record: dict[str, str] = {}
    try:
        for role, (name, write) in files.items():
            staged = directory / _staged(name)
            write(staged)
            record[f"{role}_file"], record[f"{role}_sha256"] = staged.name, _sha256(staged)
        write_json({**config, **record}, directory / config_name)  # the commit
    except Exception:  # a full disk before the commit: the old artifact stands, without the staged litter
        _discard_staged(directory, config_name, names)
        raise
    for role, name in names.items():
        _move(directory, name)
        record[f"{role}_file"] = name
    write_json({**config, **record}, directory / config_name)


def committed_file(directory: str | Path, config: dict, role: str, name: str) -> Path:
    """The file of `role` (usually `name`) that the config commits to."""
    directory = Path(directory)
    named = config.get(f"{role}_file", name)
    if named not in (name, _staged(name)):
        raise ArtifactError(f"{directory} names {role} {named!r:.80}; only {name} belongs to it. Re-save it.")
    path = member(directory, named, what=role)
    if path.is_file() or named == name:
        return path
    # the save stopped after moving the staged file: the usual file must be the committed one
    usual = member(directory, name, what=role)
    if usual.is_file() and config.get(f"{role}_sha256") == _sha256(usual):
        return usual
    raise ArtifactError(f"{directory} holds no {role} matching its config (an interrupted save?); re-save it.")


def file_role(name: str) -> str:
    """The role of a file another library wrote (`adapter_model.safetensors` -> `adapter_model_safetensors`)."""
    return name.replace(".", "_").replace("-", "_")


def save_serialised_committed(directory: str | Path, serialise: Callable[[Path], None], config: dict,
                              config_name: str) -> None:
    """Commit the files `serialise(folder)` writes (PEFT's `save_pretrained`, SAE-Lens's
    `save_inference_model`) together with `config` as the record, like `save_committed`.

    The library writes into `SCRATCH_DIR` inside `directory`, not in place: its files are written
    one by one and not atomically, so in place a kill would leave a new adapter_model beside an old
    adapter_config. In the same directory (not /tmp) so each file reaches its staged name by a
    rename, not a second copy of what may be a model's full weights. A killed save's scratch is
    removed by the next save (the caller holds the directory's lock: no other save uses it)."""
    directory = Path(directory)
    scratch = directory / SCRATCH_DIR
    with output_errors(directory):
        directory.mkdir(parents=True, exist_ok=True)
        if scratch.exists():
            _step("unlink", scratch)
            shutil.rmtree(scratch)
        _step("serialise", scratch)
        scratch.mkdir()
    try:
        with output_errors(scratch):
            serialise(scratch)
            written = sorted(path for path in scratch.iterdir() if path.is_file())
        folders = [path.name for path in scratch.iterdir() if path.is_dir()]
        if folders:  # only files are committed: a sub-folder (PEFT's non-default adapters) would be lost silently
            raise ArtifactError(f"Saving to {directory} wrote sub-folder(s) {folders}, which are not committed; save "
                                "the default adapter only (adapter_name='default').")
        save_committed(directory, {file_role(path.name): (path.name, _renamed_from(path)) for path in written},
                       config, config_name)
    except Exception:  # a full disk, a refused file: the old artifact stands, without the scratch
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    shutil.rmtree(scratch, ignore_errors=True)


def _renamed_from(source: Path) -> Callable[[Path], None]:
    """A `write(path)` for `save_committed` that moves `source` (made durable first) to `path`."""
    def write(path: Path) -> None:
        with output_errors(path):
            with open(source, "rb") as f:
                os.fsync(f.fileno())
            _step("replace", path)
            os.replace(source, path)
    return write


def _record_entries(config: dict) -> dict[str, object]:
    """role -> what the config's record says its file is called, for each `<role>_file` key with a
    `<role>_sha256` beside it (unchecked: a stranger's record may name anything)."""
    return {key[: -len("_file")]: named for key, named in config.items()
            if key.endswith("_file") and f"{key[: -len('_file')]}_sha256" in config}


def _record_roles(config: dict, directory: Path | None = None, strict: bool = True) -> dict[str, str]:
    """role -> the file name (staged or usual) for every file the config's record names. A name that
    is not a bare file name (a path: absolute, `..`, a separator; not a string) is refused
    (`strict`), or skipped: a save over such a directory replaces its record rather than act on it."""
    roles = {}
    for role, named in _record_entries(config).items():
        if bare_name_problem(named) is None:
            roles[role] = named
        elif strict:
            raise ArtifactError(f"The record of {directory or 'an artifact'} names its {role} {named!r:.80} "
                                f"({role}_file): {bare_name_problem(named)}; an artifact's files are bare names "
                                "inside its directory. Re-save or re-download it.")
    return roles


def record_free(config: dict) -> dict:
    """The config without its commit record (for a reader that refuses unknown keys)."""
    record = {f"{role}{suffix}" for role in _record_entries(config) for suffix in ("_file", "_sha256")}
    return {key: value for key, value in config.items() if key not in record}


def committed_files(directory: str | Path, config: dict) -> dict[str, Path]:
    """usual name -> the committed file, for every file the config's record names; empty for an
    artifact saved before the record (its files are the usual ones in the directory)."""
    files = {}
    for role, named in _record_roles(config, Path(directory)).items():
        name = _unstaged(named) or named
        files[name] = committed_file(directory, config, role, name)
    return files


@contextlib.contextmanager
def usual_names(directory: str | Path, config: dict) -> Iterator[Path]:
    """A folder holding the committed files under their usual names, for a library that reads fixed
    names (`PeftModel.from_pretrained`, `SAE.load_from_disk`): the artifact directory itself, except
    between a save's commit and its renames, when the usual names still hold the old files; then a
    temporary folder with copies of the committed ones (a load never writes to the artifact, which
    may be read-only or being saved by its lock holder). Its library's own loader is kept, rather
    than rebuilt from its pieces, so what it does beyond reading two files (PEFT's model class per
    task, inference mode, saved embedding layers) stays the library's."""
    directory = Path(directory)
    files = committed_files(directory, config)
    if all(path == directory / name for name, path in files.items()):
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="selfinterp-committed-") as folder:
        for name, path in files.items():
            shutil.copyfile(path, Path(folder) / name)
        yield Path(folder)


def save_weights_and_config(directory: Path, tensors: dict[str, torch.Tensor], config: dict, config_name: str,
                            weights_name: str) -> None:
    """An explainer's weights and config (`weights_file` / `weights_sha256` in the config)."""
    save_committed(directory, {"weights": (weights_name, lambda path: save_safetensors(tensors, path))}, config,
                   config_name)


def weights_file(directory: Path, config: dict, weights_name: str) -> Path:
    """The weights the config commits to (artifacts saved before this scheme name none: the usual file)."""
    return committed_file(directory, config, "weights", weights_name)
