"""An artifact's weights and config committed together: a kill at any moment leaves the old
explainer or the new one, never the new weights under the old config.

Two files cannot be renamed in one step, so the config is the commit record. A save writes the
new weights beside the old ones (`adapter.next.safetensors`), then the config naming them and
their SHA-256 (the commit), then moves them to the usual name and rewrites the config to say so.
Loading follows the config: to the staged file if the save stopped right after the commit, or to
the usual file once the move happened, which the recorded digest proves to be the committed one.
A new save first finishes a previous save that stopped after its commit.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from .errors import ArtifactError
from .serialization import read_json, save_safetensors, write_json

__all__ = ["STAGED_SUFFIX", "save_weights_and_config", "weights_file"]

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


def _finish(directory: Path, config_name: str, weights_name: str) -> None:
    """Complete a save that stopped after its commit: move the staged weights to the usual name."""
    config_path, staged = directory / config_name, directory / _staged(weights_name)
    if not config_path.is_file():
        return
    config = read_json(config_path)
    if config.get("weights_file") != staged.name:
        return
    if staged.is_file():
        os.replace(staged, directory / weights_name)
    write_json({**config, "weights_file": weights_name}, config_path)


def save_weights_and_config(directory: Path, tensors: dict[str, torch.Tensor], config: dict, config_name: str,
                            weights_name: str) -> None:
    directory = Path(directory)
    _finish(directory, config_name, weights_name)
    staged = directory / _staged(weights_name)
    save_safetensors(tensors, staged)
    digest = _sha256(staged)
    write_json({**config, "weights_file": staged.name, "weights_sha256": digest}, directory / config_name)  # commit
    os.replace(staged, directory / weights_name)
    write_json({**config, "weights_file": weights_name, "weights_sha256": digest}, directory / config_name)


def weights_file(directory: Path, config: dict, weights_name: str) -> Path:
    """The weights the config commits to (artifacts saved before this scheme name none: the usual file)."""
    directory = Path(directory)
    named = config.get("weights_file", weights_name)
    if named not in (weights_name, _staged(weights_name)):
        raise ArtifactError(f"{directory} names weights {named!r}; only {weights_name} belongs to it. Re-save it.")
    path = directory / named
    if path.is_file() or named == weights_name:
        return path
    # the save stopped after moving the staged file: the usual file must be the committed one
    usual = directory / weights_name
    if usual.is_file() and config.get("weights_sha256") == _sha256(usual):
        return usual
    raise ArtifactError(f"{directory} holds no weights matching its config (an interrupted save?); re-save it.")
