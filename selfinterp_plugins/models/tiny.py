"""Tiny randomly initialised causal LMs of several architectures, for fast unit tests.

They share the real SmolLM2 tokenizer (and therefore its chat template), so token ids mean the
same thing as for the real model.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from ..defaults import SMOLLM2_ALIAS
from ..errors import ModelLoadError
from .loading import _finish, load_tokenizer

TINY_ARCHS = ("llama", "qwen2", "gemma3", "gpt2", "gpt_neox")
"""Architectures :func:`tiny_model` can build; they cover the common module layouts
(llama-style ``model.layers``, gemma3 mixed sliding/full attention, gpt2 ``transformer.h``
with Conv1D, gpt_neox ``gpt_neox.layers`` with parallel residual)."""


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


def _family_config(family: str, tokenizer, overrides: dict):
    """Config of a tiny model shaped like the family's real ones (hidden 64, 2-3 layers): Llama-3.1's
    rope (theta 5e5, llama3 scaling) and untied head, Qwen3's q/k norms and tied head, Gemma3's mixed
    sliding/full layers; the vocabulary is the real tokenizer's."""
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen3Config

    special = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    if family == "llama3.1":
        rope = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=8192)
        cls, fields = LlamaConfig, dict(small, max_position_embeddings=131072, rope_parameters=rope, tie_word_embeddings=False)
    elif family == "qwen3":
        cls, fields = Qwen3Config, dict(small, head_dim=16, max_position_embeddings=40960, tie_word_embeddings=True)
    elif family == "gemma3":
        cls = Gemma3TextConfig
        fields = dict(small, num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=16, sliding_window=512,
                      layer_types=["sliding_attention", "sliding_attention", "full_attention"], tie_word_embeddings=True)
    else:
        from .families import FAMILIES

        raise ModelLoadError(f"Unknown model family {family!r}; fix: use one of {', '.join(FAMILIES)}")
    return cls(**{**fields, **special, **overrides})


def tiny_family_model(family: str, seed: int = 0, **overrides) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A tiny random model of a paper's model family (`models.families.FAMILIES`: `llama3.1`,
    `qwen3`, `gemma3`) carrying that family's real tokenizer, for tests of the real prompts and of
    the papers' artifacts on stand-ins. Deterministic in `(family, seed, overrides)`; the global RNG
    is left untouched."""
    from .families import family_tokenizer

    tokenizer = family_tokenizer(family)
    config = _family_config(family, tokenizer, overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.config._name_or_path = f"tiny-{family}"
    return _finish(model), tokenizer
