"""Turning a GGUF file into an ordinary float32 safetensors checkpoint, written atomically.

Shared by the two bundled real models: SmolLM2 (`loading.py`) and Gemma-3-270m (`gemma_offline.py`).
In a module of its own so that neither of those imports the other.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ModelLoadError


def write_atomically(final_dir: Path, write) -> None:
    """Run ``write(tmp_dir)`` then rename ``tmp_dir`` to ``final_dir``.

    Why: a crash or Ctrl-C half way through a 30 s conversion must never leave a
    directory that looks like a valid cache. The temp dir is created next to the final
    one (same filesystem) so the rename is atomic. If another process finished first,
    its result is kept and ours is discarded.
    """
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_dir, 0o777 & ~umask)  # mkdtemp makes 0700; a cache should honour the umask
    try:
        write(tmp_dir)
        try:
            os.rename(tmp_dir, final_dir)
        except OSError:
            if not final_dir.exists():  # a genuine failure, not a lost race
                raise
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)


def convert_gguf(gguf_path: Path, make_tokenizer, target: Path, what: str, fix: str) -> None:
    """Dequantise a GGUF file once and write a plain float32 HF checkpoint + tokenizer to ``target``.

    Why rebuild instead of ``save_pretrained`` on the GGUF-loaded model: that model's config
    carries ``quantization_config`` (quant_method "gguf"), which would make every later load think
    the checkpoint is quantised. We drop it, build a fresh model from the config, copy the
    dequantised weights in, and re-tie the embeddings (safetensors stores a shared tensor once).
    """
    import torch
    from transformers import AutoModelForCausalLM

    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                      dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # lm_head.weight may be absent from the state dict when tied; anything else is a bug.
    missing = [k for k in missing if not (getattr(config, "tie_word_embeddings", False) and k == "lm_head.weight")]
    if missing or unexpected:
        raise ModelLoadError(
            f"GGUF conversion of {what} did not match the model (missing={missing[:3]}, "
            f"unexpected={unexpected[:3]}); fix: {fix}"
        )
    model.tie_weights()
    if model.generation_config is not None and gguf_model.generation_config is not None:
        model.generation_config = gguf_model.generation_config
    del gguf_model

    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp), safe_serialization=True)
        make_tokenizer().save_pretrained(str(tmp))

    write_atomically(target, write)
