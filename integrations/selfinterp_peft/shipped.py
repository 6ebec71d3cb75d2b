"""The DIT adapter shipped with this plugin, and the held-out diffs it came with, by name.

`smollm2-hidden-topics` is a DIT adapter for SmolLM2-135M-Instruct trained on 112 synthetic
hidden-topic diffs (`dit make-diffs`, then `dit train --lr 1e-3 --epochs 8`; docs/peft.md), stored
in bfloat16 (its answers on all 32 held-out diffs are those of the float32 run:
`scripts/ship_dit.py`). Beside it, `held_out/` is a diff store (index.jsonl + diffs/) of the first
eight held-out diffs in index order, so `selfinterp dit demo` and `dit eval` run offline.
A name resolves as the core's explainer names do: an existing directory wins.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SHIPPED_DIT", "dit_location", "shipped_dit_dir", "shipped_dit_names", "shipped_held_out"]

SHIPPED_DIT = "smollm2-hidden-topics"


def shipped_dit_dir(name: str = SHIPPED_DIT) -> Path:
    from importlib import resources

    return Path(str(resources.files("selfinterp_peft").joinpath(f"data/dit/{name}")))


def shipped_dit_names() -> list[str]:
    root = shipped_dit_dir().parent
    return sorted(p.name for p in root.iterdir() if (p / "dit_config.json").is_file()) if root.is_dir() else []


def shipped_held_out(name: str = SHIPPED_DIT) -> Path:
    """The diff store of held-out diffs shipped with a DIT adapter (for `dit demo` / `dit eval`)."""
    return shipped_dit_dir(name) / "held_out"


def dit_location(name_or_path) -> Path:
    """An existing directory, else a shipped DIT adapter's name, else the path as given (for the
    loader's own missing-directory error)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if str(name_or_path) in shipped_dit_names():
        return shipped_dit_dir(str(name_or_path))
    return path
