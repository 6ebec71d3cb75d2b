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
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import ArtifactError
from .serialization import _step, output_errors, read_json, save_safetensors, write_json

__all__ = ["STAGED_SUFFIX", "committed_file", "save_committed", "save_weights_and_config", "weights_file"]

#: the staged weights: `adapter.safetensors` -> `adapter.next.safetensors`
STAGED_SUFFIX = ".next"


def _staged(name: str) -> str:
    stem, dot, ext = name.partition(".")
    return f"{stem}{STAGED_SUFFIX}{dot}{ext}"


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


def _finish(directory: Path, config_name: str, names: dict[str, str]) -> None:
    """Complete a save that stopped after its commit: move the staged files to their usual names.
    An unreadable config commits nothing (no save writes one), so the new save simply replaces it."""
    config_path = directory / config_name
    if not config_path.is_file():
        return
    try:
        config = read_json(config_path)
    except ArtifactError:
        return
    staged = [role for role, name in names.items() if config.get(f"{role}_file") == _staged(name)]
    if not staged:
        return
    for role in staged:
        if (directory / _staged(names[role])).is_file():
            _move(directory, names[role])
    write_json({**config, **{f"{role}_file": names[role] for role in staged}}, config_path)


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
    _finish(directory, config_name, names)
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
        raise ArtifactError(f"{directory} names {role} {named!r}; only {name} belongs to it. Re-save it.")
    path = directory / named
    if path.is_file() or named == name:
        return path
    # the save stopped after moving the staged file: the usual file must be the committed one
    usual = directory / name
    if usual.is_file() and config.get(f"{role}_sha256") == _sha256(usual):
        return usual
    raise ArtifactError(f"{directory} holds no {role} matching its config (an interrupted save?); re-save it.")


def save_weights_and_config(directory: Path, tensors: dict[str, torch.Tensor], config: dict, config_name: str,
                            weights_name: str) -> None:
    """An explainer's weights and config (`weights_file` / `weights_sha256` in the config)."""
    save_committed(directory, {"weights": (weights_name, lambda path: save_safetensors(tensors, path))}, config,
                   config_name)


def weights_file(directory: Path, config: dict, weights_name: str) -> Path:
    """The weights the config commits to (artifacts saved before this scheme name none: the usual file)."""
    return committed_file(directory, config, "weights", weights_name)
