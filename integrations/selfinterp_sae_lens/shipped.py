"""The SAE and the SAE-feature explainer shipped with this plugin, by name.

`smollm2-resid6-topk` is a 4,608-latent TopK SAE-Lens SAE on SmolLM2-135M-Instruct's
`blocks.6.hook_resid_post`, trained here on Shakespeare's plays (`scripts/sae_e2e.py`), stored in
bfloat16 and loaded as float32. `smollm2-sae-features` is the best explainer of its latents we
have, trained on the train split of their weak labels (each latent's dominant top-activating word);
`held_out.jsonl` beside it holds the test-split latents and their weak labels, none seen in
training, so `selfinterp sae demo` runs offline. Its measured numbers are in docs/sae_lens.md: a
weak explainer, shipped so the method can be tried and compared, not because it labels well.

A name resolves as the core's explainer names do: an existing directory wins.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["SHIPPED_SAE", "SHIPPED_SAE_EXPLAINER", "sae_location", "shipped_explainer_dirs", "shipped_held_out",
           "shipped_sae_dir", "shipped_sae_names"]

SHIPPED_SAE = "smollm2-resid6-topk"
SHIPPED_SAE_EXPLAINER = "smollm2-sae-features"


def _data() -> Path:
    from importlib import resources

    return Path(str(resources.files("selfinterp_sae_lens").joinpath("data")))


def shipped_sae_dir(name: str = SHIPPED_SAE) -> Path:
    return _data() / "saes" / name


def shipped_sae_names() -> list[str]:
    root = _data() / "saes"
    return sorted(p.name for p in root.iterdir() if (p / "cfg.json").is_file()) if root.is_dir() else []


def shipped_explainer_dirs() -> dict[str, Path]:
    """The explainers shipped with this plugin, by name (registered with the core's
    `register_explainers` hook, so `Explainer.from_pretrained(name)` and every command take them)."""
    root = _data() / "explainers"
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / "explainer_config.json").is_file()}


def shipped_held_out(name: str = SHIPPED_SAE_EXPLAINER) -> list[dict]:
    """The held-out latents shipped with an explainer: {"feature", "label"} rows, the weak labels
    of test-split latents (never trained on), in latent order."""
    path = shipped_explainer_dirs()[name] / "held_out.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sae_location(name_or_path) -> Path:
    """An existing directory, else a shipped SAE's name, else the path as given (for the loader's
    own missing-SAE error)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if str(name_or_path) in shipped_sae_names():
        return shipped_sae_dir(str(name_or_path))
    return path
