"""Where converted models live: the cache root and what counts as a complete checkpoint.

A converted checkpoint directory appears only complete (it is renamed into place, see
`gguf_conversion.write_atomically`), so these checks are all a loader needs before reading it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..defaults import SMOLLM2_ALIAS


def default_cache_root() -> Path:
    """Directory under which converted models live.

    ``$SELFINTERP_CACHE`` (the root of all selfinterp caches) if set, else
    ``~/.cache/selfinterp``; models go in its ``models/`` sub-directory, so the default
    SmolLM2 checkpoint is ``~/.cache/selfinterp/models/smollm2-135m-instruct``.
    """
    root = os.environ.get("SELFINTERP_CACHE") or "~/.cache/selfinterp"
    return Path(root).expanduser() / "models"


def _smollm2_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """The converted SmolLM2 checkpoint directory (``cache_dir`` is that directory itself)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return default_cache_root() / SMOLLM2_ALIAS


def _tokenizer_only_dir(model_dir: Path) -> Path:
    """Sibling directory holding just the tokenizer, made when the full model is not cached.

    A sibling rather than a sub-directory, so that the atomic rename creating the
    model directory never collides with it.
    """
    return model_dir.with_name(model_dir.name + "-tokenizer")


def _is_complete_checkpoint(path: Path) -> bool:
    """True if ``path`` holds a saved model and tokenizer (our atomic rename guarantees
    the directory only appears when complete; this also rejects foreign junk)."""
    return (path / "config.json").is_file() and (path / "tokenizer_config.json").is_file() and any(
        path.glob("*.safetensors")
    )


def _is_complete_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").is_file() and (path / "tokenizer.json").is_file()
